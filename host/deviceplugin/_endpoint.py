"""One resource's socket and gRPC server, kept registered with kubelet.

The lifecycle, as kubelet (1.25+) requires it: serve on the socket first, then
register (kubelet dials back and calls GetDevicePluginOptions while Register is
still outstanding); when kubelet restarts (``kubelet.sock`` re-created, our socket
unlinked) re-create the socket and register again; when kubelet is absent, retry
with capped exponential backoff and jitter, woken at once by the watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from pathlib import Path
from typing import Any, ClassVar

import grpc

from host._api import api_pb2 as pluginapi
from host._api import api_pb2_grpc
from host.deviceplugin._kubelet_channel import REGISTER_TIMEOUT, KubeletChannel
from host.deviceplugin._service import KUBELET_MAX_MESSAGE, DevicePluginService
from host.deviceplugin._socketfile import (
    MAX_SOCKET_PATH,
    SocketBindError,
    SocketInUseError,
    UnixSocketServer,
)
from host.deviceplugin._watcher import (
    PluginDirWatcher,
    SocketIdentity,
    WatchEvent,
    WatchEventKind,
)

__all__ = [
    "API_VERSION",
    "MAX_SOCKET_PATH",
    "Backoff",
    "ResourceEndpoint",
    "SocketBindError",
    "SocketInUseError",
]

log = logging.getLogger("host.deviceplugin.endpoint")

API_VERSION = "v1beta1"
SERVER_STOP_GRACE = 0.2
MAX_REQUEST_BYTES = 8 * 1024 * 1024
"""Largest request a resource's server accepts (gRPC answers RESOURCE_EXHAUSTED above)."""
SHUTDOWN_GRACE = 2.0
"""Seconds calls in flight (an Allocate) get to finish when the host stops for good.

The device list streams end first, so kubelet moves on to another instance (a rolling
update's new pod) while a call it already sent here still gets its answer.
"""
STREAMS_END_LIMIT = 0.5
"""Seconds a final stop waits for the device list streams to end before the server stops.

gRPC unlinks a Unix socket as soon as its server begins to stop, while streams may
still be open. Ending them first means kubelet has their end before anyone can see the
socket gone: a successor serving the same path once it is free (or a new instance
whose socket kubelet's plugin watcher registers) comes after it. Kubelet 1.25-1.35
disconnects whichever client holds the resource name when a stream ends
(``runClient`` in devicemanager ``plugin/v1beta1/server.go``): a late end of ours
would drop that successor.
"""
STREAM_WAIT = 5.0
"""Seconds a successful registration may go without kubelet opening ListAndWatch.

Kubelet opens the stream right after Register (1.25+: after GetDevicePluginOptions,
still inside the call). It never comes when kubelet dropped the new connection at
once, which 1.25-1.35 do when an older instance's stream of the same resource ends
during the registration (``runClient`` disconnects the client it finds by name):
then register again. Generous, so that a busy event loop is not taken for that.
"""

UNSURE_STREAM_WAIT = 1.0
"""STREAM_WAIT when the answer to Register may have come from a kubelet that then stopped.

Kubelet opens ListAndWatch within milliseconds of answering; a stopped one never does.
"""
try:
    COARSE_TICK_NS = int(time.clock_getres(getattr(time, "CLOCK_REALTIME_COARSE", 5)) * 1e9)
except OSError:  # no coarse clock: assume the slowest common tick (HZ=100)
    COARSE_TICK_NS = 10_000_000
"""How much earlier than the truth a file's change time can be (one tick of the kernel's
coarse clock, which stamps it)."""


class Backoff:
    """Capped exponential backoff with +-20 % jitter."""

    def __init__(self, initial: float = 0.5, cap: float = 30.0) -> None:
        self.initial = initial
        self.cap = cap
        self._next = initial

    def next(self) -> float:
        """Return the next delay and double the one after it (up to the cap)."""
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        """Start again from the initial delay."""
        self._next = self.initial


