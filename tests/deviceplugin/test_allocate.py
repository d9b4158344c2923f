"""Allocate, GetPreferredAllocation, PreStartContainer and options, as kubelet calls them."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from host.deviceplugin import UNHEALTHY, DeviceSpec, Mount, UseDefaultMethodError, pluginapi
from host.testing import FakeKubelet
from tests.scanners import QueueScanner

from .conftest import ServeFn
from .helpers import info, node, plugin_stub, tree_of

pytestmark = pytest.mark.asyncio

RICH = info(
    "/dev/null",
    mounts=[Mount(host_path="/opt/lib", container_path="/usr/lib/x", read_only=True)],
    envs={"X_VISIBLE": "0"},
    annotations={"ex.com/a": "1"},
    cdi_spec={
        "cdiVersion": "0.5.0",
        "kind": "example.com/dev",
        "devices": [{"name": "d0", "containerEdits": {"env": ["D=0"]}}],
    },
)


def rich_tree() -> Any:
    return tree_of(
        {"a": {"d0": RICH, "d1": info("/dev/zero", envs={"Y": "1"}), "sick": info(state=UNHEALTHY)}}
    )


class TestDefaultAllocate:
    async def test_response_carries_everything(self, kubelet: FakeKubelet, serve: ServeFn) -> None:
        """Nodes, mounts, envs, annotations and the CDI name of every requested device."""
        await serve("ex.com", QueueScanner(rich_tree()))
        await kubelet.wait_for_resource("ex.com/a", count=3)
        response = await kubelet.allocate("ex.com/a", ["d0", "d1"])
        (c,) = response.container_responses
        assert [DeviceSpec.of(d) for d in c.devices] == [node("/dev/null"), node("/dev/zero")]
        assert [m.container_path for m in c.mounts] == ["/usr/lib/x"]
        assert dict(c.envs) == {"X_VISIBLE": "0", "Y": "1"}
        assert dict(c.annotations) == {"ex.com/a": "1"}
        assert [d.name for d in c.cdi_devices] == ["example.com/dev=d0"]

    @pytest.mark.parametrize(
        ("ids", "code", "needle"),
        [
            (["nope"], grpc.StatusCode.NOT_FOUND, "'nope'"),
            (["d0", "nope"], grpc.StatusCode.NOT_FOUND, "'nope'"),
            (["sick"], grpc.StatusCode.FAILED_PRECONDITION, "'sick'"),
        ],
    )
    async def test_bad_ids_get_a_status_with_the_id(
        self,
        kubelet: FakeKubelet,
        serve: ServeFn,
        ids: list[str],
        code: grpc.StatusCode,
        needle: str,
    ) -> None:
        """Unknown → NOT_FOUND, unhealthy → FAILED_PRECONDITION, message names the device."""
        await serve("ex.com", QueueScanner(rich_tree()))
        await kubelet.wait_for_resource("ex.com/a", count=3)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await kubelet.allocate("ex.com/a", ids)
        assert err.value.code() == code
        assert needle in (err.value.details() or "")
        # the server is still up
        assert (await kubelet.allocate("ex.com/a", ["d1"])).container_responses

    async def test_empty_request_is_invalid_argument(
        self, kubelet: FakeKubelet, serve: ServeFn
    ) -> None:
        """A request without container requests, or with an empty one, is INVALID_ARGUMENT."""
        await serve("ex.com", QueueScanner(rich_tree()))
        await kubelet.wait_for_resource("ex.com/a", count=3)
        async with plugin_stub(kubelet, "ex.com/a") as stub:
            for request in (
                pluginapi.AllocateRequest(),
                pluginapi.AllocateRequest(
                    container_requests=[pluginapi.ContainerAllocateRequest()]
                ),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Allocate(request)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


class PluginScanner(QueueScanner):
    """A scanner with every optional method, each steered by the test."""

    def __init__(self, *trees: Any) -> None:
        super().__init__(*trees)
        self.allocate_mode = "default"
        self.post_fail = False
        self.prestarted: list[list[str]] = []

    async def allocate(self, request: pluginapi.AllocateRequest) -> Any:
        if self.allocate_mode == "raise-default":
            raise UseDefaultMethodError()
        if self.allocate_mode == "return-default":
            return UseDefaultMethodError()
        if self.allocate_mode == "boom":
            raise RuntimeError("allocator exploded")
        if self.allocate_mode == "garbage":
            return 42
        response = pluginapi.AllocateResponse()
        response.container_responses.add().envs["OWN"] = "yes"
        return response

    def post_allocate(self, response: pluginapi.AllocateResponse) -> None:
        if self.post_fail:
            raise RuntimeError("post step exploded")
        for c in response.container_responses:
            c.annotations["post"] = "done"

    def get_preferred_allocation(
        self, request: pluginapi.PreferredAllocationRequest
    ) -> pluginapi.PreferredAllocationResponse:
        response = pluginapi.PreferredAllocationResponse()
        for creq in request.container_requests:
            if creq.allocation_size > len(creq.available_deviceIDs):
                available = len(creq.available_deviceIDs)
                raise ValueError(f"allocation_size {creq.allocation_size} > {available} available")
            ids = sorted(creq.available_deviceIDs, reverse=True)[: creq.allocation_size]
            response.container_responses.add(deviceIDs=ids)
        return response

    async def pre_start_container(self, request: pluginapi.PreStartContainerRequest) -> None:
        self.prestarted.append(list(request.devices_ids))


class TestPluginMethods:
    async def test_options_follow_the_methods(self, kubelet: FakeKubelet, serve: ServeFn) -> None:
        """GetDevicePluginOptions reflects which optional methods the scanner has."""
        await serve("with.com", PluginScanner(tree_of({"a": {"d0": info()}})))
        await serve("without.com", QueueScanner(tree_of({"a": {"d0": info()}})))
        await kubelet.wait_for_resource("with.com/a", count=1)
        await kubelet.wait_for_resource("without.com/a", count=1)
        assert kubelet.options("with.com/a") == pluginapi.DevicePluginOptions(
            pre_start_required=True, get_preferred_allocation_available=True
        )
        assert kubelet.options("without.com/a") == pluginapi.DevicePluginOptions()

    async def test_allocator_takes_over_or_falls_back(
        self, kubelet: FakeKubelet, serve: ServeFn
    ) -> None:
        """allocate() answers itself; UseDefaultMethodError raised or returned → default path."""
        scanner = PluginScanner(tree_of({"a": {"d0": info()}}))
        await serve("ex.com", scanner)
        await kubelet.wait_for_resource("ex.com/a", count=1)
        own = (await kubelet.allocate("ex.com/a", ["d0"])).container_responses[0]
        assert dict(own.envs) == {"OWN": "yes"}
        assert own.annotations["post"] == "done"
        for mode in ("raise-default", "return-default"):
            scanner.allocate_mode = mode
            c = (await kubelet.allocate("ex.com/a", ["d0"])).container_responses[0]
            assert [DeviceSpec.of(d) for d in c.devices] == [node("/dev/null")]
            assert c.annotations["post"] == "done"

    @pytest.mark.parametrize(
        ("mode", "post_fail", "needle"),
        [
            ("boom", False, "allocator exploded"),
            ("garbage", False, "int"),
            ("default", True, "post step exploded"),
        ],
    )
    async def test_plugin_failures_become_statuses(
        self, kubelet: FakeKubelet, serve: ServeFn, mode: str, post_fail: bool, needle: str
    ) -> None:
        """Exceptions or garbage from plugin methods fail the call; the server stays up."""
        scanner = PluginScanner(tree_of({"a": {"d0": info()}}))
        scanner.allocate_mode = mode
        scanner.post_fail = post_fail
        await serve("ex.com", scanner)
        await kubelet.wait_for_resource("ex.com/a", count=1)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await kubelet.allocate("ex.com/a", ["d0"])
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert needle in (err.value.details() or "")
        scanner.allocate_mode, scanner.post_fail = "raise-default", False
        assert (await kubelet.allocate("ex.com/a", ["d0"])).container_responses

    async def test_cross_cutting_post_allocators_run_last(
        self, kubelet: FakeKubelet, serve: ServeFn
    ) -> None:
        """Host-level post-allocate hooks see the response after the scanner's post_allocate."""
        seen: list[tuple[str, str]] = []

        async def hook(resource: str, response: pluginapi.AllocateResponse) -> None:
            seen.append((resource, response.container_responses[0].annotations["post"]))

        def failing(resource: str, response: pluginapi.AllocateResponse) -> None:
            raise KeyError("hook bug")

        scanner = PluginScanner(tree_of({"a": {"d0": info()}}))
        scanner.allocate_mode = "raise-default"
        await serve("ex.com", scanner, post_allocators=[hook])
        await serve(
            "bad.com", QueueScanner(tree_of({"a": {"d0": info()}})), post_allocators=[failing]
        )
        await kubelet.wait_for_resource("ex.com/a", count=1)
        await kubelet.wait_for_resource("bad.com/a", count=1)
        await kubelet.allocate("ex.com/a", ["d0"])
        assert seen == [("ex.com/a", "done")]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await kubelet.allocate("bad.com/a", ["d0"])
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert "hook bug" in (err.value.details() or "")

    async def test_preferred_allocation_and_its_errors(
        self, kubelet: FakeKubelet, serve: ServeFn
    ) -> None:
        """The plugin's preference is returned; its ValueError becomes INVALID_ARGUMENT."""
        await serve(
            "ex.com", PluginScanner(tree_of({"a": {"d0": info(), "d1": info(), "d2": info()}}))
        )
        await kubelet.wait_for_resource("ex.com/a", count=3)
        response = await kubelet.preferred_allocation("ex.com/a", ["d0", "d1", "d2"], size=2)
        assert list(response.container_responses[0].deviceIDs) == ["d2", "d1"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await kubelet.preferred_allocation("ex.com/a", ["d0"], size=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "allocation_size 5" in (err.value.details() or "")

    async def test_pre_start(self, kubelet: FakeKubelet, serve: ServeFn) -> None:
        """PreStartContainer reaches the plugin with the device IDs."""
        scanner = PluginScanner(tree_of({"a": {"d0": info()}}))
        await serve("ex.com", scanner)
        await kubelet.wait_for_resource("ex.com/a", count=1)
        await kubelet.pre_start("ex.com/a", ["d0"])
        assert scanner.prestarted == [["d0"]]

    async def test_missing_optional_methods_are_unimplemented(
        self, kubelet: FakeKubelet, serve: ServeFn
    ) -> None:
        """Without the methods, GetPreferredAllocation and PreStartContainer say UNIMPLEMENTED."""
        await serve("ex.com", QueueScanner(tree_of({"a": {"d0": info()}})))
        await kubelet.wait_for_resource("ex.com/a", count=1)
        async with plugin_stub(kubelet, "ex.com/a") as stub:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetPreferredAllocation(pluginapi.PreferredAllocationRequest())
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert "ex.com/a" in (err.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.PreStartContainer(pluginapi.PreStartContainerRequest(devices_ids=["d0"]))
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
