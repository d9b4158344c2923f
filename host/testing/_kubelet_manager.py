"""Kubelet's registration server and device manager, minus the gRPC server itself.

:class:`DeviceManager` holds what the kubelet process holds: the per-resource books, the
registration server's clients, the grace timers, the allocations, and reproduces the
Register handler and the ListAndWatch client of each kubelet generation
(``pkg/kubelet/cm/devicemanager/plugin/v1beta1/server.go``, ``client.go``,
``pkg/kubelet/cm/devicemanager/manager.go``). :class:`~host.testing.FakeKubelet` owns one per
process lifetime and adds the server, the observation API and the client helpers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import grpc

from host._api import api_pb2
from host.testing._kubelet_checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from host.testing._kubelet_endpoint import PluginEndpoint, go_join, go_status_text
from host.testing._kubelet_names import is_extended_resource_name
from host.testing._kubelet_resource import ResourceBook
from host.testing._kubelet_types import (
    Allocation,
    KubeletError,
    KubeletMode,
    Registration,
    Rejection,
)

__all__ = ["API_VERSION", "DeviceManager", "copy_message"]

_LOG = logging.getLogger("host.testing.kubelet")

API_VERSION = "v1beta1"

_RegisterContext = grpc.aio.ServicerContext[api_pb2.RegisterRequest, api_pb2.Empty]


def _go_quote(text: str) -> str:
    """Quote like Go's ``%q`` for the texts kubelet formats (close enough for printable text)."""
    return json.dumps(text, ensure_ascii=False)


