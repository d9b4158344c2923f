"""KEP-5004 end to end: a pod written for the device plugin gets the same devices through DRA.

The same pod spec (``resources.limits: {gpu.intel.com/i915: 1}``) is admitted twice on
the same fake GPU node: once served by the host's device plugin (the fake kubelet's
Allocate), once by the host's DRA driver through the DeviceClass that ``devplugin-host
dra deviceclasses`` prints (the fake scheduler's special claim, the fake DRA kubelet's
NodePrepareResources). What the runtime would give the container, device nodes,
mounts and environment with every CDI device resolved, is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import pytest_asyncio

from host import hookimpl
from host._loader import ScannerRecord
from host.deviceplugin import DeviceInfo, DeviceSpec, DeviceTree, Mount
from host.dra import DraOptions, build_dra_plugins, kube_client
from host.dra._deviceclasses import device_class
from host.testing import FakeApiServer, FakeDraKubelet, FakeKubelet
from host.testing._container import ContainerDevices
from host.testing._extended import (
    EXTENDED_RESOURCE_CLAIM_ANNOTATION,
    ExtendedResourceScheduler,
    SchedulingError,
    allocate_extended_resource,
    prepare_extended_resources,
)
from host.testing._fixtures import RunHost
from hostplugins.gpu import GpuScanner
from hostplugins.gpu.fakedev import FakeGpu, FakeGpuTree, write_gpu_tree
from tests.dra.schema import SCHEMA_VERSIONS, assert_schema_valid

pytestmark = pytest.mark.asyncio
pytest_plugins = ["host.testing"]

NODE = "node-a"
GPU = "gpu.intel.com"
I915 = "gpu.intel.com/i915"


def workload(name: str = "train", count: int = 1) -> dict[str, Any]:
    """A pod as written for the device plugin: the resource in limits only."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "ml"},
        "spec": {
            "containers": [
                {
                    "name": "worker",
                    "image": "registry.example.com/train:1",
                    "resources": {"limits": {I915: count, "cpu": "1"}},
                }
            ]
        },
    }


@pytest.fixture
def cards() -> int:
    """How many i915 cards the node has (a test parametrizes it)."""
    return 2


@pytest.fixture
def gpu_root(short_dir: Path, cards: int) -> Path:
    root = short_dir / "node"
    write_gpu_tree(root, FakeGpuTree(cards=[FakeGpu(driver="i915", numa_node=0)] * cards))
    return root


class DraNode:
    """The host's gpu plugin served as a DRA driver against a fake API server and kubelet."""

    def __init__(self, root: Path, work: Path, cards: int) -> None:
        self.root = root
        self.cards = cards
        self.work = work
        self.cdi_dir = work / "cdi"
        self.api = FakeApiServer(nodes=[NODE])
        self.kubelet = FakeDraKubelet(work / "reg")
        self.scheduler = ExtendedResourceScheduler(self.api, NODE)

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[DraNode]:
        async with self.api, self.kubelet:
            client = kube_client(self.api.write_kubeconfig(self.work / "kubeconfig"))
            scanner = GpuScanner(sysfs_root=self.root / "sys", devfs_root=self.root / "dev")
            options = DraOptions(
                frozenset({"gpu"}),
                NODE,
                plugin_dir=self.work / "dra",
                registry_dir=self.work / "reg",
            )
            plugins = build_dra_plugins(
                [ScannerRecord("gpu", GPU, scanner)], client, options, cdi_dir=self.cdi_dir
            )
            tasks = [asyncio.create_task(plugin.serve()) for _, plugin in plugins]
            try:
                await self.kubelet.wait_for_driver(GPU)
                await self.api.wait_for(
                    lambda: len(self.devices()) == self.cards, what="every card published"
                )
                yield self
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await client.close()

    def devices(self) -> list[str]:
        return [
            device["name"]
            for item in self.api.resource_slices(driver=GPU, node_name=NODE)
            for device in item["spec"].get("devices") or ()
        ]


@pytest_asyncio.fixture
async def dra_node(gpu_root: Path, short_dir: Path, cards: int) -> AsyncIterator[DraNode]:
    async with DraNode(gpu_root, short_dir / "dra", cards).serving() as node:
        node.api.add_device_class(device_class(GPU, "i915"))
        node.api.add_device_class(device_class(GPU, "xe"))
        yield node


async def through_device_plugin(
    kubelet: FakeKubelet, run_host: RunHost, root: Path, cdi_dir: Path
) -> ContainerDevices:
    await run_host(
        enable=["gpu"], sysfs_root=root / "sys", devfs_root=root / "dev", cdi_dir=cdi_dir
    )
    await kubelet.wait_for_resource(I915, healthy=1)
    allocation = await kubelet.allocate_like_kubelet(I915, 1, pod_name="train", namespace="ml")
    return ContainerDevices.from_allocate(allocation.response, cdi_dir)


