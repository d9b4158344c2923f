"""CDI spec files: written with their devices, kept for running containers, collected when
unused, re-written when missing; oversized snapshots are reported."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from host.deviceplugin import Manager
from host.deviceplugin._cdi import CdiSpecWriter, LedgerEntry, spec_file_name
from host.deviceplugin._cdi_store import DevicesInUse
from host.testing import FakeKubelet
from tests.scanners import QueueScanner

from .conftest import ServeFn
from .helpers import info, tree_of


def spec(name: str, env: str) -> dict[str, Any]:
    return {
        "cdiVersion": "0.5.0",
        "kind": "example.com/dev",
        "devices": [{"name": name, "containerEdits": {"env": [env]}}],
    }


def spec_files(cdi_dir: Path) -> dict[str, Any]:
    if not cdi_dir.exists():
        return {}
    return {p.name: json.loads(p.read_text()) for p in cdi_dir.glob("*.json")}


class InUseStub:
    """Stands in for kubelet's PodResources: what running containers hold, or None."""

    def __init__(self) -> None:
        self.answer: DevicesInUse | None = DevicesInUse()
        self.error: Exception | None = None

    async def __call__(self) -> DevicesInUse | None:
        if self.error is not None:
            raise self.error
        return self.answer


async def collect_twice(manager: Manager) -> list[Path]:
    """Two passes: a file goes only when two passes in a row find it unused."""
    first = await manager.collect_cdi_garbage()
    return first + await manager.collect_cdi_garbage()


