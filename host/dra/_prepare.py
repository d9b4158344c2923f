"""What preparing one claim means: its devices on this node, and the CDI edits for each.

Pure functions over plain data; :class:`~host.dra.DraDriver` does the I/O around them.
A claim's ``status.allocation.devices.results`` names devices as ``(driver, pool,
device)``; the driver keeps the results of its own driver, checks that they are in its
pool (the node name) and maps each device name back to ``(device type, device id)`` of
the scanner's current snapshot. DRA hands devices to containers only through CDI, so
each prepared device gets CDI device IDs: a per-claim CDI device built from the
device's nodes, mounts and envs (``<driver>/dra=claim-<claim uid>-<device>``), and the
scanner's own CDI device when the DeviceInfo carries one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from host._api import api_pb2 as pluginapi
from host.deviceplugin import HEALTHY, DeviceInfo, DeviceSpec, Mount
from host.dra._slices import unhealthy_taint_key

__all__ = [
    "CDI_CLASS",
    "CDI_VERSION",
    "AllocatedDevice",
    "ClaimError",
    "ClaimRef",
    "PreparedClaim",
    "PreparedDevice",
    "allocated_devices",
    "claim_cdi_spec",
    "container_edits",
    "response_edits",
]

CDI_CLASS = "dra"
"""The class of the driver's per-claim CDI devices: kind ``<driver name>/dra``."""
CDI_VERSION = "0.5.0"
"""The CDI spec version of per-claim specs (``deviceNodes[].hostPath`` needs 0.5.0)."""

_MOUNT_OPTIONS_RO = ("ro", "nosuid", "nodev", "bind")
_MOUNT_OPTIONS_RW = ("rw", "nosuid", "nodev", "bind")


class ClaimError(Exception):
    """Preparing one claim failed; the message goes into that claim's ``error`` field."""


@dataclass(frozen=True)
class ClaimRef:
    """A claim as kubelet names it in NodePrepareResources / NodeUnprepareResources."""

    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class AllocatedDevice:
    """One allocation result of our driver and pool, mapped to the scanner's device."""

    request_names: tuple[str, ...]
    pool: str
    device: str
    dev_type: str
    dev_id: str
    info: DeviceInfo
    share_id: str | None = None


