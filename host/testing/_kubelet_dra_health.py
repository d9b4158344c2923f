"""Kubelet's DRA device health client (KEP-4680), as :class:`FakeDraKubelet` runs it.

What kubelet does (kubernetes ``pkg/kubelet/cm/dra/plugin/dra_plugin_manager.go``,
``pkg/kubelet/cm/dra/manager.go``, ``pkg/kubelet/cm/dra/healthinfo.go``):

* for each registered plugin instance it calls ``NodeWatchResources`` on the DRA
  socket, with the service picked from the plugin's ``supported_versions``:
  ``v1.DRAResourceHealth`` if listed, else ``v1alpha1.DRAResourceHealth``, else no
  stream (1.34-1.36 kubelets know only v1alpha1);
* when the stream ends or cannot be opened it forgets the driver's health and tries
  again 5 s later, until the plugin deregisters;
* each message stamps every device it names with the time it *arrived*; a device
  reads Unknown once its timeout (``health_check_timeout_seconds``; <= 0 means 30 s)
  passed without a message naming it, or when no message ever named it;
* a container's ``allocatedResourcesStatus`` lists, per claim, each prepared device
  with its health: the resource ID is the device's first CDI device ID in the
  NodePrepareResources answer, else ``<driver>/<pool>/<device>``. A change of health,
  message or timeout of a device some claim holds triggers a pod status update.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from host._api import (
    dra_health_v1_pb2,
    dra_health_v1_pb2_grpc,
    dra_health_v1alpha1_pb2,
    dra_health_v1alpha1_pb2_grpc,
)

__all__ = [
    "DEFAULT_HEALTH_TIMEOUT",
    "HEALTH_RETRY_INTERVAL",
    "KUBELET_HEALTH_SERVICES",
    "DraDeviceHealth",
    "DraHealthClient",
    "DraHealthStream",
    "DraResourceHealth",
    "pick_health_service",
]

_LOG = logging.getLogger("host.testing.kubelet.dra.health")

KUBELET_HEALTH_SERVICES = ("v1.DRAResourceHealth", "v1alpha1.DRAResourceHealth")
"""The health services a 1.37 kubelet speaks, preferred first."""
HEALTH_RETRY_INTERVAL = 5.0
"""Seconds kubelet waits before opening a stream again (``wait.UntilWithContext``)."""
DEFAULT_HEALTH_TIMEOUT = 30.0
"""Kubelet's ``DefaultHealthTimeout``: a device's timeout when the plugin sends <= 0."""

_HEALTH_NAMES = {0: "Unknown", 1: "Healthy", 2: "Unhealthy"}


def pick_health_service(supported_versions: Sequence[str], services: Sequence[str]) -> str | None:
    """Return the first of kubelet's ``services`` the plugin lists, or None (no stream)."""
    for service in services:
        if service in supported_versions:
            return service
    return None


@dataclass(frozen=True)
class DraDeviceHealth:
    """One device's health as kubelet's cache holds it."""

    pool: str
    device: str
    health: str
    """``Healthy``, ``Unhealthy`` or ``Unknown``, as received."""
    message: str
    timeout: float
    """Seconds this report stays valid (the plugin's value, or kubelet's 30 s)."""
    last_updated: int
    """The plugin's ``last_updated_time`` (Unix seconds); kubelet does not use it."""
    received_at: float
    """Monotonic time the last message naming the device arrived."""


@dataclass(frozen=True)
class DraResourceHealth:
    """One ``allocatedResourcesStatus[].resources[]`` entry of a claim's device."""

    resource_id: str
    health: str
    """``Healthy``, ``Unhealthy`` or ``Unknown`` (timed out, or never reported)."""
    message: str = ""


@dataclass
class DraHealthStream:
    """Kubelet's health stream of one plugin instance: what it opened and received."""

    driver: str
    endpoint: str
    service: str
    """The service picked, e.g. ``"v1.DRAResourceHealth"``."""
    opened: int = 0
    """Streams opened so far (one more after every retry)."""
    messages: int = 0
    """Messages received over all of them."""
    last_error: str = ""
    """How the last stream ended (``"EOF"`` or the gRPC status)."""


@dataclass(frozen=True)
class _PreparedClaim:
    driver: str
    devices: tuple[tuple[str, str, str], ...]  # pool, device, resource ID


