"""The DevicePlugin gRPC service of one resource: its RPC handlers.

The device list and its ListAndWatch streams are :class:`DeviceListServer`'s
(``_device_list.py``); what a request may cost is in ``_limits.py``. This module answers
the other calls, each through the plugin wall: Allocate (the plugin's own, or built
from the advertised devices), GetPreferredAllocation and PreStartContainer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import grpc

from host._api import api_pb2 as pluginapi
from host._api import api_pb2_grpc
from host.deviceplugin._device_list import DeviceListServer
from host.deviceplugin._guard import PluginCaller, PluginError
from host.deviceplugin._limits import (
    INLINE_DECODE,
    KUBELET_MAX_MESSAGE,
    MAX_STREAMS,
    RpcError,
    id_cap,
    request_byte_cap,
)
from host.deviceplugin._observer import Observer, observed_rpc
from host.deviceplugin._types import HEALTHY, UseDefaultMethodError

__all__ = [
    "KUBELET_MAX_MESSAGE",
    "MAX_STREAMS",
    "DevicePluginService",
    "PostAllocateHook",
    "RpcError",
    "id_cap",
]

log = logging.getLogger("host.deviceplugin.server")

PostAllocateHook = Callable[[str, pluginapi.AllocateResponse], Awaitable[None]]
"""A cross-cutting post-allocate hook: ``hook(resource_name, response)``."""


class DevicePluginService(DeviceListServer, api_pb2_grpc.DevicePluginServicer):
    """Serves ``v1beta1.DevicePlugin`` for one resource from the latest device snapshot.

    ``update`` replaces the snapshot and wakes every open ListAndWatch stream; a stream
    that is behind sends only the newest snapshot (superseded ones are coalesced).
    """

    def __init__(
        self,
        resource_name: str,
        scanner: Any,
        *,
        caller: PluginCaller | None = None,
        post_allocators: Sequence[PostAllocateHook] = (),
        cdi_name: Callable[[Mapping[str, Any]], str] | None = None,
        on_stream_closed: Callable[[int], None] | None = None,
        max_streams: int = MAX_STREAMS,
        observer: Observer | None = None,
    ) -> None:
        super().__init__(
            resource_name,
            on_stream_closed=on_stream_closed,
            max_streams=max_streams,
            observer=observer,
        )
        self._caller = caller or PluginCaller(resource_name)
        self.options_asked_at: int | None = None
        """Wall-clock ns of the last GetDevicePluginOptions (kubelet's dial back in Register)."""
        self._failures = _FailureLog(resource_name)
        self._allocate = getattr(scanner, "allocate", None)
        self._post_allocate = getattr(scanner, "post_allocate", None)
        self._preferred = getattr(scanner, "get_preferred_allocation", None)
        self._pre_start = getattr(scanner, "pre_start_container", None)
        self._post_allocators = tuple(post_allocators)
        self._cdi_name = cdi_name
        self.unhealthy_reason: Callable[[str], str | None] | None = None
        """Why a device is unhealthy, for the Allocate error (set by the manager)."""
        self.options = pluginapi.DevicePluginOptions(
            pre_start_required=callable(self._pre_start),
            get_preferred_allocation_available=callable(self._preferred),
        )

    def rpc_handler(self) -> grpc.GenericRpcHandler:
        """Return the ``v1beta1.DevicePlugin`` service as a handler for a gRPC server.

        Unlike the generated registration, ListAndWatch sends the pre-encoded device
        list (encoded once per change, not once per stream and send) and large
        requests are decoded off the loop.
        """
        unary = grpc.unary_unary_rpc_method_handler
        return grpc.method_handlers_generic_handler(
            "v1beta1.DevicePlugin",
            {
                "GetDevicePluginOptions": unary(
                    self.GetDevicePluginOptions,
                    request_deserializer=pluginapi.Empty.FromString,
                    response_serializer=pluginapi.DevicePluginOptions.SerializeToString,
                ),
                "ListAndWatch": grpc.unary_stream_rpc_method_handler(
                    self._list_and_watch_encoded,
                    request_deserializer=pluginapi.Empty.FromString,
                    response_serializer=_pass_bytes,
                ),
                "GetPreferredAllocation": unary(
                    self._decoding(
                        pluginapi.PreferredAllocationRequest,
                        self.GetPreferredAllocation,
                        lambda: callable(self._preferred),
                    ),
                    response_serializer=pluginapi.PreferredAllocationResponse.SerializeToString,
                ),
                "Allocate": unary(
                    self._decoding(pluginapi.AllocateRequest, self.Allocate),
                    response_serializer=pluginapi.AllocateResponse.SerializeToString,
                ),
                "PreStartContainer": unary(
                    self._decoding(
                        pluginapi.PreStartContainerRequest,
                        self.PreStartContainer,
                        lambda: callable(self._pre_start),
                    ),
                    response_serializer=pluginapi.PreStartContainerResponse.SerializeToString,
                ),
            },
        )

    def _decoding(
        self,
        message_type: Any,
        handler: Callable[[Any, Any], Awaitable[Any]],
        implemented: Callable[[], bool] = lambda: True,
    ) -> Callable[[bytes, Any], Awaitable[Any]]:
        async def decode_then_handle(data: bytes, context: Any) -> Any:
            if not implemented():
                return await handler(message_type(), context)  # UNIMPLEMENTED, undecoded
            request, refusal = await self._decode(message_type, data)
            # An aborted call keeps its AbortError, whose traceback keeps the frames it
            # went through and their locals: a reference cycle that lives until the
            # cyclic collector runs, which an idle host seldom does. Neither the request
            # bytes nor the decoded request may be in it (a flood of large requests
            # would hold tens of MiB).
            del data
            if refusal is not None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refusal)
            try:
                return await handler(request, context)
            except grpc.aio.AbortError as exc:
                del request
                exc.__context__ = None  # the handler's own error, with its frames
                raise exc.with_traceback(None) from None

        return decode_then_handle

    async def _decode(self, message_type: Any, data: bytes) -> tuple[Any, str | None]:
        """Decode a request, or say why not: too large to be valid, or not decodable."""
        cap = request_byte_cap(len(self._snapshot_bytes))
        name = message_type.DESCRIPTOR.name
        if len(data) > cap:
            return None, (
                f"resource {self.resource_name}: the {name} is {len(data)} bytes; at most "
                f"{cap} are accepted (20 times the device list, 64 KiB at least)"
            )
        request = message_type()
        try:
            if len(data) <= INLINE_DECODE:
                request.ParseFromString(data)
            else:
                await asyncio.to_thread(request.ParseFromString, data)
        except Exception as exc:  # DecodeError, or a message nested too deep
            return None, f"resource {self.resource_name}: cannot decode the {name}: {exc}"
        return request, None

    # -- RPCs -----------------------------------------------------------------------

    async def GetDevicePluginOptions(
        self, request: pluginapi.Empty, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pluginapi.DevicePluginOptions:
        """Tell kubelet which optional calls this resource supports."""
        self.options_asked_at = time.time_ns()
        return self.options

    @observed_rpc("Allocate")
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
        self._check_ids("Allocate", [creq.devices_ids for creq in request.container_requests])
        response: pluginapi.AllocateResponse | None = None
        if callable(self._allocate):
            try:
                result = await self._caller.call("allocate", self._allocate, request)
            except PluginError as exc:
                if not isinstance(exc.__cause__, UseDefaultMethodError):
                    raise self._plugin_failure(exc) from exc
                result = None
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
                await self._caller.call("post_allocate", self._post_allocate, response)
            except PluginError as exc:
                raise self._plugin_failure(exc) from exc
        for hook in self._post_allocators:
            await self._run_post_allocator(hook, response)
        if request.container_requests and not response.container_responses:
            raise RpcError(
                grpc.StatusCode.INTERNAL,
                f"resource {self.resource_name}: the plugin answered Allocate with no "
                "container responses (kubelet rejects that)",
            )
        return response

    async def _run_post_allocator(
        self, hook: PostAllocateHook, response: pluginapi.AllocateResponse
    ) -> None:
        """Run one plugin's cross-cutting hook on a copy; keep its edits only if it succeeds.

        A failing hook fails the Allocate of its own plugin's resources. Another
        plugin's resources are not taken down by it: the failure is logged and the
        response goes out without that hook's edits (the copy also keeps a hook that
        overran its deadline, and may still be running, away from the response).
        """
        draft = pluginapi.AllocateResponse()
        draft.CopyFrom(response)
        try:
            await hook(self.resource_name, draft)
        except RpcError:
            raise  # the host's own hooks answer with a status of their own
        except PluginError as exc:
            if exc.plugin == self._caller.plugin:
                raise self._plugin_failure(exc) from exc
            self._failures.log(exc, note="its edits are left out of this response")
            return
        except Exception as exc:  # a hook wired without a wall of its own
            raise self._plugin_failure(
                PluginError("?", f"post-allocate hook {hook!r}", f"raised {exc!r}")
            ) from exc
        response.CopyFrom(draft)

    def _check_ids(self, call: str, id_lists: Sequence[Sequence[str]]) -> None:
        """Refuse requests naming too many IDs, or one ID twice, before any work on them."""
        total = sum(len(ids) for ids in id_lists)
        cap = id_cap(len(self._devices))
        if total > cap:
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"resource {self.resource_name}: {call} names {total} device IDs; at most "
                f"{cap} are accepted (10 times the {len(self._devices)} devices served)",
            )
        seen: set[str] = set()
        for ids in id_lists:
            for dev_id in ids:
                if dev_id in seen:
                    raise RpcError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"resource {self.resource_name}: {call} names device {dev_id!r} twice",
                    )
                seen.add(dev_id)

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
                    why = self.unhealthy_reason(dev_id) if self.unhealthy_reason else None
                    raise RpcError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"resource {self.resource_name}: device {dev_id!r} is unhealthy"
                        + (f": {why}" if why else ""),
                    )
                add_node, add_mount = cresp.devices.add, cresp.mounts.add
                for node in info.nodes:
                    add_node(
                        container_path=node.container_path,
                        host_path=node.host_path,
                        permissions=node.permissions,
                    )
                for mount in info.mounts:
                    add_mount(
                        container_path=mount.container_path,
                        host_path=mount.host_path,
                        read_only=mount.read_only,
                    )
                cresp.envs.update(info.envs)
                cresp.annotations.update(info.annotations)
                if info.cdi_spec is not None and self._cdi_name is not None:
                    name = self._cdi_name(info.cdi_spec)
                    if name not in cdi_names:
                        cdi_names.append(name)
            for name in cdi_names:
                cresp.cdi_devices.add(name=name)
        return response

    @observed_rpc("GetPreferredAllocation")
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
            for creq in request.container_requests:
                self._check_ids("GetPreferredAllocation", [creq.available_deviceIDs])
                self._check_ids("GetPreferredAllocation", [creq.must_include_deviceIDs])
            try:
                result = await self._caller.call(
                    "get_preferred_allocation", self._preferred, request
                )
            except PluginError as exc:
                raise self._plugin_failure(exc) from exc
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

    @observed_rpc("PreStartContainer")
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
            self._check_ids("PreStartContainer", [request.devices_ids])
            try:
                await self._caller.call("pre_start_container", self._pre_start, request)
            except PluginError as exc:
                raise self._plugin_failure(exc) from exc
            return pluginapi.PreStartContainerResponse()
        except RpcError as err:
            await context.abort(err.code, err.message)
            raise

    def _plugin_failure(self, exc: PluginError) -> RpcError:
        # A ValueError is the plugin's way of saying the request is bad; anything else
        # (SystemExit and KeyboardInterrupt included) is the plugin's own failure.
        # Either way the server stays up and kubelet gets an answer.
        if isinstance(exc.__cause__, ValueError):
            code = grpc.StatusCode.INVALID_ARGUMENT
            log.info("resource %s: %s", self.resource_name, exc)
        else:
            code = grpc.StatusCode.INTERNAL
            self._failures.log(exc)
        return RpcError(code, f"resource {self.resource_name}: {exc}")


class _FailureLog:
    """Logs a plugin's failures at ERROR: the first at once, then one line a minute.

    A plugin failing every Allocate of a busy node must not drown the log.
    """

    INTERVAL = 60.0

    def __init__(self, resource_name: str) -> None:
        self._resource_name = resource_name
        self._last = -self.INTERVAL
        self._suppressed = 0

    def log(self, exc: PluginError, *, note: str = "") -> None:
        now = time.monotonic()
        if now - self._last < self.INTERVAL:
            self._suppressed += 1
            return
        more = (
            f" ({self._suppressed} more failures since the last report)" if self._suppressed else ""
        )
        self._last, self._suppressed = now, 0
        note = f"; {note}" if note else ""
        log.error(
            "resource %s: %s%s%s", self._resource_name, exc, note, more, exc_info=exc.__cause__
        )


def _pass_bytes(message: Any) -> bytes:
    """Serialize a response; pre-encoded bytes pass as they are."""
    if isinstance(message, bytes):
        return message
    return message.SerializeToString()  # type: ignore[no-any-return]