@pytest.mark.asyncio
class TestCdiFiles:
    async def test_written_updated_and_kept_after_the_device(
        self, kubelet: FakeKubelet, serve: ServeFn, short_dir: Path
    ) -> None:
        """A spec appears with its device and changes with it; when the device goes it stays
        until garbage collection finds no running container holding it."""
        cdi_dir = short_dir / "cdi"
        in_use = InUseStub()
        scanner = QueueScanner(tree_of({"a": {"d0": info(cdi_spec=spec("d0", "V=1"))}}))
        manager = await serve("ex.com", scanner, cdi_dir=cdi_dir, cdi_in_use=in_use)
        await kubelet.wait_for_resource("ex.com/a", count=1)
        response = await kubelet.allocate("ex.com/a", ["d0"])
        assert [d.name for d in response.container_responses[0].cdi_devices] == [
            "example.com/dev=d0"
        ]
        (name,) = spec_files(cdi_dir)  # Allocate returned: the file is there
        assert (cdi_dir / name).stat().st_mode & 0o777 == 0o644

        scanner.trees.put_nowait(tree_of({"a": {"d0": info(cdi_spec=spec("d0", "V=2"))}}))
        await kubelet.wait_for(
            lambda: spec_files(cdi_dir)[name]["devices"][0]["containerEdits"]["env"] == ["V=2"]
        )

        scanner.trees.put_nowait(tree_of({"a": {"d1": info()}}))
        await kubelet.wait_for(lambda: set(kubelet.resources["ex.com/a"].devices) == {"d1"})
        in_use.answer = DevicesInUse(device_ids=frozenset({("ex.com/a", "d0")}))
        assert await collect_twice(manager) == []
        in_use.answer = None  # kubelet cannot tell: nothing goes
        assert await collect_twice(manager) == []
        in_use.error = OSError("kubelet away")
        assert await collect_twice(manager) == []
        in_use.error = None
        in_use.answer = DevicesInUse(cdi_names=frozenset({"example.com/dev=d0"}))
        assert await collect_twice(manager) == []
        in_use.answer = DevicesInUse()
        assert await manager.collect_cdi_garbage() == []  # first pass: suspected only
        assert await manager.collect_cdi_garbage() == [cdi_dir / name]
        assert spec_files(cdi_dir) == {}

    async def test_shared_spec_lives_while_any_holder_does(
        self, kubelet: FakeKubelet, serve: ServeFn, short_dir: Path
    ) -> None:
        """Shares carrying one spec keep one file until the last share is gone."""
        cdi_dir = short_dir / "cdi"
        shared = info(cdi_spec=spec("card0", "V=1"))
        scanner = QueueScanner(tree_of({"a": {"card0-0": shared, "card0-1": shared}}))
        manager = await serve("ex.com", scanner, cdi_dir=cdi_dir, cdi_in_use=InUseStub())
        await kubelet.wait_for_resource("ex.com/a", count=2)
        await kubelet.allocate("ex.com/a", ["card0-0"])
        assert len(spec_files(cdi_dir)) == 1
        scanner.trees.put_nowait(tree_of({"a": {"card0-1": shared}}))
        await kubelet.wait_for_resource("ex.com/a", count=1)
        assert await collect_twice(manager) == []
        assert len(spec_files(cdi_dir)) == 1
        scanner.trees.put_nowait(tree_of({"a": {"x": info()}}))
        await kubelet.wait_for(lambda: set(kubelet.resources["ex.com/a"].devices) == {"x"})
        assert len(await collect_twice(manager)) == 1
        assert spec_files(cdi_dir) == {}

    async def test_a_device_that_drops_its_spec_releases_it(
        self, kubelet: FakeKubelet, serve: ServeFn, short_dir: Path
    ) -> None:
        """A device kept under its ID without a spec any more releases its file (collected);
        rebuilding the same devices as new objects keeps it."""
        cdi_dir = short_dir / "cdi"
        with_spec = {"d0": info(cdi_spec=spec("d0", "V=1")), "d1": info()}
        scanner = QueueScanner(tree_of({"a": with_spec}))
        manager = await serve("ex.com", scanner, cdi_dir=cdi_dir, cdi_in_use=InUseStub())
        await kubelet.wait_for_resource("ex.com/a", count=2)
        await kubelet.allocate("ex.com/a", ["d0"])
        (name,) = spec_files(cdi_dir)
        rebuilt = {"d0": info(cdi_spec=spec("d0", "V=1")), "d1": info(state="Unhealthy")}
        scanner.trees.put_nowait(tree_of({"a": rebuilt}))
        await kubelet.wait_for(lambda: kubelet.resources["ex.com/a"].unhealthy == {"d1"})
        assert await collect_twice(manager) == []
        scanner.trees.put_nowait(tree_of({"a": {"d0": info(), "d1": info()}}))
        await kubelet.wait_for(lambda: kubelet.resources["ex.com/a"].healthy == {"d0", "d1"})
        assert await collect_twice(manager) == [cdi_dir / name]

    async def test_specs_survive_a_clean_stop_and_are_adopted(
        self, kubelet: FakeKubelet, short_dir: Path
    ) -> None:
        """A stopped host leaves its specs; the next one adopts them without rewriting."""
        cdi_dir = short_dir / "cdi"
        tree = tree_of({"a": {"d0": info(cdi_spec=spec("d0", "V=1"))}})
        first = Manager("ex.com", QueueScanner(tree), plugin_dir=short_dir, cdi_dir=cdi_dir)
        task = asyncio.create_task(first.serve())
        await kubelet.wait_for_resource("ex.com/a", count=1)
        await kubelet.allocate("ex.com/a", ["d0"])
        (name,) = spec_files(cdi_dir)
        inode = (cdi_dir / name).stat().st_ino
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert (cdi_dir / name).stat().st_ino == inode

        second = Manager(
            "ex.com",
            QueueScanner(tree),
            plugin_dir=short_dir,
            cdi_dir=cdi_dir,
            cdi_in_use=InUseStub(),
        )
        task = asyncio.create_task(second.serve())
        try:
            await kubelet.wait_for_resource("ex.com/a", count=1, healthy=1)
            await kubelet.allocate("ex.com/a", ["d0"])
            assert await collect_twice(second) == []
            assert (cdi_dir / name).stat().st_ino == inode
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def test_leftovers_of_a_killed_host_are_collected(
        self, kubelet: FakeKubelet, serve: ServeFn, short_dir: Path
    ) -> None:
        """Ledger files of devices that are gone go once unused; other files never do."""
        cdi_dir = short_dir / "cdi"
        writer = CdiSpecWriter(cdi_dir, "ex.com")
        gone = spec("old", "V=1")
        writer.write(gone)
        writer.ledger_add(
            {
                spec_file_name(gone): LedgerEntry(
                    "example.com/dev=old", frozenset({("ex.com/a", "old")})
                )
            }
        )
        foreign = cdi_dir / "other-vendor.json"
        foreign.write_text("{}")
        scanner = QueueScanner(tree_of({"a": {"d0": info(cdi_spec=spec("d0", "V=1"))}}))
        manager = await serve("ex.com", scanner, cdi_dir=cdi_dir, cdi_in_use=InUseStub())
        await kubelet.wait_for_resource("ex.com/a", count=1)
        await kubelet.allocate("ex.com/a", ["d0"])
        assert await collect_twice(manager) == [cdi_dir / spec_file_name(gone)]
        assert sorted(spec_files(cdi_dir)) == ["example.com-dev-d0.json", "other-vendor.json"]

    async def test_unwritable_spec_is_retried_and_its_device_unhealthy_meanwhile(
        self, kubelet: FakeKubelet, serve: ServeFn, short_dir: Path
    ) -> None:
        """A spec that cannot be written: device Unhealthy, Allocate FAILED_PRECONDITION
        naming the file; written later once possible, and the device Healthy again."""
        cdi_dir = short_dir / "cdi"
        cdi_dir.write_text("a file where the directory should be")
        scanner = QueueScanner(
            tree_of({"a": {"d0": info(cdi_spec=spec("d0", "V=1")), "d1": info()}})
        )
        await serve("ex.com", scanner, cdi_dir=cdi_dir, cdi_retry_backoff=(0.05, 0.2))
        await kubelet.wait_for_resource("ex.com/a", count=2, healthy=1)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await kubelet.allocate("ex.com/a", ["d0"])
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "example.com-dev-d0.json" in str(err.value.details())
        cdi_dir.unlink()
        await kubelet.wait_for_resource("ex.com/a", count=2, healthy=2)
        assert list(spec_files(cdi_dir)) == ["example.com-dev-d0.json"]
        await kubelet.allocate("ex.com/a", ["d0"])

    async def test_spec_removed_from_outside_is_written_again(
        self, kubelet: FakeKubelet, serve: ServeFn, short_dir: Path
    ) -> None:
        """Allocate and the periodic check both put back a spec someone removed."""
        cdi_dir = short_dir / "cdi"
        scanner = QueueScanner(tree_of({"a": {"d0": info(cdi_spec=spec("d0", "V=1"))}}))
        await serve("ex.com", scanner, cdi_dir=cdi_dir, cdi_check_interval=0.05)
        await kubelet.wait_for_resource("ex.com/a", count=1)
        await kubelet.allocate("ex.com/a", ["d0"])
        path = cdi_dir / "example.com-dev-d0.json"
        path.unlink()
        await kubelet.allocate("ex.com/a", ["d0"])
        assert path.exists()  # Allocate answered only once it was back
        path.write_text("{}")
        await kubelet.wait_for(lambda: path.read_text() != "{}")
        assert spec_files(cdi_dir)[path.name]["kind"] == "example.com/dev"
