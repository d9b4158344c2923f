"""The DevicePlugin gRPC service of one resource: device snapshots and the RPC handlers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import grpc

from host._api import api_pb2 as pluginapi
from host._api import api_pb2_grpc
from host.deviceplugin._scanning import call_plugin_method
from host.deviceplugin._types import HEALTHY, UNHEALTHY, DeviceInfo, UseDefaultMethodError

__all__ = ["KUBELET_MAX_MESSAGE", "DevicePluginService", "PostAllocateHook"]

log = logging.getLogger("host.deviceplugin.server")

KUBELET_MAX_MESSAGE = 4 * 1024 * 1024
"""Kubelet's gRPC receive limit: a larger ListAndWatch message fails its stream."""

PostAllocateHook = Callable[[str, pluginapi.AllocateResponse], Awaitable[None] | None]
"""A cross-cutting post-allocate hook: ``hook(resource_name, response)``."""


MAX_STATUS_MESSAGE = 2048
"""UTF-8 bytes of a status message sent; the rest is cut.

The message travels percent-encoded (up to 3 bytes per byte) in the grpc-message
trailer, and gRPC C-core clients refuse trailers over 8 KiB (randomly) or 16 KiB
(always), turning the status into RESOURCE_EXHAUSTED. Messages echo request IDs and
plugin exceptions, neither of which is bounded.
"""


def _bounded(message: str) -> str:
    encoded = message.encode("utf-8", "backslashreplace")
    if len(encoded) <= MAX_STATUS_MESSAGE:
        return message
    kept = encoded[:MAX_STATUS_MESSAGE].decode("utf-8", "ignore")
    return f"{kept}... ({len(encoded) - len(kept.encode())} more bytes)"