class DeviceManager:
    """The state and the registration behaviour of one kubelet process."""

    def __init__(
        self,
        plugin_dir: str,
        *,
        mode: KubeletMode,
        grace_period: float,
        authority: str | None,
        dial_timeout: float,
        notify: Callable[[], Coroutine[Any, Any, None]],
    ) -> None:
        self._dir = plugin_dir
        self._mode: KubeletMode = mode
        self._grace = grace_period
        self._authority = authority
        self._dial_timeout = dial_timeout
        self._notify = notify
        self.books: dict[str, ResourceBook] = {}
        self.registrations: list[Registration] = []
        self.rejected: list[Rejection] = []
        self.allocations: list[Allocation] = []
        self.reserved: dict[str, set[str]] = {}
        """Devices chosen by an admission whose Allocate call is in flight."""
        # The registration server's clients: by name up to 1.35, by (name, socket) from
        # 1.36 (where one socket may briefly have several clients).
        self._clients: dict[tuple[str, str], list[PluginEndpoint]] = {}
        self._opened: list[PluginEndpoint] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self.plugins_stopping = False
        """Set when the plugins are about to stop on purpose: their streams' end is expected."""

    async def shutdown(self) -> None:
        """End timers, background tasks and every plugin connection: the process died."""
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for endpoint in self._opened:
            await endpoint.close()
        self._opened.clear()
        self._clients.clear()
        self.reserved.clear()

    def restore(self) -> None:
        """Rebuild the device manager from the checkpoint, as a new kubelet process does."""
        try:
            registered, allocations = read_checkpoint(self._dir)
        except CheckpointError as err:
            _LOG.error("Continue after failing to read checkpoint file: %s", err)
            registered, allocations = [], []
        previous, self.books = self.books, {}
        now = time.monotonic()
        for name in registered:
            book = self.books[name] = ResourceBook(name)
            if name in previous:
                book.history = previous[name].history
            book.restore(now)
            self._schedule_expiry(name)
        for name, old in previous.items():
            if name not in self.books and (old.present or old.removed):
                # Not in the checkpoint: the node status keeps it at 0.
                self.books[name] = ResourceBook(name)
                self.books[name].removed = True
                self.books[name].history = old.history
        self.allocations = allocations

    async def register(
        self, request: api_pb2.RegisterRequest, context: _RegisterContext
    ) -> api_pb2.Empty:
        """``/v1beta1.Registration/Register``: validate, connect (1.25+), answer."""
        reason = self._validation_error(request)
        if reason is not None:
            self._reject(request, reason)
            await self._notify()
            await context.abort(grpc.StatusCode.UNKNOWN, reason)
        socket_path = go_join(self._dir, request.endpoint)
        if self._mode == "1.24":
            self._accept(request, socket_path)
            self.spawn(self._add_endpoint_legacy(request, socket_path))
            await self._notify()
            return api_pb2.Empty()
        remaining = context.time_remaining() if self._mode == "1.36" else None
        task = self.spawn(self._connect_client(request, socket_path, remaining))
        # 1.25-1.33 dial and fetch options on context.Background(): the plugin giving up
        # on its Register call does not stop them. Newer kubelets use the RPC's context;
        # mode "1.25" keeps the older behaviour for all of 1.25-1.35 (see KubeletMode).
        error = await (asyncio.shield(task) if self._mode == "1.25" else task)
        if error is not None:
            await context.abort(grpc.StatusCode.UNKNOWN, error)
        return api_pb2.Empty()

    @staticmethod
    def _validation_error(request: api_pb2.RegisterRequest) -> str | None:
        if request.version != API_VERSION:
            return (
                f"requested API version {_go_quote(request.version)} is not supported by "
                f'kubelet. Supported version is ["{API_VERSION}"]'
            )
        if not is_extended_resource_name(request.resource_name):
            return f"the ResourceName {_go_quote(request.resource_name)} is invalid"
        return None

    async def _connect_client(
        self, request: api_pb2.RegisterRequest, socket_path: str, remaining: float | None
    ) -> str | None:
        """``connectClient``: dial, GetDevicePluginOptions, store, start ListAndWatch."""
        name = request.resource_name
        deadline = None if remaining is None else time.monotonic() + remaining
        endpoint = PluginEndpoint(name, socket_path)
        self._opened.append(endpoint)
        key = self._client_key(name, socket_path)
        if self._mode == "1.36":
            self._clients.setdefault(key, []).append(endpoint)
        else:
            self._clients[key] = [endpoint]
        try:
            left = _seconds_left(deadline)
            dial_seconds = self._dial_timeout if left is None else min(self._dial_timeout, left)
            await endpoint.dial(dial_seconds, self._authority)
            options = await endpoint.get_options(_seconds_left(deadline))
            self._plugin_connected(endpoint, options)
        except KubeletError as err:
            self._deregister_client(key, endpoint)
            await endpoint.close()
            self._reject(request, str(err))
            await self._notify()
            return str(err)
        except asyncio.CancelledError:
            self._deregister_client(key, endpoint)
            await endpoint.close()
            raise
        self.spawn(self._run_client(endpoint))
        self._accept(request, socket_path)
        await self._notify()
        return None

    async def register_plugin(self, name: str, endpoint: str) -> str | None:
        """Connect as Register does, for the plugin watcher (``RegisterPlugin``); the error or None.

        ``endpoint`` is the DevicePlugin socket, used as given (not joined with the
        device-plugin directory). Validation is the watcher's (``ValidatePlugin``).
        """
        request = api_pb2.RegisterRequest(
            version=API_VERSION, endpoint=endpoint, resource_name=name
        )
        return await self._connect_client(request, endpoint, None)

    async def deregister_plugin(self, name: str, endpoint: str) -> None:
        """Disconnect a plugin whose registry socket went away (``DeRegisterPlugin``).

        Up to 1.35 the client is looked up by name only, so a newer instance of the
        resource is the one disconnected; 1.36 looks it up by (name, socket path).
        """
        key = self._client_key(name, endpoint)
        clients = self._clients.get(key)
        if not clients:
            return
        client = clients[0]
        self._deregister_client(key, client)
        await client.close()
        self._plugin_disconnected(name, client)
        await self._notify()

    def reject_plugin(self, name: str, endpoint: str, reason: str) -> None:
        """Record a registration the plugin watcher refused, with kubelet's text."""
        request = api_pb2.RegisterRequest(
            version=API_VERSION, endpoint=endpoint, resource_name=name
        )
        self._reject(request, reason)

    async def _add_endpoint_legacy(
        self, request: api_pb2.RegisterRequest, socket_path: str
    ) -> None:
        """≤1.24 ``addEndpoint``: dial after Register returned; options from the request."""
        options = api_pb2.DevicePluginOptions()
        options.CopyFrom(request.options)
        endpoint = PluginEndpoint(request.resource_name, socket_path, options)
        self._opened.append(endpoint)
        try:
            await endpoint.dial(self._dial_timeout, self._authority)
        except KubeletError as err:
            await endpoint.close()
            self._reject(request, str(err), reported=False)
            await self._notify()
            return
        self.book(request.resource_name).endpoint = endpoint
        await self._notify()
        await self._run_client(endpoint)

    def _plugin_connected(
        self, endpoint: PluginEndpoint, options: api_pb2.DevicePluginOptions
    ) -> None:
        """``PluginConnected``: make the endpoint primary (1.36: also per socket)."""
        book = self.book(endpoint.resource)
        if self._mode == "1.36":
            assert endpoint.socket_path is not None
            if endpoint.socket_path in book.store:
                raise KubeletError(f"device plugin already connected: {endpoint.socket_path}")
            book.store[endpoint.socket_path] = endpoint
        endpoint.options = options
        book.endpoint = endpoint

    async def _run_client(self, endpoint: PluginEndpoint) -> None:
        """``client.Run``: apply every ListAndWatch message; on any end, disconnect."""
        try:
            async for response in endpoint.list_and_watch():
                if endpoint.stopped:
                    # Disconnected meanwhile (e.g. by an older stream's end, #121994):
                    # kubelet closed this connection, so nothing more reaches it.
                    return
                endpoint.messages += 1
                self.book(endpoint.resource).apply(response)
                self.write_checkpoint()
                await self._notify()
            endpoint.stream_error = "EOF"
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the kubelet is stopping
            endpoint.stream_error = "connection closed by kubelet"
        except grpc.aio.AioRpcError as err:
            endpoint.stream_error = go_status_text(err)
        except KubeletError as err:
            endpoint.stream_error = str(err)
        if self.plugins_stopping:
            _LOG.debug(
                "ListAndWatch ended for device plugin %s at %s as the plugins stop: %s",
                endpoint.resource,
                endpoint.socket_path,
                endpoint.stream_error,
            )
        else:
            _LOG.info(
                "ListAndWatch ended unexpectedly for device plugin %s at %s: %s",
                endpoint.resource,
                endpoint.socket_path,
                endpoint.stream_error,
            )
        await self._stream_ended(endpoint)

    async def _stream_ended(self, endpoint: PluginEndpoint) -> None:
        await self._drop_ended(endpoint)
        book = self.books.get(endpoint.resource)
        if book is not None:
            book.streams_ended += 1  # counted once handled: tests wait on it
        await self._notify()

    async def _drop_ended(self, endpoint: PluginEndpoint) -> None:
        name = endpoint.resource
        if self._mode == "1.24":
            # runEndpoint: stop this endpoint; unhealthy only if it is still the current one.
            endpoint.stop_time = time.monotonic()
            await endpoint.close()
            book = self.books.get(name)
            if book is not None and book.endpoint is endpoint:
                book.mark_unhealthy()
                self._schedule_expiry(name)
        else:
            # runClient: look the client up again, BY NAME up to 1.35, so the end of an
            # old stream disconnects whichever client registered last (#121994).
            assert endpoint.socket_path is not None
            key = self._client_key(name, endpoint.socket_path)
            clients = self._clients.get(key)
            if not clients:
                return
            client = clients[0]
            self._deregister_client(key, client)
            await client.close()
            self._plugin_disconnected(name, client)

    def _plugin_disconnected(self, name: str, client: PluginEndpoint) -> None:
        """``PluginDisconnected``: allocatable to 0, stop time set, grace timer started."""
        book = self.books.get(name)
        if book is None:
            return
        now = time.monotonic()
        if self._mode == "1.36":
            assert client.socket_path is not None
            endpoint = book.store.pop(client.socket_path, None)
            if endpoint is None:
                return  # unknown socket: no-op
            endpoint.stop_time = now
            if book.store:  # survivors keep the resource healthy
                if book.endpoint is endpoint:
                    book.endpoint = next(iter(book.store.values()))
                return
        elif book.endpoint is None:
            return
        else:
            book.endpoint.stop_time = now
        book.mark_unhealthy()
        self._schedule_expiry(name)

    def _client_key(self, name: str, socket_path: str) -> tuple[str, str]:
        return (name, socket_path if self._mode == "1.36" else "")

    def _deregister_client(self, key: tuple[str, str], endpoint: PluginEndpoint) -> None:
        if self._mode != "1.36":
            self._clients.pop(key, None)  # by name: drops whichever client is there
            return
        clients = self._clients.get(key, [])
        if endpoint in clients:
            clients.remove(endpoint)
        if not clients:
            self._clients.pop(key, None)

    def _schedule_expiry(self, name: str) -> None:
        previous = self._timers.pop(name, None)
        if previous is not None:
            previous.cancel()
        self._timers[name] = asyncio.get_running_loop().call_later(self._grace, self._expire, name)

    def _expire(self, name: str) -> None:
        """Grace period over: drop the resource if its endpoint is still stopped."""
        self._timers.pop(name, None)
        book = self.books.get(name)
        if book is None or book.endpoint is None or not book.endpoint.stopped:
            return
        book.remove()
        self.write_checkpoint()
        self.spawn(self._notify())

    def book(self, name: str) -> ResourceBook:
        book = self.books.get(name)
        if book is None:
            book = self.books[name] = ResourceBook(name)
        return book

    def write_checkpoint(self) -> None:
        registered = {n: b.healthy for n, b in self.books.items() if b.healthy is not None}
        devices = {n: b.devices for n, b in self.books.items()}
        try:
            write_checkpoint(self._dir, registered, self.allocations, devices)
        except OSError as err:
            _LOG.error("Failed to write checkpoint file in %s: %s", self._dir, err)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def in_use(self, resource: str) -> set[str]:
        """Device IDs of ``resource`` allocated or reserved by an admission in flight."""
        used = set(self.reserved.get(resource, ()))
        for allocation in self.allocations:
            if allocation.resource == resource:
                used.update(allocation.device_ids)
        return used

    def registration_count(self, name: str) -> int:
        """How many registrations of ``name`` were accepted."""
        return sum(1 for r in self.registrations if r.request.resource_name == name)

    def _accept(self, request: api_pb2.RegisterRequest, socket_path: str) -> None:
        self.registrations.append(
            Registration(copy_message(request), socket_path, time.monotonic())
        )

    def _reject(
        self, request: api_pb2.RegisterRequest, reason: str, *, reported: bool = True
    ) -> None:
        _LOG.info("Rejected registration of %r: %s", request.resource_name, reason)
        self.rejected.append(Rejection(copy_message(request), reason, time.monotonic(), reported))


_M = TypeVar(
    "_M", api_pb2.RegisterRequest, api_pb2.DevicePluginOptions, api_pb2.ContainerAllocateResponse
)


def _seconds_left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def copy_message(message: _M) -> _M:
    """Return a private copy of a protobuf message, so records cannot change under the caller."""
    duplicate = type(message)()
    duplicate.CopyFrom(message)
    return duplicate
