"""The generated Device Plugin API keeps the wire names and numbers kubelet uses.

Everything here is read from the generated code (its descriptor, its stub and its
servicer registration), so an accidental edit of ``protos/api.proto`` or a
regeneration with different tools fails here. The expected values are those of
kubelet's ``pkg/apis/deviceplugin/v1beta1/api.proto``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import grpc
import pytest
from google.protobuf import descriptor_pb2

from host._api import api_pb2, api_pb2_grpc

PACKAGE = "v1beta1"

# message -> {field name: (number, type as written in api.proto)}
MESSAGES: dict[str, dict[str, tuple[int, str]]] = {
    "DevicePluginOptions": {
        "pre_start_required": (1, "bool"),
        "get_preferred_allocation_available": (2, "bool"),
    },
    "RegisterRequest": {
        "version": (1, "string"),
        "endpoint": (2, "string"),
        "resource_name": (3, "string"),
        "options": (4, "DevicePluginOptions"),
    },
    "Empty": {},
    "ListAndWatchResponse": {"devices": (1, "repeated Device")},
    "TopologyInfo": {"nodes": (1, "repeated NUMANode")},
    "NUMANode": {"ID": (1, "int64")},
    "Device": {
        "ID": (1, "string"),
        "health": (2, "string"),
        "topology": (3, "TopologyInfo"),
    },
    "PreStartContainerRequest": {"devices_ids": (1, "repeated string")},
    "PreStartContainerResponse": {},
    "PreferredAllocationRequest": {
        "container_requests": (1, "repeated ContainerPreferredAllocationRequest"),
    },
    "ContainerPreferredAllocationRequest": {
        "available_deviceIDs": (1, "repeated string"),
        "must_include_deviceIDs": (2, "repeated string"),
        "allocation_size": (3, "int32"),
    },
    "PreferredAllocationResponse": {
        "container_responses": (1, "repeated ContainerPreferredAllocationResponse"),
    },
    "ContainerPreferredAllocationResponse": {"deviceIDs": (1, "repeated string")},
    "AllocateRequest": {"container_requests": (1, "repeated ContainerAllocateRequest")},
    "ContainerAllocateRequest": {"devices_ids": (1, "repeated string")},
    "CDIDevice": {"name": (1, "string")},
    "AllocateResponse": {"container_responses": (1, "repeated ContainerAllocateResponse")},
    "ContainerAllocateResponse": {
        "envs": (1, "map<string, string>"),
        "mounts": (2, "repeated Mount"),
        "devices": (3, "repeated DeviceSpec"),
        "annotations": (4, "map<string, string>"),
        "cdi_devices": (5, "repeated CDIDevice"),
    },
    "Mount": {
        "container_path": (1, "string"),
        "host_path": (2, "string"),
        "read_only": (3, "bool"),
    },
    "DeviceSpec": {
        "container_path": (1, "string"),
        "host_path": (2, "string"),
        "permissions": (3, "string"),
    },
}


class Rpc(NamedTuple):
    request: str
    response: str
    server_streaming: bool = False


SERVICES: dict[str, dict[str, Rpc]] = {
    "Registration": {"Register": Rpc("RegisterRequest", "Empty")},
    "DevicePlugin": {
        "GetDevicePluginOptions": Rpc("Empty", "DevicePluginOptions"),
        "ListAndWatch": Rpc("Empty", "ListAndWatchResponse", server_streaming=True),
        "GetPreferredAllocation": Rpc("PreferredAllocationRequest", "PreferredAllocationResponse"),
        "Allocate": Rpc("AllocateRequest", "AllocateResponse"),
        "PreStartContainer": Rpc("PreStartContainerRequest", "PreStartContainerResponse"),
    },
}

FULL_METHOD_PATHS = {
    "/v1beta1.Registration/Register",
    "/v1beta1.DevicePlugin/GetDevicePluginOptions",
    "/v1beta1.DevicePlugin/ListAndWatch",
    "/v1beta1.DevicePlugin/GetPreferredAllocation",
    "/v1beta1.DevicePlugin/Allocate",
    "/v1beta1.DevicePlugin/PreStartContainer",
}

_SCALARS = {
    descriptor_pb2.FieldDescriptorProto.TYPE_BOOL: "bool",
    descriptor_pb2.FieldDescriptorProto.TYPE_STRING: "string",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT32: "int32",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT64: "int64",
}


def _file_proto() -> descriptor_pb2.FileDescriptorProto:
    # The serialized FileDescriptorProto is plain data on every protobuf runtime
    # (no descriptor attribute that newer runtimes deprecate, such as ``label``).
    return descriptor_pb2.FileDescriptorProto.FromString(api_pb2.DESCRIPTOR.serialized_pb)


def _type_name(
    field: descriptor_pb2.FieldDescriptorProto, message: descriptor_pb2.DescriptorProto
) -> str:
    """Render a field's type the way api.proto spells it."""
    if field.type == descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE:
        entries = {f".{PACKAGE}.{message.name}.{n.name}": n for n in message.nested_type}
        entry = entries.get(field.type_name)
        if entry is not None and entry.options.map_entry:
            key, value = (_type_name(f, entry) for f in entry.field)
            return f"map<{key}, {value}>"
        prefix = f".{PACKAGE}."
        assert field.type_name.startswith(prefix), field.type_name
        name = field.type_name.removeprefix(prefix)
    else:
        name = _SCALARS[field.type]
    if field.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED:
        return f"repeated {name}"
    return name


