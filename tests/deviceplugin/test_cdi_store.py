"""The CDI spec store: writes off the loop, in order, waited for by Allocate; files kept."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from host.deviceplugin._cdi import FileStamp
from host.deviceplugin._cdi_spec import spec_file_name
from host.deviceplugin._cdi_store import CdiSpecStore, CdiSpecUnavailableError, DevicesInUse


def spec(name: str, env: str = "V=1") -> dict[str, Any]:
    return {
        "cdiVersion": "0.3.0",
        "kind": "example.com/dev",
        "devices": [{"name": name, "containerEdits": {"env": [env]}}],
    }


def content(cdi_dir: Path, name: str) -> Any:
    return json.loads((cdi_dir / spec_file_name(spec(name))).read_text())


async def nothing_in_use() -> DevicesInUse:
    return DevicesInUse()


@pytest.mark.asyncio
class TestWriting:
    async def test_writes_run_on_the_worker_thread(self, tmp_path: Path) -> None:
        """hold() only records; the file is written by the store's worker thread."""
        store = CdiSpecStore(tmp_path, "ex.com")
        threads: list[str] = []
        write = store.writer.write

        def recording_write(s: Any, *, sync_dir: bool = True) -> FileStamp:
            threads.append(threading.current_thread().name)
            return write(s, sync_dir=sync_dir)

        store.writer.write = recording_write  # type: ignore[method-assign]
        for i in range(20):
            store.hold("ex.com/a", f"d{i}", spec(f"d{i}"))
        await store.close()
        assert len(threads) == 20
        assert all(name.startswith("cdi-writer") for name in threads)
        assert len(list(tmp_path.glob("*.json"))) == 20

    async def test_ensure_waits_for_the_named_file(self, tmp_path: Path) -> None:
        """Allocate's ensure() returns only once the file it names is on disk."""
        store = CdiSpecStore(tmp_path, "ex.com")
        for i in range(200):
            store.hold("ex.com/a", f"d{i}", spec(f"d{i}"))
        await store.ensure(["example.com/dev=d199", "other.com/x=unknown"])
        assert content(tmp_path, "d199")["devices"][0]["name"] == "d199"
        await store.close()

    async def test_latest_content_wins(self, tmp_path: Path) -> None:
        """Changes queued in a row end with the last one on disk."""
        store = CdiSpecStore(tmp_path, "ex.com")
        for version in range(10):
            store.hold("ex.com/a", "d0", spec("d0", f"V={version}"))
        await store.ensure(["example.com/dev=d0"])
        assert content(tmp_path, "d0")["devices"][0]["containerEdits"]["env"] == ["V=9"]
        await store.close()
        assert content(tmp_path, "d0")["devices"][0]["containerEdits"]["env"] == ["V=9"]

    async def test_unwritable_file_names_the_path(self, tmp_path: Path) -> None:
        """A file that cannot be written fails ensure() naming it, and marks its device."""
        blocker = tmp_path / "cdi"
        blocker.write_text("not a directory")
        changes: list[set[str]] = []
        store = CdiSpecStore(
            blocker, "ex.com", on_failed_change=changes.append, retry_backoff=(30.0, 60.0)
        )
        store.hold("ex.com/a", "d0", spec("d0"))
        with pytest.raises(CdiSpecUnavailableError, match=r"cdi/example\.com-dev-d0\.json"):
            await store.ensure(["example.com/dev=d0"])
        assert store.failed("ex.com/a") == {"d0"}
        assert changes == [{"ex.com/a"}]
        reason = store.failure("ex.com/a", "d0")
        assert reason is not None
        assert "example.com-dev-d0.json" in reason
        blocker.unlink()
        await store.ensure(["example.com/dev=d0"])  # Allocate tries again at once
        assert store.failed("ex.com/a") == set()
        assert changes == [{"ex.com/a"}, {"ex.com/a"}]
        await store.close()


@pytest.mark.asyncio
class TestOwnership:
    async def test_handover_keeps_the_files_of_both(self, tmp_path: Path) -> None:
        """Host A stopping never removes what host B (same bytes) still names."""
        a = CdiSpecStore(tmp_path, "ex.com", in_use=nothing_in_use)
        b = CdiSpecStore(tmp_path, "ex.com", in_use=nothing_in_use)
        a.hold("ex.com/a", "d0", spec("d0"))
        await a.ensure(["example.com/dev=d0"])
        b.hold("ex.com/a", "d0", spec("d0"))
        await b.ensure(["example.com/dev=d0"])
        a.release("ex.com/a", "d0")
        assert await a.collect_garbage() == []
        await a.close()
        await b.ensure(["example.com/dev=d0"])
        assert content(tmp_path, "d0")["kind"] == "example.com/dev"
        await b.close()

    async def test_file_collected_by_another_instance_is_written_again(
        self, tmp_path: Path
    ) -> None:
        """If another instance collects a file this one holds, Allocate puts it back."""
        holder = CdiSpecStore(tmp_path, "ex.com")
        holder.hold("ex.com/a", "d0", spec("d0"))
        await holder.ensure(["example.com/dev=d0"])
        await holder.close()  # flushes the ledger
        holder = CdiSpecStore(tmp_path, "ex.com")
        holder.hold("ex.com/a", "d0", spec("d0"))
        await holder.ensure(["example.com/dev=d0"])
        other = CdiSpecStore(tmp_path, "ex.com", in_use=nothing_in_use)
        await other.collect_garbage()
        assert len(await other.collect_garbage()) == 1
        await holder.ensure(["example.com/dev=d0"])
        assert content(tmp_path, "d0")["kind"] == "example.com/dev"
        await other.close()
        await holder.close()

    async def test_a_device_joining_a_written_file_reaches_the_ledger(self, tmp_path: Path) -> None:
        """A second device naming a file already on disk queues no write, yet its ledger
        entry is flushed; the file is collected once both devices are gone."""
        store = CdiSpecStore(tmp_path, "ex.com", in_use=nothing_in_use)
        store.hold("ex.com/a", "card0-0", spec("card0"))
        await store.ensure(["example.com/dev=card0"])
        store.hold("ex.com/a", "card0-1", spec("card0"))
        store.release("ex.com/a", "card0-0")
        store.release("ex.com/a", "card0-1")
        # The worker runs jobs in order: the ledger is read after the flush just queued.
        assert await store.collect_garbage() == []
        assert await store.collect_garbage() == [tmp_path / spec_file_name(spec("card0"))]
        await store.close()

    async def test_ledger_records_every_device_that_named_a_file(self, tmp_path: Path) -> None:
        """The ledger keeps all (resource, device) pairs, so a container holding any keeps it."""
        store = CdiSpecStore(tmp_path, "ex.com")
        store.hold("ex.com/a", "card0-0", spec("card0"))
        store.hold("ex.com/a", "card0-1", spec("card0"))
        store.release("ex.com/a", "card0-0")
        await store.close()
        (entry,) = store.writer.ledger_read().values()
        assert entry.name == "example.com/dev=card0"
        assert entry.devices == {("ex.com/a", "card0-0"), ("ex.com/a", "card0-1")}

        async def one_in_use() -> DevicesInUse:
            return DevicesInUse(device_ids=frozenset({("ex.com/a", "card0-0")}))

        later = CdiSpecStore(tmp_path, "ex.com", in_use=one_in_use)
        assert await later.collect_garbage() == []
        assert await later.collect_garbage() == []
        await later.close()
