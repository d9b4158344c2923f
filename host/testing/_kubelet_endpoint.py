"""Kubelet's side of one plugin connection: dial, the five DevicePlugin RPCs, close.

One :class:`PluginEndpoint` per accepted registration, like kubelet's ``client`` plus
``endpointImpl`` (``pkg/kubelet/cm/devicemanager/plugin/v1beta1/client.go``, ``endpoint.go``):
a blocking dial with a timeout, authority ``localhost``, kubelet's 4 MiB receive limit,
no keepalive, no default deadlines.
"""

from __future__ import annotations

import asyncio
import posixpath

import grpc

from host._api import api_pb2
from host.testing._kubelet_types import KubeletError

__all__ = [
    "DIAL_TIMEOUT",
    "MAX_RECEIVE_MESSAGE_LENGTH",
    "PRE_START_TIMEOUT",
    "PluginEndpoint",
    "go_join",
    "go_status_text",
]

DIAL_TIMEOUT = 10.0
"""Kubelet's blocking dial timeout, seconds."""
PRE_START_TIMEOUT = 30.0
"""``KubeletPreStartContainerRPCTimeoutInSecs``: the only RPC deadline kubelet sets."""
MAX_RECEIVE_MESSAGE_LENGTH = 4 * 1024 * 1024
"""grpc-go's default client receive limit, which kubelet never raises (#109304)."""

_SERVICE = "/v1beta1.DevicePlugin/"

# grpc-go spells status codes in CamelCase (codes.Code.String()); kubelet's error texts
# embed them as "rpc error: code = Unimplemented desc = ...".
_GO_CODE_NAMES = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}


def go_join(directory: str, endpoint: str) -> str:
    """Join like Go's ``filepath.Join``: an absolute ``endpoint`` stays under ``directory``.

    ``go_join("/d", "/tmp/x.sock") == "/d/tmp/x.sock"``, ``"../x"`` escapes, ``""`` gives
    the directory itself (kubelet joins the Register endpoint with
    ``filepath.Join`` and never validates it).
    """
    joined = posixpath.normpath(f"{directory}/{endpoint}" if endpoint else directory)
    # POSIX normpath keeps a leading "//"; Go's Clean does not.
    return "/" + joined.lstrip("/") if joined.startswith("//") else joined


def go_status_text(error: grpc.aio.AioRpcError) -> str:
    """Format a gRPC error as grpc-go prints a status error (``rpc error: code = ...``)."""
    code = _GO_CODE_NAMES.get(error.code(), str(error.code()))
    return f"rpc error: code = {code} desc = {error.details() or ''}"


class PluginEndpoint:
    """Kubelet's connection to one registered plugin socket, and its cached options.

    A *stopped* endpoint has a ``stop_time``; kubelet refuses to call it. An endpoint
    restored from the checkpoint after a restart has neither socket nor channel.
    """

    def __init__(
        self,
        resource: str,
        socket_path: str | None,
        options: api_pb2.DevicePluginOptions | None = None,
        *,
        stop_time: float | None = None,
    ) -> None:
        self.resource = resource
        self.socket_path = socket_path
        self.options = options
        self.stop_time = stop_time
        self.channel: grpc.aio.Channel | None = None
        self.stream_error: str | None = None
        self.messages = 0
        """ListAndWatch messages kubelet received on this connection."""

    def __repr__(self) -> str:
        state = "stopped" if self.stopped else "open" if self.channel else "idle"
        return f"PluginEndpoint({self.resource!r}, {self.socket_path!r}, {state})"

    @property
    def stopped(self) -> bool:
        """Whether kubelet marked this endpoint stopped (its stream ended)."""
        return self.stop_time is not None

    async def dial(self, seconds: float, authority: str | None) -> None:
        """Connect and wait until the channel is READY, like grpc-go's blocking dial.

        ``authority=None`` sends the socket path as ``:authority`` (kubelet < 1.26).
        Raises :class:`KubeletError` with kubelet's text when ``seconds`` run out.
        """
        if self.socket_path is None:
            raise KubeletError(f"failed to dial device plugin: no socket for {self.resource}")
        options: list[tuple[str, str | int]] = [
            ("grpc.default_authority", authority or self.socket_path),
            ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_LENGTH),
            ("grpc.enable_http_proxy", 0),
        ]
        self.channel = grpc.aio.insecure_channel("unix:" + self.socket_path, options=options)
        try:
            async with asyncio.timeout(seconds):
                await self.channel.channel_ready()
        except TimeoutError:
            raise KubeletError("failed to dial device plugin: context deadline exceeded") from None

    async def get_options(self, seconds: float | None) -> api_pb2.DevicePluginOptions:
        """Call GetDevicePluginOptions; errors become kubelet's ``failed to get ...`` text."""
        method = self._channel().unary_unary(
            _SERVICE + "GetDevicePluginOptions",
            request_serializer=api_pb2.Empty.SerializeToString,
            response_deserializer=api_pb2.DevicePluginOptions.FromString,
        )
        try:
            return await method(api_pb2.Empty(), timeout=seconds)
        except grpc.aio.AioRpcError as err:
            raise KubeletError(
                f"failed to get device plugin options: {go_status_text(err)}"
            ) from err

    def list_and_watch(
        self,
    ) -> grpc.aio.UnaryStreamCall[api_pb2.Empty, api_pb2.ListAndWatchResponse]:
        """Open the ListAndWatch stream (no deadline: kubelet uses ``context.TODO()``)."""
        method: grpc.aio.UnaryStreamMultiCallable[api_pb2.Empty, api_pb2.ListAndWatchResponse]
        method = self._channel().unary_stream(
            _SERVICE + "ListAndWatch",
            request_serializer=api_pb2.Empty.SerializeToString,
            response_deserializer=api_pb2.ListAndWatchResponse.FromString,
        )
        return method(api_pb2.Empty())

    async def allocate(self, request: api_pb2.AllocateRequest) -> api_pb2.AllocateResponse:
        """Call Allocate without a deadline, as kubelet does."""
        method = self._channel().unary_unary(
            _SERVICE + "Allocate",
            request_serializer=api_pb2.AllocateRequest.SerializeToString,
            response_deserializer=api_pb2.AllocateResponse.FromString,
        )
        return await method(request)

    async def get_preferred_allocation(
        self, request: api_pb2.PreferredAllocationRequest
    ) -> api_pb2.PreferredAllocationResponse:
        """Call GetPreferredAllocation without a deadline, as kubelet does."""
        method = self._channel().unary_unary(
            _SERVICE + "GetPreferredAllocation",
            request_serializer=api_pb2.PreferredAllocationRequest.SerializeToString,
            response_deserializer=api_pb2.PreferredAllocationResponse.FromString,
        )
        return await method(request)

    async def pre_start_container(
        self, request: api_pb2.PreStartContainerRequest
    ) -> api_pb2.PreStartContainerResponse:
        """Call PreStartContainer with kubelet's 30 s deadline."""
        method = self._channel().unary_unary(
            _SERVICE + "PreStartContainer",
            request_serializer=api_pb2.PreStartContainerRequest.SerializeToString,
            response_deserializer=api_pb2.PreStartContainerResponse.FromString,
        )
        return await method(request, timeout=PRE_START_TIMEOUT)

    async def close(self) -> None:
        """Close the channel (ends the plugin's ListAndWatch); safe to call twice."""
        channel, self.channel = self.channel, None
        if channel is not None:
            await channel.close()

    def _channel(self) -> grpc.aio.Channel:
        if self.stopped or self.channel is None:
            raise KubeletError(f"endpoint {self.socket_path or self.resource} has been stopped")
        return self.channel
