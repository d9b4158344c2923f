"""Registration through kubelet's plugin watcher: the socket in ``plugins_registry``.

Instead of calling ``Register`` on ``kubelet.sock``, each resource's socket lives in
kubelet's plugins registry directory (``/var/lib/kubelet/plugins_registry``) and serves
``pluginregistration.Registration`` beside ``v1beta1.DevicePlugin`` on the same gRPC
server, as kubelet's own test plugin does (devicemanager ``plugin/v1beta1/stub.go``).
Kubelet finds the socket, asks ``GetInfo`` (type ``DevicePlugin``, the resource name,
this socket as endpoint, versions ``["v1beta1"]``), connects, and reports the outcome
with ``NotifyRegistrationStatus``; a refusal is logged with kubelet's reason and shown
in readiness. A restarted kubelet finds the socket again by itself. When kubelet drops
the device list stream without a restart (kubelet 1.25-1.35 when an older instance of
the resource goes away), the socket is re-created so that kubelet registers it again.
"""

from __future__ import annotations

import logging
import os
import time

import grpc

from host._pluginwatcher import DEVICE_PLUGIN_TYPE, RegistrationServicer
from host.deviceplugin._endpoint import API_VERSION, ResourceEndpoint
from host.deviceplugin._watcher import WatchEvent, WatchEventKind

__all__ = ["PluginsRegistryEndpoint"]

REGISTER_ATTEMPTS = 2
"""Register calls a dropped resource makes on kubelet.sock before it re-creates its socket."""

log = logging.getLogger("host.deviceplugin.endpoint")


class PluginsRegistryEndpoint(ResourceEndpoint):
    """A :class:`ResourceEndpoint` that kubelet's plugin watcher registers.

    Constructed as a :class:`ResourceEndpoint`: ``socket_path`` is in the plugins
    registry directory and ``watcher`` watches that directory (for our socket being
    removed). Nothing is called to register (the first pass of the loop finds nothing
    to do): kubelet comes to the socket.
    """

    link_sockets = False
    # Kubelet's plugin watcher walks the registry directory and its sub-directories,
    # and registers a socket only when it is created: never linked, always new.
    _registration: RegistrationServicer | None = None
    """The Registration servicer of the current socket (a new one per socket)."""
    _recreate = False
    """Set when kubelet dropped our stream: the socket is re-created to be registered again."""
    _register_by_call = False
    """Set when kubelet dropped our stream and ``kubelet.sock`` is there: call Register."""

    @property
    def registered(self) -> bool:
        """Whether kubelet's last NotifyRegistrationStatus on this socket said registered."""
        return self._registration is not None and self._registration.registered is True

    @property
    def not_ready_reason(self) -> str | None:
        """Why this resource is not ready (kubelet's reason when it refused), None when it is."""
        if self.ready:
            return None
        if self._serve_problem is not None or not self._socket.running:
            return super().not_ready_reason
        registration = self._registration
        if registration is not None and registration.registered is False:
            return f"kubelet refused the registration: {registration.error or '(no reason)'}"
        if not self.registered:
            return f"waiting for kubelet's plugin watcher to register {self.socket_path}"
        return "registered; kubelet has not opened its device list stream (ListAndWatch)"

    def _add_services(self, server: grpc.aio.Server) -> None:
        super()._add_services(server)
        # A new servicer per socket: a verdict on an earlier socket says nothing of this one.
        self._registration = RegistrationServicer(
            plugin_type=DEVICE_PLUGIN_TYPE,
            name=self.service.resource_name,
            endpoint=str(self.socket_path),
            supported_versions=[API_VERSION],
            on_status=self._on_status,
        )
        self._registration.add_to_server(server)

    def _on_status(self, registered: bool, error: str) -> None:
        if not registered:
            self._problem(f"kubelet refused the registration: {error or '(no reason)'}")
            return
        self.registrations += 1
        self._last_problem = None
        self._registered_at = time.monotonic()
        self.service.observer.registered(self.service.resource_name, self.registrations)
        if self._lost_at is not None:
            self.last_recovery = self._registered_at - self._lost_at
            self._lost_at = None
            log.info(
                "%s: registered again by kubelet's plugin watcher (socket %s), %.1f ms after "
                "losing its stream",
                self.service.resource_name,
                self.socket_path,
                self.last_recovery * 1000,
            )

    async def _start_server(self) -> None:
        self._recreate = self._register_by_call = False
        self._stream_floor = self.service.next_stream_seq
        await self._socket.start()
        log.info(
            "%s: serving on %s for kubelet's plugin watcher",
            self.service.resource_name,
            self.socket_path,
        )

    def _socket_ok(self) -> bool:
        return not self._recreate and super()._socket_ok()

    async def _register(self) -> bool:
        if not self._register_by_call:
            # Kubelet comes to us: nothing to call.
            self._need_register = False
            return True
        self._register_by_call = False
        # A second try: kubelet 1.25-1.35 also drop the client of a Register still under
        # way when the plugin watcher's pass deregisters the older instance's socket.
        for _ in range(REGISTER_ATTEMPTS):
            if await super()._register():
                return True
        # kubelet.sock did not take it: the plugin watcher will, once the socket is new.
        log.info(
            "%s: re-creating %s so that kubelet's plugin watcher registers it again",
            self.service.resource_name,
            self.socket_path,
        )
        self._need_register = False
        self._recreate = True
        return True

    def _endpoint_name(self) -> str:
        # Kubelet joins Register's endpoint with its device-plugin directory (filepath.Join,
        # which resolves ".."): name our socket in the registry relative to it.
        return os.path.relpath(self.socket_path, self.watcher.kubelet_socket.parent)

    def _check_stream(self, registration: int) -> None:
        super()._check_stream(registration)
        if self._need_register:  # Register was accepted but no stream came: again
            self._register_by_call = True

    def _on_watch_event(self, event: WatchEvent) -> None:
        if event.kind is WatchEventKind.KUBELET_STARTED:
            return  # kubelet.sock is not ours to watch in this mode
        if event.kind is WatchEventKind.SOCKET_REMOVED and event.name != self.socket_path.name:
            return
        self._wake.set()

    def _on_stream_closed(self, seq: int) -> None:
        if not self.registered or seq < self._stream_floor:
            return
        if self.service.has_stream_since(self._stream_floor):
            return
        self._lost_at = time.monotonic()
        if self.watcher.kubelet_identity() is not None:
            # Kubelet's plugin watcher registers a socket again only once it is new, at
            # its next pass (every second). Kubelet 1.25-1.35 drop us when an older
            # instance of the resource goes: kubelet.sock's Register takes us back at once.
            log.info(
                "%s: kubelet closed its device list stream; registering %s again through %s",
                self.service.resource_name,
                self.socket_path,
                self.watcher.kubelet_socket,
            )
            self._register_by_call = self._need_register = True
        else:
            log.info(
                "%s: kubelet closed its device list stream; re-creating %s so that kubelet "
                "registers it again",
                self.service.resource_name,
                self.socket_path,
            )
            self._recreate = True
        self._wake.set()
