"""CDI spec validation and names, following the reference Go library's rules.

The rules are those of ``tags.cncf.io/container-device-interface``, which container
runtimes (containerd, CRI-O, podman) use to read spec files:

* ``pkg/cdi/spec.go`` parses with ``yaml.UnmarshalStrict``: an unknown field, or a
  value of the wrong JSON type (a negative ``uid``, a fractional ``major``), makes the
  whole file unreadable;
* ``specs-go/version.go``: ``cdiVersion`` must be a released version (a leading ``v``
  is allowed) and at least the version that introduced every field the spec uses;
* ``pkg/parser``: vendor, class and device names;
* ``pkg/cdi/container-edits.go`` and ``device.go``: env entries ``NAME=value`` (hook
  env too), device node path, type and permissions (``"none"`` is accepted), mounts,
  hooks, Intel RDT ``closID``, net devices, and a device needs at least one edit;
* ``internal/validation``: annotation keys are qualified names (as Kubernetes label
  keys) and all annotations of one object hold at most 256 KiB.

A spec a runtime would refuse is refused here, when the scanner builds its
:class:`~host.deviceplugin.DeviceInfo`, instead of at container start.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "CDI_VERSIONS",
    "is_cdi_device_name",
    "minimum_cdi_version",
    "qualified_name",
    "spec_file_name",
    "validate_cdi_spec",
]

CDI_VERSIONS: Final = (
    "0.1.0",
    "0.2.0",
    "0.3.0",
    "0.4.0",
    "0.5.0",
    "0.6.0",
    "0.7.0",
    "0.8.0",
    "1.0.0",
    "1.1.0",
)
"""Released CDI spec versions, oldest first (``specs-go/version.go``)."""

_EARLIEST_NEEDED = "0.3.0"  # the Go library's vEarliest: what a spec without newer fields needs

# pkg/parser: vendor and class start with a letter, end with a letter or digit, and
# hold letters, digits, '_', '-' and '.' in between. A device name may also start with
# a digit and may hold ':'.
_VENDOR_OR_CLASS = re.compile(r"[A-Za-z]([A-Za-z0-9_.-]*[A-Za-z0-9])?")
_DEVICE_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?")
_MAX_VENDOR = 253  # the spec: the kind's prefix is a DNS subdomain
_MAX_CLASS = 63  # the spec: the kind's name segment
_HOOK_NAMES = frozenset(
    {"prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"}
)
_DEVICE_NODE_TYPES = frozenset({"", "b", "c", "u", "p"})
_MAX_FILE_NAME = 255
# Kubernetes qualified names (apimachinery validation.IsQualifiedName), as the CDI
# library applies them to annotation keys.
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_MAX_ANNOTATIONS_BYTES = 256 * 1024

_INT64 = (-(2**63), 2**63 - 1)
_UINT32 = (0, 2**32 - 1)

# The Go types of every field (specs-go/config.go). A field schema maps a JSON key to
# one of: "str", "bool", "annotations", an (min, max) integer range, a nested schema
# (an object) or a one-element list [item schema] (a JSON array).
_NODE: Final[dict[str, Any]] = {
    "path": "str",
    "hostPath": "str",
    "type": "str",
    "major": _INT64,
    "minor": _INT64,
    "fileMode": _UINT32,
    "permissions": "str",
    "uid": _UINT32,
    "gid": _UINT32,
}
_MOUNT: Final[dict[str, Any]] = {
    "hostPath": "str",
    "containerPath": "str",
    "options": ["str"],
    "type": "str",
}
_HOOK: Final[dict[str, Any]] = {
    "hookName": "str",
    "path": "str",
    "args": ["str"],
    "env": ["str"],
    "timeout": _INT64,
}
_INTEL_RDT: Final[dict[str, Any]] = {
    "closID": "str",
    "l3CacheSchema": "str",
    "memBwSchema": "str",
    "schemata": ["str"],
    "enableMonitoring": "bool",
}
_NET_DEVICE: Final[dict[str, Any]] = {"hostInterfaceName": "str", "name": "str"}
_EDITS: Final[dict[str, Any]] = {
    "env": ["str"],
    "deviceNodes": [_NODE],
    "netDevices": [_NET_DEVICE],
    "hooks": [_HOOK],
    "mounts": [_MOUNT],
    "intelRdt": _INTEL_RDT,
    "additionalGids": [_UINT32],
}
_DEVICE: Final[dict[str, Any]] = {
    "name": "str",
    "annotations": "annotations",
    "containerEdits": _EDITS,
}
_SPEC: Final[dict[str, Any]] = {
    "cdiVersion": "str",
    "kind": "str",
    "annotations": "annotations",
    "devices": [_DEVICE],
    "containerEdits": _EDITS,
}


def validate_cdi_spec(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    """Return a validated deep copy of CDI spec ``spec`` (plain dicts and lists).

    The copy is read-only by convention: it is what the device carries and what is
    written to disk, so never mutate it. Besides the library's rules (module
    docstring), the host requires:

    * exactly one entry in ``devices``: one spec file describes one device;
    * a vendor of at most 253 characters and a class of at most 63 (the spec's
      DNS-subdomain and label limits);
    * field names spelt exactly (Go would also match other capitalisations).

    ``null`` stands for an absent field, as in Go. Raises ValueError naming the field
    (``devices[0].containerEdits.deviceNodes[1].uid``) and the offending value.
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"CDI spec must be a mapping, got {type(spec).__name__}: {spec!r}")
    result: dict[str, Any] = _json_copy(spec, "CDI spec")
    _check_object(result, _SPEC, "CDI spec: ")

    kind = result.get("kind")
    vendor, class_ = _split_kind(kind)
    _check_name(vendor, _VENDOR_OR_CLASS, _MAX_VENDOR, f"kind {kind!r}: vendor", "letter")
    _check_name(class_, _VENDOR_OR_CLASS, _MAX_CLASS, f"kind {kind!r}: class", "letter")
    where = f"CDI spec {kind!r}: "
    _check_annotations(result.get("annotations"), f"{where}annotations")

    devices = result.get("devices")
    if not isinstance(devices, list) or len(devices) != 1:
        count = len(devices) if isinstance(devices, list) else "no list"
        raise ValueError(f"{where}devices must be a list with exactly one device, got {count}")
    device = devices[0]
    name = device.get("name")
    _check_name(name, _DEVICE_NAME, None, f"{where}devices[0].name: device name", "letter or digit")
    device_where = f"CDI device '{kind}={name}': "
    _check_annotations(device.get("annotations"), f"{device_where}devices[0].annotations")
    edits = device.get("containerEdits")
    if not edits or not any(value is not None and value != [] for value in edits.values()):
        raise ValueError(
            f"{device_where}devices[0].containerEdits must hold at least one edit (env, "
            f"deviceNodes, mounts, hooks, ...): runtimes refuse a device without edits, "
            f"got {edits!r}"
        )
    _check_edits(edits, f"{device_where}devices[0].containerEdits")
    if result.get("containerEdits") is not None:
        _check_edits(result["containerEdits"], f"{where}containerEdits")
    _check_version(result, where)
    return result


