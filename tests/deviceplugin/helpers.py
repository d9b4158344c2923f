"""Small builders shared by the framework tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import grpc

from host._api import api_pb2, api_pb2_grpc
from host.deviceplugin import HEALTHY, DeviceInfo, DeviceSpec, DeviceTree
from host.testing import FakeKubelet


def node(path: str, perms: str = "rw") -> DeviceSpec:
    return DeviceSpec(host_path=path, container_path=path, permissions=perms)


def info(path: str = "/dev/null", state: str = HEALTHY, **kwargs: object) -> DeviceInfo:
    return DeviceInfo(state=state, nodes=[node(path)], **kwargs)  # type: ignore[arg-type]


def tree_of(types: Mapping[str, Mapping[str, DeviceInfo]]) -> DeviceTree:
    tree = DeviceTree()
    for dev_type, devices in types.items():
        for dev_id, dev_info in devices.items():
            tree.add_device(dev_type, dev_id, dev_info)
    return tree


@asynccontextmanager
async def plugin_stub(
    kubelet: FakeKubelet, resource: str
) -> AsyncIterator[api_pb2_grpc.DevicePluginAsyncStub]:
    """A DevicePlugin stub on the socket kubelet knows for ``resource``."""
    path = kubelet.resources[resource].socket_path
    async with grpc.aio.insecure_channel(f"unix://{path}") as channel:
        yield api_pb2_grpc.DevicePluginStub(channel)  # type: ignore[misc]


RegisterFn = Callable[[api_pb2.RegisterRequest, object], Awaitable[api_pb2.Empty]]


async def registration_server(path: Path, register: RegisterFn) -> grpc.aio.Server:
    """Serve kubelet's ``v1beta1.Registration`` at ``path`` with ``register`` (started)."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "v1beta1.Registration",
                {
                    "Register": grpc.unary_unary_rpc_method_handler(
                        register,
                        request_deserializer=api_pb2.RegisterRequest.FromString,
                        response_serializer=api_pb2.Empty.SerializeToString,
                    )
                },
            )
        ]
    )
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    return server
