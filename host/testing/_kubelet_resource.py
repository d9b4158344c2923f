"""Kubelet's bookkeeping for one resource: device sets, endpoints, snapshots.

Mirrors the device manager's per-resource maps (``healthyDevices``, ``unhealthyDevices``,
``allDevices``, ``endpoints`` and, in 1.36+, ``endpointStore``) so the arithmetic of
``pkg/kubelet/cm/devicemanager/manager.go`` (``genericDeviceUpdateCallback``,
``markResourceUnhealthy``) reads like the Go code it reproduces.
"""

from __future__ import annotations

import time
from types import MappingProxyType

from host._api import api_pb2
from host.testing._kubelet_endpoint import PluginEndpoint
from host.testing._kubelet_types import HEALTHY, DeviceState, ResourceState

__all__ = ["ResourceBook"]


class ResourceBook:
    """Everything the device manager keeps for one resource name.

    ``healthy``/``unhealthy`` are None while the resource is absent (no ListAndWatch
    message yet), exactly like the missing map entries in kubelet.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.healthy: set[str] | None = None
        self.unhealthy: set[str] | None = None
        self.devices: dict[str, DeviceState] = {}
        self.endpoint: PluginEndpoint | None = None
        """The primary endpoint (``m.endpoints[name]``), used for Allocate and friends."""
        self.store: dict[str, PluginEndpoint] = {}
        """Mode 1.36: connected endpoints by socket path (``m.endpointStore[name]``)."""
        self.removed = False
        self.updates = 0
        self.streams_ended = 0
        self.history: list[tuple[float, int]] = []
        """(monotonic time, allocatable) at every change of allocatable."""

    def _record(self) -> None:
        allocatable = 0 if self.removed or self.healthy is None else len(self.healthy)
        if not self.history or self.history[-1][1] != allocatable:
            self.history.append((time.monotonic(), allocatable))

    @property
    def present(self) -> bool:
        """Whether the resource appears in the node status with its device counts."""
        return self.healthy is not None or self.unhealthy is not None

    def apply(self, response: api_pb2.ListAndWatchResponse) -> None:
        """Replace the device sets with one ListAndWatch snapshot (genericDeviceUpdateCallback).

        Devices absent from the message disappear; an empty message gives 0/0.
        """
        self.healthy, self.unhealthy, self.devices = set(), set(), {}
        for device in response.devices:
            numa = tuple(node.ID for node in device.topology.nodes)
            self.devices[device.ID] = DeviceState(device.health, numa)
            # A duplicate ID with two health values lands in both sets, as in kubelet.
            (self.healthy if device.health == HEALTHY else self.unhealthy).add(device.ID)
        self.removed = False
        self.updates += 1
        self._record()

    def mark_unhealthy(self) -> None:
        """Move every healthy ID to unhealthy (``markResourceUnhealthy``): allocatable 0."""
        moved = self.healthy or set()
        if self.healthy is not None:
            self.healthy = set()
        self.unhealthy = (self.unhealthy or set()) | moved
        self._record()

    def restore(self, stop_time: float) -> None:
        """Start from the checkpoint: present at 0/0 behind a stopped endpoint."""
        self.healthy, self.unhealthy, self.devices = set(), set(), {}
        self.endpoint = PluginEndpoint(self.name, None, stop_time=stop_time)
        self.store = {}
        self._record()

    def remove(self) -> None:
        """Drop the resource after the grace period; the node status keeps it at 0."""
        self.healthy = self.unhealthy = self.endpoint = None
        self.devices, self.store = {}, {}
        self.removed = True
        self._record()

    def connected_endpoints(self) -> list[PluginEndpoint]:
        """Endpoints with a live connection (the store in 1.36, else the primary)."""
        candidates = list(self.store.values()) if self.store else [self.endpoint]
        return [ep for ep in candidates if ep is not None and not ep.stopped and ep.channel]

    def snapshot(self, registrations: int) -> ResourceState:
        """Freeze the current state into a :class:`ResourceState`."""
        endpoint = self.endpoint
        options = None
        if endpoint is not None and endpoint.options is not None:
            options = api_pb2.DevicePluginOptions()
            options.CopyFrom(endpoint.options)
        connected = self.connected_endpoints()
        return ResourceState(
            name=self.name,
            devices=MappingProxyType(dict(self.devices)),
            healthy=frozenset(self.healthy or ()),
            unhealthy=frozenset(self.unhealthy or ()),
            connected=bool(connected),
            stopped_at=endpoint.stop_time if endpoint is not None else None,
            removed=self.removed and not self.present,
            socket_path=endpoint.socket_path if endpoint is not None else None,
            endpoints=tuple(ep.socket_path for ep in connected if ep.socket_path),
            listing=tuple(ep.socket_path for ep in connected if ep.socket_path and ep.messages),
            options=options,
            registrations=registrations,
            updates=self.updates,
            streams_ended=self.streams_ended,
        )
