"""The seed's vocabulary: DeviceInfo, DeviceTree, the scanner protocols and constants."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from host._api import api_pb2 as pluginapi
from host.deviceplugin._attributes import AttributeValue, frozen_attributes, frozen_capacity
from host.deviceplugin._wire import device_tail

__all__ = [
    "HEALTHY",
    "UNHEALTHY",
    "Allocator",
    "ContainerPreStarter",
    "DeviceInfo",
    "DeviceSpec",
    "DeviceTree",
    "DeviceTypeDeclarer",
    "Mount",
    "NUMANode",
    "Notifier",
    "PeriodicScanner",
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


class UseDefaultMethodError(Exception):
    """Raised (or returned) by a scanner's ``allocate`` to fall back to the default Allocate."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
"""Control characters: never part of a name, an ID or a path the host passes on."""


def name_problem(value: str) -> str | None:
    """Why ``value`` cannot serve as a device ID or type (control characters), or None."""
    found = _CONTROL.search(value)
    if found is None:
        return None
    return f"contains control character {found.group()!r} at position {found.start()}"


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """A device node to expose in the container (``v1beta1.DeviceSpec``); immutable.

    ``DeviceSpec(host_path="/dev/dri/card0", container_path="/dev/dri/card0",
    permissions="rw")``. A ``v1beta1.DeviceSpec`` message is accepted wherever a
    DeviceSpec is and converted with :meth:`of`.
    """

    container_path: str = ""
    host_path: str = ""
    permissions: str = ""

    @classmethod
    def of(cls, value: DeviceSpec | pluginapi.DeviceSpec) -> DeviceSpec:
        """Return ``value`` as a DeviceSpec (a wire message is copied)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, pluginapi.DeviceSpec):
            return cls(value.container_path, value.host_path, value.permissions)
        raise TypeError(f"expected DeviceSpec, got {type(value).__name__}: {value!r}")


@dataclass(frozen=True, slots=True)
class Mount:
    """A host path to mount into the container (``v1beta1.Mount``); immutable."""

    container_path: str = ""
    host_path: str = ""
    read_only: bool = False

    @classmethod
    def of(cls, value: Mount | pluginapi.Mount) -> Mount:
        """Return ``value`` as a Mount (a wire message is copied)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, pluginapi.Mount):
            return cls(value.container_path, value.host_path, value.read_only)
        raise TypeError(f"expected Mount, got {type(value).__name__}: {value!r}")


@dataclass(frozen=True, slots=True)
class NUMANode:
    """One NUMA node of a device's topology (``v1beta1.NUMANode``)."""

    ID: int = 0  # the wire name, kept so code written for the message works


