"""The ``generic`` plugin's options and device groups: parsing and validation.

Two kinds of mistakes, handled differently on purpose:

* an option that cannot be read at all (``devices`` not JSON, not a list; a bad
  ``namespace`` or ``rescan-interval``) raises :class:`GenericConfigError`, a
  :class:`host.ConfigError`, so the host exits with 2 before serving anything;
* a mistake inside one device group (a bad name, no globs, ``count`` < 1, ...) is
  returned by :func:`load_groups` as a message naming the group: the host logs it,
  skips that group, and every other group still serves.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TypeGuard

from host import ConfigError
from host.deviceplugin._names import resource_name_error

__all__ = [
    "DEFAULT_DEVICES",
    "DEFAULT_NAMESPACE",
    "DEFAULT_RESCAN_INTERVAL",
    "DeviceGroup",
    "GenericConfigError",
    "MountSpec",
    "UsbMatch",
    "default_devices",
    "load_groups",
    "parse_devices",
    "parse_namespace",
    "parse_rescan_interval",
]

PLUGIN = "generic"
DEFAULT_NAMESPACE = "devices.devplugin.io"
DEFAULT_RESCAN_INTERVAL = 5.0
"""Seconds between two evaluations of the globs (squat's generic-device-plugin polls every 5 s)."""

_KUBEVIRT_SHARES = 110
"""KubeVirt's count for kvm/tun/vhost-net: the kubelet's default max pods per node."""

DEFAULT_DEVICES: tuple[Mapping[str, object], ...] = (
    {"name": "kvm", "paths": ["/dev/kvm"], "count": _KUBEVIRT_SHARES},
    {"name": "fuse", "paths": ["/dev/fuse"], "count": _KUBEVIRT_SHARES},
    {"name": "tun", "paths": ["/dev/net/tun"], "count": _KUBEVIRT_SHARES},
    {"name": "vhost-net", "paths": ["/dev/vhost-net"], "count": _KUBEVIRT_SHARES},
    {"name": "vsock", "paths": ["/dev/vhost-vsock"], "count": _KUBEVIRT_SHARES},
)
"""The device groups served when ``devices`` is not configured (each only if its node exists)."""

_GROUP_KEYS = ("name", "namespace", "paths", "usb", "count", "permissions", "mounts", "bundle")
_USB_KEYS = ("vendor", "product")
_MOUNT_KEYS = ("host-path", "container-path", "read-only")
_USB_ID = re.compile(r"(0x)?([0-9a-f]{1,4})")
_EXAMPLE = '[{"name": "serial", "paths": ["/dev/ttyUSB*"]}]'


class GenericConfigError(ConfigError, ValueError):
    """An option of the ``generic`` plugin that cannot be read at all.

    A :class:`host.ConfigError` (the host prints it and exits with 2) and a
    ``ValueError`` (what an ``Option.type`` conventionally raises for a bad value), so
    the host reports it whichever of the two it catches around option parsing. The
    message names the plugin and the option: it is shown as it is.
    """


@dataclass(frozen=True)
class UsbMatch:
    """Match USB devices by vendor ID and, when given, product ID."""

    vendor: int
    product: int | None = None

    def matches(self, vendor: int, product: int) -> bool:
        """Whether a device with these IDs matches."""
        return vendor == self.vendor and (self.product is None or product == self.product)


@dataclass(frozen=True)
class MountSpec:
    """A host path bind-mounted into every container that gets a device of the group."""

    host_path: str
    container_path: str
    read_only: bool = False


@dataclass(frozen=True)
class DeviceGroup:
    """One validated device group: the devices of one resource ``<namespace>/<name>``.

    ``paths`` are globs relative to the devfs root (``/dev/`` stripped), ``permissions``
    is a non-empty subset of ``rwm`` in that order.
    """

    name: str
    namespace: str = DEFAULT_NAMESPACE
    paths: tuple[str, ...] = ()
    usb: tuple[UsbMatch, ...] = ()
    count: int = 1
    permissions: str = "rw"
    mounts: tuple[MountSpec, ...] = ()
    bundle: bool = False

    @property
    def resource_name(self) -> str:
        """The extended resource name kubelet advertises: ``<namespace>/<name>``."""
        return f"{self.namespace}/{self.name}"


def _option_error(option: str, problem: str) -> GenericConfigError:
    return GenericConfigError(f"plugin '{PLUGIN}': option {option}: {problem}")


def default_devices() -> list[dict[str, object]]:
    """Return a fresh copy of :data:`DEFAULT_DEVICES`, shaped like a TOML array of tables."""
    return [
        {k: list(v) if isinstance(v, list) else v for k, v in g.items()} for g in DEFAULT_DEVICES
    ]


def parse_devices(value: object) -> tuple[object, ...]:
    """Read the ``devices`` option: a JSON string (``--set``) or a list (TOML), as a tuple.

    Only the structure is checked here (a list); each entry is validated by
    :func:`load_groups`, so one bad group does not stop the others. Parsing an already
    parsed value returns it unchanged.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise _option_error(
                "devices",
                f"not valid JSON ({err}); give a JSON array of device groups, e.g. {_EXAMPLE}, "
                "or [] for none",
            ) from None
    if not isinstance(value, list | tuple):
        raise _option_error(
            "devices",
            f"expected a list of device groups (a JSON array, or a TOML array of tables), "
            f"got {type(value).__name__}: {value!r}; e.g. {_EXAMPLE}",
        )
    return tuple(value)


def parse_namespace(value: object) -> str:
    """Read the ``namespace`` option: the domain part of every group's resource name."""
    if not isinstance(value, str) or not value:
        raise _option_error(
            "namespace", f"expected a non-empty string such as {DEFAULT_NAMESPACE!r}, got {value!r}"
        )
    reason = resource_name_error(f"{value}/device")
    if reason is not None:
        raise _option_error("namespace", f"{value!r} is not a valid resource name domain: {reason}")
    return value


def parse_rescan_interval(value: object) -> float:
    """Read the ``rescan-interval`` option: seconds (> 0) between two scans."""
    seconds: float | None = None
    if isinstance(value, str):
        try:
            seconds = float(value.strip())
        except ValueError:
            seconds = None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise _option_error("rescan-interval", f"expected a number of seconds > 0, got {value!r}")
    return seconds


def load_groups(
    entries: Iterable[object], *, namespace: str = DEFAULT_NAMESPACE
) -> tuple[list[DeviceGroup], list[str]]:
    """Validate every entry of ``devices``: the valid groups, and one message per bad one.

    ``namespace`` is the default for groups without their own. Each message names the
    group (position and name) and every problem found in it; a group whose resource
    name an earlier group already uses is reported too. Bad groups are left out.
    """
    groups: list[DeviceGroup] = []
    errors: list[str] = []
    seen: dict[str, int] = {}
    for position, entry in enumerate(entries, start=1):
        label = _label(position, entry)
        group, problems = _parse_group(entry, namespace)
        if group is not None and group.resource_name in seen:
            problems.append(
                f"resource {group.resource_name} is already defined by device group "
                f"#{seen[group.resource_name]}; give each group its own name"
            )
        if problems or group is None:
            errors.append(
                f"plugin '{PLUGIN}': device group {label}: {'; '.join(problems)}; "
                "this group is skipped"
            )
            continue
        seen[group.resource_name] = position
        groups.append(group)
    return groups, errors


def _label(position: int, entry: object) -> str:
    name = entry.get("name") if isinstance(entry, Mapping) else None
    return f"#{position} ({name!r})" if isinstance(name, str) else f"#{position}"


def _parse_group(entry: object, default_namespace: str) -> tuple[DeviceGroup | None, list[str]]:
    """Parse one entry; every problem found is listed, not only the first."""
    if not isinstance(entry, Mapping):
        return None, [
            f"expected a table (JSON object) with at least 'name' and 'paths', "
            f"got {type(entry).__name__}: {entry!r}"
        ]
    problems: list[str] = []
    unknown = sorted(str(k) for k in entry if k not in _GROUP_KEYS)
    if unknown:
        problems.append(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(_GROUP_KEYS)})")

    name = entry.get("name")
    namespace = entry.get("namespace", default_namespace)
    if not isinstance(name, str) or not name:
        problems.append(f"'name' must be a non-empty string (the resource name), got {name!r}")
    if not isinstance(namespace, str) or not namespace:
        problems.append(f"'namespace' must be a non-empty string, got {namespace!r}")
    if isinstance(name, str) and name and isinstance(namespace, str) and namespace:
        reason = resource_name_error(f"{namespace}/{name}")
        if reason is not None:
            problems.append(f"invalid resource name '{namespace}/{name}': {reason}")

    paths = _parse_paths(entry, problems)
    usb = _parse_usb(entry.get("usb", []), problems)
    raw_paths, raw_usb = entry.get("paths"), entry.get("usb")
    if not raw_paths and not raw_usb and not isinstance(raw_paths, str):
        problems.append(
            "'paths' is empty: give at least one glob such as '/dev/ttyUSB*' (or a 'usb' matcher)"
            if "paths" in entry
            else "no device nodes to match: give 'paths' (globs such as '/dev/ttyUSB*') or 'usb'"
        )

    count = entry.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        problems.append(
            f"'count' (containers sharing each device) must be an integer >= 1, got {count!r}"
        )
    permissions = _parse_permissions(entry.get("permissions", "rw"), problems)
    mounts = _parse_mounts(entry.get("mounts", []), problems)
    bundle = entry.get("bundle", False)
    if not isinstance(bundle, bool):
        problems.append(f"'bundle' must be true or false, got {bundle!r}")

    if problems or not isinstance(name, str) or not isinstance(namespace, str):
        return None, problems
    return DeviceGroup(
        name=name,
        namespace=namespace,
        paths=paths,
        usb=usb,
        count=count,
        permissions=permissions,
        mounts=mounts,
        bundle=bool(bundle),
    ), []


