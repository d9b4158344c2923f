"""The seed's vocabulary: DeviceInfo, DeviceTree, the scanner protocols and constants."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from host._api import api_pb2 as pluginapi
from host.deviceplugin._attributes import AttributeValue, frozen_attributes, frozen_capacity

__all__ = [
    "HEALTHY",
    "UNHEALTHY",
    "Allocator",
    "ContainerPreStarter",
    "DeviceInfo",
    "DeviceSpec",
    "DeviceTree",
    "Mount",
    "NUMANode",
    "Notifier",
    "PostAllocator",
    "PreferredAllocator",
    "Scanner",
    "TopologyInfo",
    "UseDefaultMethodError",
]

log = logging.getLogger("host.deviceplugin")

HEALTHY = "Healthy"
"""Health of a device kubelet may allocate (kubelet compares this exact string)."""
UNHEALTHY = "Unhealthy"
"""Health of a device kubelet counts in capacity but never allocates."""

# The wire messages serve as the value types: a DeviceSpec built here is the
# DeviceSpec kubelet receives, with no conversion layer in between.
DeviceSpec = pluginapi.DeviceSpec
Mount = pluginapi.Mount
TopologyInfo = pluginapi.TopologyInfo
NUMANode = pluginapi.NUMANode


class UseDefaultMethodError(Exception):
    """Raised (or returned) by a scanner's ``allocate`` to fall back to the default Allocate."""


def _frozen_copy(messages: Iterable[Any], kind: type[Any]) -> tuple[Any, ...]:
    out = []
    for message in messages:
        if not isinstance(message, kind):
            raise TypeError(f"expected {kind.__name__}, got {type(message).__name__}: {message!r}")
        copy = kind()
        copy.CopyFrom(message)
        out.append(copy)
    return tuple(out)


_EMPTY_MAP: Mapping[str, str] = MappingProxyType({})


def _frozen_map(values: Mapping[str, str] | None, what: str) -> Mapping[str, str]:
    if not values:
        return _EMPTY_MAP  # shared: most devices have no envs or annotations
    result = dict(values)
    for key, value in result.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"{what} must map str to str, got {key!r}: {value!r}")
    return MappingProxyType(result)


@dataclass(frozen=True, eq=True, kw_only=True)
class DeviceInfo:
    """Everything kubelet needs to know about one device: health, nodes, mounts, and more.

    An immutable value; every argument is a keyword::

        DeviceInfo(state=HEALTHY,
                   nodes=[DeviceSpec(host_path="/dev/dri/card0",
                                     container_path="/dev/dri/card0", permissions="rw")])

    ``topology`` is given directly; :meth:`with_topology` reads it from sysfs instead
    (the Go ``NewDeviceInfo``). ``cdi_spec`` is a CDI spec (JSON-like dict with
    ``cdiVersion``, ``kind`` and exactly one entry in ``devices``).
    ``attributes`` (name -> str/int/bool/:class:`SemVer`) and ``capacity`` (name ->
    quantity string) are published only by a DRA driver; names are ``[<domain>/]<C
    identifier>`` (domain <= 63, identifier <= 32), string values <= 64 characters.
    """

    state: str = HEALTHY
    nodes: tuple[pluginapi.DeviceSpec, ...] = ()
    mounts: tuple[pluginapi.Mount, ...] = ()
    envs: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    topology: pluginapi.TopologyInfo | None = None
    cdi_spec: Mapping[str, Any] | None = None
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    capacity: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.state not in (HEALTHY, UNHEALTHY):
            raise ValueError(
                f"device state must be {HEALTHY!r} or {UNHEALTHY!r}, got {self.state!r}"
            )
        set_ = object.__setattr__
        set_(self, "nodes", _frozen_copy(self.nodes, pluginapi.DeviceSpec))
        set_(self, "mounts", _frozen_copy(self.mounts, pluginapi.Mount))
        set_(self, "envs", _frozen_map(self.envs, "envs"))
        set_(self, "annotations", _frozen_map(self.annotations, "annotations"))
        if self.topology is not None:
            if not isinstance(self.topology, pluginapi.TopologyInfo):
                raise TypeError(f"topology must be a TopologyInfo, got {self.topology!r}")
            set_(self, "topology", _frozen_copy([self.topology], pluginapi.TopologyInfo)[0])
        if self.cdi_spec is not None:
            from host.deviceplugin._cdi_spec import validate_cdi_spec

            set_(self, "cdi_spec", validate_cdi_spec(self.cdi_spec))
        set_(self, "attributes", frozen_attributes(self.attributes))
        set_(self, "capacity", frozen_capacity(self.capacity))

    # Protobuf messages are unhashable; a DeviceInfo is compared, never hashed.
    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def with_topology(
        cls,
        *,
        state: str = HEALTHY,
        nodes: Iterable[pluginapi.DeviceSpec] = (),
        mounts: Iterable[pluginapi.Mount] = (),
        envs: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        cdi_spec: Mapping[str, Any] | None = None,
        sysfs_root: str = "/sys",
    ) -> DeviceInfo:
        """Build a DeviceInfo whose NUMA topology is read from sysfs for its device nodes.

        The counterpart of the Go ``NewDeviceInfo``: a node whose sysfs entry cannot be
        found leaves the device without topology (logged at debug level), never an error.
        ``sysfs_root`` lets tests point the lookup at a fake tree.
        """
        from host.deviceplugin._topology import topology_for_nodes

        node_list = tuple(nodes)
        return cls(
            state=state,
            nodes=node_list,
            mounts=tuple(mounts),
            envs=envs or {},
            annotations=annotations or {},
            topology=topology_for_nodes([n.host_path for n in node_list], sysfs_root=sysfs_root),
            cdi_spec=cdi_spec,
        )

    @property
    def numa_nodes(self) -> tuple[int, ...]:
        """The NUMA node IDs of the device's topology, empty when it has none."""
        if self.topology is None:
            return ()
        return tuple(node.ID for node in self.topology.nodes)


