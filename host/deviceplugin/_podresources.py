"""Who holds which device: kubelet's PodResources v1 API, read with a short cache.

Kubelet serves ``v1.PodResourcesLister`` on ``{root-dir}/pod-resources/kubelet.sock``
(``/var/lib/kubelet/pod-resources/kubelet.sock``; KEP-606, rate limited to 100 calls
a second). ``List`` names, for every active pod, the device IDs of each resource its
containers hold (and, with DRA, the CDI devices of its claims). The client here asks
at most once per ``ttl`` seconds, bounds each call with ``timeout``, and answers
``None`` ("unknown") while the API is absent, logging one line per change of state.

For plugins: ``await pod_resources().in_use("gpu.intel.com/i915")`` maps each held
device ID to its holders; :meth:`PodResourcesClient.in_use_cached` answers at once from
the last look (never waits, so it is safe on the Allocate path).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import grpc

from host._api import podresources_pb2, podresources_pb2_grpc
from host.deviceplugin._cdi_store import DevicesInUse

__all__ = [
    "DEFAULT_POD_RESOURCES_SOCKET",
    "DeviceHolder",
    "HeldDevices",
    "PodResourcesClient",
    "configure_pod_resources",
    "pod_resources",
]

log = logging.getLogger("host.deviceplugin.podresources")

DEFAULT_POD_RESOURCES_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
"""Kubelet's PodResources socket with the default ``--root-dir``."""
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
"""What kubelet's own client accepts from the API (a node with many pods and devices)."""


@dataclass(frozen=True)
class DeviceHolder:
    """A container holding a device: pod name, namespace and container name."""

    pod: str
    namespace: str
    container: str


