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
        assert document["version"] == 1
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
            (lambda d: d.update(version=2), "has version 2"),
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