@dataclass(frozen=True, slots=True)
class TopologyInfo:
    """The NUMA nodes a device is attached to (``v1beta1.TopologyInfo``); immutable."""

    nodes: tuple[NUMANode, ...] = ()

    def __post_init__(self) -> None:
        nodes = tuple(self.nodes)
        for node in nodes:
            if not isinstance(node, NUMANode):
                raise TypeError(f"TopologyInfo nodes must be NUMANode, got {node!r}")
        object.__setattr__(self, "nodes", nodes)

    @classmethod
    def of(cls, value: TopologyInfo | pluginapi.TopologyInfo) -> TopologyInfo:
        """Return ``value`` as a TopologyInfo (a wire message is copied)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, pluginapi.TopologyInfo):
            return cls(tuple(NUMANode(node.ID) for node in value.nodes))
        raise TypeError(f"topology must be a TopologyInfo, got {type(value).__name__}: {value!r}")

    def to_message(self) -> pluginapi.TopologyInfo:
        """Return the wire message kubelet receives."""
        return pluginapi.TopologyInfo(nodes=[pluginapi.NUMANode(ID=n.ID) for n in self.nodes])


_EMPTY_MAP: Mapping[str, str] = MappingProxyType({})

MAX_HEALTH_MESSAGE = 1024
"""Characters of a health message kept; kubelet cuts longer ones the same way
(kubernetes ``pkg/kubelet/cm/dra``: 1,021 characters and ``...``)."""


def cut_health_message(message: str) -> str:
    """Return ``message`` cut to :data:`MAX_HEALTH_MESSAGE` characters, ending in ``...``."""
    if len(message) <= MAX_HEALTH_MESSAGE:
        return message
    return message[: MAX_HEALTH_MESSAGE - 3] + "..."


def _frozen_map(values: Mapping[str, str] | None, what: str) -> Mapping[str, str]:
    if not values:
        return _EMPTY_MAP  # shared: most devices have no envs or annotations
    result = dict(values)
    for key, value in result.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"{what} must map str to str, got {key!r}: {value!r}")
    return MappingProxyType(result)


class _FrozenDict(dict[str, Any]):
    """A dict that refuses changes: a published CDI spec must not move under the host.

    Still a ``dict``, so ``json.dumps`` and ``isinstance(x, dict)`` work as before.
    """

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a DeviceInfo's CDI spec is read-only; build a new DeviceInfo")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _refuse
    __ior__ = _refuse


class _FrozenList(list[Any]):
    """A list that refuses changes (see :class:`_FrozenDict`)."""

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a DeviceInfo's CDI spec is read-only; build a new DeviceInfo")

    __setitem__ = __delitem__ = append = extend = insert = pop = remove = _refuse
    clear = sort = reverse = __iadd__ = __imul__ = _refuse


def _deep_freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return _FrozenDict({key: _deep_freeze(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return _FrozenList(_deep_freeze(item) for item in value)
    return value


@dataclass(frozen=True, eq=True, kw_only=True)
class DeviceInfo:
    """Everything kubelet needs to know about one device: health, nodes, mounts, and more.

    An immutable value, all the way down (device nodes, mounts and topology are frozen
    dataclasses, maps are read-only, a CDI spec is a read-only copy), so what the host
    has published cannot change behind its back. Every argument is a keyword::

        DeviceInfo(state=HEALTHY,
                   nodes=[DeviceSpec(host_path="/dev/dri/card0",
                                     container_path="/dev/dri/card0", permissions="rw")])

    ``topology`` is given directly; :meth:`with_topology` reads it from sysfs instead
    (the Go ``NewDeviceInfo``). ``cdi_spec`` is a CDI spec (JSON-like dict with
    ``cdiVersion``, ``kind`` and exactly one entry in ``devices``). The ``v1beta1``
    wire messages (``pluginapi.DeviceSpec`` and friends) are accepted and copied.
    ``attributes`` (name -> str/int/bool/:class:`SemVer`) and ``capacity`` (name ->
    quantity string) are published only by a DRA driver; names are ``[<domain>/]<C
    identifier>`` (domain <= 63, identifier <= 32), string values <= 64 characters.

    ``health_message`` says in words why the device is in its state (``"ECC errors:
    12 uncorrectable"``); a DRA driver streams it to kubelet with the device's health
    (KEP-4680) and logs it when it changes. Kubelet's device-plugin API has no place
    for it: device plugins still send only Healthy or Unhealthy. Longer messages
    are cut to :data:`MAX_HEALTH_MESSAGE` characters, as kubelet does.
    """

    state: str = HEALTHY
    nodes: tuple[DeviceSpec, ...] = ()
    mounts: tuple[Mount, ...] = ()
    envs: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    topology: TopologyInfo | None = None
    cdi_spec: Mapping[str, Any] | None = None
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    capacity: Mapping[str, str] = field(default_factory=dict)
    health_message: str = ""

    def __post_init__(self) -> None:
        if self.state not in (HEALTHY, UNHEALTHY):
            raise ValueError(
                f"device state must be {HEALTHY!r} or {UNHEALTHY!r}, got {self.state!r}"
            )
        set_ = object.__setattr__
        if not isinstance(self.health_message, str):
            raise TypeError(
                f"health_message must be a str, got {type(self.health_message).__name__}: "
                f"{self.health_message!r}"
            )
        set_(self, "health_message", cut_health_message(self.health_message))
        set_(self, "nodes", tuple(DeviceSpec.of(node) for node in self.nodes))
        set_(self, "mounts", tuple(Mount.of(mount) for mount in self.mounts))
        set_(self, "envs", _frozen_map(self.envs, "envs"))
        set_(self, "annotations", _frozen_map(self.annotations, "annotations"))
        topology_message = None
        if self.topology is not None:
            set_(self, "topology", TopologyInfo.of(self.topology))
            topology_message = self.topology.to_message()
        # Built once: every ListAndWatch snapshot copies it in.
        set_(self, "_topology_message", topology_message)
        # Device.health and Device.topology as sent (see encode_device_list): built once.
        set_(self, "_wire_tail", device_tail(self.state, topology_message))
        cdi_key = None
        if self.cdi_spec is not None:
            from host.deviceplugin._cdi_spec import validate_cdi_spec

            checked = validate_cdi_spec(self.cdi_spec)
            cdi_key = json.dumps(checked, sort_keys=True)
            set_(self, "cdi_spec", _deep_freeze(checked))
        set_(self, "attributes", frozen_attributes(self.attributes))
        set_(self, "capacity", frozen_capacity(self.capacity))
        # Hashed once, here: trees compare devices by hash first (see DeviceTree).
        set_(
            self,
            "_hash",
            hash(
                (
                    self.state,
                    self.nodes,
                    self.mounts,
                    frozenset(self.envs.items()),
                    frozenset(self.annotations.items()),
                    self.topology,
                    cdi_key,
                    # SemVer is a str: the type tells a version from a string.
                    frozenset((k, type(v).__name__, v) for k, v in self.attributes.items()),
                    frozenset(self.capacity.items()),
                    self.health_message,
                )
            ),
        )

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined, no-any-return]

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, DeviceInfo):
            return NotImplemented
        if self._hash != other._hash:  # type: ignore[attr-defined]
            return False
        return (
            self.state == other.state
            and self.nodes == other.nodes
            and self.mounts == other.mounts
            and self.envs == other.envs
            and self.annotations == other.annotations
            and self.topology == other.topology
            and self.cdi_spec == other.cdi_spec
            and self.attributes == other.attributes
            and self.capacity == other.capacity
            and self.health_message == other.health_message
        )

    @classmethod
    def with_topology(
        cls,
        *,
        state: str = HEALTHY,
        nodes: Iterable[DeviceSpec | pluginapi.DeviceSpec] = (),
        mounts: Iterable[Mount | pluginapi.Mount] = (),
        envs: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        cdi_spec: Mapping[str, Any] | None = None,
        health_message: str = "",
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
            nodes=tuple(DeviceSpec.of(node) for node in node_list),
            mounts=tuple(Mount.of(mount) for mount in mounts),
            envs=envs or {},
            annotations=annotations or {},
            topology=topology_for_nodes([n.host_path for n in node_list], sysfs_root=sysfs_root),
            cdi_spec=cdi_spec,
            health_message=health_message,
        )

    @property
    def numa_nodes(self) -> tuple[int, ...]:
        """The NUMA node IDs of the device's topology, empty when it has none."""
        if self.topology is None:
            return ()
        return tuple(node.ID for node in self.topology.nodes)

    @property
    def topology_message(self) -> pluginapi.TopologyInfo | None:
        """The topology as the wire message (shared: copy it in, never change it)."""
        return self._topology_message  # type: ignore[attr-defined, no-any-return]


_FINGERPRINT_MASK = (1 << 64) - 1

_NO_IDS: frozenset[str] = frozenset()


def _noteworthy(info: DeviceInfo) -> bool:
    """Whether a device's health is news on its own: not Healthy, or explained."""
    return info.state != HEALTHY or bool(info.health_message)


class DeviceTree(Mapping[str, Mapping[str, DeviceInfo]]):
    """Devices found by one scan, grouped by device type: ``tree[dev_type][dev_id]``.

    Each device type becomes one resource ``<namespace>/<dev_type>`` with its own
    gRPC server.
    """

    def __init__(self) -> None:
        self._types: dict[str, dict[str, DeviceInfo]] = {}
        # Per type, the sum of hash((id, info)) over its devices, kept as devices are
        # added: the notifier tells changed types from unchanged ones without
        # comparing every device (one changed device among 100,000 costs one type).
        self._sums: dict[str, int] = {}
        # Per type, the IDs of devices carrying a CDI spec (most types have none): the
        # host writes spec files for these only, without visiting every device.
        self._cdi: dict[str, set[str]] = {}
        # Likewise the IDs of devices worth a log line: not Healthy, or with a message.
        self._noted: dict[str, set[str]] = {}
        self._rejected: list[tuple[str, str, str]] = []

    def add_device(self, dev_type: str, dev_id: str, info: DeviceInfo) -> None:
        """Add (or replace) device ``dev_id`` of type ``dev_type``.

        A type or ID with control characters is not added: the notifier logs it with
        the device named, and the rest of the tree is served.
        """
        if not isinstance(dev_type, str) or not dev_type:
            raise ValueError(f"device type must be a non-empty string, got {dev_type!r}")
        if not isinstance(dev_id, str) or not dev_id:
            raise ValueError(f"device ID must be a non-empty string, got {dev_id!r}")
        if not isinstance(info, DeviceInfo):
            raise TypeError(f"device {dev_id!r}: expected a DeviceInfo, got {type(info).__name__}")
        problem = name_problem(dev_type)
        if problem is not None:
            self._rejected.append((dev_type, dev_id, f"device type {problem}"))
            return
        problem = name_problem(dev_id)
        if problem is not None:
            self._rejected.append((dev_type, dev_id, f"device ID {problem}"))
            return
        devices = self._types.setdefault(dev_type, {})
        total = self._sums.get(dev_type, 0)
        old = devices.get(dev_id)
        if old is not None:
            total -= hash((dev_id, old))
            if old.cdi_spec is not None and info.cdi_spec is None:
                self._cdi[dev_type].discard(dev_id)
            if _noteworthy(old) and not _noteworthy(info):
                self._noted[dev_type].discard(dev_id)
        if info.cdi_spec is not None:
            self._cdi.setdefault(dev_type, set()).add(dev_id)
        if _noteworthy(info):
            self._noted.setdefault(dev_type, set()).add(dev_id)
        devices[dev_id] = info
        self._sums[dev_type] = (total + hash((dev_id, info))) & _FINGERPRINT_MASK

    def _fingerprint(self, dev_type: str) -> tuple[int, int]:
        """``(device count, hash sum)`` of one type: equal for equal device sets."""
        return len(self._types[dev_type]), self._sums[dev_type]

    def _cdi_ids(self, dev_type: str) -> frozenset[str]:
        """IDs of the devices of ``dev_type`` that carry a CDI spec."""
        ids = self._cdi.get(dev_type)
        return frozenset(ids) if ids else _NO_IDS

    def _noted_ids(self, dev_type: str) -> frozenset[str]:
        """IDs of the devices of ``dev_type`` that are not Healthy or carry a message."""
        ids = self._noted.get(dev_type)
        return frozenset(ids) if ids else _NO_IDS

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
class DeviceTypeDeclarer(Protocol):
    """Optional: names the device types the scanner, as configured, may ever notify.

    Read without scanning (``devplugin-host dra deviceclasses`` makes a DeviceClass per
    type), so a type missing from this node's hardware is named too. Types named after
    what a scan finds (hardware IDs) cannot be declared: leave them out, or the method.
    """

    def device_types(self) -> Iterable[str]:
        """Return the device types (``i915``, not ``gpu.intel.com/i915``)."""


@runtime_checkable
class PeriodicScanner(Protocol):
    """Optional: a scanner declaring that it notifies at least every ``check_interval`` s.

    ``check_interval`` is a number of seconds, as an attribute or a method returning
    it, read once when the plugin is served. It is a promise about ``notify`` calls,
    not about changes: a scanner that reports only what changed must still notify
    (the same tree will do) at least that often. A DRA driver reports the devices of
    a scanner that breaks its promise as Unknown to kubelet's device health stream
    (not as healthy) until it notifies again. Without it, the devices are never
    Unknown for lack of news.
    """

    check_interval: float


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