def is_cdi_device_name(name: object) -> bool:
    """Whether ``name`` is a valid CDI device name (the part after ``=``), as validated."""
    return isinstance(name, str) and _DEVICE_NAME.fullmatch(name) is not None


def minimum_cdi_version(spec: Mapping[str, Any]) -> str:
    """Return the lowest ``cdiVersion`` that allows every field ``spec`` uses.

    The Go library's ``MinimumRequiredVersion``: 1.1.0 for net devices or Intel RDT
    ``schemata``/``enableMonitoring``, 0.7.0 for ``intelRdt`` or ``additionalGids``,
    0.6.0 for annotations or a ``.`` in the class, 0.5.0 for a device name starting
    with a digit or a device node ``hostPath``, 0.4.0 for a mount ``type``, else
    0.3.0. ``spec`` must have the shape of a valid spec.
    """
    devices = spec.get("devices") or []
    edits = [spec.get("containerEdits") or {}] + [d.get("containerEdits") or {} for d in devices]
    if any(
        e.get("netDevices")
        or (e.get("intelRdt") or {}).get("schemata") is not None
        or (e.get("intelRdt") or {}).get("enableMonitoring")
        for e in edits
    ):
        return "1.1.0"
    if any(e.get("intelRdt") is not None or e.get("additionalGids") for e in edits):
        return "0.7.0"
    kind = spec.get("kind") or ""
    if (
        spec.get("annotations")
        or any(d.get("annotations") for d in devices)
        or "." in kind.partition("/")[2]
    ):
        return "0.6.0"
    if any((d.get("name") or "")[:1].isdigit() for d in devices) or any(
        node.get("hostPath") for e in edits for node in e.get("deviceNodes") or []
    ):
        return "0.5.0"
    if any(mount.get("type") for e in edits for mount in e.get("mounts") or []):
        return "0.4.0"
    return _EARLIEST_NEEDED


def qualified_name(spec: Mapping[str, Any]) -> str:
    """Return the fully-qualified CDI device name ``<vendor>/<class>=<device name>``.

    This is what Allocate reports as ``CDIDevice.name``. ``spec`` must be valid.
    """
    return f"{spec['kind']}={spec['devices'][0]['name']}"


