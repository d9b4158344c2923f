"""CDI spec validation: what the reference Go library accepts and refuses, as a table."""

from __future__ import annotations

import copy
from types import MappingProxyType
from typing import Any

import pytest

from host.deviceplugin._cdi_spec import minimum_cdi_version, validate_cdi_spec

BASE: dict[str, Any] = {
    "cdiVersion": "1.1.0",
    "kind": "vendor.com/gpu",
    "devices": [{"name": "card0", "containerEdits": {"deviceNodes": [{"path": "/dev/dri/card0"}]}}],
}


def spec(*changes: tuple[str, Any], version: str | None = None) -> dict[str, Any]:
    """BASE with ``(dotted.path, value)`` changes; ``devices.0`` indexes lists."""
    result = copy.deepcopy(BASE)
    if version is not None:
        result["cdiVersion"] = version
    for path, value in changes:
        *parents, last = path.split(".")
        target: Any = result
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target.setdefault(part, {})
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    return result


EDITS = "devices.0.containerEdits"
NODE = f"{EDITS}.deviceNodes.0"

ACCEPTED = {
    "base": spec(),
    "v prefix on the version": spec(version="v1.1.0"),
    "lowest version for plain fields": spec(version="0.3.0"),
    "permissions none": spec((f"{NODE}.permissions", "none")),
    "permissions rwm in any order": spec((f"{NODE}.permissions", "mwr")),
    "hostPath at 0.5.0": spec((f"{NODE}.hostPath", "/dev/dri/card1"), version="0.5.0"),
    "digit-first device name at 0.5.0": spec(("devices.0.name", "0000:00:02.0"), version="0.5.0"),
    "mount type at 0.4.0": spec(
        (f"{EDITS}.mounts", [{"hostPath": "/a", "containerPath": "/b", "type": "bind"}]),
        version="0.4.0",
    ),
    "annotations at 0.6.0": spec(("annotations", {"example.com/a": "1"}), version="0.6.0"),
    "dot in class at 0.6.0": spec(("kind", "vendor.com/gpu.v2"), version="0.6.0"),
    "additionalGids at 0.7.0": spec((f"{EDITS}.additionalGids", [44, 0]), version="0.7.0"),
    "intelRdt closID at 0.7.0": spec((f"{EDITS}.intelRdt", {"closID": "/"}), version="0.7.0"),
    "netDevices at 1.1.0": spec(
        (f"{EDITS}.netDevices", [{"hostInterfaceName": "eth1", "name": "net1"}])
    ),
    "hook with env": spec(
        (f"{EDITS}.hooks", [{"hookName": "createContainer", "path": "/bin/h", "env": ["A=1"]}])
    ),
    "nulls are absent fields": spec((f"{NODE}.type", None), ("containerEdits", None)),
    "device node ids and mode": spec(
        (f"{NODE}.uid", 0), (f"{NODE}.gid", 4294967295), (f"{NODE}.fileMode", 0o666)
    ),
    "negative major (int64)": spec((f"{NODE}.major", -1)),
    "only additionalGids as edit": spec((EDITS, {"additionalGids": [1]})),
    "only intelRdt as edit": spec((EDITS, {"intelRdt": {}})),
}

