"""Kubelet's DRA plugin manager: the registered instances of each driver, as kubelet keeps them.

Reproduces kubernetes/kubernetes ``pkg/kubelet/cm/dra/plugin/dra_plugin_manager.go``
(1.34+) for :class:`~host.testing.FakeDraKubelet`:

* A driver may have several instances (a rolling update: kubelet 1.33+), kept in the
  order they registered and keyed by endpoint; an endpoint registered twice is refused.
* Each instance gets one gRPC connection, dialled at once on registration; kubelet
  watches whether it is connected (a stats handler; on a lost connection it asks gRPC
  to connect again).
* A call goes to the newest **connected** instance, else to the newest one.
* When an instance's registration socket goes, it is deregistered and its connection
  closed: calls still in flight on it are cancelled (after a grace for an answer on the
  wire, as kubelet deregisters on its reconciler's next pass).
* A driver with no connected instance is unusable: its node's ResourceSlices are wiped
  (``DeleteCollection``, ``spec.nodeName=<node>,spec.driver=<driver>``) once it has
  been so for ``wiping_delay`` (kubelet: 30 s), unless an instance connects before. At
  start kubelet wipes every slice of its node.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import grpc

if TYPE_CHECKING:
    from host.testing._kubelet_dra_health import DraHealthClient

__all__ = ["DraPluginManager", "DraPluginRegistration", "SliceWiper"]

_LOG = logging.getLogger("host.testing.kubelet.dra")

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_SUN_PATH_MAX = 107
_MONITOR_STOP = 1.0
# Kubelet deregisters a removed socket on its plugin manager's next reconciler pass
# (pkg/kubelet/pluginmanager/plugin_manager.go: loopSleepDuration, 1 s), so an answer
# the instance sent before its socket went reaches kubelet first. The fake deregisters
# at once: its close lets calls in flight take an answer already on the wire for that
# long, then cancels them.
_DEREGISTER_GRACE = 1.0


class SliceWiper(Protocol):
    """Where kubelet deletes ResourceSlices (a :class:`~host.testing.FakeApiServer`)."""

    def wipe_resource_slices(self, field_selector: str) -> int:
        """Delete the slices matching ``field_selector``; return how many went."""


@dataclass(frozen=True)
class DraPluginRegistration:
    """A DRA plugin instance kubelet accepted."""

    driver: str
    endpoint: str
    service: str
    """The chosen service, e.g. ``"v1.DRAPlugin"``."""
    supported_versions: tuple[str, ...]
    socket_path: str
    """The registration socket it was found through."""
    registered_at: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class _Instance:
    reg: DraPluginRegistration
    channel: grpc.aio.Channel
    connected: bool = False
    monitor: asyncio.Task[None] | None = None


class DraPluginManager:
    """The driver instances one fake kubelet knows (a plugin-watcher handler).

    ``services`` are the DRA services this kubelet speaks, in its order; ``notify`` is
    awaited after every change of a connection; ``health`` runs each instance's device
    health stream; with ``wiper`` and ``node_name``,
    unusable drivers' slices are wiped after ``wiping_delay`` seconds.
    """

    def __init__(
        self,
        services: tuple[str, ...],
        *,
        notify: Callable[[], Coroutine[Any, Any, None]],
        health: DraHealthClient | None = None,
        wiper: SliceWiper | None = None,
        node_name: str | None = None,
        wiping_delay: float = 30.0,
    ) -> None:
        self.services = services
        self._notify = notify
        self._health = health
        self._wiper = wiper
        self._node_name = node_name
        self.wiping_delay = wiping_delay
        self._instances: dict[str, list[_Instance]] = {}
        self._pending_wipes: dict[str, asyncio.TimerHandle] = {}
        self.wipes: list[tuple[str, int]] = []
        """Every wipe so far: ``(driver, slices deleted)``; driver '' = all (kubelet start)."""

    # -- what kubelet knows ----------------------------------------------------------

    def registrations(self, driver: str) -> tuple[DraPluginRegistration, ...]:
        """Return the registered instances of ``driver``, oldest first."""
        return tuple(inst.reg for inst in self._instances.get(driver, ()))

    def drivers(self) -> list[str]:
        """Every driver with at least one instance."""
        return [name for name, insts in self._instances.items() if insts]

    def connected(self, driver: str) -> tuple[str, ...]:
        """Return the endpoints of ``driver`` kubelet is connected to, oldest first."""
        return tuple(i.reg.endpoint for i in self._instances.get(driver, ()) if i.connected)

    def pending_wipes(self) -> frozenset[str]:
        """Return the drivers whose slices are to be wiped (no connected instance)."""
        return frozenset(self._pending_wipes)

    def get(self, driver: str) -> tuple[DraPluginRegistration, grpc.aio.Channel] | None:
        """Return the instance a call goes to: the newest connected one, else the newest."""
        instances = self._instances.get(driver)
        if not instances:
            return None
        chosen = next((i for i in reversed(instances) if i.connected), instances[-1])
        return chosen.reg, chosen.channel

    def choose(self, versions: Iterable[str]) -> str | None:
        """Return the first of the plugin's services that this kubelet speaks."""
        for version in versions:
            if version in self.services:
                return version
        return None

    # -- plugin-watcher handler ------------------------------------------------------

    def validate_plugin(self, name: str, endpoint: str, versions: Sequence[str]) -> str | None:
        """``ValidatePlugin``: services, driver name, endpoint."""
        if not versions:
            return "empty list of supported gRPC services (aka supported versions)"
        if self.choose(versions) is None:
            return (
                f"none of services supported by the plugin ({list(versions)!r}) "
                f"are supported by the kubelet ({list(self.services)!r})"
            )
        if len(name) > 63 or not _DNS_SUBDOMAIN.fullmatch(name):
            return f"invalid driver name {name!r}: must be a DNS subdomain of <= 63"
        if not os.path.isabs(endpoint):
            return f"endpoint {endpoint!r} is not an absolute path"
        if len(endpoint.encode()) > _SUN_PATH_MAX:
            return f"endpoint {endpoint!r} is longer than {_SUN_PATH_MAX} bytes"
        if any(i.reg.endpoint == endpoint for i in self._instances.get(name, ())):
            return f"endpoint {endpoint} already registered for DRA driver plugin {name}"
        return None

    async def register_plugin(
        self, name: str, endpoint: str, versions: Sequence[str], socket_path: str
    ) -> str | None:
        """``RegisterPlugin``: a new instance of the driver, dialled at once."""
        reg = DraPluginRegistration(
            driver=name,
            endpoint=endpoint,
            service=self.choose(versions) or "",
            supported_versions=tuple(versions),
            socket_path=socket_path,
        )
        instance = _Instance(reg, grpc.aio.insecure_channel(f"unix:{endpoint}"))
        instance.monitor = asyncio.create_task(
            self._monitor(instance), name=f"fake kubelet: DRA connection {endpoint}"
        )
        self._instances.setdefault(name, []).append(instance)
        if self._health is not None:
            self._health.watch(name, endpoint, versions, instance.channel)
        _LOG.info("registered DRA driver %s at %s", name, endpoint)
        self._sync(name)
        return None

    async def deregister_plugin(self, name: str, endpoint: str) -> None:
        """``DeRegisterPlugin``: forget the instance at ``endpoint``, close its connection."""
        instances = self._instances.get(name, [])
        if self._health is not None:
            await self._health.unwatch(name, endpoint)
        for instance in [i for i in instances if i.reg.endpoint == endpoint]:
            instances.remove(instance)
            await self._close(instance, _DEREGISTER_GRACE)
            _LOG.info("deregistered DRA driver %s (socket %s gone)", name, instance.reg.socket_path)
        self._sync(name)

    async def forget(self) -> None:
        """Close every connection and forget every instance (kubelet gone)."""
        if self._health is not None:
            await self._health.stop()
        for timer in self._pending_wipes.values():
            timer.cancel()
        self._pending_wipes.clear()
        for instances in self._instances.values():
            for instance in instances:
                await self._close(instance)
        self._instances.clear()

    # -- connections and wiping ------------------------------------------------------

    async def _close(self, instance: _Instance, grace: float | None = None) -> None:
        monitor = instance.monitor
        if monitor is not None:
            monitor.cancel()
        # Cancels the calls in flight (after ``grace``), as grpc-go's Close.
        await instance.channel.close(grace)
        if monitor is not None:
            # A wait for a state change may end only once the channel is closed.
            await asyncio.wait({monitor}, timeout=_MONITOR_STOP)
            if monitor.done() and not monitor.cancelled():
                monitor.exception()  # retrieved: a closed channel may refuse get_state
            elif not monitor.done():
                _LOG.warning("connection monitor of %s did not stop", instance.reg.endpoint)

    async def _monitor(self, instance: _Instance) -> None:
        """Follow the connection's state; ask for a new connection whenever one ends."""
        channel = instance.channel
        state = channel.get_state(try_to_connect=True)
        while state != grpc.ChannelConnectivity.SHUTDOWN:
            connected = state == grpc.ChannelConnectivity.READY
            if connected != instance.connected:
                instance.connected = connected
                _LOG.info(
                    "DRA driver %s at %s: %s",
                    instance.reg.driver,
                    instance.reg.endpoint,
                    "connected" if connected else "disconnected",
                )
                self._sync(instance.reg.driver)
                await self._notify()
            await channel.wait_for_state_change(state)
            state = channel.get_state(try_to_connect=True)

    def _sync(self, driver: str) -> None:
        """Cancel a pending wipe of a usable driver; queue one for an unusable driver."""
        if self._wiper is None or self._node_name is None:
            return
        if any(i.connected for i in self._instances.get(driver, ())):
            timer = self._pending_wipes.pop(driver, None)
            if timer is not None:
                timer.cancel()
                _LOG.info("DRA driver %s usable again: its slices stay", driver)
            return
        if driver not in self._pending_wipes:
            loop = asyncio.get_running_loop()
            self._pending_wipes[driver] = loop.call_later(self.wiping_delay, self._wipe, driver)

    def _wipe(self, driver: str) -> None:
        self._pending_wipes.pop(driver, None)
        self.wipe(driver)

    def wipe(self, driver: str = "") -> int:
        """Delete the node's slices of ``driver`` ('' = every driver); return how many."""
        if self._wiper is None or self._node_name is None:
            return 0
        selector = f"spec.nodeName={self._node_name}"
        if driver:
            selector += f",spec.driver={driver}"
        count = self._wiper.wipe_resource_slices(selector)
        self.wipes.append((driver, count))
        _LOG.info("wiped %d ResourceSlice(s) (%s)", count, selector)
        return count