class ResourceEndpoint:
    """Serves one :class:`DevicePluginService` on its socket and keeps it registered."""

    link_sockets: ClassVar[bool] = True
    """Listen on a private path with our socket a hard link to it (:class:`UnixSocketServer`).

    Kubelet's start-up cleanup then costs one ``link`` to undo, not a new gRPC server.
    """

    def __init__(
        self,
        service: DevicePluginService,
        socket_path: Path,
        watcher: PluginDirWatcher,
        *,
        backoff: Backoff | None = None,
    ) -> None:
        self.service = service
        self.socket_path = socket_path
        self.watcher = watcher
        self._backoff = backoff or Backoff()
        self._socket = UnixSocketServer(
            socket_path,
            self._add_services,  # bound: a subclass's override is the one called
            stop_grace=SERVER_STOP_GRACE,
            # GetPreferredAllocation carries every available ID, and kubelet only knows
            # IDs that fit in its 4 MiB ListAndWatch limit: twice that covers any real
            # request and bounds what a request can make us decode.
            options=[("grpc.max_receive_message_length", MAX_REQUEST_BYTES)],
            link=self.link_sockets,
        )
        self._registered_with: SocketIdentity | None = None
        self._registering_with: SocketIdentity | None = None
        self._restarted_as: SocketIdentity | None = None
        self._need_register = True
        self._registered_at: float | None = None
        self._stream_check: asyncio.TimerHandle | None = None
        self._wake = asyncio.Event()
        self._last_problem: str | None = None
        self._serve_problem: str | None = None
        self.registrations = 0
        self.last_recovery: float | None = None
        """Seconds from losing kubelet's stream to the next accepted registration."""
        self._lost_at: float | None = None
        # Streams opened before this sequence number belong to an older registration.
        self._stream_floor = 0
        service.on_stream_closed = self._on_stream_closed
        service.on_size_change = self._wake.set

    @property
    def registered(self) -> bool:
        """Whether the last Register call succeeded and kubelet has not gone since."""
        return self._registered_with is not None and not self._need_register

    @property
    def problem(self) -> str | None:
        """Why the last attempt to serve or register failed; None once registered."""
        return self._last_problem

    @property
    def ready(self) -> bool:
        """Registered and kubelet is listening to our device list."""
        return self.registered and self.service.has_stream_since(self._stream_floor)

    @property
    def not_ready_reason(self) -> str | None:
        """Why this resource is not :attr:`ready` (one line, for /readyz), None when it is."""
        if self.ready:
            return None
        if self._serve_problem is not None:
            return f"cannot serve its socket: {self._serve_problem}"
        if not self._socket.running:
            return "not serving its socket yet"
        if self.service.oversize is not None:
            return (
                f"device list is {self.service.oversize} bytes, over kubelet's "
                f"{KUBELET_MAX_MESSAGE}-byte receive limit: not registered until it fits "
                "(split the devices over several device types)"
            )
        if not self.registered:
            if self._registering_with is not None:
                return "registering with kubelet"
            return self._last_problem or "not registered with kubelet yet"
        return "registered; kubelet has not opened its device list stream (ListAndWatch)"

    # -- events ---------------------------------------------------------------------

    def _on_watch_event(self, event: WatchEvent) -> None:
        if event.kind is WatchEventKind.KUBELET_STARTED:
            # A registration with this very kubelet done or in flight needs no other.
            current = self.watcher.kubelet_identity()
            if self._registering_with != current:
                self._need_register = True
                self._restarted_as = current
        elif event.kind is WatchEventKind.SOCKET_REMOVED and event.name != self.socket_path.name:
            return
        self._wake.set()

    def _on_stream_closed(self, seq: int) -> None:
        if self._registered_with is None or seq < self._stream_floor:
            return  # a stream of an earlier registration or server
        if self.service.has_stream_since(self._stream_floor):
            return
        # Kubelet never re-opens ListAndWatch on its own: without a stream our
        # devices are lost to it until we register again.
        if self.service.oversize is None:
            log.info("%s: kubelet closed its device list stream", self.service.resource_name)
        self._lost_at = time.monotonic()
        self._need_register = True
        self._restarted_as = None  # a lost stream always means registering again
        self._wake.set()

    # -- main loop ------------------------------------------------------------------

    async def run(self) -> None:
        """Serve and stay registered until cancelled; then stop and remove the socket."""
        unsubscribe = self.watcher.subscribe(self._on_watch_event, name=self.socket_path.name)
        kubelet_channel = KubeletChannel.of(self.watcher)
        kubelet_channel.acquire()
        try:
            await self._maintain()
        finally:
            unsubscribe()
            await kubelet_channel.release()
            if self._stream_check is not None:
                self._stream_check.cancel()
            await self._end_streams()
            await self._socket.stop(SHUTDOWN_GRACE)

    async def _end_streams(self) -> None:
        """End every device list stream and let them finish (at most STREAMS_END_LIMIT)."""
        self.service.close()
        # Each stream ends on its next turn of the loop; one that is stuck sending to a
        # reader that does not read ends only when the server stops.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STREAMS_END_LIMIT):
                await self.service.streams_ended()
        # The handlers send each stream's status right after it ends.
        for _ in range(2):
            await asyncio.sleep(0)

    async def _maintain(self) -> None:
        while True:
            self._wake.clear()
            delay: float | None = None
            if not self._socket_ok():
                try:
                    await self._start_server()
                except (SocketInUseError, SocketBindError, OSError) as exc:
                    self._serve_problem = str(exc)
                    self._problem(str(exc))
                    delay = self._backoff.next()
                else:
                    self._serve_problem = None
            if delay is None and self._need_register and not self._list_sendable():
                pass  # woken by the service once its list is encoded and fits
            elif delay is None and self._need_register:
                if await self._register():
                    self._backoff.reset()
                else:
                    delay = self._backoff.next()
            if delay is None:
                await self._wake.wait()
            else:
                # asyncio.timeout, not wait_for: see PluginDirWatcher (lost cancellations).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()

    def _check_stream(self, registration: int) -> None:
        """Soon after a registration: register again if kubelet never opened a stream.

        STREAM_WAIT after it, or UNSURE_STREAM_WAIT when the kubelet that answered may
        have stopped since.
        """
        if (
            registration != self.registrations
            or self._need_register
            or self._registered_with is None
        ):
            return
        if not self.service.has_stream_since(self._stream_floor) and self.service.stream_count:
            # Register succeeded without a new stream (a kubelet that already served this
            # socket keeps its connection): that older stream is the live one. Track it,
            # or its end would go unnoticed and our devices be lost to kubelet.
            self._stream_floor = self.service.oldest_stream_seq()
            log.info(
                "%s: kubelet kept the device list stream of the previous registration",
                self.service.resource_name,
            )
            return
        if self.service.stream_count > 0:
            return
        log.info(
            "%s: kubelet accepted the registration but opened no device list stream "
            "within %.1f s; registering again",
            self.service.resource_name,
            time.monotonic() - (self._registered_at or time.monotonic()),
        )
        self._lost_at = self._registered_at
        self._need_register = True
        self._wake.set()

    def _list_sendable(self) -> bool:
        """Whether kubelet can be given the device list: encoded, and within its limit."""
        return self.service.list_ready and self.service.oversize is None

    def _socket_ok(self) -> bool:
        return self._socket.serving

    def _problem(self, message: str) -> None:
        # Log once per state change, not once per retry.
        if message != self._last_problem:
            log.warning("%s: %s", self.service.resource_name, message)
            self._last_problem = message

    async def _start_server(self) -> None:
        await self._ensure_socket()
        self._registered_with = self._registering_with = None
        self._need_register = True

    async def _ensure_socket(self) -> None:
        """Give our socket its name back, or serve it anew; registration is the caller's."""
        await self._socket.restore()

    def _add_services(self, server: grpc.aio.Server) -> None:
        """Add DevicePlugin, and services beside it (a registration strategy's hook)."""
        server.add_generic_rpc_handlers((self.service.rpc_handler(),))

    async def _register(self) -> bool:
        kubelet_socket = self.watcher.kubelet_socket
        kubelet_id = self.watcher.kubelet_identity()
        if kubelet_id is None:
            self._problem(f"waiting for kubelet: no socket at {kubelet_socket}")
            return False
        request = pluginapi.RegisterRequest(
            version=API_VERSION,
            endpoint=self._endpoint_name(),
            resource_name=self.service.resource_name,
            options=self.service.options,
        )
        previous = (self._registered_with, self._stream_floor)
        self._need_register = False
        self._registered_with = None  # not registered until this call succeeds
        self._registering_with = kubelet_id
        self._stream_floor = self.service.next_stream_seq
        try:
            await self._serve_once_connected()
            call = asyncio.ensure_future(self._call_register(request))
            await self._serve_while(call)
            await call
        except (SocketInUseError, SocketBindError, OSError) as exc:
            self._need_register = True
            self._registering_with = None
            self._problem(str(exc))
            return False
        except grpc.aio.AioRpcError as err:
            if previous[0] == kubelet_id and self.service.has_stream_since(previous[1]):
                # Kubelet 1.36+ refuses a second Register for a socket it still serves
                # ("device plugin already connected"): the stream we have is the one
                # it listens to, so we are registered as before.
                self._registered_with, self._stream_floor = previous
                log.info(
                    "%s: kubelet refused a second registration (%s) and still reads our "
                    "device list; keeping that stream",
                    self.service.resource_name,
                    err.details(),
                )
                return True
            self._need_register = True
            self._registering_with = None
            self._problem(
                f"registration with kubelet at {kubelet_socket} failed: "
                f"{err.code().name}: {err.details()}"
            )
            return False
        # The kubelet that answered is the one listening at the path now: the one read
        # before dialing may have been a dead socket that a restarting kubelet replaced
        # while the call was retrying. A restart seen meanwhile is this kubelet's.
        answered = self.watcher.kubelet_identity() or kubelet_id
        dialed_back_by_current = (
            True if answered == kubelet_id else self._dialed_back_by_current_kubelet()
        )
        if dialed_back_by_current is False:
            # Or the kubelet that stopped meanwhile took the call and will never open
            # the stream; its successor has not heard of us: register with it now.
            log.info(
                "%s: kubelet restarted while registering, and the registration reached "
                "the one that stopped; registering with the new one",
                self.service.resource_name,
            )
            self._registering_with = None
            self._need_register = True
            self._wake.set()
            return True
        if self._need_register and self._restarted_as == answered:
            self._need_register = False
        self._registered_with = self._registering_with = answered
        self._restarted_as = None
        self._registered_at = time.monotonic()
        self.registrations += 1
        if self._stream_check is not None:
            self._stream_check.cancel()
        # Unsure which kubelet answered: if it was the one that stopped, no stream comes.
        wait = STREAM_WAIT if dialed_back_by_current else UNSURE_STREAM_WAIT
        self._stream_check = asyncio.get_running_loop().call_later(
            wait, self._check_stream, self.registrations
        )
        self._last_problem = None
        self.service.observer.registered(self.service.resource_name, self.registrations)
        if self._lost_at is not None:
            self.last_recovery = self._registered_at - self._lost_at
            self._lost_at = None
            log.info(
                "%s: registered again with kubelet (socket %s), %.1f ms after losing its stream",
                self.service.resource_name,
                self.socket_path.name,
                self.last_recovery * 1000,
            )
        else:
            log.info(
                "%s: registered with kubelet (socket %s)",
                self.service.resource_name,
                self.socket_path.name,
            )
        return True

    def _dialed_back_by_current_kubelet(self) -> bool | None:
        """Whether kubelet's dial back (GetDevicePluginOptions) came since its socket was made.

        Kubelet (1.25+) dials back and asks for the options inside Register, so the
        kubelet that took our call asked after its socket appeared; a kubelet that
        stopped before the current ``kubelet.sock`` was made asked before. The socket's
        change time comes from the kernel's coarse clock: up to one tick earlier than
        the truth, so an answer within that tick after it is None (cannot tell).
        """
        try:
            made = os.stat(self.watcher.kubelet_socket).st_ctime_ns
        except OSError:
            return False
        asked = self.service.options_asked_at
        if asked is None or asked < made:
            return False
        return True if asked >= made + COARSE_TICK_NS else None

    async def _serve_once_connected(self) -> None:
        """Connect to kubelet, then check our socket (re-created if it went).

        Kubelet unlinks every socket of its directory before it serves ``kubelet.sock``
        (devicemanager ``manager.go``) and dials back inside Register, where a failed
        connect is retried only after grpc-go's 1 s backoff (``dial`` in devicemanager
        ``plugin/v1beta1/client.go``). Checked before connecting, our socket may be one
        a starting kubelet has just unlinked; once connected, its cleanup is behind us.
        """
        await KubeletChannel.of(self.watcher).connect()
        if not self._socket_ok():
            await self._ensure_socket()

    async def _call_register(self, request: pluginapi.RegisterRequest) -> None:
        shared = KubeletChannel.of(self.watcher)
        channel = shared.channel()
        try:
            await api_pb2_grpc.RegistrationStub(channel).Register(request, timeout=REGISTER_TIMEOUT)
        except grpc.aio.AioRpcError:
            shared.failed(channel)
            raise

    async def _serve_while(self, call: asyncio.Future[None]) -> None:
        """Keep our socket served while Register is outstanding.

        A kubelet that restarts unlinks every socket in the directory at start-up; if
        our Register reaches it just after that, kubelet is dialing a path that no
        longer exists. Re-creating the socket at once lets its dial (which retries for
        up to 10 s) connect, instead of failing the registration after 10 s.
        """
        try:
            while not call.done():
                self._wake.clear()
                woken: asyncio.Future[Any] = asyncio.ensure_future(self._wake.wait())
                pending: set[asyncio.Future[Any]] = {call, woken}
                try:
                    await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    woken.cancel()
                if call.done() or self._socket_ok():
                    continue
                try:
                    await self._ensure_socket()
                except (SocketInUseError, SocketBindError, OSError) as exc:
                    self._problem(str(exc))
        except BaseException:
            call.cancel()
            raise
        # Wake-ups consumed here may carry work (a new kubelet): let the loop look again.
        self._wake.set()

    def _endpoint_name(self) -> str:
        # kubelet joins the endpoint with its device-plugin directory.
        try:
            return str(self.socket_path.relative_to(self.watcher.plugin_dir))
        except ValueError:
            return self.socket_path.name
