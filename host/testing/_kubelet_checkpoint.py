"""The device manager checkpoint (``kubelet_internal_checkpoint``), kubelet's JSON shape.

Kubelet rewrites it on every ListAndWatch message, allocation and resource removal, and
reads it on start (``pkg/kubelet/cm/devicemanager/checkpoint``). The layout follows
kubelet's; ``Checksum`` is always 0 because kubelet's checksum hashes Go's in-memory
representation, so a real kubelet would refuse this file (which never matters: the
fake's directory is its own).
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf.message import DecodeError

from host._api import api_pb2
from host.testing._kubelet_types import Allocation, DeviceState

__all__ = ["CHECKPOINT_NAME", "CheckpointError", "read_checkpoint", "write_checkpoint"]

CHECKPOINT_NAME = "kubelet_internal_checkpoint"


class CheckpointError(Exception):
    """The checkpoint file exists but cannot be read back."""


def write_checkpoint(
    directory: str,
    registered: Mapping[str, Iterable[str]],
    allocations: Iterable[Allocation],
    devices: Mapping[str, Mapping[str, DeviceState]],
) -> None:
    """Atomically write the checkpoint: healthy IDs per resource, and every allocation.

    ``devices`` (resource -> device states) places each allocated ID under its NUMA
    nodes, or under -1 when it has none, like ``DevicesPerNUMA``.
    """
    entries = []
    for allocation in allocations:
        known = devices.get(allocation.resource, {})
        per_numa: dict[str, list[str]] = {}
        for device_id in allocation.device_ids:
            state = known.get(device_id)
            for node in state.numa_nodes if state and state.numa_nodes else (-1,):
                per_numa.setdefault(str(node), []).append(device_id)
        entries.append(
            {
                "PodUID": allocation.pod_uid,
                "ContainerName": allocation.container,
                "ResourceName": allocation.resource,
                "DeviceIDs": per_numa,
                "AllocResp": base64.b64encode(allocation.response.SerializeToString()).decode(),
            }
        )
    data = {
        "Data": {
            "PodDeviceEntries": entries,
            "RegisteredDevices": {name: sorted(ids) for name, ids in registered.items()},
        },
        "Checksum": 0,
    }
    path = os.path.join(directory, CHECKPOINT_NAME)
    # Small file in a test directory: synchronous I/O is cheaper than a thread hop.
    with open(path + ".tmp", "w", encoding="utf-8") as file:
        json.dump(data, file, indent=1)
    os.replace(path + ".tmp", path)


def read_checkpoint(directory: str) -> tuple[list[str], list[Allocation]]:
    """Read registered resource names and allocations; a missing file reads as empty.

    Raises :class:`CheckpointError` naming the file when it cannot be parsed.
    """
    path = os.path.join(directory, CHECKPOINT_NAME)
    try:
        with open(path, encoding="utf-8") as file:
            raw: Any = json.load(file)
    except FileNotFoundError:
        return [], []
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err
    try:
        payload = raw["Data"]
        registered = [str(name) for name in payload.get("RegisteredDevices") or {}]
        allocations = []
        for entry in payload.get("PodDeviceEntries") or []:
            ids: dict[str, None] = {}
            for numa_ids in (entry.get("DeviceIDs") or {}).values():
                ids.update(dict.fromkeys(str(i) for i in numa_ids))
            response = api_pb2.ContainerAllocateResponse.FromString(
                base64.b64decode(entry.get("AllocResp") or "")
            )
            allocations.append(
                Allocation(
                    resource=str(entry["ResourceName"]),
                    device_ids=tuple(ids),
                    response=response,
                    pod_uid=str(entry["PodUID"]),
                    container=str(entry["ContainerName"]),
                    time=time.monotonic(),
                )
            )
    except (KeyError, TypeError, AttributeError, ValueError, DecodeError) as err:
        raise CheckpointError(f"checkpoint {path} has an unexpected layout: {err!r}") from err
    return registered, allocations
