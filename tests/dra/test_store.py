"""ClaimStore: a claim's CDI specs are validated, once per distinct set of edits."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import pytest

import host.deviceplugin._cdi as cdi
from host.deviceplugin._cdi import (
    CdiSpecWriter,
    spec_file_bytes,
    spec_file_name,
    validate_cdi_spec,
)
from host.deviceplugin._cdi_spec import is_cdi_device_name
from host.dra import ClaimRef, PreparedClaim, PreparedDevice
from host.dra._checkpoint import ClaimCheckpoint
from host.dra._prepare import claim_cdi_spec
from host.dra._store import ClaimStore
from tests.dra.helpers import DRIVER, NODE, Dirs, cdi_files

EDITS = {"deviceNodes": [{"path": "/dev/dri/card0", "hostPath": "/dev/dri/card0"}]}


def store(dirs: Dirs) -> ClaimStore:
    return ClaimStore(
        DRIVER,
        ClaimCheckpoint(dirs.plugins / DRIVER / "checkpoint.json", DRIVER),
        CdiSpecWriter(dirs.cdi),
    )


def claim(uid: str, edits: Mapping[str, Any] = EDITS) -> PreparedClaim:
    spec = claim_cdi_spec(DRIVER, f"claim-{uid}-i915-card0", edits)
    device = PreparedDevice(("gpu",), NODE, "i915-card0", (f"{DRIVER}/dra=claim-{uid}-i915-card0",))
    return PreparedClaim(ClaimRef("default", f"c-{uid}", uid), (device,), (spec,))


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> list[Mapping[str, Any]]:
    """The specs the CDI writer validated."""
    seen: list[Mapping[str, Any]] = []

    def counting(spec: Mapping[str, Any]) -> Mapping[str, Any]:
        seen.append(spec)
        return validate_cdi_spec(spec)

    monkeypatch.setattr(cdi, "validate_cdi_spec", counting)
    return seen


class TestClaimSpecValidation:
    def test_same_edits_validated_once(
        self, dirs: Dirs, validations: list[Mapping[str, Any]]
    ) -> None:
        """The next claim with the same edits is written as validation would write it."""
        claims = store(dirs)
        first, second = claim("uid-1"), claim("uid-2")
        claims.add(first)
        claims.add(second)
        assert validations == [first.cdi_specs[0]]
        (spec,) = second.cdi_specs
        path = dirs.cdi / spec_file_name(spec)
        assert path.read_bytes() == spec_file_bytes(validate_cdi_spec(spec))
        assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)
        assert [p for p in os.listdir(dirs.cdi) if p.endswith(".tmp")] == []

    def test_other_edits_validated(self, dirs: Dirs, validations: list[Mapping[str, Any]]) -> None:
        """Edits not seen before are validated: an invalid one fails the claim, no file left."""
        claims = store(dirs)
        claims.add(claim("uid-1"))
        bad = claim("uid-2", {"deviceNodes": [{"path": "/dev/x", "permissions": "rwx"}]})
        with pytest.raises(ValueError, match="permissions"):
            claims.add(bad)
        assert len(validations) == 2
        assert claims.get("uid-2") is None
        assert len(cdi_files(dirs.cdi)) == 1

    def test_invalid_name_with_known_edits_refused(
        self, dirs: Dirs, validations: list[Mapping[str, Any]]
    ) -> None:
        """Known edits do not excuse a device name CDI refuses (a UID of odd characters)."""
        claims = store(dirs)
        claims.add(claim("uid-1"))
        with pytest.raises(ValueError, match="device name"):
            claims.add(claim("uid 2!"))
        assert len(validations) == 2
        assert claims.get("uid 2!") is None

    def test_device_names(self) -> None:
        """A CDI device name starts and ends with a letter or digit."""
        assert is_cdi_device_name("claim-uid-1-i915-card0")
        assert is_cdi_device_name("0:a_b.c")
        assert not is_cdi_device_name("claim uid")
        assert not is_cdi_device_name("-a")
        assert not is_cdi_device_name("")
        assert not is_cdi_device_name(None)

    def test_edits_remembered_only_from_the_drivers_shape(
        self, dirs: Dirs, validations: list[Mapping[str, Any]]
    ) -> None:
        """Edits found valid in a spec of another version still get checked in ours."""
        claims = store(dirs)
        rdt = {"intelRdt": {"closID": "gold"}}  # needs cdiVersion 0.7.0
        newer = claim("uid-1", rdt)
        spec = {**newer.cdi_specs[0], "cdiVersion": "0.7.0"}
        claims.add(PreparedClaim(newer.ref, newer.devices, (spec,)))
        with pytest.raises(ValueError, match="too low"):
            claims.add(claim("uid-2", rdt))
        assert len(validations) == 2
