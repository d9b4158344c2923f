"""ResourceSlices for one driver on one node, built from a scanner snapshot: pure functions.

One pool per node (pool name = node name, ``spec.nodeName`` set, owned by the Node);
every device of every type becomes one ``resource.k8s.io/v1`` Device. A device that
cannot be published (an attribute over the limits) is reported and left out; the rest
are published. Rules and limits: ``k8s.io/api/resource/v1/types.go``.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from host._apinames import DNS_LABEL_MAX, DNS_SUBDOMAIN_MAX, label_name_error
from host.deviceplugin import HEALTHY, DeviceInfo, SemVer
from host.deviceplugin._attributes import ATTRIBUTE_STRING_MAX

__all__ = [
    "API_VERSION",
    "DEFAULT_DEVICES_PER_SLICE",
    "MAX_ATTRIBUTES_AND_CAPACITIES",
    "MAX_DEVICES_PER_SLICE",
    "MAX_DEVICES_PER_SLICE_WITH_TAINTS",
    "RESERVED_ATTRIBUTES",
    "BuildResult",
    "Snapshot",
    "build_slices",
    "device_name",
    "device_names",
    "slice_name",
    "unhealthy_taint_key",
]

API_VERSION = "resource.k8s.io/v1"
MAX_DEVICES_PER_SLICE = 128
"""``ResourceSliceMaxDevices``."""
MAX_DEVICES_PER_SLICE_WITH_TAINTS = 64
"""``ResourceSliceMaxDevicesWithAdvancedFeatures`` (1.36), for a slice with taints."""
DEFAULT_DEVICES_PER_SLICE = MAX_DEVICES_PER_SLICE_WITH_TAINTS
"""Devices per slice by default: a taint appearing never re-splits the pool."""
MAX_ATTRIBUTES_AND_CAPACITIES = 32
"""``ResourceSliceMaxAttributesAndCapacitiesPerDevice``."""
RESERVED_ATTRIBUTES = frozenset({"type", "id", "numa", "healthy"})
"""Attributes the host sets itself; a scanner's attribute of the same name is ignored."""

Snapshot = Mapping[str, Mapping[str, DeviceInfo]]
"""Device type -> device ID -> DeviceInfo, as a scanner notified it."""

_HASH_LEN = 8
_NOT_LABEL_CHARS = re.compile(r"[^a-z0-9]+")


def _digest(*parts: str, length: int = _HASH_LEN) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:length]


def _sanitize(text: str) -> str:
    return _NOT_LABEL_CHARS.sub("-", text.lower()).strip("-")


@functools.lru_cache(maxsize=1 << 16)
def device_name(
    dev_type: str, dev_id: str, hash_length: int = _HASH_LEN, *, force_hash: bool = False
) -> str:
    """Return the DNS-label device name of ``(dev_type, dev_id)``, a function of those two only.

    ``<type>-<id>`` when that already is a DNS label and the type has no ``-`` (so the
    split between type and ID is unambiguous); otherwise a readable sanitized prefix
    plus ``-`` and a hash of the exact pair, e.g. ``("i915", "card0-0")`` ->
    ``i915-card0-0`` and ``("af-AbC_1", "x")`` -> ``af-abc-1-x-<8 hex>``.
    """
    plain = f"{dev_type}-{dev_id}"
    if (
        not force_hash
        and "-" not in dev_type
        and len(plain) <= DNS_LABEL_MAX
        and _sanitize(plain) == plain
    ):
        return plain
    suffix = _digest(dev_type, dev_id, length=hash_length)
    prefix = _sanitize(plain)[: DNS_LABEL_MAX - 1 - hash_length].rstrip("-")
    return f"{prefix}-{suffix}" if prefix else f"device-{suffix}"