def _parse_paths(entry: Mapping[object, object], problems: list[str]) -> tuple[str, ...]:
    raw = entry.get("paths", [])
    if isinstance(raw, str):  # one glob needs no list around it
        raw = [raw]
    if not isinstance(raw, list | tuple):
        problems.append(f"'paths' must be a list of globs, got {type(raw).__name__}: {raw!r}")
        return ()
    globs: list[str] = []
    for pattern in raw:
        relative = _relative_glob(pattern, problems)
        if relative is not None and relative not in globs:
            globs.append(relative)
    return tuple(globs)


def _relative_glob(pattern: object, problems: list[str]) -> str | None:
    """``/dev/net/tun`` or ``net/tun`` → ``net/tun``: globs match under the devfs root."""
    if not isinstance(pattern, str) or not pattern:
        problems.append(f"each path must be a non-empty glob string, got {pattern!r}")
        return None
    path = PurePosixPath(pattern)
    if path.is_absolute():
        if path.parts[:2] != ("/", "dev"):
            problems.append(
                f"path {pattern!r} is outside /dev: globs match device nodes under the devfs "
                "root (--devfs-root), write them as '/dev/...'"
            )
            return None
        path = PurePosixPath(*path.parts[2:]) if len(path.parts) > 2 else PurePosixPath()
    if ".." in path.parts:
        problems.append(f"path {pattern!r} must not contain '..'")
        return None
    if not path.parts:
        problems.append(f"path {pattern!r} names the /dev directory itself, not a device node")
        return None
    return str(path)