def spec_file_name(spec: Mapping[str, Any]) -> str:
    """Return the file name of ``spec`` in the CDI directory: ``<vendor>-<class>-<name>.json``.

    Distinct qualified names give distinct file names: a ``-`` inside a part is
    doubled (``card0-0`` becomes ``card0--0``), and no part starts or ends with
    ``-``, so a single ``-`` is always a separator. A name too long for the file
    system is shortened and suffixed with ``@`` and a hash of the qualified name (``@``
    never occurs otherwise). ``spec`` must be valid.
    """
    vendor, class_ = spec["kind"].split("/", 1)
    parts = (vendor, class_, spec["devices"][0]["name"])
    name = "-".join(part.replace("-", "--") for part in parts) + ".json"
    if len(name.encode()) <= _MAX_FILE_NAME:
        return name
    digest = hashlib.sha256(qualified_name(spec).encode()).hexdigest()[:32]
    return f"{name[:200]}@{digest}.json"


# -- checks ---------------------------------------------------------------------------


def _check_version(spec: Mapping[str, Any], where: str) -> None:
    version = spec.get("cdiVersion")
    if not isinstance(version, str) or version.removeprefix("v") not in CDI_VERSIONS:
        raise ValueError(
            f"{where}cdiVersion must be a released CDI version ({', '.join(CDI_VERSIONS)}; "
            f"a leading 'v' is allowed), got {version!r}"
        )
    needed = minimum_cdi_version(spec)
    if CDI_VERSIONS.index(version.removeprefix("v")) < CDI_VERSIONS.index(needed):
        raise ValueError(
            f"{where}cdiVersion {version!r} is too low for the fields used: they need at "
            f"least {needed!r} (or leave the fields out)"
        )


def _check_object(value: dict[str, Any], schema: Mapping[str, Any], where: str) -> None:
    """Check ``value``'s keys and JSON types against ``schema`` (Go's strict unmarshal)."""
    for key, item in value.items():
        field = schema.get(key)
        path = f"{where}{key}"
        if field is None:
            raise ValueError(
                f"{path}: unknown field {key!r} (runtimes refuse the whole spec file; "
                f"known here: {', '.join(schema)})"
            )
        _check_value(item, field, path)


def _check_value(item: Any, field: Any, path: str) -> None:
    if item is None:
        return  # Go leaves the zero value
    if field == "str":
        if not isinstance(item, str):
            raise ValueError(f"{path} must be a string, got {item!r}")
    elif field == "bool":
        if not isinstance(item, bool):
            raise ValueError(f"{path} must be true or false, got {item!r}")
    elif field == "annotations":
        if not isinstance(item, dict) or not all(isinstance(v, str) for v in item.values()):
            raise ValueError(f"{path} must map names to strings, got {item!r}")
    elif isinstance(field, tuple):
        low, high = field
        if isinstance(item, bool) or not isinstance(item, int) or not low <= item <= high:
            raise ValueError(f"{path} must be an integer from {low} to {high}, got {item!r}")
    elif isinstance(field, list):
        if not isinstance(item, list):
            raise ValueError(f"{path} must be a list, got {item!r}")
        for index, element in enumerate(item):
            if element is None:
                raise ValueError(f"{path}[{index}] must not be null")
            _check_value(element, field[0], f"{path}[{index}]")
    elif not isinstance(item, dict):
        raise ValueError(f"{path} must be a mapping, got {item!r}")
    else:
        _check_object(item, field, f"{path}.")


