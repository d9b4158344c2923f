"""Who holds which device: the PodResources client against the fake kubelet's API."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from host._api import podresources_pb2, podresources_pb2_grpc
from host.deviceplugin import DeviceHolder, PodResourcesClient
from host.testing import FakeKubelet, KubeletMode
from tests.scanners import QueueScanner

from .conftest import ServeFn
from .helpers import info, tree_of


@pytest_asyncio.fixture
async def pr_kubelet(short_dir: Path) -> AsyncIterator[FakeKubelet]:
    fake = FakeKubelet(short_dir, pod_resources_socket=short_dir / "pr" / "kubelet.sock")
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


async def two_devices(serve: ServeFn, kubelet: FakeKubelet) -> None:
    await serve("ex.com", QueueScanner(tree_of({"a": {"a0": info(), "a1": info()}})))
    await kubelet.wait_for_resource("ex.com/a", healthy=2)


@pytest.mark.asyncio
class TestClient:
    async def test_in_use_names_the_holders(
        self, pr_kubelet: FakeKubelet, serve: ServeFn, short_dir: Path
    ) -> None:
        """in_use maps each allocated ID to its pod, namespace and container."""
        await two_devices(serve, pr_kubelet)
        client = PodResourcesClient(short_dir / "pr" / "kubelet.sock", ttl=0)
        assert await client.in_use("ex.com/a") == {}
        allocation = await pr_kubelet.allocate_like_kubelet(
            "ex.com/a", 1, pod_name="train", namespace="ml", container="worker"
        )
        (dev_id,) = allocation.device_ids
        assert await client.in_use("ex.com/a") == {dev_id: (DeviceHolder("train", "ml", "worker"),)}
        held = await client.held_devices()
        assert held is not None
        assert held.device_ids("ex.com/a") == {dev_id}
        assert held.device_ids("ex.com/other") == frozenset()
        await pr_kubelet.release(allocation)
        assert await client.in_use("ex.com/a") == {}

    async def test_answers_come_from_the_cache_within_the_ttl(
        self, pr_kubelet: FakeKubelet, serve: ServeFn, short_dir: Path
    ) -> None:
        """Within ttl the last answer stands; in_use_cached never waits for kubelet."""
        await two_devices(serve, pr_kubelet)
        client = PodResourcesClient(short_dir / "pr" / "kubelet.sock", ttl=3600)
        assert client.in_use_cached("ex.com/a") is None  # nothing known yet
        assert await client.in_use("ex.com/a") == {}
        await pr_kubelet.allocate_like_kubelet("ex.com/a", 1)
        assert await client.in_use("ex.com/a") == {}  # cached
        assert client.in_use_cached("ex.com/a") == {}

    async def test_unknown_without_the_api_logged_once_per_change(
        self, short_dir: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """No socket: None (unknown, not 'none'), one log line however often it is asked."""
        caplog.set_level(logging.INFO, logger="host.deviceplugin.podresources")
        client = PodResourcesClient(short_dir / "pr" / "kubelet.sock", ttl=0)
        for _ in range(3):
            assert await client.in_use("ex.com/a") is None
            assert await client.held_devices() is None
        assert client.available is False
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 1
        assert "unavailable" in lines[0]
        async with FakeKubelet(short_dir, pod_resources_socket=short_dir / "pr" / "kubelet.sock"):
            assert await client.in_use("ex.com/a") == {}
        assert client.available is True
        assert len(caplog.records) == 2
        assert "answers" in caplog.records[1].getMessage()


@pytest.mark.asyncio
class TestFakeServer:
    async def test_list_has_one_entry_per_device_and_numa_node(
        self, pr_kubelet: FakeKubelet, serve: ServeFn, short_dir: Path
    ) -> None:
        """Devices on two NUMA nodes appear twice, devices without topology once."""
        from host.deviceplugin import NUMANode, TopologyInfo

        topo = TopologyInfo(nodes=[NUMANode(ID=0), NUMANode(ID=1)])
        await serve("ex.com", QueueScanner(tree_of({"a": {"a0": info(topology=topo)}})))
        await pr_kubelet.wait_for_resource("ex.com/a", healthy=1)
        await pr_kubelet.allocate_like_kubelet("ex.com/a", 1, pod_name="p")
        async with grpc.aio.insecure_channel(f"unix:{short_dir / 'pr' / 'kubelet.sock'}") as ch:
            stub = podresources_pb2_grpc.PodResourcesListerStub(ch)
            listed = await stub.List(podresources_pb2.ListPodResourcesRequest())
            allocatable = await stub.GetAllocatableResources(
                podresources_pb2.AllocatableResourcesRequest()
            )
        (pod,) = listed.pod_resources
        assert (pod.name, pod.namespace, [c.name for c in pod.containers]) == (
            "p",
            "default",
            ["main"],
        )
        entries = [(d.device_ids[0], d.topology.nodes[0].ID) for d in pod.containers[0].devices]
        assert entries == [("a0", 0), ("a0", 1)]
        assert [(d.resource_name, list(d.device_ids)) for d in allocatable.devices] == [
            ("ex.com/a", ["a0"]),
            ("ex.com/a", ["a0"]),
        ]

    @pytest.mark.parametrize(("mode", "enabled"), [("1.25", False), ("1.36", True)])
    async def test_get_follows_its_feature_gate(
        self, short_dir: Path, serve: ServeFn, mode: KubeletMode, enabled: bool
    ) -> None:
        """Get: disabled before 1.34 (UNKNOWN, kubelet's text); a missing pod is named."""
        socket = short_dir / "pr" / "kubelet.sock"
        async with FakeKubelet(short_dir, mode=mode, pod_resources_socket=socket) as kubelet:
            await two_devices(serve, kubelet)
            await kubelet.allocate_like_kubelet("ex.com/a", 2, pod_name="p", namespace="ns")
            async with grpc.aio.insecure_channel(f"unix:{socket}") as ch:
                stub = podresources_pb2_grpc.PodResourcesListerStub(ch)
                request = podresources_pb2.GetPodResourcesRequest(pod_name="p", pod_namespace="ns")
                missing = podresources_pb2.GetPodResourcesRequest(pod_name="q", pod_namespace="ns")
                if not enabled:
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await stub.Get(request)
                    assert err.value.code() is grpc.StatusCode.UNKNOWN
                    assert err.value.details() == "PodResources API Get method disabled"
                    return
                got = await stub.Get(request)
                assert len(got.pod_resources.containers[0].devices) == 2
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Get(missing)
                assert err.value.details() == "pod q in namespace ns not found"


class TestProcessClient:
    def test_configure_points_the_shared_client_at_the_socket(self, short_dir: Path) -> None:
        """The host's --pod-resources-socket becomes what pod_resources() reads."""
        from host.deviceplugin import (
            DEFAULT_POD_RESOURCES_SOCKET,
            configure_pod_resources,
            pod_resources,
        )

        assert pod_resources().socket_path == Path(DEFAULT_POD_RESOURCES_SOCKET)
        try:
            configure_pod_resources(short_dir / "k.sock")
            assert pod_resources().socket_path == short_dir / "k.sock"
        finally:
            configure_pod_resources(DEFAULT_POD_RESOURCES_SOCKET)


@pytest.mark.asyncio
class TestCdiGarbageCollectorFeed:
    async def test_devices_in_use_gives_resource_and_id_pairs(
        self, pr_kubelet: FakeKubelet, serve: ServeFn, short_dir: Path
    ) -> None:
        """devices_in_use: what the CDI spec store asks, (resource, ID) of held devices."""
        await two_devices(serve, pr_kubelet)
        client = PodResourcesClient(short_dir / "pr" / "kubelet.sock", ttl=0)
        allocation = await pr_kubelet.allocate_like_kubelet("ex.com/a", 1)
        in_use = await client.devices_in_use()
        assert in_use is not None
        assert in_use.device_ids == {("ex.com/a", allocation.device_ids[0])}
        assert in_use.cdi_names == frozenset()
        assert await PodResourcesClient(short_dir / "none.sock").devices_in_use() is None
