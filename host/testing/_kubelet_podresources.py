"""Kubelet's PodResources v1 API, served from the fake kubelet's allocations.

As kubelet's ``pkg/kubelet/apis/podresources/server_v1.go`` answers from the device
manager (its checkpoint): ``List`` gives every pod holding devices with, per container,
one ``ContainerDevices`` per (device, NUMA node) (devices without topology: one entry
without it); ``GetAllocatableResources`` lists the healthy devices the same way;
``Get`` (gate ``KubeletPodResourcesGet``, beta and on from 1.34: here in mode
``"1.36"``) returns one pod or ``pod <name> in namespace <ns> not found``. Allocations
still in flight are not listed. Errors are plain Go errors, so ``UNKNOWN`` on the wire.
CPU, memory and DRA fields stay empty: the fake kubelet has none.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import grpc

from host._api import podresources_pb2, podresources_pb2_grpc
from host.testing._kubelet_types import Allocation, DeviceState

__all__ = ["PodResourcesServer"]


def _device_entries(
    resource: str, ids: Iterable[str], devices: Mapping[str, DeviceState]
) -> list[podresources_pb2.ContainerDevices]:
    entries = []
    for dev_id in ids:
        state = devices.get(dev_id)
        nodes = state.numa_nodes if state is not None else ()
        if not nodes:
            entries.append(
                podresources_pb2.ContainerDevices(resource_name=resource, device_ids=[dev_id])
            )
            continue
        for node in nodes:
            entries.append(
                podresources_pb2.ContainerDevices(
                    resource_name=resource,
                    device_ids=[dev_id],
                    topology=podresources_pb2.TopologyInfo(
                        nodes=[podresources_pb2.NUMANode(ID=node)]
                    ),
                )
            )
    return entries


class PodResourcesServer(podresources_pb2_grpc.PodResourcesListerServicer):
    """``v1.PodResourcesLister`` over the state of one fake kubelet."""

    def __init__(
        self,
        allocations: Callable[[], Iterable[Allocation]],
        healthy: Callable[[], Mapping[str, Iterable[str]]],
        devices: Callable[[str], Mapping[str, DeviceState]],
        *,
        get_enabled: bool,
    ) -> None:
        self._allocations = allocations
        self._healthy = healthy
        self._devices = devices
        self._get_enabled = get_enabled
        self._server: grpc.aio.Server | None = None

    async def start(self, socket_path: str) -> None:
        """Serve on ``socket_path`` (its directory created 0750, a stale socket replaced)."""
        os.makedirs(os.path.dirname(socket_path), mode=0o750, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)
        server = grpc.aio.server()
        podresources_pb2_grpc.add_PodResourcesListerServicer_to_server(self, server)
        server.add_insecure_port(f"unix:{socket_path}")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        """Stop serving (gRPC removes the socket)."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(None)

    def _pods(self) -> list[podresources_pb2.PodResources]:
        pods: dict[str, podresources_pb2.PodResources] = {}
        containers: dict[tuple[str, str], podresources_pb2.ContainerResources] = {}
        for allocation in self._allocations():
            pod = pods.get(allocation.pod_uid)
            if pod is None:
                pod = pods[allocation.pod_uid] = podresources_pb2.PodResources(
                    name=allocation.pod_name or allocation.pod_uid,
                    namespace=allocation.namespace,
                )
            key = (allocation.pod_uid, allocation.container)
            container = containers.get(key)
            if container is None:
                container = pod.containers.add(name=allocation.container)
                containers[key] = container
            container.devices.extend(
                _device_entries(
                    allocation.resource,
                    allocation.device_ids,
                    self._devices(allocation.resource),
                )
            )
        return list(pods.values())

    async def List(
        self,
        request: podresources_pb2.ListPodResourcesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> podresources_pb2.ListPodResourcesResponse:
        """List every pod holding devices, with its containers' devices."""
        return podresources_pb2.ListPodResourcesResponse(pod_resources=self._pods())

    async def GetAllocatableResources(
        self,
        request: podresources_pb2.AllocatableResourcesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> podresources_pb2.AllocatableResourcesResponse:
        """List the healthy devices of every resource."""
        response = podresources_pb2.AllocatableResourcesResponse()
        for resource, ids in sorted(self._healthy().items()):
            response.devices.extend(_device_entries(resource, sorted(ids), self._devices(resource)))
        return response

    async def Get(
        self,
        request: podresources_pb2.GetPodResourcesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> podresources_pb2.GetPodResourcesResponse:
        """Return one pod by name and namespace (only with the gate on, as from 1.34)."""
        if not self._get_enabled:
            await context.abort(grpc.StatusCode.UNKNOWN, "PodResources API Get method disabled")
        for pod in self._pods():
            if pod.name == request.pod_name and pod.namespace == request.pod_namespace:
                return podresources_pb2.GetPodResourcesResponse(pod_resources=pod)
        await context.abort(
            grpc.StatusCode.UNKNOWN,
            f"pod {request.pod_name} in namespace {request.pod_namespace} not found",
        )
        raise AssertionError("unreachable")  # abort raises
