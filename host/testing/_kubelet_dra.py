"""A fake kubelet DRA side: plugin-watcher registration and Prepare / Unprepare calls.

:class:`FakeDraKubelet` does what kubelet's plugin watcher and DRA manager do with a DRA
driver (kubernetes/kubernetes ``pkg/kubelet/pluginmanager`` and
``pkg/kubelet/cm/dra/plugin``): its plugin watcher (the shared
:class:`~host.testing._plugin_watcher.PluginWatcher`) finds registration sockets (not
hidden) in its registry directory and calls ``GetInfo``; its handler validates the
answer as the DRA handler does (type ``DRAPlugin``, a driver name, an absolute endpoint,
a supported service, chosen in the plugin's order among the kubelet's); the watcher
reports the outcome with ``NotifyRegistrationStatus``, and deregisters a socket that
goes away or registers it again when it is re-created (a restarted driver). Its plugin
manager (:class:`~host.testing._kubelet_dra_plugins.DraPluginManager`) keeps every
instance of a driver (a rolling update), follows their connections and sends each call
to the newest connected instance with the service chosen at registration; given an
API server it wipes the slices of a driver left without a connected instance, as
kubelet does. Each instance's device health stream runs as kubelet runs it
(:class:`~host.testing._kubelet_dra_health.DraHealthClient`, :attr:`FakeDraKubelet.health`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import grpc

from host._api import (
    dra_v1_pb2,
    dra_v1_pb2_grpc,
    dra_v1beta1_pb2,
    dra_v1beta1_pb2_grpc,
)
from host._pluginwatcher import DRA_PLUGIN_TYPE
from host.testing._kubelet_dra_health import (
    HEALTH_RETRY_INTERVAL,
    KUBELET_HEALTH_SERVICES,
    DraHealthClient,
)
from host.testing._kubelet_dra_plugins import DraPluginManager, DraPluginRegistration
from host.testing._kubelet_types import KubeletError
from host.testing._plugin_watcher import PluginWatcher, RegistrationFailure

if TYPE_CHECKING:
    from host.testing._apiserver import FakeApiServer

__all__ = ["DraClaimResult", "DraDevice", "DraPluginRegistration", "FakeDraKubelet"]

_LOG = logging.getLogger("host.testing.kubelet.dra")

KUBELET_DRA_SERVICES = ("v1.DRAPlugin", "v1beta1.DRAPlugin")
"""What kubelet 1.34-1.36 speaks, in its order."""
CALL_TIMEOUT = 45.0
"""kubelet's ``defaultClientCallTimeout`` for Prepare / Unprepare."""

ClaimTriple = tuple[str, str, str]
"""A claim as the tests give it: ``(namespace, name, uid)``."""


@dataclass(frozen=True)
class DraDevice:
    """One device of a NodePrepareResources answer."""

    request_names: tuple[str, ...]
    pool: str
    device: str
    cdi_device_ids: tuple[str, ...]
    share_id: str | None = None


@dataclass(frozen=True)
class DraClaimResult:
    """One claim's entry of a NodePrepareResources answer: devices, or an error."""

    devices: tuple[DraDevice, ...] = ()
    error: str = ""