class DraHealthClient:
    """Kubelet's health streams, health cache and per-claim health for FakeDraKubelet.

    ``services`` are the health services this kubelet speaks, preferred first (empty:
    the ``ResourceHealthStatus`` gate is off); ``retry_interval`` the pause before a
    stream is opened again (kubelet: 5 s); ``changed`` is awaited after every change.
    """

    def __init__(
        self,
        services: Sequence[str],
        retry_interval: float,
        changed: Callable[[], Awaitable[None]],
    ) -> None:
        self.services = tuple(services)
        self.retry_interval = retry_interval
        self._changed = changed
        self._cache: dict[str, dict[tuple[str, str], DraDeviceHealth]] = {}
        self._streams: dict[tuple[str, str], tuple[DraHealthStream, asyncio.Task[None]]] = {}
        self._claims: dict[str, _PreparedClaim] = {}
        self._history: dict[str, list[tuple[DraResourceHealth, ...]]] = {}

    # -- observation -----------------------------------------------------------------

    def streams(self, driver: str) -> Sequence[DraHealthStream]:
        """Return the health streams kubelet runs for ``driver``'s instances, oldest first."""
        return tuple(stream for (name, _), (stream, _) in self._streams.items() if name == driver)

    def device_health(self, driver: str) -> Mapping[tuple[str, str], DraDeviceHealth]:
        """Return kubelet's cache for ``driver``: ``(pool, device)`` -> last report."""
        return dict(self._cache.get(driver, {}))

    def health_of(self, driver: str, pool: str, device: str) -> tuple[str, str]:
        """``(health, message)`` of a device as kubelet reads it (timeouts applied)."""
        report = self._cache.get(driver, {}).get((pool, device))
        if report is None or time.monotonic() - report.received_at > report.timeout:
            return "Unknown", ""
        return report.health, report.message

    def claim_health(self, uid: str) -> tuple[DraResourceHealth, ...]:
        """Return the ``allocatedResourcesStatus`` resources of prepared claim ``uid``, now."""
        claim = self._claims.get(uid)
        if claim is None:
            return ()
        return tuple(
            DraResourceHealth(resource_id, *self.health_of(claim.driver, pool, device))
            for pool, device, resource_id in claim.devices
        )

    def claim_updates(self, uid: str) -> Sequence[tuple[DraResourceHealth, ...]]:
        """Every pod status update kubelet made for claim ``uid`` (its health each time)."""
        return tuple(self._history.get(uid, ()))

    # -- claims ----------------------------------------------------------------------

    def claim_prepared(self, uid: str, driver: str, devices: Sequence[Any]) -> None:
        """Remember a prepared claim's devices (``DraDevice`` of the Prepare answer)."""
        self._claims[uid] = _PreparedClaim(
            driver,
            tuple(
                (
                    d.pool,
                    d.device,
                    d.cdi_device_ids[0] if d.cdi_device_ids else f"{driver}/{d.pool}/{d.device}",
                )
                for d in devices
            ),
        )

    def claim_unprepared(self, uid: str) -> None:
        """Forget an unprepared claim."""
        self._claims.pop(uid, None)

    # -- streams ---------------------------------------------------------------------

    def watch(
        self, driver: str, endpoint: str, supported: Sequence[str], channel: grpc.aio.Channel
    ) -> None:
        """Start the health stream of a registered instance, if kubelet picks a service."""
        service = pick_health_service(supported, self.services)
        if service is None or (driver, endpoint) in self._streams:
            return
        stream = DraHealthStream(driver, endpoint, service)
        task = asyncio.create_task(
            self._run(stream, channel), name=f"fake-kubelet-dra-health {driver}"
        )
        self._streams[(driver, endpoint)] = (stream, task)

    async def unwatch(self, driver: str, endpoint: str) -> None:
        """Stop the health stream of a deregistered instance."""
        entry = self._streams.pop((driver, endpoint), None)
        if entry is not None:
            task = entry[1]
            task.cancel()
            # Waited for, not awaited: the stream's CancelledError is not this caller's,
            # and a caller cancelled meanwhile (the plugin watcher stopping during a
            # deregistration) must stay cancelled, or the watcher's loop runs on and
            # its stop waits for ever.
            await asyncio.wait({task})
            if not task.cancelled():
                task.result()

    async def stop(self) -> None:
        """Stop every stream and forget everything (kubelet gone)."""
        for driver, endpoint in list(self._streams):
            await self.unwatch(driver, endpoint)
        self._cache.clear()
        self._claims.clear()

    async def _run(self, stream: DraHealthStream, channel: grpc.aio.Channel) -> None:
        v1 = stream.service == "v1.DRAResourceHealth"
        stub: Any = (
            dra_health_v1_pb2_grpc.DRAResourceHealthStub(channel)
            if v1
            else dra_health_v1alpha1_pb2_grpc.DRAResourceHealthStub(channel)
        )
        request = (dra_health_v1_pb2 if v1 else dra_health_v1alpha1_pb2).NodeWatchResourcesRequest()
        while True:
            call = stub.NodeWatchResources(request)
            stream.opened += 1
            try:
                async for response in call:
                    stream.messages += 1
                    await self._received(stream.driver, response)
                stream.last_error = "EOF"
            except grpc.aio.AioRpcError as err:
                stream.last_error = f"{err.code().name}: {err.details()}"
            finally:
                call.cancel()
                # kubelet's clearDriver: the driver's health is gone with its stream.
                self._cache.pop(stream.driver, None)
            await self._changed()
            _LOG.info(
                "health stream of DRA driver %s ended (%s); retrying in %g s",
                stream.driver,
                stream.last_error,
                self.retry_interval,
            )
            await asyncio.sleep(self.retry_interval)  # kubelet's retry period, not a wait

    async def _received(self, driver: str, response: Any) -> None:
        now = time.monotonic()
        cache = self._cache.setdefault(driver, {})
        reported = set()
        changed = set()
        for entry in response.devices:
            key = (entry.device.pool_name, entry.device.device_name)
            reported.add(key)
            seconds = entry.health_check_timeout_seconds
            report = DraDeviceHealth(
                pool=key[0],
                device=key[1],
                health=_HEALTH_NAMES.get(entry.health, "Unknown"),
                message=entry.message,
                timeout=float(seconds) if seconds > 0 else DEFAULT_HEALTH_TIMEOUT,
                last_updated=entry.last_updated_time,
                received_at=now,
            )
            before = cache.get(key)
            if before is None or (before.health, before.message, before.timeout) != (
                report.health,
                report.message,
                report.timeout,
            ):
                changed.add(key)
            cache[key] = report
        for key, report in list(cache.items()):
            stale = now - report.received_at > report.timeout
            if key not in reported and report.health != "Unknown" and stale:
                cache[key] = DraDeviceHealth(
                    report.pool, report.device, "Unknown", "", report.timeout, 0, now
                )
                changed.add(key)
        if not changed:
            return
        for uid, claim in self._claims.items():
            if claim.driver == driver and any((p, d) in changed for p, d, _ in claim.devices):
                self._history.setdefault(uid, []).append(self.claim_health(uid))
        await self._changed()
