"""CDI spec names and the spec-file writer (real files in tmp_path)."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from host.deviceplugin import DeviceInfo
from host.deviceplugin._cdi import (
    CdiSpecWriter,
    LedgerEntry,
    qualified_name,
    spec_file_name,
)


def make_spec(
    name: str = "card0", kind: Any = "intel.cdi.k8s.io/gpu", **extra: Any
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "cdiVersion": "0.3.0",
        "kind": kind,
        "devices": [
            {
                "name": name,
                "containerEdits": {
                    "deviceNodes": [{"path": f"/dev/dri/{name}", "permissions": "rw"}]
                },
            }
        ],
    }
    spec.update(extra)
    return spec


class TestDeviceInfo:
    def test_bad_spec_fails_at_construction(self) -> None:
        """DeviceInfo(cdi_spec=bad) raises ValueError when the scanner builds it."""
        with pytest.raises(ValueError, match="exactly one device, got 0"):
            DeviceInfo(cdi_spec=make_spec(devices=[]))

    def test_good_spec_is_copied(self) -> None:
        """DeviceInfo keeps a validated copy; equal specs make equal DeviceInfos."""
        spec = make_spec()
        info = DeviceInfo(cdi_spec=spec)
        spec["kind"] = "other.com/x"
        assert info.cdi_spec is not None
        assert info.cdi_spec["kind"] == "intel.cdi.k8s.io/gpu"
        assert info == DeviceInfo(cdi_spec=make_spec())


class TestNames:
    def test_qualified_name(self) -> None:
        """The qualified name is <kind>=<device name>."""
        assert qualified_name(make_spec(name="card0")) == "intel.cdi.k8s.io/gpu=card0"

    def test_file_name(self) -> None:
        """The file name is <vendor>-<class>-<name>.json, with dashes inside parts doubled."""
        assert spec_file_name(make_spec(name="card0")) == "intel.cdi.k8s.io-gpu-card0.json"
        assert spec_file_name(make_spec(name="card0-1")) == "intel.cdi.k8s.io-gpu-card0--1.json"
        assert (
            spec_file_name(make_spec(kind="a.b/c_d", name="0000:00:02.0"))
            == "a.b-c_d-0000:00:02.0.json"
        )

    def test_written_version_is_the_lowest_needed(self, tmp_path: Path) -> None:
        """The file carries the lowest cdiVersion its fields need, not the scanner's."""
        spec = make_spec(cdiVersion="v1.1.0")
        writer = CdiSpecWriter(tmp_path)
        writer.write(spec)
        path = writer.path_for(spec)
        assert json.loads(path.read_text())["cdiVersion"] == "0.3.0"
        spec["devices"][0]["containerEdits"]["deviceNodes"][0]["hostPath"] = "/dev/dri/card9"
        writer.write(spec)
        assert json.loads(path.read_text())["cdiVersion"] == "0.5.0"

    @pytest.mark.parametrize(
        ("first", "second"),
        [
            (("a-b/c", "d"), ("a/b-c", "d")),
            (("a/b", "c-d"), ("a/b-c", "d")),
            (("a/b", "c--d"), ("a/b", "c-d")),
        ],
    )
    def test_file_names_are_unique(self, first: tuple[str, str], second: tuple[str, str]) -> None:
        """Qualified names that a plain '-' join would confuse get distinct file names."""
        a = make_spec(kind=first[0], name=first[1])
        b = make_spec(kind=second[0], name=second[1])
        assert spec_file_name(a) != spec_file_name(b)

    def test_long_names_are_hashed(self) -> None:
        """Names too long for a file system are cut and made unique by a hash."""
        kind = "v" * 253 + "/" + "c" * 63
        a = spec_file_name(make_spec(kind=kind, name="n" * 300))
        b = spec_file_name(make_spec(kind=kind, name="n" * 299 + "m"))
        assert a != b
        assert len(a.encode()) <= 255
        assert "@" in a
        assert a.endswith(".json")
        assert "/" not in a


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


