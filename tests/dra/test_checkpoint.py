"""ClaimCheckpoint: round trip, and every way a file can be unusable."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from host.dra._checkpoint import CheckpointError, ClaimCheckpoint
from host.dra._prepare import ClaimRef, PreparedClaim, PreparedDevice

CLAIM = PreparedClaim(
    ClaimRef("ns", "c1", "uid-1"),
    (PreparedDevice(("gpu",), "node-a", "i915-card0", ("example.com/dra=x",), "share-1"),),
    ({"cdiVersion": "0.5.0", "kind": "example.com/dra", "devices": []},),
)


@pytest.fixture
def checkpoint(tmp_path: Path) -> ClaimCheckpoint:
    return ClaimCheckpoint(tmp_path / "d" / "checkpoint.json", "gpu.example.com")


class TestRoundTrip:
    def test_save_and_load(self, checkpoint: ClaimCheckpoint) -> None:
        """What is saved loads back equal, with version and checksum on disk."""
        checkpoint.save({"uid-1": CLAIM})
        assert checkpoint.load() == {"uid-1": CLAIM}
        document = json.loads(checkpoint.path.read_text())
        assert document["version"] == 2
        canonical = json.dumps(document["data"], sort_keys=True, separators=(",", ":"))
        assert document["checksum"] == hashlib.sha256(canonical.encode()).hexdigest()
        assert checkpoint.path.stat().st_mode & 0o777 == 0o600
        assert [p.name for p in checkpoint.path.parent.iterdir()] == ["checkpoint.json"]

    def test_many_claims_sorted(self, checkpoint: ClaimCheckpoint) -> None:
        """Several claims, saved in any order, load back with a valid checksum."""
        claims = {
            f"uid-{i}": PreparedClaim(ClaimRef("ns", f"c{i}", f"uid-{i}"), CLAIM.devices)
            for i in (3, 1, 2, 10)
        }
        checkpoint.save(claims)
        assert checkpoint.load() == claims

    def test_absent_is_empty(self, checkpoint: ClaimCheckpoint) -> None:
        """No file means no prepared claims."""
        assert checkpoint.load() == {}


class TestUnusable:
    def _write(self, checkpoint: ClaimCheckpoint, text: str) -> None:
        checkpoint.path.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.path.write_text(text)

    @pytest.mark.parametrize(
        ("edit", "message"),
        [
            (lambda d: d.update(version=3), "has version 3"),
            (lambda d: d["data"]["claims"]["uid-1"].update(name="other"), "checksum mismatch"),
            (lambda d: d.update(checksum="0" * 64), "checksum mismatch"),
        ],
    )
    def test_edited(self, checkpoint: ClaimCheckpoint, edit: object, message: str) -> None:
        """A changed version, body or checksum is refused with the file's name."""
        checkpoint.save({"uid-1": CLAIM})
        document = json.loads(checkpoint.path.read_text())
        edit(document)  # type: ignore[operator]
        self._write(checkpoint, json.dumps(document))
        with pytest.raises(CheckpointError, match=message) as info:
            checkpoint.load()
        assert str(checkpoint.path) in str(info.value)

    def test_not_json(self, checkpoint: ClaimCheckpoint) -> None:
        """A torn or foreign file is refused."""
        self._write(checkpoint, '{"version": 1, "da')
        with pytest.raises(CheckpointError, match="is not JSON"):
            checkpoint.load()

    def test_other_driver(self, checkpoint: ClaimCheckpoint) -> None:
        """Another driver's checkpoint is not taken for ours."""
        ClaimCheckpoint(checkpoint.path, "other.example.com").save({})
        with pytest.raises(CheckpointError, match=r"belongs to driver 'other\.example\.com'"):
            checkpoint.load()

    def test_set_aside(self, checkpoint: ClaimCheckpoint) -> None:
        """An unusable file is renamed aside, keeping its content."""
        self._write(checkpoint, "garbage")
        aside = checkpoint.set_aside()
        assert aside is not None
        assert aside.read_text() == "garbage"
        assert not checkpoint.path.exists()


def _claim(index: int) -> PreparedClaim:
    return PreparedClaim(ClaimRef("ns", f"c{index}", f"uid-{index}"), CLAIM.devices)