def test_file_package_and_syntax() -> None:
    fdp = _file_proto()
    assert api_pb2.DESCRIPTOR.package == PACKAGE
    assert fdp.package == PACKAGE
    assert fdp.syntax == "proto3"
    assert list(fdp.dependency) == []


def test_messages_are_exactly_those_of_kubelet() -> None:
    fdp = _file_proto()
    assert [m.name for m in fdp.message_type] == list(MESSAGES)
    assert set(api_pb2.DESCRIPTOR.message_types_by_name) == set(MESSAGES)
    assert not fdp.enum_type


@pytest.mark.parametrize("message_name", list(MESSAGES))
def test_field_numbers_and_types(message_name: str) -> None:
    message = next(m for m in _file_proto().message_type if m.name == message_name)
    got = {f.name: (f.number, _type_name(f, message)) for f in message.field}
    assert got == MESSAGES[message_name]
    assert not any(f.HasField("oneof_index") for f in message.field)
    # The generated class is the one the rest of the project imports.
    cls = getattr(api_pb2, message_name)
    assert cls.DESCRIPTOR.full_name == f"{PACKAGE}.{message_name}"
    for field_name, (number, _) in MESSAGES[message_name].items():
        assert cls.DESCRIPTOR.fields_by_name[field_name].number == number


def test_services_and_full_method_paths() -> None:
    services = api_pb2.DESCRIPTOR.services_by_name
    assert set(services) == set(SERVICES)
    paths = set()
    for service_name, rpcs in SERVICES.items():
        service = services[service_name]
        assert service.full_name == f"{PACKAGE}.{service_name}"
        assert [m.name for m in service.methods] == list(rpcs)
        for method in service.methods:
            rpc = rpcs[method.name]
            assert method.input_type.full_name == f"{PACKAGE}.{rpc.request}"
            assert method.output_type.full_name == f"{PACKAGE}.{rpc.response}"
            paths.add(f"/{service.full_name}/{method.name}")
    assert paths == FULL_METHOD_PATHS


def test_streaming_flags() -> None:
    for service in _file_proto().service:
        for method in service.method:
            assert not method.client_streaming, method.name
            expected = SERVICES[service.name][method.name].server_streaming
            assert method.server_streaming == expected, method.name


class _RecordingChannel:
    """Stands in for a grpc channel: records what the generated stub asks for."""

    def __init__(self) -> None:
        self.calls: dict[str, tuple[str, Callable[..., Any], Callable[..., Any]]] = {}

    def _record(self, kind: str) -> Callable[..., object]:
        def make(
            path: str,
            request_serializer: Callable[..., Any],
            response_deserializer: Callable[..., Any],
            **_: object,
        ) -> object:
            self.calls[path] = (kind, request_serializer, response_deserializer)
            return object()

        return make

    def __getattr__(self, kind: str) -> Callable[..., object]:
        if kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            return self._record(kind)
        raise AttributeError(kind)