REFUSED = {
    "unknown version": (spec(version="0.9.0"), r"cdiVersion must be a released.*'0\.9\.0'"),
    "short version": (spec(version="0.5"), r"cdiVersion must be a released.*'0\.5'"),
    "version not a string": (spec(version=5), "cdiVersion.*got 5"),  # type: ignore[arg-type]
    "no version": ({k: v for k, v in BASE.items() if k != "cdiVersion"}, "cdiVersion.*None"),
    "hostPath needs 0.5.0": (
        spec((f"{NODE}.hostPath", "/dev/x"), version="0.4.0"),
        r"cdiVersion '0\.4\.0' is too low.*'0\.5\.0'",
    ),
    "digit-first name needs 0.5.0": (
        spec(("devices.0.name", "0abc"), version="0.4.0"),
        r"too low.*'0\.5\.0'",
    ),
    "mount type needs 0.4.0": (
        spec(
            (f"{EDITS}.mounts", [{"hostPath": "/a", "containerPath": "/b", "type": "bind"}]),
            version="0.3.0",
        ),
        r"too low.*'0\.4\.0'",
    ),
    "annotations need 0.6.0": (
        spec(("devices.0.annotations", {"a": "b"}), version="0.5.0"),
        r"too low.*'0\.6\.0'",
    ),
    "dot in class needs 0.6.0": (
        spec(("kind", "vendor.com/gpu.v2"), version="v0.5.0"),
        r"'v0\.5\.0' is too low.*'0\.6\.0'",
    ),
    "additionalGids need 0.7.0": (
        spec((f"{EDITS}.additionalGids", [1]), version="0.6.0"),
        r"too low.*'0\.7\.0'",
    ),
    "intelRdt needs 0.7.0": (
        spec(("containerEdits", {"intelRdt": {"closID": "x"}}), version="0.6.0"),
        r"too low.*'0\.7\.0'",
    ),
    "schemata need 1.1.0": (
        spec((f"{EDITS}.intelRdt", {"schemata": []}), version="1.0.0"),
        r"too low.*'1\.1\.0'",
    ),
    "netDevices need 1.1.0": (
        spec(
            (f"{EDITS}.netDevices", [{"hostInterfaceName": "eth1", "name": "n"}]), version="0.8.0"
        ),
        r"too low.*'1\.1\.0'",
    ),
    "unknown top-level field": (spec(("vendor", "x")), "CDI spec: vendor: unknown field"),
    "unknown device field": (spec(("devices.0.id", "x")), r"devices\[0\]\.id: unknown field"),
    "unknown edit field": (
        spec((f"{EDITS}.devices", [])),
        r"containerEdits\.devices: unknown field",
    ),
    "unknown device node field": (
        spec((f"{NODE}.mode", "rw")),
        r"deviceNodes\[0\]\.mode: unknown field",
    ),
    "field in other case": (spec(("Kind", "a/b")), "Kind: unknown field"),
    "negative uid": (spec((f"{NODE}.uid", -1)), r"deviceNodes\[0\]\.uid must be an integer"),
    "gid over uint32": (spec((f"{NODE}.gid", 2**32)), r"deviceNodes\[0\]\.gid must be an integer"),
    "negative additional gid": (
        spec((f"{EDITS}.additionalGids", [-5])),
        r"additionalGids\[0\] must be an integer from 0",
    ),
    "fractional major": (spec((f"{NODE}.major", 1.0)), r"deviceNodes\[0\]\.major must be an int"),
    "boolean minor": (spec((f"{NODE}.minor", True)), r"deviceNodes\[0\]\.minor must be an int"),
    "negative fileMode": (spec((f"{NODE}.fileMode", -1)), r"fileMode must be an integer"),
    "path not a string": (spec((f"{NODE}.path", 3)), r"deviceNodes\[0\]\.path must be a string"),
    "empty path": (spec((f"{NODE}.path", "")), r"deviceNodes\[0\]\.path must be a non-empty"),
    "bad node type": (spec((f"{NODE}.type", "x")), r"deviceNodes\[0\]\.type.*got 'x'"),
    "bad permissions": (
        spec((f"{NODE}.permissions", "rwx")),
        r"deviceNodes\[0\]\.permissions.*'rwx'",
    ),
    "env without =": (spec((f"{EDITS}.env", ["A=1", "FOO"])), r"env\[1\].*'FOO'"),
    "env starting with =": (spec((f"{EDITS}.env", ["=x"])), r"env\[0\].*'=x'"),
    "env not a list": (spec((f"{EDITS}.env", "A=1")), r"containerEdits\.env must be a list"),
    "null list entry": (spec((f"{EDITS}.deviceNodes", [None])), r"deviceNodes\[0\] must not be"),
    "hook env without =": (
        spec((f"{EDITS}.hooks", [{"hookName": "prestart", "path": "/h", "env": ["X"]}])),
        r"hooks\[0\]\.env\[0\].*'X'",
    ),
    "unknown hook name": (
        spec((f"{EDITS}.hooks", [{"hookName": "later", "path": "/h"}])),
        r"hooks\[0\]\.hookName.*'later'",
    ),
    "hook without path": (
        spec((f"{EDITS}.hooks", [{"hookName": "poststop"}])),
        r"hooks\[0\]\.path: hook 'poststop'",
    ),
    "negative hook timeout is an int": (
        spec((f"{EDITS}.hooks", [{"hookName": "prestart", "path": "/h", "timeout": "5"}])),
        r"hooks\[0\]\.timeout must be an integer",
    ),
    "mount without containerPath": (
        spec((f"{EDITS}.mounts", [{"hostPath": "/a"}])),
        r"mounts\[0\]\.containerPath must be a non-empty",
    ),
    "bad closID": (
        spec((f"{EDITS}.intelRdt", {"closID": "a/b"})),
        r"intelRdt\.closID.*'a/b'",
    ),
    "net device without name": (
        spec((f"{EDITS}.netDevices", [{"hostInterfaceName": "eth0"}])),
        r"netDevices\[0\] needs a non-empty",
    ),
    "duplicate net device": (
        spec(
            (
                f"{EDITS}.netDevices",
                [
                    {"hostInterfaceName": "eth0", "name": "a"},
                    {"hostInterfaceName": "eth0", "name": "b"},
                ],
            )
        ),
        r"netDevices\[1\]: duplicate",
    ),
    "no edits": (spec((EDITS, {})), r"devices\[0\]\.containerEdits must hold at least one edit"),
    "empty edits only": (
        spec((EDITS, {"env": [], "mounts": None})),
        "must hold at least one edit",
    ),
    "edits not a mapping": (spec((EDITS, [])), r"containerEdits must be a mapping"),
    "annotation key invalid": (
        spec(("annotations", {"-bad": "x"})),
        r"annotations: key '-bad' is invalid",
    ),
    "annotation prefix invalid": (
        spec(("devices.0.annotations", {"Bad_Prefix/a": "x"})),
        r"devices\[0\]\.annotations: key 'Bad_Prefix/a'.*prefix",
    ),
    "annotation value not a string": (
        spec(("annotations", {"a": 1})),
        r"annotations must map names to strings",
    ),
    "annotations too big": (
        spec(("annotations", {"a": "x" * (256 * 1024)})),
        r"annotations: 262145 bytes",
    ),
    "kind without class": (spec(("kind", "gpu")), "kind must be '<vendor>/<class>'.*'gpu'"),
    "kind with two slashes": (spec(("kind", "a/b/c")), "kind.*'a/b/c'"),
    "empty vendor": (spec(("kind", "/gpu")), "vendor must be a non-empty string"),
    "vendor starting with a digit": (spec(("kind", "1v/gpu")), "vendor '1v' is invalid"),
    "class ending with -": (spec(("kind", "v/gpu-")), "class 'gpu-' is invalid"),
    "class with :": (spec(("kind", "v/g:pu")), "class 'g:pu' is invalid"),
    "vendor too long": (spec(("kind", "v" * 254 + "/gpu")), "254 characters long"),
    "class too long": (spec(("kind", "v/" + "c" * 64)), "64 characters long"),
    "device name with /": (spec(("devices.0.name", "card/0")), r"devices\[0\]\.name.*'card/0'"),
    "device name with =": (spec(("devices.0.name", "card=0")), "device name 'card=0' is invalid"),
    "device name ending with -": (spec(("devices.0.name", "c-")), "device name 'c-' is invalid"),
    "empty device name": (spec(("devices.0.name", "")), "device name must be a non-empty"),
    "no devices": (spec(("devices", [])), "exactly one device, got 0"),
    "two devices": (spec(("devices", BASE["devices"] * 2)), "exactly one device, got 2"),
    "devices not a list": (spec(("devices", "card0")), "devices must be a list"),
    "device not a mapping": (spec(("devices", ["card0"])), r"devices\[0\] must be a mapping"),
    "top-level edits env": (
        spec(("containerEdits", {"env": ["BAD"]})),
        r"spec 'vendor.com/gpu': containerEdits\.env\[0\].*'BAD'",
    ),
}


