"""Public records of the fake kubelet: resource snapshots, registrations, allocations, errors.

Every record is an immutable snapshot taken when it was read or recorded; the protobuf
messages inside are private copies, so changing them does not change the fake kubelet.
Times are :func:`time.monotonic` values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

from host._api import api_pb2

__all__ = [
    "HEALTHY",
    "Allocation",
    "DeviceState",
    "KubeletError",
    "KubeletMode",
    "Registration",
    "Rejection",
    "ResourceState",
]

HEALTHY = "Healthy"
"""The one health value kubelet counts as healthy (exact, case-sensitive)."""

KubeletMode = Literal["1.24", "1.25", "1.36"]
"""Which kubelet generation to reproduce (its ``pkg/kubelet/cm/devicemanager/plugin/v1beta1``).

``"1.24"``: kubelet up to 1.24. Register returns before dialling; options come from
the RegisterRequest.
``"1.25"``: kubelet 1.25-1.35. Dial and GetDevicePluginOptions inside Register; one
client per resource name (including the "old stream end disconnects the new client"
bug). The dial-back runs on ``context.Background()`` as up to 1.33: it goes on after
the plugin gives up on its Register call (1.34-1.35 stop it with the call; only a
plugin that cancels Register early can tell the difference).
``"1.36"``: kubelet 1.36 and later. The dial-back is bounded by the Register call;
endpoints kept per (resource, socket path); a Register for a socket kubelet still
serves is refused (``device plugin already connected``).
"""


class KubeletError(Exception):
    """A failure on the kubelet's side, worded as kubelet words it.

    Raised by the client helpers of :class:`FakeKubelet` when kubelet itself would fail
    (unknown resource, stopped endpoint, empty Allocate response, admission errors) and by
    the lifecycle methods for misuse. gRPC errors of the plugin are raised unchanged as
    :class:`grpc.aio.AioRpcError` by the low-level helpers.
    """


class DeviceState(NamedTuple):
    """One device as the plugin last reported it in ListAndWatch."""

    health: str
    """The health string exactly as sent; only ``"Healthy"`` counts as healthy."""
    numa_nodes: tuple[int, ...]
    """The NUMA node IDs of ``Device.topology`` (empty when the device has no topology)."""

    @property
    def healthy(self) -> bool:
        """Whether kubelet counts this health value as healthy."""
        return self.health == HEALTHY


@dataclass(frozen=True)
class ResourceState:
    """What kubelet knows about one extended resource, as published in the node status.

    ``healthy``/``unhealthy`` are kubelet's own sets: after the plugin's stream ends every
    healthy ID moves to ``unhealthy`` while ``devices`` keeps the last reported values.
    A resource removed after the grace period stays visible with ``removed=True`` and
    capacity 0, like the node status.
    """

    name: str
    devices: Mapping[str, DeviceState]
    """Last ListAndWatch snapshot: device ID -> (health, NUMA IDs)."""
    healthy: frozenset[str]
    unhealthy: frozenset[str]
    connected: bool
    """Whether a live plugin connection serves the resource."""
    stopped_at: float | None
    """When the serving endpoint stopped (stream ended or kubelet restarted), else None."""
    removed: bool
    """Whether the grace period expired and kubelet dropped the resource (capacity 0)."""
    socket_path: str | None
    """Socket of the primary endpoint (None for an endpoint restored from the checkpoint)."""
    endpoints: tuple[str, ...]
    """Sockets of all connected endpoints (more than one only in mode 1.36)."""
    listing: tuple[str, ...]
    """Those of ``endpoints`` whose ListAndWatch stream has delivered a device list."""
    options: api_pb2.DevicePluginOptions | None
    """Options of the primary endpoint (None for an endpoint restored from the checkpoint)."""
    registrations: int
    """How many registrations of this resource kubelet accepted so far."""
    updates: int
    """How many ListAndWatch messages this kubelet process applied to the resource."""
    streams_ended: int = 0
    """How many ListAndWatch streams of the resource ended and were handled (the client
    dropped, up to 1.35 by name), as this kubelet process saw them."""

    @property
    def capacity(self) -> int:
        """Node capacity: healthy + unhealthy devices, 0 once removed."""
        return 0 if self.removed else len(self.healthy) + len(self.unhealthy)

    @property
    def allocatable(self) -> int:
        """Node allocatable: healthy devices, 0 once removed."""
        return 0 if self.removed else len(self.healthy)

    @property
    def stopped(self) -> bool:
        """Whether no live plugin connection serves the resource."""
        return not self.connected


@dataclass(frozen=True)
class Registration:
    """A Register call kubelet accepted (mode 1.24: that passed validation)."""

    request: api_pb2.RegisterRequest
    socket_path: str
    """The plugin socket kubelet dials: the plugin dir joined with ``request.endpoint``."""
    time: float


@dataclass(frozen=True)
class Rejection:
    """A registration kubelet refused, with kubelet's error text."""

    request: api_pb2.RegisterRequest
    reason: str
    """Kubelet's error text (the details of the UNKNOWN status the plugin received)."""
    time: float
    reported: bool = True
    """False in mode 1.24 when the dial failed after Register had already returned OK."""


@dataclass(frozen=True)
class Allocation:
    """Devices kubelet allocated to one container, with the plugin's response."""

    resource: str
    device_ids: tuple[str, ...]
    response: api_pb2.ContainerAllocateResponse
    """``container_responses[0]`` of the plugin's AllocateResponse."""
    pod_uid: str
    container: str
    time: float
    pod_name: str = ""
    """The pod's name as PodResources lists it (empty: the UID stands in)."""
    namespace: str = "default"