def _parse_usb(raw: object, problems: list[str]) -> tuple[UsbMatch, ...]:
    if not isinstance(raw, list | tuple):
        problems.append(
            f'\'usb\' must be a list of tables like {{vendor = "0x1234", product = "0x5678"}}, '
            f"got {type(raw).__name__}: {raw!r}"
        )
        return ()
    matches: list[UsbMatch] = []
    for i, item in enumerate(raw):
        where = f"usb[{i}]"
        if not isinstance(item, Mapping):
            problems.append(
                f'{where} must be a table like {{vendor = "0x1234", product = "0x5678"}}, '
                f"got {item!r}"
            )
            continue
        unknown = sorted(str(k) for k in item if k not in _USB_KEYS)
        if unknown:
            problems.append(
                f"{where}: unknown key(s) {', '.join(unknown)} (known: vendor, product)"
            )
        if "vendor" not in item:
            problems.append(f"{where}: 'vendor' is required (a hexadecimal ID such as '0x1234')")
            continue
        vendor = _usb_id(item["vendor"], f"{where}.vendor", problems)
        product = (
            _usb_id(item["product"], f"{where}.product", problems) if "product" in item else None
        )
        if vendor is not None and (product is not None or "product" not in item):
            matches.append(UsbMatch(vendor=vendor, product=product))
    return tuple(matches)


def _usb_id(value: object, where: str, problems: list[str]) -> int | None:
    """Read a USB vendor or product ID: "0x1234", "1234" (hex, as sysfs shows it) or an int."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0xFFFF:
        return value
    if isinstance(value, str):
        match = _USB_ID.fullmatch(value.strip().lower())
        if match:
            return int(match.group(2), 16)
    problems.append(
        f"{where} must be a hexadecimal USB ID of at most 4 digits such as '0x1234', got {value!r}"
    )
    return None


def _parse_permissions(raw: object, problems: list[str]) -> str:
    if not isinstance(raw, str) or not raw or set(raw) - set("rwm") or len(set(raw)) != len(raw):
        problems.append(
            f"'permissions' must be a non-empty combination of r (read), w (write) and "
            f"m (mknod), such as 'rw', got {raw!r}"
        )
        return "rw"
    return "".join(c for c in "rwm" if c in raw)


def _parse_mounts(raw: object, problems: list[str]) -> tuple[MountSpec, ...]:
    if not isinstance(raw, list | tuple):
        problems.append(f"'mounts' must be a list of tables, got {type(raw).__name__}: {raw!r}")
        return ()
    mounts: list[MountSpec] = []
    for i, item in enumerate(raw):
        where = f"mounts[{i}]"
        if not isinstance(item, Mapping):
            problems.append(
                f'{where} must be a table like {{host-path = "/lib/firmware", '
                f"read-only = true}}, got {item!r}"
            )
            continue
        unknown = sorted(str(k) for k in item if k not in _MOUNT_KEYS)
        if unknown:
            problems.append(
                f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(_MOUNT_KEYS)})"
            )
        host_path = item.get("host-path")
        container_path = item.get("container-path", host_path)
        read_only = item.get("read-only", False)
        if not _is_absolute(host_path):
            problems.append(f"{where}: 'host-path' must be an absolute path, got {host_path!r}")
        if "container-path" in item and not _is_absolute(container_path):
            problems.append(
                f"{where}: 'container-path' must be an absolute path, got {container_path!r}"
            )
        if not isinstance(read_only, bool):
            problems.append(f"{where}: 'read-only' must be true or false, got {read_only!r}")
        if _is_absolute(host_path) and _is_absolute(container_path) and isinstance(read_only, bool):
            mounts.append(MountSpec(host_path, container_path, read_only))
    return tuple(mounts)


def _is_absolute(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and value.startswith("/")