class TestWrite:
    def test_write_creates_a_complete_file(self, tmp_path: Path) -> None:
        """write() creates the directory (0755) and a complete 0644 JSON file, nothing else."""
        cdi_dir = tmp_path / "run" / "cdi"
        writer = CdiSpecWriter(cdi_dir)
        stamp = writer.write(make_spec())
        path = writer.path_for(make_spec())
        assert path == cdi_dir / "intel.cdi.k8s.io-gpu-card0.json"
        assert writer.stamp(path.name) == stamp
        assert json.loads(path.read_text()) == make_spec()
        assert _mode(path) == 0o644
        assert _mode(cdi_dir) == 0o755
        assert os.listdir(cdi_dir) == [path.name]

    def test_identical_content_is_not_rewritten(self, tmp_path: Path) -> None:
        """Writing the same spec again leaves the file (same inode) alone."""
        writer = CdiSpecWriter(tmp_path)
        stamp = writer.write(make_spec())
        assert writer.write(make_spec()) == stamp
        assert CdiSpecWriter(tmp_path).write(make_spec()) == stamp

    def test_changed_content_is_replaced(self, tmp_path: Path) -> None:
        """A changed spec replaces the file atomically (a new inode, no temp files left)."""
        writer = CdiSpecWriter(tmp_path)
        writer.write(make_spec())
        path = writer.path_for(make_spec())
        inode = path.stat().st_ino
        changed = make_spec()
        changed["devices"][0]["containerEdits"]["env"] = ["A=1"]
        writer.write(changed)
        assert path.stat().st_ino != inode
        assert json.loads(path.read_text()) == changed
        assert os.listdir(tmp_path) == [path.name]

    def test_wrong_mode_is_rewritten(self, tmp_path: Path) -> None:
        """Identical bytes with another mode are rewritten with 0644."""
        writer = CdiSpecWriter(tmp_path)
        writer.write(make_spec())
        path = writer.path_for(make_spec())
        path.chmod(0o600)
        writer.write(make_spec())
        assert _mode(path) == 0o644

    def test_unwritable_directory(self, tmp_path: Path) -> None:
        """A directory that cannot be created raises OSError naming the spec's path."""
        blocker = tmp_path / "cdi"
        blocker.write_text("a file where the directory should be")
        with pytest.raises(OSError, match=r"cannot write CDI spec .*cdi/intel\.cdi\.k8s\.io-gpu"):
            CdiSpecWriter(blocker).write(make_spec())

    @pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
    def test_read_only_directory(self, tmp_path: Path) -> None:
        """A read-only directory raises OSError naming the path and leaves no temp file."""
        tmp_path.chmod(0o555)
        try:
            with pytest.raises(OSError, match="cannot write CDI spec"):
                CdiSpecWriter(tmp_path).write(make_spec())
            assert os.listdir(tmp_path) == []
        finally:
            tmp_path.chmod(0o755)

    def test_non_regular_file_in_the_way(self, tmp_path: Path) -> None:
        """A directory or symlink at the spec's path is an error, and is left alone."""
        writer = CdiSpecWriter(tmp_path)
        (tmp_path / spec_file_name(make_spec())).mkdir()
        with pytest.raises(OSError, match="not a regular file"):
            writer.write(make_spec())
        target = tmp_path / "elsewhere"
        target.write_text("keep")
        (tmp_path / spec_file_name(make_spec(name="card1"))).symlink_to(target)
        with pytest.raises(OSError, match="not a regular file"):
            writer.write(make_spec(name="card1"))
        assert target.read_text() == "keep"


class TestLedger:
    def test_collect_removes_only_ledger_files(self, tmp_path: Path) -> None:
        """collect() removes files the ledger lists, drops their entries, keeps the rest."""
        writer = CdiSpecWriter(tmp_path, "ex.com")
        writer.write(make_spec(name="card0"))
        writer.write(make_spec(name="card1"))
        card0, card1 = (spec_file_name(make_spec(name=n)) for n in ("card0", "card1"))
        writer.ledger_add({card0: LedgerEntry("k=card0", frozenset({("ex.com/a", "d0")}))})
        writer.ledger_add({card0: LedgerEntry("k=card0", frozenset({("ex.com/a", "d1")}))})
        assert writer.ledger_read()[card0].devices == {("ex.com/a", "d0"), ("ex.com/a", "d1")}
        assert writer.collect([card0, card1]) == [tmp_path / card0]
        assert sorted(p.name for p in tmp_path.glob("*.json")) == [card1]
        assert writer.ledger_read() == {}

    def test_ledger_is_invisible_to_runtimes(self, tmp_path: Path) -> None:
        """The ledger sits in a subdirectory; the CDI directory holds only spec files."""
        writer = CdiSpecWriter(tmp_path, "ex.com")
        name = spec_file_name(make_spec())
        writer.write(make_spec())
        writer.ledger_add({name: LedgerEntry("k=card0", frozenset())})
        assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [name]

    def test_damaged_ledger_is_ignored(self, tmp_path: Path) -> None:
        """An unreadable ledger reads as empty (nothing gets collected)."""
        writer = CdiSpecWriter(tmp_path, "ex.com")
        writer.ledger_add({"x.json": LedgerEntry("k=x", frozenset())})
        path = writer.ledger_path()
        assert path is not None
        path.write_text("{not json")
        assert writer.ledger_read() == {}
        assert writer.collect(["x.json"]) == []