class TestChanges:
    def test_appended_changes_load_back(self, checkpoint: ClaimCheckpoint) -> None:
        """Changes appended after a snapshot are replayed in order, one line each."""
        checkpoint.save({"uid-1": CLAIM})
        checkpoint.append("uid-2", _claim(2))
        checkpoint.append("uid-1", None)
        checkpoint.append("uid-3", _claim(3))
        lines = checkpoint.path.read_bytes().splitlines()
        assert len(lines) == 4
        fresh = ClaimCheckpoint(checkpoint.path, checkpoint.driver)
        assert fresh.load() == {"uid-2": _claim(2), "uid-3": _claim(3)}

    def test_torn_line_dropped_and_cut_off(
        self, checkpoint: ClaimCheckpoint, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A line cut short by a crash is dropped, and the next append replaces it."""
        checkpoint.save({})
        checkpoint.append("uid-1", CLAIM)
        whole = checkpoint.path.read_bytes()
        checkpoint.append("uid-2", _claim(2))
        torn = checkpoint.path.read_bytes()[: len(whole) + 40]
        checkpoint.path.write_bytes(torn)
        fresh = ClaimCheckpoint(checkpoint.path, checkpoint.driver)
        assert fresh.load() == {"uid-1": CLAIM}
        assert "dropping 40 bytes of a torn or corrupt change" in caplog.text
        fresh.append("uid-3", _claim(3))
        assert checkpoint.path.read_bytes().startswith(whole)
        assert ClaimCheckpoint(checkpoint.path, checkpoint.driver).load() == {
            "uid-1": CLAIM,
            "uid-3": _claim(3),
        }

    def test_line_with_wrong_sum_dropped(self, checkpoint: ClaimCheckpoint) -> None:
        """A change line whose content does not match its sum counts as torn."""
        checkpoint.save({})
        checkpoint.append("uid-1", CLAIM)
        text = checkpoint.path.read_text()
        checkpoint.path.write_text(text.replace('"name":"c1"', '"name":"cX"'))
        assert ClaimCheckpoint(checkpoint.path, checkpoint.driver).load() == {}

    def test_read_changes_of_another_writer(self, checkpoint: ClaimCheckpoint) -> None:
        """A second reader sees only what was appended since; a new snapshot needs a load."""
        checkpoint.save({"uid-1": CLAIM})
        reader = ClaimCheckpoint(checkpoint.path, checkpoint.driver)
        assert reader.load() == {"uid-1": CLAIM}
        assert reader.read_changes() == []
        checkpoint.append("uid-2", _claim(2))
        checkpoint.append("uid-1", None)
        changes = reader.read_changes()
        assert changes is not None
        assert [(c.uid, c.claim) for c in changes] == [("uid-2", _claim(2)), ("uid-1", None)]
        assert reader.read_changes() == []
        reader.append("uid-4", _claim(4))  # appends after what it read
        checkpoint.save({"uid-9": _claim(9)})
        assert reader.read_changes() is None
        assert reader.load() == {"uid-9": _claim(9)}

    def test_snapshot_due_when_changes_outgrow_it(self, tmp_path: Path) -> None:
        """Past the threshold the checkpoint asks for a new snapshot, which resets it."""
        checkpoint = ClaimCheckpoint(tmp_path / "checkpoint.json", "d.example.com", compact_after=1)
        checkpoint.save({})
        assert not checkpoint.wants_snapshot
        for index in range(3):
            checkpoint.append(f"uid-{index}", _claim(index))
        assert checkpoint.wants_snapshot
        checkpoint.save(ClaimCheckpoint(checkpoint.path, checkpoint.driver).load())
        assert not checkpoint.wants_snapshot
        assert len(checkpoint.path.read_bytes().splitlines()) == 1

    def test_version_1_file_reads(self, checkpoint: ClaimCheckpoint) -> None:
        """A file of the first format (the snapshot alone) loads."""
        data = {"claims": {"uid-1": CLAIM.to_json()}, "driver": checkpoint.driver}
        checksum = hashlib.sha256(
            json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()
        checkpoint.path.parent.mkdir(parents=True)
        checkpoint.path.write_text(
            json.dumps({"checksum": checksum, "data": data, "version": 1}) + "\n"
        )
        assert checkpoint.load() == {"uid-1": CLAIM}

    def test_leftover_temporary_files_removed(self, checkpoint: ClaimCheckpoint) -> None:
        """A snapshot a crashed writer never renamed is cleaned up."""
        checkpoint.save({})
        leftover = checkpoint.path.with_name(".checkpoint.json.abc.tmp")
        leftover.write_text("half")
        checkpoint.remove_leftovers()
        assert not leftover.exists()
        assert checkpoint.path.exists()