def device_names(keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Names for every ``(type, id)``, collision-free: colliding names get a longer hash.

    A collision needs a type/ID crafted to look like another device's hashed name; the
    colliding devices then all use a 16-hex-digit hash instead (32 if that collides
    too), still a function of the pair alone.
    """
    names = {key: device_name(*key) for key in keys}
    for hash_length in (16, 32):
        owners: dict[str, list[tuple[str, str]]] = {}
        for key, name in names.items():
            owners.setdefault(name, []).append(key)
        clashing = [key for group in owners.values() if len(group) > 1 for key in group]
        if not clashing:
            break
        for key in clashing:
            names[key] = device_name(*key, hash_length, force_hash=True)
    return names


def slice_name(driver: str, node_name: str, index: int) -> str:
    """Return the fixed name of slice ``index``: ``<node>-<driver>-<index>``.

    The index is lowercase hex, zero-padded to 5 digits (the helper's 1.36 convention),
    so names sort in slice order. Names over 253 characters keep a readable prefix and
    a hash of (node, driver).
    """
    name = f"{node_name}-{driver}-{index:05x}"
    if len(name) <= DNS_SUBDOMAIN_MAX:
        return name
    tail = f"-{_digest(node_name, driver)}-{index:05x}"
    return f"{node_name}-{driver}"[: DNS_SUBDOMAIN_MAX - len(tail)].rstrip("-.") + tail


def unhealthy_taint_key(driver: str) -> str:
    """``<driver>/unhealthy``: the taint key an unhealthy device carries."""
    return f"{driver}/unhealthy"


@dataclass(frozen=True)
class BuildResult:
    """The slices to publish, and one message per device that had to be left out."""

    slices: list[dict[str, Any]]
    problems: list[str]

    @property
    def device_count(self) -> int:
        """How many devices the slices hold."""
        return sum(len(s["spec"].get("devices", ())) for s in self.slices)


def _attribute(value: object) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"bool": value}
    if isinstance(value, int):
        return {"int": value}
    if isinstance(value, SemVer):
        return {"version": str(value)}
    return {"string": value}


def _device(
    driver: str, name: str, dev_type: str, dev_id: str, info: DeviceInfo, scan_failed: bool
) -> dict[str, Any]:
    """One Device; raises ValueError when it cannot be published."""
    if len(dev_type) > ATTRIBUTE_STRING_MAX:
        raise ValueError(
            f"its type is {len(dev_type)} characters long, an attribute holds at most "
            f"{ATTRIBUTE_STRING_MAX}"
        )
    healthy = info.state == HEALTHY and not scan_failed
    attributes: dict[str, Any] = {
        key: _attribute(value)
        for key, value in info.attributes.items()
        if key.rpartition("/")[2] not in RESERVED_ATTRIBUTES
        or key.rpartition("/")[0] not in ("", driver)
    }
    attributes["type"] = {"string": dev_type}
    if len(dev_id) <= ATTRIBUTE_STRING_MAX:
        attributes["id"] = {"string": dev_id}
    # A device on several NUMA nodes has no single node a matchAttribute could align
    # with (list attributes are alpha), so only a single node is published.
    if len(info.numa_nodes) == 1:
        attributes["numa"] = {"int": info.numa_nodes[0]}
    attributes["healthy"] = {"bool": healthy}
    count = len(attributes) + len(info.capacity)
    if count > MAX_ATTRIBUTES_AND_CAPACITIES:
        raise ValueError(
            f"it has {count} attributes and capacities, at most "
            f"{MAX_ATTRIBUTES_AND_CAPACITIES} are allowed"
        )
    device: dict[str, Any] = {"name": name, "attributes": attributes}
    if info.capacity:
        device["capacity"] = {key: {"value": value} for key, value in info.capacity.items()}
    if not healthy:
        device["taints"] = [{"key": unhealthy_taint_key(driver), "effect": "NoSchedule"}]
    return device


def _chunks(devices: list[dict[str, Any]], max_devices: int) -> list[list[dict[str, Any]]]:
    """Split into slices of ``max_devices``, at most 64 in a slice where a device has taints."""
    chunks: list[list[dict[str, Any]]] = [[]]
    tainted = False
    for device in devices:
        chunk = chunks[-1]
        tainted_now = tainted or "taints" in device
        limit = min(max_devices, MAX_DEVICES_PER_SLICE_WITH_TAINTS) if tainted_now else max_devices
        if len(chunk) >= limit:
            chunks.append([])
            tainted_now = "taints" in device
        chunks[-1].append(device)
        tainted = tainted_now
    return chunks


def build_slices(
    *,
    driver: str,
    node_name: str,
    node_uid: str,
    snapshot: Snapshot,
    scan_failed: bool = False,
    generation: int = 0,
    max_devices: int = DEFAULT_DEVICES_PER_SLICE,
) -> BuildResult:
    """Build the complete set of ResourceSlices (plain JSON dicts) for ``snapshot``.

    Devices are sorted by name and split into slices of ``max_devices`` (at most 128;
    a slice holding a tainted device at most 64); a pool without devices is one slice
    without devices (so consumers see the pool is empty). The default, 64, keeps a
    health change to the one slice of that device: with 128, the first taint would
    re-split the pool, rewriting every slice under a new generation. Unhealthy devices,
    and every device when ``scan_failed``, carry a ``NoSchedule`` taint
    ``<driver>/unhealthy`` and the attribute ``healthy: false``.
    """
    error = label_name_error(unhealthy_taint_key(driver))
    if error is not None:
        raise ValueError(f"driver name {driver!r} cannot form a taint key: {error}")
    keys = [(dev_type, dev_id) for dev_type, devices in snapshot.items() for dev_id in devices]
    names = device_names(keys)
    devices: list[dict[str, Any]] = []
    problems: list[str] = []
    for (dev_type, dev_id), name in sorted(names.items(), key=lambda item: item[1]):
        try:
            devices.append(
                _device(driver, name, dev_type, dev_id, snapshot[dev_type][dev_id], scan_failed)
            )
        except ValueError as exc:
            problems.append(f"device {dev_id!r} of type {dev_type!r} is not published: {exc}")
    if not 1 <= max_devices <= MAX_DEVICES_PER_SLICE:
        raise ValueError(f"max_devices must be 1..{MAX_DEVICES_PER_SLICE}, got {max_devices}")
    chunks = _chunks(devices, max_devices)
    owner: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "name": node_name,
        "uid": node_uid,
        "controller": True,
    }
    slices = []
    for index, chunk in enumerate(chunks):
        spec: dict[str, Any] = {
            "driver": driver,
            "pool": {
                "name": node_name,
                "generation": generation,
                "resourceSliceCount": len(chunks),
            },
            "nodeName": node_name,
        }
        if chunk:
            spec["devices"] = chunk
        slices.append(
            {
                "apiVersion": API_VERSION,
                "kind": "ResourceSlice",
                "metadata": {
                    "name": slice_name(driver, node_name, index),
                    "ownerReferences": [dict(owner)],
                },
                "spec": spec,
            }
        )
    return BuildResult(slices, problems)
