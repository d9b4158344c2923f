"""What a container runtime gives a container: device nodes, mounts and environment.

Both ways a device reaches a container end here: a device plugin's Allocate answer
(its device specs, mounts, envs and CDI device names) and DRA's CDI device IDs. CDI
IDs are resolved as runtimes do (the CDI specification: ``kind=name`` looked up in the
spec files of the CDI directory; the spec's own ``containerEdits`` and the device's
apply), so the two can be compared for the same pod.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from host._api import api_pb2
from host.testing._kubelet_types import KubeletError

__all__ = ["ContainerDevices", "cdi_definitions", "resolve_cdi_device"]

_DEFAULT_PERMISSIONS = "rwm"
"""What runtimes give a device node whose permissions are not set."""


def cdi_definitions(
    cdi_dir: str | Path, cdi_id: str
) -> list[tuple[Path, Mapping[str, Any], Mapping[str, Any]]]:
    """Every spec file of ``cdi_dir`` defining CDI device ``cdi_id``: (path, spec, device).

    Read as a runtime's CDI cache reads them: every ``*.json`` file, unreadable ones
    skipped.
    """
    kind, _, name = cdi_id.partition("=")
    found: list[tuple[Path, Mapping[str, Any], Mapping[str, Any]]] = []
    for path in sorted(Path(cdi_dir).glob("*.json")):
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(spec, dict) or spec.get("kind") != kind:
            continue
        for device in spec.get("devices") or ():
            if isinstance(device, dict) and device.get("name") == name:
                found.append((path, spec, device))
    return found


def resolve_cdi_device(cdi_dir: str | Path, cdi_id: str) -> list[Mapping[str, Any]]:
    """Return the ``containerEdits`` CDI device ``cdi_id`` brings: its spec's, then its own.

    ``cdi_id`` is ``vendor/class=name``.

    :class:`KubeletError` when no spec file or more than one defines it (the runtime
    then fails the container with "unresolvable CDI devices").
    """
    kind, sep, name = cdi_id.partition("=")
    if not sep or not kind or not name:
        raise KubeletError(f"invalid CDI device ID {cdi_id!r}: want vendor/class=name")
    found = cdi_definitions(cdi_dir, cdi_id)
    if len(found) != 1:
        raise KubeletError(
            f"unresolvable CDI devices {cdi_id}: {len(found)} spec files in {cdi_dir} define it"
        )
    _, spec, device = found[0]
    return [spec.get("containerEdits") or {}, device.get("containerEdits") or {}]


@dataclass(frozen=True)
class ContainerDevices:
    """A container's device nodes, mounts and environment variables, order aside.

    ``device_nodes``: ``(container path, host path, permissions)``; ``mounts``:
    ``(container path, host path, read only)``; ``env``: name to value.
    """

    device_nodes: frozenset[tuple[str, str, str]] = frozenset()
    mounts: frozenset[tuple[str, str, bool]] = frozenset()
    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_edits(cls, edits: Iterable[Mapping[str, Any]]) -> Self:
        """Apply CDI ``containerEdits`` in order (a later env entry wins)."""
        nodes: set[tuple[str, str, str]] = set()
        mounts: set[tuple[str, str, bool]] = set()
        env: dict[str, str] = {}
        for edit in edits:
            for node in edit.get("deviceNodes") or ():
                path = node["path"]
                nodes.add(
                    (
                        path,
                        node.get("hostPath") or path,
                        node.get("permissions") or _DEFAULT_PERMISSIONS,
                    )
                )
            for mount in edit.get("mounts") or ():
                read_only = "ro" in (mount.get("options") or ())
                mounts.add((mount["containerPath"], mount["hostPath"], read_only))
            for entry in edit.get("env") or ():
                key, _, value = entry.partition("=")
                env[key] = value
        return cls(frozenset(nodes), frozenset(mounts), env)

    @classmethod
    def from_cdi(cls, cdi_ids: Iterable[str], cdi_dir: str | Path) -> Self:
        """Return what a runtime injects for these CDI device IDs (DRA's only channel)."""
        edits: list[Mapping[str, Any]] = []
        for cdi_id in cdi_ids:
            edits += resolve_cdi_device(cdi_dir, cdi_id)
        return cls.from_edits(edits)

    @classmethod
    def from_allocate(
        cls, response: api_pb2.ContainerAllocateResponse, cdi_dir: str | Path
    ) -> Self:
        """Return what kubelet and the runtime give for one Allocate container response.

        Its device specs, mounts and envs, plus the edits of its CDI devices (kubelet
        passes their names to the runtime, which resolves them in ``cdi_dir``).
        """
        own: dict[str, Any] = {
            "deviceNodes": [
                {
                    "path": spec.container_path,
                    "hostPath": spec.host_path,
                    "permissions": spec.permissions or _DEFAULT_PERMISSIONS,
                }
                for spec in response.devices
            ],
            "mounts": [
                {
                    "containerPath": mount.container_path,
                    "hostPath": mount.host_path,
                    "options": ["ro"] if mount.read_only else [],
                }
                for mount in response.mounts
            ],
            "env": [f"{key}={value}" for key, value in sorted(response.envs.items())],
        }
        edits: list[Mapping[str, Any]] = [own]
        for device in response.cdi_devices:
            edits += resolve_cdi_device(cdi_dir, device.name)
        return cls.from_edits(edits)

    def __add__(self, other: ContainerDevices) -> ContainerDevices:
        """Both containers' devices, as one container holding both allocations."""
        return ContainerDevices(
            self.device_nodes | other.device_nodes,
            self.mounts | other.mounts,
            {**self.env, **other.env},
        )