class RpcError(Exception):
    """A request the service answers with a gRPC error status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        message = _bounded(message)
        super().__init__(message)
        self.code = code
        self.message = message


class DevicePluginService(api_pb2_grpc.DevicePluginServicer):
    """Serves ``v1beta1.DevicePlugin`` for one resource from the latest device snapshot.

    ``update`` replaces the snapshot and wakes every open ListAndWatch stream; a stream
    that is behind sends only the newest snapshot (superseded ones are coalesced).
    """

    def __init__(
        self,
        resource_name: str,
        scanner: Any,
        *,
        post_allocators: Sequence[PostAllocateHook] = (),
        cdi_name: Callable[[Mapping[str, Any]], str] | None = None,
        on_stream_closed: Callable[[int], None] | None = None,
    ) -> None:
        self.resource_name = resource_name
        self._allocate = getattr(scanner, "allocate", None)
        self._post_allocate = getattr(scanner, "post_allocate", None)
        self._preferred = getattr(scanner, "get_preferred_allocation", None)
        self._pre_start = getattr(scanner, "pre_start_container", None)
        self._post_allocators = tuple(post_allocators)
        self._cdi_name = cdi_name
        self.on_stream_closed = on_stream_closed
        self.options = pluginapi.DevicePluginOptions(
            pre_start_required=callable(self._pre_start),
            get_preferred_allocation_available=callable(self._preferred),
        )
        self._devices: Mapping[str, DeviceInfo] = {}
        self._all_unhealthy = False
        self._snapshot = pluginapi.ListAndWatchResponse()
        self._version = 0
        self._streams: dict[asyncio.Event, int] = {}
        self._stream_seq = 0
        self._closed = False

    # -- state ----------------------------------------------------------------------

    @property
    def devices(self) -> Mapping[str, DeviceInfo]:
        """The devices currently advertised."""
        return self._devices

    @property
    def stream_count(self) -> int:
        """How many ListAndWatch streams are open (kubelet keeps exactly one)."""
        return len(self._streams)

    @property
    def next_stream_seq(self) -> int:
        """The sequence number the next ListAndWatch stream will get."""
        return self._stream_seq

    def has_stream_since(self, seq: int) -> bool:
        """Whether a stream opened at or after sequence number ``seq`` is still open."""
        return any(opened >= seq for opened in self._streams.values())

    @property
    def snapshot(self) -> pluginapi.ListAndWatchResponse:
        """The ListAndWatch message every stream sends next."""
        return self._snapshot

    def update(
        self, devices: Mapping[str, DeviceInfo] | None = None, *, all_unhealthy: bool | None = None
    ) -> None:
        """Replace the devices (and/or force them all Unhealthy) and wake every stream."""
        if devices is not None:
            self._devices = devices
        if all_unhealthy is not None:
            self._all_unhealthy = all_unhealthy
        self._snapshot = self._build_snapshot()
        self._version += 1
        for wake in self._streams:
            wake.set()

    def close(self) -> None:
        """End every ListAndWatch stream (the server is going away)."""
        self._closed = True
        for wake in self._streams:
            wake.set()

    def _build_snapshot(self) -> pluginapi.ListAndWatchResponse:
        forced = self._all_unhealthy
        snapshot = pluginapi.ListAndWatchResponse()
        # Built in place: Device messages made apart would each be copied in again.
        add = snapshot.devices.add
        for dev_id, info in self._devices.items():
            health = UNHEALTHY if forced else info.state
            if info.topology is None:
                add(ID=dev_id, health=health)
            else:
                add(ID=dev_id, health=health, topology=info.topology)
        size = snapshot.ByteSize()
        if size > KUBELET_MAX_MESSAGE:
            log.error(
                "resource %s: the device list is %d bytes, over kubelet's %d-byte limit; "
                "kubelet will drop the stream (use fewer or shorter device IDs)",
                self.resource_name,
                size,
                KUBELET_MAX_MESSAGE,
            )
        return snapshot

    # -- RPCs -----------------------------------------------------------------------

    async def GetDevicePluginOptions(
        self, request: pluginapi.Empty, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pluginapi.DevicePluginOptions:
        """Tell kubelet which optional calls this resource supports."""
        return self.options

    async def ListAndWatch(
        self, request: pluginapi.Empty, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pluginapi.ListAndWatchResponse]:
        """Send the full device list now and after every change, until the server stops."""
        wake = asyncio.Event()
        seq = self._stream_seq
        self._stream_seq += 1
        self._streams[wake] = seq
        try:
            sent = -1
            while not self._closed:
                if sent != self._version:
                    sent = self._version
                    yield self._snapshot
                else:
                    await wake.wait()
                    wake.clear()
        finally:
            del self._streams[wake]
            if self.on_stream_closed is not None and not self._closed:
                self.on_stream_closed(seq)

    async def Allocate(
        self, request: pluginapi.AllocateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pluginapi.AllocateResponse:
        """Answer with the device nodes, mounts, envs, annotations and CDI names to inject."""
        try:
            return await self._allocate_response(request)
        except RpcError as err:
            await context.abort(err.code, err.message)
            raise  # abort raises; this line keeps type checkers informed

    async def _allocate_response(
        self, request: pluginapi.AllocateRequest
    ) -> pluginapi.AllocateResponse:
        response: pluginapi.AllocateResponse | None = None
        if callable(self._allocate):
            try:
                result = await call_plugin_method(self._allocate, request)
            except UseDefaultMethodError:
                result = None
            except Exception as exc:
                raise self._plugin_failure("allocate", exc) from exc
            if isinstance(result, pluginapi.AllocateResponse):
                response = result
            elif result is not None and not isinstance(result, UseDefaultMethodError):
                raise RpcError(
                    grpc.StatusCode.INTERNAL,
                    f"resource {self.resource_name}: the plugin's allocate returned "
                    f"{type(result).__name__}, expected an AllocateResponse",
                )
        if response is None:
            response = self.default_allocate(request)
        if callable(self._post_allocate):
            try:
                await call_plugin_method(self._post_allocate, response)
            except Exception as exc:
                raise self._plugin_failure("post_allocate", exc) from exc
        for hook in self._post_allocators:
            try:
                await call_plugin_method(hook, self.resource_name, response)
            except Exception as exc:
                raise self._plugin_failure(
                    f"post-allocate hook {getattr(hook, '__qualname__', hook)!s}", exc
                ) from exc
        if request.container_requests and not response.container_responses:
            raise RpcError(
                grpc.StatusCode.INTERNAL,
                f"resource {self.resource_name}: the plugin answered Allocate with no "
                "container responses (kubelet rejects that)",
            )
        return response

    def default_allocate(self, request: pluginapi.AllocateRequest) -> pluginapi.AllocateResponse:
        """Build the response from the advertised DeviceInfo of every requested ID."""
        if not request.container_requests:
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"resource {self.resource_name}: Allocate request has no container requests",
            )
        response = pluginapi.AllocateResponse()
        devices = self._devices
        for index, creq in enumerate(request.container_requests):
            if not creq.devices_ids:
                raise RpcError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"resource {self.resource_name}: container request {index} names no devices",
                )
            cresp = response.container_responses.add()
            cdi_names: list[str] = []
            for dev_id in creq.devices_ids:
                info = devices.get(dev_id)
                if info is None:
                    raise RpcError(
                        grpc.StatusCode.NOT_FOUND,
                        f"resource {self.resource_name}: unknown device {dev_id!r}",
                    )
                if info.state != HEALTHY or self._all_unhealthy:
                    raise RpcError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"resource {self.resource_name}: device {dev_id!r} is unhealthy",
                    )
                cresp.devices.extend(info.nodes)
                cresp.mounts.extend(info.mounts)
                cresp.envs.update(info.envs)
                cresp.annotations.update(info.annotations)
                if info.cdi_spec is not None and self._cdi_name is not None:
                    name = self._cdi_name(info.cdi_spec)
                    if name not in cdi_names:
                        cdi_names.append(name)
            for name in cdi_names:
                cresp.cdi_devices.add(name=name)
        return response

    async def GetPreferredAllocation(
        self,
        request: pluginapi.PreferredAllocationRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pluginapi.PreferredAllocationResponse:
        """Ask the plugin which of the available devices it prefers."""
        try:
            if not callable(self._preferred):
                raise RpcError(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"resource {self.resource_name}: the plugin has no preferred allocation "
                    "(get_preferred_allocation_available is false)",
                )
            try:
                result = await call_plugin_method(self._preferred, request)
            except Exception as exc:
                raise self._plugin_failure("get_preferred_allocation", exc) from exc
            if not isinstance(result, pluginapi.PreferredAllocationResponse):
                raise RpcError(
                    grpc.StatusCode.INTERNAL,
                    f"resource {self.resource_name}: get_preferred_allocation returned "
                    f"{type(result).__name__}, expected a PreferredAllocationResponse",
                )
            return result
        except RpcError as err:
            await context.abort(err.code, err.message)
            raise

    async def PreStartContainer(
        self,
        request: pluginapi.PreStartContainerRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pluginapi.PreStartContainerResponse:
        """Let the plugin prepare the devices before a container starts."""
        try:
            if not callable(self._pre_start):
                raise RpcError(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"resource {self.resource_name}: the plugin has no pre-start step "
                    "(pre_start_required is false)",
                )
            try:
                await call_plugin_method(self._pre_start, request)
            except Exception as exc:
                raise self._plugin_failure("pre_start_container", exc) from exc
            return pluginapi.PreStartContainerResponse()
        except RpcError as err:
            await context.abort(err.code, err.message)
            raise

    def _plugin_failure(self, method: str, exc: Exception) -> RpcError:
        # A ValueError is the plugin's way of saying the request is bad; anything else
        # is the plugin's own failure. Either way the server stays up.
        if isinstance(exc, ValueError):
            code = grpc.StatusCode.INVALID_ARGUMENT
            log.info("resource %s: %s rejected the request: %s", self.resource_name, method, exc)
        else:
            code = grpc.StatusCode.INTERNAL
            log.error("resource %s: %s failed", self.resource_name, method, exc_info=exc)
        return RpcError(code, f"resource {self.resource_name}: {method} failed: {exc}")
