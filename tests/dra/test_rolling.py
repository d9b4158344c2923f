"""Rolling update: two instances of one driver on one data directory, either called."""

from __future__ import annotations

import asyncio
import fcntl
import os
from typing import Any

import pytest

from host.deviceplugin._cdi import CdiSpecWriter
from host.dra import ClaimRef, PreparedClaim, PreparedDevice
from host.dra._checkpoint import ClaimCheckpoint
from host.dra._store import ClaimStore
from host.testing import FakeClaims, FakeDraKubelet
from tests.dra.helpers import DRIVER, NODE, Dirs, DriverRunner, add_claim, cdi_files, result

pytestmark = pytest.mark.asyncio


class TestTwoInstances:
    async def test_both_registered_newest_called(
        self, drivers: DriverRunner, claims: FakeClaims, dirs: Dirs
    ) -> None:
        """Kubelet keeps both instances and calls the newest connected; both sockets differ."""
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
            await kubelet.wait_for(lambda: str(new.socket_path) in kubelet.connected(DRIVER))
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


def store(dirs: Dirs) -> ClaimStore:
    data = dirs.plugins / DRIVER
    return ClaimStore(
        DRIVER,
        ClaimCheckpoint(data / "checkpoint.json", DRIVER),
        CdiSpecWriter(dirs.cdi),
        lock_path=data / "serialize.lock",
    )


def prepared(uid: str) -> PreparedClaim:
    device = PreparedDevice(("gpu",), NODE, "i915-card0", (f"{DRIVER}/dra=claim-{uid}-x",))
    return PreparedClaim(ClaimRef("default", f"claim-{uid}", uid), (device,))


class TestSharedCheckpoint:
    async def test_a_change_is_seen_even_when_the_file_looks_unchanged(self, dirs: Dirs) -> None:
        """A new snapshot of the very size the other instance knows is told by its epoch."""
        first, second = store(dirs), store(dirs)
        first.add(prepared("uid-1"))
        assert second.lookup("uid-1") == prepared("uid-1")
        size = dirs.checkpoint.stat().st_size
        first.checkpoint.save({"uid-2": prepared("uid-2")})  # e.g. the inode number reused
        assert dirs.checkpoint.stat().st_size == size
        assert second.lookup("uid-1") is None
        assert second.lookup("uid-2") == prepared("uid-2")

    async def test_a_removed_file_drops_no_claim(self, dirs: Dirs) -> None:
        """A checkpoint removed from outside is no unprepare: the next change writes it again."""
        first, second = store(dirs), store(dirs)
        first.add(prepared("uid-1"))
        second.add(prepared("uid-2"))
        dirs.checkpoint.unlink()
        assert second.lookup("uid-1") == prepared("uid-1")
        second.add(prepared("uid-3"))
        assert sorted(ClaimCheckpoint(dirs.checkpoint, DRIVER).load()) == [
            "uid-1",
            "uid-2",
            "uid-3",
        ]

    async def test_appended_changes_read_by_the_other(self, dirs: Dirs) -> None:
        """Each instance reads only the lines the other appended since it last looked."""
        first, second = store(dirs), store(dirs)
        first.add(prepared("uid-1"))  # the first change writes a snapshot
        second.add(prepared("uid-2"))  # then lines are appended
        first.remove("uid-1")
        assert second.lookup("uid-1") is None
        assert first.lookup("uid-2") == prepared("uid-2")
        assert len(dirs.checkpoint.read_bytes().splitlines()) == 3

    async def test_concurrent_changes_of_both_instances_all_recorded(
        self, drivers: DriverRunner, claims: FakeClaims, dirs: Dirs
    ) -> None:
        """Both instances preparing and unprepareing at once lose none of each other's claims."""
        claims.together = 20  # no fetch answered before all 20 are in flight
        a = await drivers.start(instance_id="a")
        b = await drivers.start(instance_id="b")
        refs = [
            ClaimRef(*add_claim(claims, f"c{i}", f"uid-{i}", result(f"i915-card{i % 4}")))
            for i in range(20)
        ]
        outcomes = await asyncio.gather(a.prepare(refs[:10]), b.prepare(refs[10:]))
        assert all(isinstance(o, PreparedClaim) for done in outcomes for o in done.values())
        assert claims.in_flight_max == 20  # the fetches of both instances met at the barrier
        recorded = ClaimCheckpoint(dirs.checkpoint, DRIVER).load()
        assert sorted(recorded) == sorted(ref.uid for ref in refs)
        # each unprepares half of what the other prepared, at once
        undone = await asyncio.gather(a.unprepare(refs[10:15]), b.unprepare(refs[:5]))
        assert all(error is None for done in undone for error in done.values())
        left = ClaimCheckpoint(dirs.checkpoint, DRIVER).load()
        assert sorted(left) == sorted(ref.uid for ref in refs[5:10] + refs[15:])
        assert len(cdi_files(dirs.cdi)) == 10


