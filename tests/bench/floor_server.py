"""The floor for the Allocate figure: the least a grpc.aio DevicePlugin server can do.

Answers Allocate from a dict of ready-made container responses (device ID -> response)
and nothing else of note: no health check, no plugin hooks, no CDI. Whatever our server
spends beyond this is the framework's overhead.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc

from host._api import api_pb2, api_pb2_grpc


class FloorDevicePlugin(api_pb2_grpc.DevicePluginServicer):
    """Allocate from a dict; the other RPCs answer the minimum kubelet accepts."""

    def __init__(self, table: Mapping[str, api_pb2.ContainerAllocateResponse]) -> None:
        self._table = table

    async def GetDevicePluginOptions(
        self, request: api_pb2.Empty, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api_pb2.DevicePluginOptions:
        return api_pb2.DevicePluginOptions()

    async def Allocate(
        self, request: api_pb2.AllocateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api_pb2.AllocateResponse:
        response = api_pb2.AllocateResponse()
        for container in request.container_requests:
            answer = response.container_responses.add()
            for dev_id in container.devices_ids:
                known = self._table.get(dev_id)
                if known is None:
                    await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown device {dev_id}")
                answer.MergeFrom(known)
        return response


async def serve_floor(
    socket_path: Path, table: Mapping[str, api_pb2.ContainerAllocateResponse]
) -> grpc.aio.Server:
    """Start the floor server on ``socket_path``; the caller stops it."""
    server = grpc.aio.server()
    api_pb2_grpc.add_DevicePluginServicer_to_server(FloorDevicePlugin(table), server)
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    return server