class TestSamePodBothWays:
    @pytest.mark.parametrize("cards", [1])  # one card: both APIs must pick the same one
    async def test_device_nodes_mounts_and_env_are_the_same(
        self,
        kubelet: FakeKubelet,
        run_host: RunHost,
        dra_node: DraNode,
        gpu_root: Path,
        short_dir: Path,
    ) -> None:
        """gpu.intel.com/i915: 1 gives the container the same card through either API."""
        by_plugin = await through_device_plugin(kubelet, run_host, gpu_root, short_dir / "dp-cdi")
        pod = dra_node.scheduler.schedule(workload())
        ids = await prepare_extended_resources(dra_node.kubelet, dra_node.api, pod)
        by_dra = ContainerDevices.from_cdi(ids["worker"], dra_node.cdi_dir)
        assert by_dra == by_plugin
        assert {path for path, _, _ in by_dra.device_nodes} == {
            "/dev/dri/card0", "/dev/dri/renderD128"
        }  # fmt: skip

    async def test_two_devices_each(
        self, kubelet: FakeKubelet, run_host: RunHost, dra_node: DraNode, gpu_root: Path,
        short_dir: Path,
    ) -> None:  # fmt: skip
        """A request for 2 gets both cards both ways."""
        await run_host(
            enable=["gpu"], sysfs_root=gpu_root / "sys", devfs_root=gpu_root / "dev",
            cdi_dir=short_dir / "dp-cdi",
        )  # fmt: skip
        await kubelet.wait_for_resource(I915, healthy=2)
        allocation = await kubelet.allocate_like_kubelet(I915, 2)
        by_plugin = ContainerDevices.from_allocate(allocation.response, short_dir / "dp-cdi")
        pod = dra_node.scheduler.schedule(workload(count=2))
        ids = await prepare_extended_resources(dra_node.kubelet, dra_node.api, pod)
        assert ContainerDevices.from_cdi(ids["worker"], dra_node.cdi_dir) == by_plugin


class WidgetScanner:
    """One widget with a device node, a mount and environment variables."""

    def device_types(self) -> list[str]:
        return ["widget"]

    async def scan(self, notifier: Any) -> None:
        tree = DeviceTree()
        info = DeviceInfo(
            nodes=[
                DeviceSpec(host_path="/dev/null", container_path="/dev/widget", permissions="rw")
            ],
            mounts=[Mount(host_path="/etc/widget", container_path="/etc/widget", read_only=True)],
            envs={"WIDGET_ID": "w0", "WIDGET_MODE": "fast"},
        )
        tree.add_device("widget", "w0", info)
        notifier.notify(tree)
        await asyncio.Event().wait()


class WidgetPlugin:
    @hookimpl
    def devplugin_scanners(self, config: Any) -> Any:
        yield WIDGET.partition("/")[0], WidgetScanner()


WIDGET = "widget.example.com/widget"


class TestEnvAndMounts:
    async def test_same_env_and_mounts_both_ways(
        self, kubelet: FakeKubelet, run_host: RunHost, short_dir: Path
    ) -> None:
        """A device with environment and a read-only mount: the same container either way."""
        await run_host(plugins={"widget": WidgetPlugin()}, cdi_dir=short_dir / "dp-cdi")
        await kubelet.wait_for_resource(WIDGET, healthy=1)
        allocation = await kubelet.allocate_like_kubelet(WIDGET, 1)
        by_plugin = ContainerDevices.from_allocate(allocation.response, short_dir / "dp-cdi")
        work = short_dir / "dra"
        async with FakeApiServer(nodes=[NODE]) as api, FakeDraKubelet(work / "reg") as dra:
            client = kube_client(api.write_kubeconfig(short_dir / "kubeconfig"))
            options = DraOptions(
                frozenset({"widget"}), NODE, plugin_dir=work / "dra", registry_dir=work / "reg"
            )
            record = ScannerRecord("widget", "widget.example.com", WidgetScanner())
            ((_, plugin),) = build_dra_plugins([record], client, options, cdi_dir=work / "cdi")
            task = asyncio.create_task(plugin.serve())
            try:
                await dra.wait_for_driver("widget.example.com")
                await api.wait_for(lambda: bool(api.resource_slices(node_name=NODE)))
                pod, claim = await allocate_extended_resource(
                    api, dra, WIDGET, 1, node_name=NODE, cdi_dir=work / "cdi", pod_name="w"
                )
                mappings = pod["status"]["extendedResourceClaimStatus"]["requestMappings"]
                assert mappings[0]["resourceName"] == WIDGET
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await client.close()
        by_dra = ContainerDevices.from_cdi(claim.cdi_ids, work / "cdi")
        assert by_dra == by_plugin
        assert by_dra.env == {"WIDGET_ID": "w0", "WIDGET_MODE": "fast"}
        assert by_dra.mounts == {("/etc/widget", "/etc/widget", True)}
        assert by_dra.device_nodes == {("/dev/widget", "/dev/null", "rw")}