@dataclass(frozen=True)
class PreparedDevice:
    """One device of a prepared claim, as NodePrepareResources answers it."""

    request_names: tuple[str, ...]
    pool: str
    device: str
    cdi_device_ids: tuple[str, ...]
    share_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the device as checkpoint data."""
        data: dict[str, Any] = {
            "requestNames": list(self.request_names),
            "pool": self.pool,
            "device": self.device,
            "cdiDeviceIDs": list(self.cdi_device_ids),
        }
        if self.share_id is not None:
            data["shareID"] = self.share_id
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PreparedDevice:
        """Read a device back from checkpoint data (KeyError/TypeError when malformed)."""
        share_id = data.get("shareID")
        return cls(
            request_names=tuple(str(n) for n in data["requestNames"]),
            pool=str(data["pool"]),
            device=str(data["device"]),
            cdi_device_ids=tuple(str(i) for i in data["cdiDeviceIDs"]),
            share_id=None if share_id is None else str(share_id),
        )


@dataclass(frozen=True)
class PreparedClaim:
    """A prepared claim: its devices and the CDI specs it holds (released at unprepare)."""

    ref: ClaimRef
    devices: tuple[PreparedDevice, ...]
    cdi_specs: tuple[Mapping[str, Any], ...] = ()

    @cached_property
    def canonical_json(self) -> str:
        """The claim's checkpoint data as canonical JSON (sorted keys, no whitespace)."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))

    def to_json(self) -> dict[str, Any]:
        """Return the claim as checkpoint data."""
        return {
            "namespace": self.ref.namespace,
            "name": self.ref.name,
            "uid": self.ref.uid,
            "devices": [device.to_json() for device in self.devices],
            "cdiSpecs": [dict(spec) for spec in self.cdi_specs],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PreparedClaim:
        """Read a claim back from checkpoint data (KeyError/TypeError when malformed)."""
        return cls(
            ref=ClaimRef(str(data["namespace"]), str(data["name"]), str(data["uid"])),
            devices=tuple(PreparedDevice.from_json(d) for d in data["devices"]),
            cdi_specs=tuple(dict(spec) for spec in data["cdiSpecs"]),
        )


def allocated_devices(
    claim: Mapping[str, Any],
    ref: ClaimRef,
    *,
    driver: str,
    pool: str,
    devices: Mapping[str, tuple[str, str, DeviceInfo]],
    scan_failed: bool = False,
) -> list[AllocatedDevice]:
    """Return the devices ``claim`` was allocated from ``driver`` in ``pool``.

    ``devices`` maps each published device name to ``(device type, device id,
    DeviceInfo)``. Raises :class:`ClaimError` when the claim is not the one kubelet
    means (another UID: it was deleted and re-created), is not allocated, holds no
    device of ``driver``, holds one of ``driver`` in another pool (it was allocated for
    another node), or names a device this driver does not have. An unhealthy device
    (every device, when ``scan_failed``) carries the taint ``<driver>/unhealthy`` in
    the ResourceSlices; it is refused unless the allocation result tolerates that taint.
    Request names keep only the part before ``/`` (a ``firstAvailable`` subrequest
    belongs to its request).
    """
    uid = _get(claim, "metadata", "uid")
    if uid != ref.uid:
        raise ClaimError(
            f"claim {ref} got replaced: its UID is {uid!r}, kubelet asked for {ref.uid!r}"
        )
    allocation = _get(claim, "status", "allocation")
    if not isinstance(allocation, Mapping):
        raise ClaimError(f"claim {ref} not allocated")
    results = _get(allocation, "devices", "results")
    if not isinstance(results, list):
        results = []
    found: list[AllocatedDevice] = []
    for index, result in enumerate(results):
        if not isinstance(result, Mapping):
            raise ClaimError(f"claim {ref}: allocation result {index} is not an object: {result!r}")
        if result.get("driver") != driver:
            continue
        device = result.get("device")
        where = f"claim {ref}: device {result.get('pool')!r}/{device!r}"
        if result.get("pool") != pool:
            raise ClaimError(
                f"{where} is not in this node's pool {pool!r} (the claim was allocated "
                "for another node)"
            )
        if not isinstance(device, str) or device not in devices:
            raise ClaimError(f"{where} is not a device of driver {driver} on this node")
        dev_type, dev_id, info = devices[device]
        if (info.state != HEALTHY or scan_failed) and not _tolerates(
            result.get("tolerations"), unhealthy_taint_key(driver)
        ):
            why = "the scanner failed" if scan_failed else "the device is unhealthy"
            raise ClaimError(
                f"{where} ({dev_type} {dev_id}) is unusable: {why} (retry once it recovers, "
                f"or tolerate the taint {unhealthy_taint_key(driver)})"
            )
        request = result.get("request")
        share_id = result.get("shareID")
        found.append(
            AllocatedDevice(
                request_names=(str(request).split("/", 1)[0],) if request else (),
                pool=pool,
                device=device,
                dev_type=dev_type,
                dev_id=dev_id,
                info=info,
                share_id=share_id if isinstance(share_id, str) else None,
            )
        )
    if not found:
        raise ClaimError(f"claim {ref} has no device allocated from driver {driver}")
    return found


def container_edits(
    nodes: Iterable[DeviceSpec | pluginapi.DeviceSpec],
    mounts: Iterable[Mount | pluginapi.Mount],
    envs: Mapping[str, str],
) -> dict[str, Any]:
    """Return CDI ``containerEdits`` injecting these device nodes, mounts and envs.

    Empty parts are left out; an empty result means there is nothing to inject.
    """
    edits: dict[str, Any] = {}
    if envs:
        edits["env"] = [f"{key}={value}" for key, value in envs.items()]
    device_nodes = []
    for node in nodes:
        entry = {"path": node.container_path or node.host_path, "hostPath": node.host_path}
        if node.permissions:
            entry["permissions"] = node.permissions
        device_nodes.append(entry)
    if device_nodes:
        edits["deviceNodes"] = device_nodes
    mount_list = [
        {
            "hostPath": mount.host_path,
            "containerPath": mount.container_path,
            "options": list(_MOUNT_OPTIONS_RO if mount.read_only else _MOUNT_OPTIONS_RW),
        }
        for mount in mounts
    ]
    if mount_list:
        edits["mounts"] = mount_list
    return edits


def response_edits(response: pluginapi.ContainerAllocateResponse) -> dict[str, Any]:
    """Return the CDI ``containerEdits`` of an Allocate container response.

    Annotations have no counterpart in DRA (kubelet passes only CDI device IDs) and
    are dropped; the response's ``cdi_devices`` are CDI IDs of their own, not edits.
    """
    return container_edits(response.devices, response.mounts, response.envs)


def claim_cdi_spec(driver: str, name: str, edits: Mapping[str, Any]) -> dict[str, Any]:
    """Return a CDI spec of kind ``<driver>/dra`` with one device ``name`` and ``edits``."""
    return {
        "cdiVersion": CDI_VERSION,
        "kind": f"{driver}/{CDI_CLASS}",
        "devices": [{"name": name, "containerEdits": dict(edits)}],
    }


def _tolerates(tolerations: Any, key: str) -> bool:
    """Whether ``tolerations`` (of an allocation result) tolerate ``key`` NoSchedule."""
    if not isinstance(tolerations, list):
        return False
    for toleration in tolerations:
        if not isinstance(toleration, Mapping):
            continue
        if toleration.get("effect") not in (None, "", "NoSchedule"):
            continue
        operator = toleration.get("operator") or "Equal"
        if operator == "Exists" and toleration.get("key") in (None, "", key):
            return True
        if operator == "Equal" and toleration.get("key") == key and not toleration.get("value"):
            return True
    return False


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data