class TestRefcount:
    def test_shared_spec_lives_until_the_last_holder(self, tmp_path: Path) -> None:
        """Two holders of one spec share one file, removed with the last release."""
        writer = CdiSpecWriter(tmp_path)
        path = writer.acquire(("claim", "a"), make_spec())
        assert writer.acquire(("claim", "b"), make_spec()) == path
        assert writer.release(("claim", "a")) is False
        assert path.exists()
        assert writer.release(("claim", "b")) is True
        assert not path.exists()
        assert writer.release(("claim", "b")) is False

    def test_acquire_another_spec_releases_the_previous(self, tmp_path: Path) -> None:
        """An owner switching specs lets go of the old one."""
        writer = CdiSpecWriter(tmp_path)
        old = writer.acquire("a", make_spec(name="card0"))
        new = writer.acquire("a", make_spec(name="card1"))
        assert not old.exists()
        assert new.exists()

    def test_never_removes_a_non_regular_file(self, tmp_path: Path) -> None:
        """If the file was replaced by a directory, release leaves it."""
        writer = CdiSpecWriter(tmp_path)
        path = writer.acquire("a", make_spec())
        path.unlink()
        path.mkdir()
        assert writer.release("a") is False
        assert path.is_dir()


class TestFileLocks:
    def test_table_empties_when_nobody_holds(self, tmp_path: Path) -> None:
        """Writing and removing many files leaves no lock behind."""
        writer = CdiSpecWriter(tmp_path)
        for index in range(50):
            writer.acquire(("claim", index), make_spec(name=f"card{index}"))
        for index in range(50):
            assert writer.release(("claim", index)) is True
        assert writer._file_locks == {}

    def test_one_file_excludes_another_waiter(self, tmp_path: Path) -> None:
        """A waiter keeps the lock alive: a newcomer after the first holder still waits."""
        writer = CdiSpecWriter(tmp_path)
        holders = [_Holder(writer, "x.json") for _ in range(3)]
        first, second, third = holders
        first.start()
        assert first.entered.wait(5)
        second.start()
        _wait_for_users(writer, "x.json", 2)
        assert not second.entered.is_set()
        first.leave.set()
        assert second.entered.wait(5)
        third.start()
        _wait_for_users(writer, "x.json", 2)
        assert not third.entered.is_set()
        second.leave.set()
        assert third.entered.wait(5)
        third.leave.set()
        for holder in holders:
            holder.join(5)
        assert writer._file_locks == {}

    def test_other_files_do_not_wait(self, tmp_path: Path) -> None:
        """A held lock of one file leaves another file's lock free."""
        writer = CdiSpecWriter(tmp_path)
        holder = _Holder(writer, "x.json")
        holder.start()
        assert holder.entered.wait(5)
        with writer.file_lock("y.json"):
            assert set(writer._file_locks) == {"x.json", "y.json"}
        holder.leave.set()
        holder.join(5)
        assert writer._file_locks == {}


class _Holder(threading.Thread):
    """Takes one file's lock, says so, and holds it until told to leave."""

    def __init__(self, writer: CdiSpecWriter, file_name: str) -> None:
        super().__init__(daemon=True)
        self.writer = writer
        self.file_name = file_name
        self.entered = threading.Event()
        self.leave = threading.Event()

    def run(self) -> None:
        with self.writer.file_lock(self.file_name):
            self.entered.set()
            self.leave.wait(5)


def _wait_for_users(writer: CdiSpecWriter, file_name: str, users: int) -> None:
    """Wait (at most 5 s) until ``users`` threads hold or wait for the lock of ``file_name``."""
    deadline = time.monotonic() + 5
    while writer._file_locks.get(file_name, (None, 0))[1] != users:
        assert time.monotonic() < deadline, f"{file_name}: never {users} users"
        time.sleep(0.001)  # a thread blocked in Lock.acquire signals nothing: poll