class TestSchedulerClaim:
    async def test_claim_and_pod_status_as_kep_5004(self, dra_node: DraNode) -> None:
        """One claim per pod, owned by it, one request per container and resource."""
        pod = dra_node.scheduler.schedule(workload())
        status = pod["status"]["extendedResourceClaimStatus"]
        assert status["requestMappings"] == [
            {
                "containerName": "worker",
                "resourceName": I915,
                "requestName": "container-0-request-1",
            }
        ]  # cpu sorts before gpu.intel.com/i915: the resource's index is 1
        (claim,) = [c for c in dra_node.api.store.list(_claims())["items"]]
        meta = claim["metadata"]
        assert meta["name"] == status["resourceClaimName"]
        assert meta["name"].startswith("train-extended-resources-")
        assert meta["annotations"] == {EXTENDED_RESOURCE_CLAIM_ANNOTATION: "true"}
        assert meta["ownerReferences"][0]["uid"] == pod["metadata"]["uid"]
        (request,) = claim["spec"]["devices"]["requests"]
        assert request["exactly"] == {
            "deviceClassName": "i915.gpu.intel.com", "allocationMode": "ExactCount", "count": 1
        }  # fmt: skip
        (result,) = claim["status"]["allocation"]["devices"]["results"]
        assert (result["request"], result["driver"], result["pool"]) == (
            "container-0-request-1", GPU, NODE
        )  # fmt: skip
        assert result["device"] in dra_node.devices()
        assert_schema_valid({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", **claim})
        for version in SCHEMA_VERSIONS:
            kubernetes_validate.validate(pod, version, strict=True)

    async def test_init_container_gets_the_main_containers_devices(self, dra_node: DraNode) -> None:
        """An init container reusing the main container's request gets its CDI devices."""
        spec = workload(count=2)
        spec["spec"]["initContainers"] = [
            {"name": "setup", "image": "busybox", "resources": {"limits": {I915: 1}}}
        ]
        pod = dra_node.scheduler.schedule(spec)
        ids = await prepare_extended_resources(dra_node.kubelet, dra_node.api, pod)
        assert set(ids) == {"setup", "worker"}
        assert ids["setup"] == ids["worker"]
        assert len(ContainerDevices.from_cdi(ids["worker"], dra_node.cdi_dir).device_nodes) == 4
        for version in SCHEMA_VERSIONS:
            kubernetes_validate.validate(pod, version, strict=True)

    async def test_devices_are_not_given_twice(self, dra_node: DraNode) -> None:
        """Two pods get the two cards; a third does not fit."""
        first = dra_node.scheduler.schedule(workload("a"))
        second = dra_node.scheduler.schedule(workload("b"))
        devices = {
            result["device"]
            for claim in dra_node.api.store.list(_claims())["items"]
            for result in claim["status"]["allocation"]["devices"]["results"]
        }
        assert devices == set(dra_node.devices())
        assert first["status"] != second["status"]
        with pytest.raises(SchedulingError, match=r"[01] free"):
            dra_node.scheduler.schedule(workload("c"))

    async def test_device_plugin_node_keeps_the_resource(self, dra_node: DraNode) -> None:
        """Where a device plugin advertises the resource, no claim is made (KEP-5004)."""
        pod = dra_node.scheduler.schedule(workload(), node_allocatable={I915: 2})
        assert "extendedResourceClaimStatus" not in pod.get("status", {})
        assert dra_node.api.store.list(_claims())["items"] == []

    async def test_no_class_no_fit(self, dra_node: DraNode) -> None:
        """A resource neither advertised nor backed by a class does not fit."""
        pod = workload()
        pod["spec"]["containers"][0]["resources"]["limits"] = {"gpu.intel.com/other": 1}
        with pytest.raises(SchedulingError, match=r"Insufficient gpu\.intel\.com/other"):
            dra_node.scheduler.schedule(pod)

    async def test_the_class_selects_by_type(self, dra_node: DraNode) -> None:
        """The xe class matches none of the node's i915 cards."""
        pod = workload()
        pod["spec"]["containers"][0]["resources"]["limits"] = {"gpu.intel.com/xe": 1}
        with pytest.raises(SchedulingError, match="0 free"):
            dra_node.scheduler.schedule(pod)


def _claims() -> Any:
    from host.testing._apiserver_store import RESOURCE_CLAIMS

    return RESOURCE_CLAIMS