def _check_edits(edits: Mapping[str, Any], where: str) -> None:
    """Apply the library's ``ContainerEdits.Validate`` (types were checked already)."""
    _check_env(edits.get("env"), f"{where}.env")
    for index, node in enumerate(edits.get("deviceNodes") or []):
        at = f"{where}.deviceNodes[{index}]"
        path = node.get("path")
        if not path:
            raise ValueError(f"{at}.path must be a non-empty device path, got {node!r}")
        if (node.get("type") or "") not in _DEVICE_NODE_TYPES:
            raise ValueError(
                f"{at}.type: device node {path!r}: type must be one of b, c, u, p, "
                f"got {node['type']!r}"
            )
        permissions = node.get("permissions") or ""
        if permissions != "none" and set(permissions) - set("rwm"):
            raise ValueError(
                f"{at}.permissions: device node {path!r}: permissions must combine 'r', "
                f"'w' and 'm' (or be 'none'), got {permissions!r}"
            )
    for index, mount in enumerate(edits.get("mounts") or []):
        for key in ("hostPath", "containerPath"):
            if not mount.get(key):
                raise ValueError(
                    f"{where}.mounts[{index}].{key} must be a non-empty path, got {mount!r}"
                )
    for index, hook in enumerate(edits.get("hooks") or []):
        at = f"{where}.hooks[{index}]"
        hook_name = hook.get("hookName")
        if hook_name not in _HOOK_NAMES:
            raise ValueError(
                f"{at}.hookName must be one of {', '.join(sorted(_HOOK_NAMES))}, got {hook_name!r}"
            )
        if not hook.get("path"):
            raise ValueError(f"{at}.path: hook {hook_name!r} needs a non-empty path")
        _check_env(hook.get("env"), f"{at}.env")
    rdt = edits.get("intelRdt")
    if rdt is not None:
        clos_id = rdt.get("closID") or ""
        if clos_id != "/" and (
            len(clos_id) >= 4096 or clos_id in (".", "..") or "/" in clos_id or "\n" in clos_id
        ):
            raise ValueError(
                f"{where}.intelRdt.closID must be '/' or a name without '/' or newlines, "
                f"not '.' or '..', under 4096 characters, got {clos_id!r}"
            )
    seen_hosts: set[str] = set()
    seen_names: set[str] = set()
    for index, net in enumerate(edits.get("netDevices") or []):
        at = f"{where}.netDevices[{index}]"
        host_name, name = net.get("hostInterfaceName") or "", net.get("name") or ""
        if not host_name or not name:
            raise ValueError(f"{at} needs a non-empty hostInterfaceName and name, got {net!r}")
        if host_name in seen_hosts or name in seen_names:
            raise ValueError(f"{at}: duplicate hostInterfaceName or name, got {net!r}")
        seen_hosts.add(host_name)
        seen_names.add(name)


def _check_env(env: list[str] | None, where: str) -> None:
    for index, entry in enumerate(env or []):
        if entry.find("=") <= 0:
            raise ValueError(f"{where}[{index}]: env entry must be 'NAME=value', got {entry!r}")


def _check_annotations(annotations: Mapping[str, str] | None, where: str) -> None:
    if not annotations:
        return
    size = 0
    for key, value in annotations.items():
        reason = _qualified_name_error(key.lower())
        if reason is not None:
            raise ValueError(f"{where}: key {key!r} is invalid: {reason}")
        size += len(key.encode()) + len(value.encode())
    if size > _MAX_ANNOTATIONS_BYTES:
        raise ValueError(
            f"{where}: {size} bytes of keys and values, over the limit of {_MAX_ANNOTATIONS_BYTES}"
        )


def _qualified_name_error(value: str) -> str | None:
    prefix, slash, name = value.rpartition("/")
    if value.count("/") > 1:
        return "a qualified name has at most one '/' (an optional DNS subdomain prefix)"
    if slash and (not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(prefix)):
        return "the prefix before '/' must be a lowercase DNS subdomain of at most 253 characters"
    if not name or len(name) > 63 or not _QUALIFIED_NAME.fullmatch(name):
        return (
            "the name must be 1 to 63 letters, digits, '-', '_' or '.', starting and ending "
            "with a letter or digit"
        )
    return None


def _split_kind(kind: object) -> tuple[str, str]:
    if not isinstance(kind, str) or kind.count("/") != 1:
        raise ValueError(
            f"CDI spec: kind must be '<vendor>/<class>' (e.g. 'example.com/gpu'), got {kind!r}"
        )
    vendor, class_ = kind.split("/")
    return vendor, class_


def _check_name(
    value: object, pattern: re.Pattern[str], max_len: int | None, what: str, first: str
) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    if max_len is not None and len(value) > max_len:
        raise ValueError(f"{what} {value!r} is {len(value)} characters long, at most {max_len}")
    if not pattern.fullmatch(value):
        allowed = "letters, digits, '_', '-', '.'" + (", ':'" if pattern is _DEVICE_NAME else "")
        raise ValueError(
            f"{what} {value!r} is invalid: it must start with a {first}, end with a letter "
            f"or digit, and contain only {allowed}"
        )


def _json_copy(value: Any, where: str) -> Any:
    """Deep-copy ``value`` into plain JSON data, rejecting what JSON cannot hold faithfully.

    Mappings become dicts (their keys must be strings: ``json.dumps`` would silently
    turn ``1`` into ``"1"``), tuples become lists, subclasses of str/int/float become
    the base type; NaN and infinities are refused.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is not JSON-serialisable: {value!r}")
        return float(value)
    if isinstance(value, Mapping):
        result = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} is not JSON-serialisable: key {key!r} is not a string")
            result[str(key)] = _json_copy(item, f"{where}.{key}")
        return result
    if isinstance(value, list | tuple):
        return [_json_copy(item, f"{where}[{index}]") for index, item in enumerate(value)]
    raise ValueError(f"{where} is not JSON-serialisable: {type(value).__name__} value {value!r}")