class TestTable:
    @pytest.mark.parametrize("case", list(ACCEPTED), ids=list(ACCEPTED))
    def test_accepted(self, case: str) -> None:
        """A spec the Go library accepts is accepted, unchanged."""
        assert validate_cdi_spec(ACCEPTED[case]) == ACCEPTED[case]

    @pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
    def test_refused(self, case: str) -> None:
        """A spec the Go library refuses is a ValueError naming the field."""
        value, message = REFUSED[case]
        with pytest.raises(ValueError, match=message):
            validate_cdi_spec(value)


class TestMinimumVersion:
    @pytest.mark.parametrize(
        ("case", "expected"),
        [
            ("base", "0.3.0"),
            ("permissions none", "0.3.0"),
            ("hostPath at 0.5.0", "0.5.0"),
            ("digit-first device name at 0.5.0", "0.5.0"),
            ("mount type at 0.4.0", "0.4.0"),
            ("annotations at 0.6.0", "0.6.0"),
            ("dot in class at 0.6.0", "0.6.0"),
            ("additionalGids at 0.7.0", "0.7.0"),
            ("intelRdt closID at 0.7.0", "0.7.0"),
            ("netDevices at 1.1.0", "1.1.0"),
        ],
    )
    def test_minimum(self, case: str, expected: str) -> None:
        """The lowest version follows the fields used (specs-go/version.go)."""
        assert minimum_cdi_version(ACCEPTED[case]) == expected


class TestCopy:
    def test_returns_a_plain_deep_copy(self) -> None:
        """The result equals the input but shares nothing with it; tuples become lists."""
        source = spec((f"{EDITS}.env", ("A=1",)))
        result = validate_cdi_spec(MappingProxyType(source))
        assert type(result) is dict
        assert result["devices"][0]["containerEdits"]["env"] == ["A=1"]
        source["devices"][0]["name"] = "changed"
        assert result["devices"][0]["name"] == "card0"

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            (object(), "CDI spec.extra is not JSON-serialisable: object"),
            ({1, 2}, "not JSON-serialisable: set"),
            (float("nan"), "not JSON-serialisable: nan"),
            ({1: "a"}, "key 1 is not a string"),
            ([b"x"], r"extra\[0\] is not JSON-serialisable: bytes"),
        ],
    )
    def test_not_json(self, value: Any, message: str) -> None:
        """Values JSON cannot hold faithfully are refused."""
        with pytest.raises(ValueError, match=message):
            validate_cdi_spec(spec(("extra", value)))

    def test_not_a_mapping(self) -> None:
        """A spec that is not a mapping is refused."""
        with pytest.raises(ValueError, match="CDI spec must be a mapping, got list"):
            validate_cdi_spec([])  # type: ignore[arg-type]