class GatedClaims(FakeClaims):
    """Claim fetches that wait for the test to let them through."""

    def __init__(self) -> None:
        super().__init__()
        self.fetching = asyncio.Event()
        self.release = asyncio.Event()

    async def get_claim(self, namespace: str, name: str) -> Any:
        self.fetching.set()
        await self.release.wait()
        return await super().get_claim(namespace, name)


class TestStop:
    async def test_a_call_in_flight_finishes_before_the_registration_goes(self, dirs: Dirs) -> None:
        """Stopping: the DRA socket closes to new calls, the call in flight is answered,
        then the registration socket goes (kubelet cancels calls to a deregistered one)."""
        claims = GatedClaims()
        runner = DriverRunner(dirs, claims)
        driver = await runner.start(instance_id="old")
        claim = add_claim(claims, "c1", "uid-1", result("i915-card0"))
        async with FakeDraKubelet(dirs.registry) as kubelet:
            await kubelet.wait_for_driver(DRIVER)
            call = asyncio.create_task(kubelet.prepare(DRIVER, [claim]))
            await claims.fetching.wait()
            stopping = asyncio.create_task(runner.stop(driver))
            await kubelet.wait_for(
                lambda: not driver.socket_path.exists(), what="the DRA socket closed"
            )
            assert driver.registration_socket_path.exists()
            assert kubelet.drivers[DRIVER]  # still registered
            claims.release.set()
            assert (await call)["uid-1"].error == ""
            await stopping
            assert not driver.registration_socket_path.exists()
        assert "uid-1" in ClaimCheckpoint(dirs.checkpoint, DRIVER).load()


class TestLoopNeverWaits:
    async def test_held_lock_sends_the_change_to_a_thread(
        self, drivers: DriverRunner, claims: FakeClaims, dirs: Dirs
    ) -> None:
        """While the other instance holds serialize.lock, a prepare waits in a worker
        thread (the loop stays free) and completes once the lock is released."""
        driver = await drivers.start(instance_id="a")
        c1 = ClaimRef(*add_claim(claims, "c1", "uid-1", result("i915-card0")))
        c2 = ClaimRef(*add_claim(claims, "c2", "uid-2", result("i915-card1")))
        assert isinstance((await driver.prepare([c1]))["uid-1"], PreparedClaim)
        store = driver._store
        loop = asyncio.get_running_loop()
        in_thread = asyncio.Event()
        blocking_lookup = store.lookup

        def lookup(uid: str) -> PreparedClaim | None:
            loop.call_soon_threadsafe(in_thread.set)
            return blocking_lookup(uid)

        store.lookup = lookup  # type: ignore[method-assign]
        fd = os.open(dirs.plugins / DRIVER / "serialize.lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # as the other instance would
            call = asyncio.create_task(driver.prepare([c2]))
            # This test runs on the driver's loop: reaching here, the loop is free.
            await asyncio.wait_for(in_thread.wait(), 5)
            assert not call.done()
        finally:
            os.close(fd)  # releases the lock
        assert isinstance((await asyncio.wait_for(call, 5))["uid-2"], PreparedClaim)
        assert sorted(ClaimCheckpoint(dirs.checkpoint, DRIVER).load()) == ["uid-1", "uid-2"]