class FakeDraKubelet:
    """Kubelet's DRA side in-process, speaking real gRPC to drivers over Unix sockets.

    ``registry_dir`` is the watched directory (kubelet: ``/var/lib/kubelet/plugins_registry``);
    ``services`` the DRA services this kubelet speaks in its order (pass
    ``("v1beta1.DRAPlugin",)`` for a 1.32-1.33 kubelet); ``rescan_interval`` how often
    the directory is looked at (kubelet's reconciler: every second);
    ``health_services`` the device health services it speaks, preferred first (``()``:
    the ``ResourceHealthStatus`` gate off; ``("v1alpha1.DRAResourceHealth",)``: 1.34-1.36)
    and ``health_retry_interval`` its pause before re-opening a health stream (5 s).

    With ``apiserver`` and ``node_name`` it also does what kubelet's DRA manager does to
    the API server (``pkg/kubelet/cm/dra/plugin``): Node ``node_name`` is created if
    missing (kubelet registers its Node), every :meth:`start` deletes the node's
    ResourceSlices of all drivers, as kubelet does at startup (in process, without an
    outage in the way), so drivers must publish again, and a driver's slices are
    deleted once it has had no connected instance for ``wiping_delay`` seconds
    (kubelet: 30; see :attr:`wipes`). ``plugin_dir`` is kubelet's DRA
    plugin directory (drivers' ``<driver>/dra.sock``; default: ``plugins`` beside the
    registry directory); the fake only tells drivers where it is.

    Use it as an async context manager, or call :meth:`start` and :meth:`stop`::

        async with FakeDraKubelet(registry_dir) as kubelet:
            reg = await kubelet.wait_for_driver("gpu.intel.com")
            results = await kubelet.prepare("gpu.intel.com", [("default", "claim", uid)])
    """

    def __init__(
        self,
        registry_dir: str | os.PathLike[str],
        *,
        services: Sequence[str] = KUBELET_DRA_SERVICES,
        rescan_interval: float = 0.02,
        apiserver: FakeApiServer | None = None,
        node_name: str | None = None,
        plugin_dir: str | os.PathLike[str] | None = None,
        health_services: Sequence[str] = KUBELET_HEALTH_SERVICES,
        health_retry_interval: float = HEALTH_RETRY_INTERVAL,
        wiping_delay: float = 30.0,
    ) -> None:
        if (apiserver is None) != (node_name is None):
            raise ValueError("FakeDraKubelet: give apiserver and node_name together, or neither")
        self.registry_dir = Path(registry_dir)
        self.plugin_dir = (
            Path(plugin_dir) if plugin_dir is not None else self.registry_dir.parent / "plugins"
        )
        """Kubelet's DRA plugin directory (informational: where drivers put their sockets)."""
        self.apiserver = apiserver
        """The API server kubelet talks to, if any."""
        self.node_name = node_name
        """The node this kubelet runs (the pool of every driver's devices), if any."""
        self.wiped = 0
        """ResourceSlices deleted by the starts so far (kubelet's startup wipe)."""
        if apiserver is not None and node_name is not None and not apiserver.has_node(node_name):
            apiserver.add_node(node_name)
        self.services = tuple(services)
        self.rescan_interval = rescan_interval
        self.health = DraHealthClient(health_services, health_retry_interval, self._notify)
        """Device health as kubelet sees it: streams, cache, per-claim resource health."""
        self._handler = DraPluginManager(
            self.services,
            notify=self._notify,
            health=self.health,
            wiper=apiserver,
            node_name=node_name,
            wiping_delay=wiping_delay,
        )
        self.calls: Counter[str] = Counter()
        """Prepare and Unprepare calls sent to each endpoint."""
        self._rejections: list[tuple[str, str]] = []
        self._watcher: PluginWatcher | None = None
        self._changed = asyncio.Condition()

    def __repr__(self) -> str:
        return f"FakeDraKubelet({str(self.registry_dir)!r})"

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Create the registry directory and start watching it (a kubelet start)."""
        if self._watcher is not None:
            raise KubeletError("FakeDraKubelet is already running")
        # kubelet: "When kubelet starts up, no DRA driver has registered yet [...]
        # better to not advertise any local resources" (NewDRAPluginManager).
        self.wiped += self._handler.wipe()
        self._watcher = PluginWatcher(
            self.registry_dir,
            {DRA_PLUGIN_TYPE: self._handler},
            interval=self.rescan_interval,
            notify=self._notify,
            on_failure=self._failed,
        )
        self._watcher.start()

    async def stop(self) -> None:
        """Stop watching and forget every plugin (kubelet gone); sockets stay."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            await watcher.stop()
        await self._handler.forget()
        await self._notify()

    async def restart(self) -> None:
        """Stop and start again: every socket present is registered anew."""
        await self.stop()
        await self.start()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- observation -----------------------------------------------------------------

    @property
    def drivers(self) -> Mapping[str, Sequence[DraPluginRegistration]]:
        """The registered instances of each driver, oldest first."""
        return {name: self._handler.registrations(name) for name in self._handler.drivers()}

    def connected(self, driver: str) -> tuple[str, ...]:
        """Return the endpoints of ``driver``'s instances kubelet is connected to, oldest first."""
        return self._handler.connected(driver)

    def chosen(self, driver: str) -> DraPluginRegistration | None:
        """Return the instance of ``driver`` a call goes to now: the newest connected one."""
        found = self._handler.get(driver)
        return None if found is None else found[0]

    @property
    def pending_wipes(self) -> frozenset[str]:
        """The drivers without a connected instance, their slices to be wiped soon."""
        return self._handler.pending_wipes()

    @property
    def wipes(self) -> Sequence[tuple[str, int]]:
        """Every wipe of slices: ``(driver, slices deleted)``; driver '' = all, at start."""
        return tuple(self._handler.wipes)

    @property
    def rejections(self) -> Sequence[tuple[str, str]]:
        """Every failed registration so far: ``(socket path, error sent to the plugin)``."""
        return tuple(self._rejections)

    def _failed(self, failure: RegistrationFailure) -> None:
        self._rejections.append((failure.socket_path, failure.error))

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(
        self,
        predicate: Any,
        timeout: float | None = 5.0,  # noqa: ASYNC109 - a timeout argument reads best in tests
        *,
        what: str = "condition",
    ) -> None:
        """Wait until ``predicate()`` is true; TimeoutError naming ``what`` otherwise."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                while not predicate():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.05):
                            await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(
                f"FakeDraKubelet: timed out after {timeout}s waiting for {what}; "
                f"drivers: {sorted(self.drivers)}, rejections: {self._rejections[-3:]}"
            ) from None

    async def wait_for_driver(
        self,
        driver: str,
        *,
        after: float | None = None,
        timeout: float | None = 5.0,  # noqa: ASYNC109 - as wait_for
    ) -> DraPluginRegistration:
        """Wait until ``driver`` is registered (newer than monotonic time ``after``)."""

        def newest() -> DraPluginRegistration | None:
            regs = self._handler.registrations(driver)
            if not regs:
                return None
            if after is not None and regs[-1].registered_at <= after:
                return None
            return regs[-1]

        await self.wait_for(lambda: newest() is not None, timeout, what=f"driver {driver!r}")
        found = newest()
        assert found is not None
        return found

    async def wait_for_no_driver(
        self,
        driver: str,
        timeout: float | None = 5.0,  # noqa: ASYNC109 - as wait_for
    ) -> None:
        """Wait until no instance of ``driver`` is registered."""
        await self.wait_for(
            lambda: not self._handler.registrations(driver),
            timeout,
            what=f"driver {driver!r} gone",
        )

    # -- calls -----------------------------------------------------------------------

    def _client(self, driver: str) -> tuple[DraPluginRegistration, grpc.aio.Channel]:
        found = self._handler.get(driver)
        if found is None:
            raise KubeletError(f"DRA driver {driver} is not registered")
        self.calls[found[0].endpoint] += 1
        return found

    async def prepare(
        self,
        driver: str,
        claims: Iterable[ClaimTriple],
        *,
        timeout: float = CALL_TIMEOUT,  # noqa: ASYNC109 - kubelet's per-call timeout
    ) -> dict[str, DraClaimResult]:
        """Call NodePrepareResources on ``driver`` (:meth:`chosen`); results by UID.

        Raises :class:`KubeletError` where kubelet fails the call itself (driver not
        registered, a result for an unknown claim UID, skipped claims); gRPC errors of
        the driver come as :class:`grpc.aio.AioRpcError`.
        """
        reg, channel = self._client(driver)
        claim_list = list(claims)
        v1 = reg.service == "v1.DRAPlugin"
        pb2: Any = dra_v1_pb2 if v1 else dra_v1beta1_pb2
        stub: Any = (
            dra_v1_pb2_grpc.DRAPluginStub(channel)
            if v1
            else dra_v1beta1_pb2_grpc.DRAPluginStub(channel)
        )
        request = pb2.NodePrepareResourcesRequest(
            claims=[pb2.Claim(namespace=ns, name=name, uid=uid) for ns, name, uid in claim_list]
        )
        response = await stub.NodePrepareResources(request, timeout=timeout)
        wanted = {uid for _, _, uid in claim_list}
        results: dict[str, DraClaimResult] = {}
        for uid, entry in response.claims.items():
            if uid not in wanted:
                raise KubeletError(
                    f"NodePrepareResources returned result for unknown claim UID {uid}"
                )
            devices = tuple(
                DraDevice(
                    request_names=tuple(d.request_names),
                    pool=d.pool_name,
                    device=d.device_name,
                    cdi_device_ids=tuple(d.cdi_device_ids),
                    share_id=d.share_id if v1 and d.HasField("share_id") else None,
                )
                for d in entry.devices
            )
            results[uid] = DraClaimResult(
                devices=devices if not entry.error else (), error=entry.error
            )
            if not entry.error:
                self.health.claim_prepared(uid, driver, devices)
        if len(results) < len(wanted):
            raise KubeletError(
                f"NodePrepareResources skipped {len(wanted) - len(results)} ResourceClaims"
            )
        return results

    async def unprepare(
        self,
        driver: str,
        claims: Iterable[ClaimTriple],
        *,
        timeout: float = CALL_TIMEOUT,  # noqa: ASYNC109 - kubelet's per-call timeout
    ) -> dict[str, str]:
        """Call NodeUnprepareResources; return each claim UID's error ('' = done)."""
        reg, channel = self._client(driver)
        claim_list = list(claims)
        v1 = reg.service == "v1.DRAPlugin"
        pb2: Any = dra_v1_pb2 if v1 else dra_v1beta1_pb2
        stub: Any = (
            dra_v1_pb2_grpc.DRAPluginStub(channel)
            if v1
            else dra_v1beta1_pb2_grpc.DRAPluginStub(channel)
        )
        request = pb2.NodeUnprepareResourcesRequest(
            claims=[pb2.Claim(namespace=ns, name=name, uid=uid) for ns, name, uid in claim_list]
        )
        response = await stub.NodeUnprepareResources(request, timeout=timeout)
        wanted = {uid for _, _, uid in claim_list}
        results = {}
        for uid, entry in response.claims.items():
            if uid not in wanted:
                raise KubeletError(
                    f"NodeUnprepareResources returned result for unknown claim UID {uid}"
                )
            results[uid] = entry.error
            if not entry.error:
                self.health.claim_unprepared(uid)
        if len(results) < len(wanted):
            raise KubeletError(
                f"NodeUnprepareResources skipped {len(wanted) - len(results)} ResourceClaims"
            )
        return results
