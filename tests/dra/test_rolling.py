"""Rolling update: two instances of one driver on one data directory, either called."""

from __future__ import annotations

import pytest

from host.dra import ClaimRef
from host.testing import FakeClaims, FakeDraKubelet
from tests.dra.helpers import DRIVER, Dirs, DriverRunner, add_claim, cdi_files, result

pytestmark = pytest.mark.asyncio


class TestTwoInstances:
    async def test_both_registered_newest_called(
        self, drivers: DriverRunner, claims: FakeClaims, dirs: Dirs
    ) -> None:
        """Kubelet keeps both instances and calls the newest; both sockets differ."""
        old = await drivers.start(instance_id="pod-old")
        async with FakeDraKubelet(dirs.registry) as kubelet:
            first = await kubelet.wait_for_driver(DRIVER)
            new = await drivers.start(instance_id="pod-new")
            second = await kubelet.wait_for_driver(DRIVER, after=first.registered_at)
            assert {r.endpoint for r in kubelet.drivers[DRIVER]} == {
                str(old.socket_path),
                str(new.socket_path),
            }
            assert second.endpoint == str(new.socket_path)
            claim = add_claim(claims, "c1", "uid-1", result("i915-card0"))
            assert (await kubelet.prepare(DRIVER, [claim]))["uid-1"].error == ""
            assert "uid-1" in new.prepared_claims
            await drivers.stop(new)  # the update is rolled back: the old one remains
            await kubelet.wait_for(lambda: len(kubelet.drivers.get(DRIVER, ())) == 1)
            assert await kubelet.unprepare(DRIVER, [claim]) == {"uid-1": ""}
        assert cdi_files(dirs.cdi) == []

    async def test_changes_seen_across_instances(
        self, drivers: DriverRunner, claims: FakeClaims, dirs: Dirs
    ) -> None:
        """Each instance sees what the other prepared and unprepared, files included."""
        a = await drivers.start(instance_id="a")
        b = await drivers.start(instance_id="b")
        c1 = ClaimRef(*add_claim(claims, "c1", "uid-1", result("i915-card0")))
        c2 = ClaimRef(*add_claim(claims, "c2", "uid-2", result("i915-card1")))
        first = (await a.prepare([c1]))["uid-1"]
        await b.prepare([c2])
        gets = claims.gets
        assert (await b.prepare([c1]))["uid-1"] == first  # a's record, no API call
        assert claims.gets == gets
        assert len(cdi_files(dirs.cdi)) == 2

        assert await a.unprepare([c2]) == {"uid-2": None}  # b prepared it
        assert await b.unprepare([c1]) == {"uid-1": None}  # a prepared it
        assert cdi_files(dirs.cdi) == []
        assert await b.unprepare([c2]) == {"uid-2": None}
        assert (await a.prepare([c1]))["uid-1"] == first  # prepared again from scratch
        assert claims.gets == gets + 1
        assert len(cdi_files(dirs.cdi)) == 1
        assert (dirs.plugins / DRIVER / "serialize.lock").exists()