@pytest.mark.parametrize("service_name", list(SERVICES))
def test_stub_uses_kubelet_paths(service_name: str) -> None:
    channel = _RecordingChannel()
    getattr(api_pb2_grpc, f"{service_name}Stub")(channel)
    expected = {}
    for method_name, rpc in SERVICES[service_name].items():
        kind = "unary_stream" if rpc.server_streaming else "unary_unary"
        expected[f"/{PACKAGE}.{service_name}/{method_name}"] = (
            kind,
            getattr(api_pb2, rpc.request).SerializeToString,
            getattr(api_pb2, rpc.response).FromString,
        )
    assert channel.calls == expected


class _HandlerCallDetails(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


class _RecordingServer:
    def __init__(self) -> None:
        self.handlers: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        self.handlers.extend(handlers)

    def add_registered_method_handlers(self, *_: object) -> None:  # newer gencode only
        pass


@pytest.mark.parametrize("service_name", list(SERVICES))
def test_servicer_registration_serves_kubelet_paths(service_name: str) -> None:
    servicer = getattr(api_pb2_grpc, f"{service_name}Servicer")()
    server = _RecordingServer()
    getattr(api_pb2_grpc, f"add_{service_name}Servicer_to_server")(servicer, server)
    (handler,) = server.handlers
    for method_name, rpc in SERVICES[service_name].items():
        path = f"/{PACKAGE}.{service_name}/{method_name}"
        method_handler = handler.service(_HandlerCallDetails(path))
        assert method_handler is not None, path
        assert not method_handler.request_streaming
        assert method_handler.response_streaming == rpc.server_streaming
        assert method_handler.request_deserializer == getattr(api_pb2, rpc.request).FromString
        assert method_handler.response_serializer == (
            getattr(api_pb2, rpc.response).SerializeToString
        )
    assert handler.service(_HandlerCallDetails(f"/{PACKAGE}.{service_name}/Nope")) is None


def test_wire_encoding_is_stable() -> None:
    request = api_pb2.RegisterRequest(
        version="v1beta1",
        endpoint="a.sock",
        resource_name="x/y",
        options=api_pb2.DevicePluginOptions(get_preferred_allocation_available=True),
    )
    assert request.SerializeToString() == (
        b"\n\x07v1beta1\x12\x06a.sock\x1a\x03x/y\x22\x02\x10\x01"
    )
    response = api_pb2.AllocateResponse()
    container = response.container_responses.add()
    container.envs["K"] = "V"
    container.cdi_devices.add(name="v.com/c=d")
    data = response.SerializeToString(deterministic=True)
    assert data == b"\n\x15\n\x06\n\x01K\x12\x01V*\x0b\n\tv.com/c=d"
    assert api_pb2.AllocateResponse.FromString(data) == response


def test_generated_code_has_no_runtime_version_checks() -> None:
    # Gencode from grpcio-tools >= 1.63 / protoc >= 26 refuses older grpcio or
    # protobuf runtimes; the wheel supports grpcio >= 1.50 and protobuf >= 4.21.
    pb2_source = inspect.getsource(api_pb2)
    grpc_source = inspect.getsource(api_pb2_grpc)
    assert "ValidateProtobufRuntimeVersion" not in pb2_source
    assert "GRPC_GENERATED_VERSION" not in grpc_source
    assert "_registered_method" not in grpc_source
    assert "from . import api_pb2 as api__pb2" in grpc_source


def test_names_the_project_imports() -> None:
    for name in (
        "DevicePluginServicer",
        "DevicePluginStub",
        "add_DevicePluginServicer_to_server",
        "RegistrationServicer",
        "RegistrationStub",
        "add_RegistrationServicer_to_server",
    ):
        assert callable(getattr(api_pb2_grpc, name)), name
