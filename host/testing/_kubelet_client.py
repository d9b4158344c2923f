"""Kubelet's calls into a registered device plugin, made by the fake kubelet.

Allocate, GetPreferredAllocation and PreStartContainer on demand, and the admission of a
container the way kubelet's device manager does it (``devicesToAllocate`` and
``callPreStartContainerIfNeeded`` in ``pkg/kubelet/cm/devicemanager/manager.go``), on
the state of one kubelet process (:class:`~host.testing._kubelet_manager.DeviceManager`).
"""

from __future__ import annotations

import dataclasses
import random
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import grpc

from host._api import api_pb2
from host.testing._kubelet_endpoint import PluginEndpoint, go_status_text
from host.testing._kubelet_manager import DeviceManager, copy_message
from host.testing._kubelet_types import Allocation, KubeletError

__all__ = ["KubeletCalls"]


class KubeletCalls:
    """The client half of :class:`~host.testing.FakeKubelet`: calls and admissions."""

    _dm: DeviceManager
    _random: random.Random
    _notify: Callable[[], Coroutine[Any, Any, None]]

    def _endpoint(self, resource: str) -> PluginEndpoint:
        book = self._dm.books.get(resource)
        if book is None or book.endpoint is None:
            raise KubeletError(f"unknown Device Plugin {resource}")
        return book.endpoint

    def options(self, resource: str) -> api_pb2.DevicePluginOptions:
        """Return the cached DevicePluginOptions of the resource's endpoint (a copy)."""
        endpoint = self._endpoint(resource)
        if endpoint.options is None:
            raise KubeletError(
                f"no options cached for {resource}: endpoint restored from checkpoint"
            )
        return copy_message(endpoint.options)

    async def allocate(self, resource: str, device_ids: Iterable[str]) -> api_pb2.AllocateResponse:
        """Call Allocate with one ContainerAllocateRequest, as kubelet does per container.

        No checks of the IDs (use :meth:`allocate_like_kubelet` for kubelet's choice)
        and nothing recorded. Raises :class:`grpc.aio.AioRpcError` when the RPC fails and
        :class:`KubeletError` for an empty ``container_responses``.
        """
        request = api_pb2.AllocateRequest(
            container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=list(device_ids))]
        )
        response = await self._endpoint(resource).allocate(request)
        if not response.container_responses:
            raise KubeletError(
                f"no containers return in allocation response AllocateResponse{{{response}}}"
            )
        return response

    async def preferred_allocation(
        self,
        resource: str,
        available: Iterable[str],
        must_include: Iterable[str] = (),
        *,
        size: int,
    ) -> api_pb2.PreferredAllocationResponse:
        """Call GetPreferredAllocation with one container request.

        Raises :class:`KubeletError` if the plugin did not advertise
        ``get_preferred_allocation_available`` (kubelet would never call it).
        """
        endpoint = self._endpoint(resource)
        if endpoint.options is None or not endpoint.options.get_preferred_allocation_available:
            raise KubeletError(
                f"kubelet would not call GetPreferredAllocation on {resource}: the plugin at "
                f"{endpoint.socket_path} did not set get_preferred_allocation_available"
            )
        request = api_pb2.PreferredAllocationRequest(
            container_requests=[
                api_pb2.ContainerPreferredAllocationRequest(
                    available_deviceIDs=list(available),
                    must_include_deviceIDs=list(must_include),
                    allocation_size=size,
                )
            ]
        )
        return await endpoint.get_preferred_allocation(request)

    async def pre_start(
        self, resource: str, device_ids: Iterable[str]
    ) -> api_pb2.PreStartContainerResponse:
        """Call PreStartContainer with kubelet's 30 s deadline.

        Raises :class:`KubeletError` if the plugin did not advertise ``pre_start_required``.
        """
        endpoint = self._endpoint(resource)
        if endpoint.options is None or not endpoint.options.pre_start_required:
            raise KubeletError(
                f"kubelet would not call PreStartContainer on {resource}: the plugin at "
                f"{endpoint.socket_path} did not set pre_start_required"
            )
        request = api_pb2.PreStartContainerRequest(devices_ids=list(device_ids))
        return await endpoint.pre_start_container(request)

    async def allocate_like_kubelet(
        self,
        resource: str,
        count: int,
        *,
        pod_uid: str | None = None,
        container: str = "main",
        reusable: Iterable[str] = (),
        pod_name: str = "",
        namespace: str = "default",
    ) -> Allocation:
        """Admit one container requesting ``count`` devices, as kubelet does.

        As ``devicesToAllocate`` in ``pkg/kubelet/cm/devicemanager/manager.go``.

        Takes ``reusable`` devices first (those of the pod's completed init
        containers), then picks healthy devices not yet allocated, asking
        GetPreferredAllocation first when the plugin offers it and devices are still
        needed: ``available_deviceIDs`` = the free devices plus those already taken, in
        random order (kubelet's Go map order), ``must_include_deviceIDs`` = those taken,
        ``allocation_size`` = the whole request. Its answer is intersected with the
        candidates and the rest filled in; then Allocate; the allocation is recorded.
        Every failure raises :class:`KubeletError` with kubelet's admission text
        ``Allocate failed due to ..., which is unexpected``. NUMA alignment (the
        TopologyManager's candidate set) is not modelled: every free device is a candidate.
        """
        if count < 1:
            raise ValueError(f"allocate_like_kubelet: count must be >= 1, got {count}")
        try:
            allocation = await self._admit(
                resource, count, pod_uid or str(uuid.uuid4()), container, tuple(reusable)
            )
        except KubeletError as err:
            raise KubeletError(f"Allocate failed due to {err}, which is unexpected") from err
        if pod_name or namespace != "default":
            # Names are the pod manager's, not the checkpoint's: kept beside it.
            index = self._dm.allocations.index(allocation)
            allocation = dataclasses.replace(allocation, pod_name=pod_name, namespace=namespace)
            self._dm.allocations[index] = allocation
        return allocation

    async def _admit(
        self, resource: str, count: int, pod_uid: str, container: str, reusable: tuple[str, ...]
    ) -> Allocation:
        book = self._dm.books.get(resource)
        if book is None or book.healthy is None:
            raise KubeletError(f"cannot allocate unregistered device {resource}")
        if not book.healthy:
            raise KubeletError(
                f"no healthy devices present; cannot allocate unhealthy devices {resource}"
            )
        taken = list(dict.fromkeys(reusable))[:count]
        available = book.healthy - self._dm.in_use(resource) - set(taken)
        if len(available) + len(taken) < count:
            raise KubeletError(
                f"requested number of devices unavailable for {resource}. "
                f"Requested: {count}, Available: {len(available)}"
            )
        endpoint = self._endpoint(resource)
        preferred: list[str] = []
        options = endpoint.options
        if (
            len(taken) < count
            and options is not None
            and options.get_preferred_allocation_available
        ):
            offered = [*available, *taken]
            self._random.shuffle(offered)
            try:
                answer = await self.preferred_allocation(
                    resource, offered, must_include=taken, size=count
                )
            except grpc.aio.AioRpcError as err:
                text = go_status_text(err)
                raise KubeletError(
                    f"device plugin GetPreferredAllocation rpc failed with err: {text}"
                ) from err
            if answer.container_responses:
                preferred = list(answer.container_responses[0].deviceIDs)
        # The lock was released during the RPC: only devices still healthy and free count.
        candidates = (book.healthy or set()) - self._dm.in_use(resource) - set(taken)
        chosen = taken + list(dict.fromkeys(d for d in preferred if d in candidates))
        chosen = chosen[:count]
        chosen += sorted(candidates - set(chosen))[: count - len(chosen)]
        if len(chosen) < count:
            raise KubeletError(
                "unexpectedly allocated less resources than required. "
                f"Requested: {count}, Got: {len(chosen)}"
            )
        reserved = self._dm.reserved.setdefault(resource, set())
        reserved.update(chosen)
        try:
            response = await self.allocate(resource, chosen)
        except grpc.aio.AioRpcError as err:
            raise KubeletError(go_status_text(err)) from err
        finally:
            reserved.difference_update(chosen)
        allocation = Allocation(
            resource=resource,
            device_ids=tuple(chosen),
            response=copy_message(response.container_responses[0]),
            pod_uid=pod_uid,
            container=container,
            time=time.monotonic(),
        )
        self._dm.allocations.append(allocation)
        self._dm.write_checkpoint()
        await self._notify()
        return allocation

    async def start_container(self, allocation: Allocation) -> None:
        """Start the allocation's container, calling PreStartContainer first if required.

        Kubelet calls it before every container start with all allocated IDs, only when
        the plugin set ``pre_start_required`` (``callPreStartContainerIfNeeded``). Errors
        raise :class:`KubeletError` with kubelet's text.
        """
        endpoint = self._endpoint(allocation.resource)
        if endpoint.options is None or not endpoint.options.pre_start_required:
            return
        try:
            await self.pre_start(allocation.resource, allocation.device_ids)
        except grpc.aio.AioRpcError as err:
            raise KubeletError(
                f"device plugin PreStartContainer rpc failed with err: {go_status_text(err)}"
            ) from err

    async def release(self, allocation: Allocation) -> None:
        """Forget an allocation (its pod terminated), freeing its devices."""
        try:
            self._dm.allocations.remove(allocation)
        except ValueError:
            raise KubeletError(
                f"no allocation of {allocation.device_ids} for pod {allocation.pod_uid} "
                f"container {allocation.container!r}"
            ) from None
        self._dm.write_checkpoint()
        await self._notify()