class DeviceTree(Mapping[str, Mapping[str, DeviceInfo]]):
    """Devices found by one scan, grouped by device type: ``tree[dev_type][dev_id]``.

    Each device type becomes one resource ``<namespace>/<dev_type>`` with its own
    gRPC server.
    """

    def __init__(self) -> None:
        self._types: dict[str, dict[str, DeviceInfo]] = {}

    def add_device(self, dev_type: str, dev_id: str, info: DeviceInfo) -> None:
        """Add (or replace) device ``dev_id`` of type ``dev_type``."""
        if not isinstance(dev_type, str) or not dev_type:
            raise ValueError(f"device type must be a non-empty string, got {dev_type!r}")
        if not isinstance(dev_id, str) or not dev_id:
            raise ValueError(f"device ID must be a non-empty string, got {dev_id!r}")
        if not isinstance(info, DeviceInfo):
            raise TypeError(f"device {dev_id!r}: expected a DeviceInfo, got {type(info).__name__}")
        self._types.setdefault(dev_type, {})[dev_id] = info

    def device_type_count(self, dev_type: str) -> int:
        """Return how many devices of ``dev_type`` the tree holds."""
        return len(self._types.get(dev_type, ()))

    def __getitem__(self, dev_type: str) -> Mapping[str, DeviceInfo]:
        return MappingProxyType(self._types[dev_type])

    def __iter__(self) -> Iterator[str]:
        return iter(self._types)

    def __len__(self) -> int:
        return len(self._types)

    def __repr__(self) -> str:
        counts = ", ".join(f"{t}: {len(d)}" for t, d in self._types.items())
        return f"DeviceTree({counts})"


@runtime_checkable
class Notifier(Protocol):
    """Receives the scanner's device trees; ``notify`` is safe to call from any thread."""

    def notify(self, tree: DeviceTree) -> None:
        """Publish ``tree`` as the complete current set of devices."""


@runtime_checkable
class Scanner(Protocol):
    """Finds devices; ``scan`` loops, calling ``notifier.notify(tree)`` on every change.

    ``scan`` may be a coroutine function or a plain function (run in a worker thread).
    """

    def scan(self, notifier: Notifier) -> Awaitable[None] | None:
        """Scan for devices until cancelled (or return after the last notify)."""


@runtime_checkable
class Allocator(Protocol):
    """Optional: takes over Allocate (raise ``UseDefaultMethodError`` to decline)."""

    def allocate(
        self, request: pluginapi.AllocateRequest
    ) -> pluginapi.AllocateResponse | Awaitable[pluginapi.AllocateResponse]:
        """Answer kubelet's Allocate request."""


@runtime_checkable
class PostAllocator(Protocol):
    """Optional: edits the Allocate response in place after it is built."""

    def post_allocate(self, response: pluginapi.AllocateResponse) -> Awaitable[None] | None:
        """Adjust ``response``; an exception fails the Allocate call."""


@runtime_checkable
class PreferredAllocator(Protocol):
    """Optional: answers GetPreferredAllocation (advertised to kubelet when present)."""

    def get_preferred_allocation(
        self, request: pluginapi.PreferredAllocationRequest
    ) -> pluginapi.PreferredAllocationResponse | Awaitable[pluginapi.PreferredAllocationResponse]:
        """Choose devices from ``available_deviceIDs`` for each container request."""


@runtime_checkable
class ContainerPreStarter(Protocol):
    """Optional: runs before each container start (advertised as ``pre_start_required``)."""

    def pre_start_container(
        self, request: pluginapi.PreStartContainerRequest
    ) -> Awaitable[None] | None:
        """Prepare the devices in ``request.devices_ids``; an exception fails the start."""