@dataclass(frozen=True)
class HeldDevices:
    """Devices held by running containers, as kubelet's PodResources List tells."""

    devices: Mapping[str, Mapping[str, tuple[DeviceHolder, ...]]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    """Resource name -> device ID -> the containers holding it."""
    cdi_devices: frozenset[str] = frozenset()
    """Fully qualified CDI device names of DRA claims (``vendor.com/class=name``)."""
    time: float = 0.0
    """When kubelet answered (:func:`time.monotonic`)."""

    def device_ids(self, resource_name: str) -> frozenset[str]:
        """Return the IDs of ``resource_name`` held by some container."""
        return frozenset(self.devices.get(resource_name, {}))


def _held(response: podresources_pb2.ListPodResourcesResponse) -> HeldDevices:
    devices: dict[str, dict[str, list[DeviceHolder]]] = {}
    cdi: set[str] = set()
    for pod in response.pod_resources:
        for container in pod.containers:
            holder = DeviceHolder(pod.name, pod.namespace, container.name)
            for entry in container.devices:
                by_id = devices.setdefault(entry.resource_name, {})
                for dev_id in entry.device_ids:
                    holders = by_id.setdefault(dev_id, [])
                    # One entry per (device, NUMA node): count each holder once.
                    if holder not in holders:
                        holders.append(holder)
            for dynamic in container.dynamic_resources:
                for claim in dynamic.claim_resources:
                    cdi.update(device.name for device in claim.cdi_devices)
    frozen = {
        resource: MappingProxyType({dev_id: tuple(h) for dev_id, h in by_id.items()})
        for resource, by_id in devices.items()
    }
    return HeldDevices(MappingProxyType(frozen), frozenset(cdi), time.monotonic())


class PodResourcesClient:
    """Reads kubelet's PodResources v1 API, cached for ``ttl`` seconds.

    Every method answers ``None`` when the API cannot be asked (no socket, kubelet
    down, an error): devices in use are then unknown, not "none".
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str] = DEFAULT_POD_RESOURCES_SOCKET,
        *,
        ttl: float = 2.0,
        timeout: float = 1.0,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.ttl = ttl
        self.timeout = timeout
        self._held: HeldDevices | None = None
        self._asked_at: float | None = None
        self._available: bool | None = None
        self._lock: asyncio.Lock | None = None
        self._refresh: asyncio.Task[HeldDevices | None] | None = None

    @property
    def available(self) -> bool | None:
        """Whether the last call reached kubelet (None before the first)."""
        return self._available

    async def held_devices(self) -> HeldDevices | None:
        """Devices held by running containers (cached ``ttl`` s); None when unknown.

        The CDI garbage collector's question: a CDI spec whose device ID (or DRA CDI
        name) appears here is in use and must stay.
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            now = time.monotonic()
            if self._asked_at is not None and now - self._asked_at < self.ttl:
                return self._held
            self._asked_at = now
            self._held = await self._list()
            return self._held

    async def devices_in_use(self) -> DevicesInUse | None:
        """Return what running containers hold, for the CDI spec store's garbage collection.

        An :class:`~host.deviceplugin.InUse`: pass ``client.devices_in_use`` as a
        Manager's ``cdi_in_use``. None when unknown (then nothing is collected).
        """
        held = await self.held_devices()
        if held is None:
            return None
        pairs = frozenset(
            (resource, dev_id) for resource, by_id in held.devices.items() for dev_id in by_id
        )
        return DevicesInUse(device_ids=pairs, cdi_names=held.cdi_devices)

    async def in_use(self, resource_name: str) -> Mapping[str, tuple[DeviceHolder, ...]] | None:
        """Which devices of ``resource_name`` are allocated, and to whom; None when unknown."""
        held = await self.held_devices()
        if held is None:
            return None
        return held.devices.get(resource_name, MappingProxyType({}))

    def in_use_cached(self, resource_name: str) -> Mapping[str, tuple[DeviceHolder, ...]] | None:
        """As :meth:`in_use` from the last answer, at once (refreshed in the background).

        Never waits: safe inside ``allocate``. None while nothing is known.
        """
        stale = self._asked_at is None or time.monotonic() - self._asked_at >= self.ttl
        if stale and (self._refresh is None or self._refresh.done()):
            # No loop here (a plugin's thread): the next async caller refreshes.
            with contextlib.suppress(RuntimeError):
                self._refresh = asyncio.get_running_loop().create_task(self.held_devices())
        held = self._held
        if held is None:
            return None
        return held.devices.get(resource_name, MappingProxyType({}))

    async def _list(self) -> HeldDevices | None:
        if not self.socket_path.is_socket():
            self._state(False, f"no socket at {self.socket_path}")
            return None
        try:
            async with grpc.aio.insecure_channel(
                f"unix:{self.socket_path}",
                options=[("grpc.max_receive_message_length", MAX_RESPONSE_BYTES)],
            ) as channel:
                stub = podresources_pb2_grpc.PodResourcesListerStub(channel)
                response = await stub.List(
                    podresources_pb2.ListPodResourcesRequest(), timeout=self.timeout
                )
        except grpc.aio.AioRpcError as err:
            self._state(False, f"{err.code().name}: {err.details()}")
            return None
        self._state(True, "")
        return _held(response)

    def _state(self, available: bool, why: str) -> None:
        # One line per change of state, never one per call.
        if available == self._available:
            return
        self._available = available
        if available:
            log.info("PodResources API at %s answers: devices in use are known", self.socket_path)
        else:
            log.info(
                "PodResources API at %s unavailable (%s): devices in use are unknown",
                self.socket_path,
                why,
            )


_default = PodResourcesClient()


def pod_resources() -> PodResourcesClient:
    """Return the process's PodResources client (``--pod-resources-socket`` of the host)."""
    return _default


def configure_pod_resources(socket_path: str | os.PathLike[str], *, ttl: float = 2.0) -> None:
    """Point :func:`pod_resources` at ``socket_path`` (the host does, from its settings)."""
    global _default
    _default = PodResourcesClient(socket_path, ttl=ttl)
