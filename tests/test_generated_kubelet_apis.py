"""The generated kubelet plugin APIs keep the wire names and numbers of k8s.io/kubelet.

Covers the protos beside the Device Plugin API: plugin registration v1, PodResources
v1, DRA v1 and v1beta1, DRA health v1alpha1 and v1. The expected values are those of
kubelet's ``pkg/apis/<api>/<version>/api.proto`` (kubernetes/kubelet, July 2026); only
the Python module names are ours. Everything is read from the generated code, and one
RPC of each service goes over a real Unix socket with grpc.aio.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

from host._api import (
    api_pb2,
    dra_health_v1_pb2,
    dra_health_v1_pb2_grpc,
    dra_health_v1alpha1_pb2,
    dra_health_v1alpha1_pb2_grpc,
    dra_v1_pb2,
    dra_v1_pb2_grpc,
    dra_v1beta1_pb2,
    dra_v1beta1_pb2_grpc,
    pluginregistration_pb2,
    pluginregistration_pb2_grpc,
    podresources_pb2,
    podresources_pb2_grpc,
)


@dataclass(frozen=True)
class Api:
    """What upstream fixes for one proto: package, RPCs and field numbers."""

    module: str
    package: str
    # "Service/Method" -> (request, response, server streaming)
    rpcs: dict[str, tuple[str, str, bool]]
    # message -> {field: number}; every message and field of the upstream file
    fields: dict[str, dict[str, int]]
    # fields declared `optional` (proto3 presence) upstream
    optional: set[str] = field(default_factory=set)
    enums: dict[str, dict[str, int]] = field(default_factory=dict)


_DRA_FIELDS = {
    "NodePrepareResourcesRequest": {"claims": 1},
    "NodePrepareResourcesResponse": {"claims": 1},
    "NodePrepareResourceResponse": {"devices": 1, "error": 2},
    "Device": {"request_names": 1, "pool_name": 2, "device_name": 3, "cdi_device_ids": 4},
    "NodeUnprepareResourcesRequest": {"claims": 1},
    "NodeUnprepareResourcesResponse": {"claims": 1},
    "NodeUnprepareResourceResponse": {"error": 1},
    "Claim": {"namespace": 1, "uid": 2, "name": 3},
}
_DRA_RPCS = {
    "DRAPlugin/NodePrepareResources": (
        "NodePrepareResourcesRequest",
        "NodePrepareResourcesResponse",
        False,
    ),
    "DRAPlugin/NodeUnprepareResources": (
        "NodeUnprepareResourcesRequest",
        "NodeUnprepareResourcesResponse",
        False,
    ),
}
_HEALTH_FIELDS = {
    "NodeWatchResourcesRequest": {},
    "DeviceIdentifier": {"pool_name": 1, "device_name": 2},
    "DeviceHealth": {
        "device": 1,
        "health": 2,
        "last_updated_time": 3,
        "health_check_timeout_seconds": 4,
        "message": 5,
    },
    "NodeWatchResourcesResponse": {"devices": 1},
}
_HEALTH_RPCS = {
    "DRAResourceHealth/NodeWatchResources": (
        "NodeWatchResourcesRequest",
        "NodeWatchResourcesResponse",
        True,
    )
}
_HEALTH_ENUMS = {"HealthStatus": {"UNKNOWN": 0, "HEALTHY": 1, "UNHEALTHY": 2}}

APIS = [
    Api(
        "pluginregistration",
        "pluginregistration",
        {
            "Registration/GetInfo": ("InfoRequest", "PluginInfo", False),
            "Registration/NotifyRegistrationStatus": (
                "RegistrationStatus",
                "RegistrationStatusResponse",
                False,
            ),
        },
        {
            "PluginInfo": {"type": 1, "name": 2, "endpoint": 3, "supported_versions": 4},
            "RegistrationStatus": {"plugin_registered": 1, "error": 2},
            "RegistrationStatusResponse": {},
            "InfoRequest": {},
        },
    ),
    Api(
        "podresources",
        "v1",
        {
            "PodResourcesLister/List": (
                "ListPodResourcesRequest",
                "ListPodResourcesResponse",
                False,
            ),
            "PodResourcesLister/GetAllocatableResources": (
                "AllocatableResourcesRequest",
                "AllocatableResourcesResponse",
                False,
            ),
            "PodResourcesLister/Get": ("GetPodResourcesRequest", "GetPodResourcesResponse", False),
        },
        {
            "AllocatableResourcesRequest": {},
            "AllocatableResourcesResponse": {"devices": 1, "cpu_ids": 2, "memory": 3},
            "ListPodResourcesRequest": {},
            "ListPodResourcesResponse": {"pod_resources": 1},
            "PodResources": {
                "name": 1,
                "namespace": 2,
                "containers": 3,
                "cpu_ids": 4,
                "memory": 5,
            },
            "ContainerResources": {
                "name": 1,
                "devices": 2,
                "cpu_ids": 3,
                "memory": 4,
                "dynamic_resources": 5,
            },
            "ContainerMemory": {"memory_type": 1, "size": 2, "topology": 3},
            "ContainerDevices": {"resource_name": 1, "device_ids": 2, "topology": 3},
            "TopologyInfo": {"nodes": 1},
            "NUMANode": {"ID": 1},
            "DynamicResource": {"claim_name": 2, "claim_namespace": 3, "claim_resources": 4},
            "ClaimResource": {
                "cdi_devices": 1,
                "driver_name": 2,
                "pool_name": 3,
                "device_name": 4,
                "share_id": 5,
            },
            "CDIDevice": {"name": 1},
            "GetPodResourcesRequest": {"pod_name": 1, "pod_namespace": 2},
            "GetPodResourcesResponse": {"pod_resources": 1},
        },
        optional={"ClaimResource.share_id"},
    ),
    Api(
        "dra_v1",
        "k8s.io.kubelet.pkg.apis.dra.v1",
        _DRA_RPCS,
        {**_DRA_FIELDS, "Device": {**_DRA_FIELDS["Device"], "share_id": 5}},
        optional={"Device.share_id"},
    ),
    Api("dra_v1beta1", "k8s.io.kubelet.pkg.apis.dra.v1beta1", _DRA_RPCS, _DRA_FIELDS),
    Api("dra_health_v1alpha1", "v1alpha1", _HEALTH_RPCS, _HEALTH_FIELDS, enums=_HEALTH_ENUMS),
    Api("dra_health_v1", "v1", _HEALTH_RPCS, _HEALTH_FIELDS, enums=_HEALTH_ENUMS),
]

# Written out in full, as kubelet and the plugins put them on the wire.
FULL_METHOD_PATHS = {
    "/pluginregistration.Registration/GetInfo",
    "/pluginregistration.Registration/NotifyRegistrationStatus",
    "/v1.PodResourcesLister/List",
    "/v1.PodResourcesLister/GetAllocatableResources",
    "/v1.PodResourcesLister/Get",
    "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources",
    "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodeUnprepareResources",
    "/k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin/NodePrepareResources",
    "/k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin/NodeUnprepareResources",
    "/v1alpha1.DRAResourceHealth/NodeWatchResources",
    "/v1.DRAResourceHealth/NodeWatchResources",
}


def _modules(api: Api) -> tuple[ModuleType, ModuleType]:
    return (
        importlib.import_module(f"host._api.{api.module}_pb2"),
        importlib.import_module(f"host._api.{api.module}_pb2_grpc"),
    )


def _file_proto(pb2: ModuleType) -> descriptor_pb2.FileDescriptorProto:
    return descriptor_pb2.FileDescriptorProto.FromString(pb2.DESCRIPTOR.serialized_pb)


@pytest.mark.parametrize("api", APIS, ids=lambda a: a.module)
class TestEachApi:
    """Each generated module matches its upstream proto."""

    def test_imports_under_host_api_with_its_package(self, api: Api) -> None:
        """The module pair imports as host._api.X and declares the upstream package."""
        pb2, pb2_grpc = _modules(api)
        fdp = _file_proto(pb2)
        assert fdp.package == api.package
        assert fdp.name == f"{api.module}.proto"
        assert fdp.syntax == "proto3"
        assert list(fdp.dependency) == []
        assert f"from . import {api.module}_pb2 as" in inspect.getsource(pb2_grpc)

    def test_messages_and_field_numbers(self, api: Api) -> None:
        """Every message and field number is the upstream one, and nothing else exists."""
        pb2, _ = _modules(api)
        fdp = _file_proto(pb2)
        got = {m.name: {f.name: f.number for f in m.field} for m in fdp.message_type}
        assert got == api.fields
        optional = {
            f"{m.name}.{f.name}" for m in fdp.message_type for f in m.field if f.proto3_optional
        }
        assert optional == api.optional
        enums = {e.name: {v.name: v.number for v in e.value} for e in fdp.enum_type}
        assert enums == api.enums
        for name in api.fields:
            assert getattr(pb2, name).DESCRIPTOR.full_name == f"{api.package}.{name}"

    def test_services_methods_and_streaming(self, api: Api) -> None:
        """Service full names, methods, their types and streaming flags are upstream's."""
        pb2, pb2_grpc = _modules(api)
        got = {}
        for service in pb2.DESCRIPTOR.services_by_name.values():
            assert service.full_name == f"{api.package}.{service.name}"
            for method in service.methods:
                got[f"{service.name}/{method.name}"] = (
                    method.input_type.name,
                    method.output_type.name,
                    method.server_streaming,
                )
                assert not method.client_streaming
                path = f"/{service.full_name}/{method.name}"
                assert path in FULL_METHOD_PATHS, path
            for suffix in ("Stub", "Servicer"):
                assert callable(getattr(pb2_grpc, f"{service.name}{suffix}"))
            assert callable(getattr(pb2_grpc, f"add_{service.name}Servicer_to_server"))
        assert got == api.rpcs

    def test_no_runtime_version_checks(self, api: Api) -> None:
        """The old generator's code imports on every supported grpcio/protobuf runtime."""
        pb2, pb2_grpc = _modules(api)
        assert "ValidateProtobufRuntimeVersion" not in inspect.getsource(pb2)
        grpc_source = inspect.getsource(pb2_grpc)
        assert "GRPC_GENERATED_VERSION" not in grpc_source
        assert "_registered_method" not in grpc_source


def test_every_upstream_path_is_generated() -> None:
    paths = {
        f"/{service.full_name}/{method.name}"
        for api in APIS
        for service in _modules(api)[0].DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert paths == FULL_METHOD_PATHS


class TestOneProcess:
    """Messages of the same short name in different packages live side by side."""

    def test_same_names_resolve_to_distinct_types(self) -> None:
        """Device, TopologyInfo, CDIDevice and the health types stay apart per package."""
        pool = descriptor_pool.Default()
        pairs = [
            (dra_v1_pb2.Device, dra_v1beta1_pb2.Device, api_pb2.Device),
            (podresources_pb2.TopologyInfo, api_pb2.TopologyInfo),
            (podresources_pb2.CDIDevice, api_pb2.CDIDevice),
            (dra_health_v1_pb2.DeviceHealth, dra_health_v1alpha1_pb2.DeviceHealth),
        ]
        for classes in pairs:
            names = [c.DESCRIPTOR.full_name for c in classes]
            assert len(set(names)) == len(names), names
            for cls in classes:
                assert pool.FindMessageTypeByName(cls.DESCRIPTOR.full_name) is cls.DESCRIPTOR
        assert "share_id" in dra_v1_pb2.Device.DESCRIPTOR.fields_by_name
        assert "share_id" not in dra_v1beta1_pb2.Device.DESCRIPTOR.fields_by_name

    def test_package_v1_is_shared_by_podresources_and_health(self) -> None:
        """Both upstream files use package v1; their names do not clash."""
        pool = descriptor_pool.Default()
        assert pool.FindServiceByName("v1.PodResourcesLister").file.name == "podresources.proto"
        assert pool.FindServiceByName("v1.DRAResourceHealth").file.name == "dra_health_v1.proto"
        assert dra_health_v1_pb2.HEALTHY == 1
        assert pool.FindEnumTypeByName("v1.HealthStatus").values_by_name["UNHEALTHY"].number == 2


def test_wire_encoding_is_stable() -> None:
    info = pluginregistration_pb2.PluginInfo(
        type="DRAPlugin", name="d", endpoint="/e", supported_versions=["v1.DRAPlugin"]
    )
    assert info.SerializeToString() == b"\n\tDRAPlugin\x12\x01d\x1a\x02/e\x22\x0cv1.DRAPlugin"
    device = dra_v1_pb2.Device(pool_name="p", device_name="d", share_id="")
    # proto3 optional: an empty share_id set explicitly is still sent.
    assert device.SerializeToString() == b"\x12\x01p\x1a\x01d*\x00"
    assert dra_v1beta1_pb2.Device.FromString(device.SerializeToString()).device_name == "d"


@dataclass(frozen=True)
class Call:
    """One RPC sent through the generated stub over a socket, and the servicer's answer."""

    pb2_grpc: ModuleType
    service: str
    method: str
    request: Any
    answer: Any


CALLS = [
    Call(
        pluginregistration_pb2_grpc,
        "Registration",
        "GetInfo",
        pluginregistration_pb2.InfoRequest(),
        pluginregistration_pb2.PluginInfo(
            type="DevicePlugin", name="example.com/gpu", supported_versions=["v1beta1"]
        ),
    ),
    Call(
        podresources_pb2_grpc,
        "PodResourcesLister",
        "Get",
        podresources_pb2.GetPodResourcesRequest(pod_name="p", pod_namespace="ns"),
        podresources_pb2.GetPodResourcesResponse(
            pod_resources=podresources_pb2.PodResources(name="p", namespace="ns", cpu_ids=[3])
        ),
    ),
    Call(
        dra_v1_pb2_grpc,
        "DRAPlugin",
        "NodePrepareResources",
        dra_v1_pb2.NodePrepareResourcesRequest(
            claims=[dra_v1_pb2.Claim(namespace="ns", uid="u1", name="c")]
        ),
        dra_v1_pb2.NodePrepareResourcesResponse(
            claims={
                "u1": dra_v1_pb2.NodePrepareResourceResponse(
                    devices=[
                        dra_v1_pb2.Device(
                            pool_name="n", device_name="gpu0", cdi_device_ids=["v.com/c=0"]
                        )
                    ]
                )
            }
        ),
    ),
    Call(
        dra_v1beta1_pb2_grpc,
        "DRAPlugin",
        "NodeUnprepareResources",
        dra_v1beta1_pb2.NodeUnprepareResourcesRequest(
            claims=[dra_v1beta1_pb2.Claim(namespace="ns", uid="u1", name="c")]
        ),
        dra_v1beta1_pb2.NodeUnprepareResourcesResponse(
            claims={"u1": dra_v1beta1_pb2.NodeUnprepareResourceResponse()}
        ),
    ),
    Call(
        dra_health_v1alpha1_pb2_grpc,
        "DRAResourceHealth",
        "NodeWatchResources",
        dra_health_v1alpha1_pb2.NodeWatchResourcesRequest(),
        dra_health_v1alpha1_pb2.NodeWatchResourcesResponse(
            devices=[
                dra_health_v1alpha1_pb2.DeviceHealth(
                    device=dra_health_v1alpha1_pb2.DeviceIdentifier(
                        pool_name="n", device_name="gpu0"
                    ),
                    health=dra_health_v1alpha1_pb2.UNHEALTHY,
                    message="ECC",
                )
            ]
        ),
    ),
    Call(
        dra_health_v1_pb2_grpc,
        "DRAResourceHealth",
        "NodeWatchResources",
        dra_health_v1_pb2.NodeWatchResourcesRequest(),
        dra_health_v1_pb2.NodeWatchResourcesResponse(
            devices=[dra_health_v1_pb2.DeviceHealth(health=dra_health_v1_pb2.HEALTHY)]
        ),
    ),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "call", CALLS, ids=lambda c: f"{c.pb2_grpc.__name__.rsplit('.', 1)[1]}-{c.method}"
)
async def test_round_trip_over_unix_socket(call: Call, short_dir: Path) -> None:
    received: list[Any] = []
    streaming = call.method == "NodeWatchResources"

    if streaming:

        async def handler(self: object, request: Any, context: object) -> AsyncIterator[Any]:
            received.append(request)
            yield call.answer
            yield call.answer

    else:

        async def handler(self: object, request: Any, context: object) -> Any:
            received.append(request)
            return call.answer

    base = getattr(call.pb2_grpc, f"{call.service}Servicer")
    servicer = type("Servicer", (base,), {call.method: handler})()
    server = grpc.aio.server()
    getattr(call.pb2_grpc, f"add_{call.service}Servicer_to_server")(servicer, server)
    socket = short_dir / "api.sock"
    assert server.add_insecure_port(f"unix://{socket}") == 1
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"unix://{socket}") as channel:
            stub = getattr(call.pb2_grpc, f"{call.service}Stub")(channel)
            rpc = getattr(stub, call.method)
            if streaming:
                answers = [answer async for answer in rpc(call.request, timeout=10)]
                assert answers == [call.answer, call.answer]
            else:
                assert await rpc(call.request, timeout=10) == call.answer
    finally:
        await server.stop(None)
    assert received == [call.request]
