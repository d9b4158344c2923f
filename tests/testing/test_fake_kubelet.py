"""FakeKubelet against a hand-written grpc.aio device plugin, over real Unix sockets."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

import host.testing
from host._api import api_pb2, api_pb2_grpc
from host.testing import FakeKubelet, KubeletError, ResourceState
from host.testing._kubelet_checkpoint import CHECKPOINT_NAME
from host.testing._kubelet_endpoint import go_join

RESOURCE = "example.com/gpu"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"


def dev(device_id: str, health: str = HEALTHY, numa: Iterable[int] = ()) -> api_pb2.Device:
    topology = api_pb2.TopologyInfo(nodes=[api_pb2.NUMANode(ID=n) for n in numa])
    return api_pb2.Device(ID=device_id, health=health, topology=topology)


class _End:
    def __init__(self, code: grpc.StatusCode | None) -> None:
        self.code = code


class FakePlugin(api_pb2_grpc.DevicePluginServicer):
    """A minimal device plugin that records every call kubelet makes."""

    def __init__(
        self,
        socket_path: str,
        devices: Iterable[api_pb2.Device] = (),
        *,
        options: api_pb2.DevicePluginOptions | None = None,
        send_initial: bool = True,
    ) -> None:
        self.socket_path = socket_path
        self.devices = list(devices)
        self.options = options or api_pb2.DevicePluginOptions()
        self.send_initial = send_initial
        self.calls: list[str] = []
        self.options_error: grpc.StatusCode | None = None
        self.list_error: grpc.StatusCode | None = None
        self.allocate_requests: list[api_pb2.AllocateRequest] = []
        self.allocate_error: grpc.StatusCode | None = None
        self.allocate_empty = False
        self.preferred_requests: list[api_pb2.PreferredAllocationRequest] = []
        self.preferred_answer: list[str] = []
        self.pre_start_requests: list[api_pb2.PreStartContainerRequest] = []
        self.pre_start_deadlines: list[float | None] = []
        self.stream_opened = asyncio.Event()
        self.stream_closed = asyncio.Event()
        self._queues: list[asyncio.Queue[list[api_pb2.Device] | _End]] = []
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        self._server = grpc.aio.server()
        api_pb2_grpc.add_DevicePluginServicer_to_server(self, self._server)
        self._server.add_insecure_port("unix:" + self.socket_path)
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(None)
            self._server = None

    async def restart(self) -> None:
        await self.stop()
        self.stream_closed.clear()
        await self.start()

    async def register(
        self,
        kubelet: FakeKubelet,
        resource: str = RESOURCE,
        *,
        version: str = "v1beta1",
        endpoint: str | None = None,
        options: api_pb2.DevicePluginOptions | None = None,
    ) -> None:
        request = api_pb2.RegisterRequest(
            version=version,
            endpoint=os.path.basename(self.socket_path) if endpoint is None else endpoint,
            resource_name=resource,
            options=options or self.options,
        )
        async with grpc.aio.insecure_channel("unix:" + kubelet.socket_path) as channel:
            await api_pb2_grpc.RegistrationStub(channel).Register(request, timeout=15)

    def send(self, devices: Iterable[api_pb2.Device]) -> None:
        self.devices = list(devices)
        for queue in self._queues:
            queue.put_nowait(list(self.devices))

    def end_streams(self, code: grpc.StatusCode | None = None) -> None:
        for queue in self._queues:
            queue.put_nowait(_End(code))

    async def wait_stream_opened(self) -> None:
        await asyncio.wait_for(self.stream_opened.wait(), 5)

    async def wait_stream_closed(self) -> None:
        await asyncio.wait_for(self.stream_closed.wait(), 5)

    # -- DevicePlugin service

    async def GetDevicePluginOptions(self, request: Any, context: Any) -> Any:
        self.calls.append("GetDevicePluginOptions")
        if self.options_error is not None:
            await context.abort(self.options_error, "options broken")
        return self.options

    async def ListAndWatch(self, request: Any, context: Any) -> Any:
        self.calls.append("ListAndWatch")
        if self.list_error is not None:
            await context.abort(self.list_error, "list broken")
        queue: asyncio.Queue[list[api_pb2.Device] | _End] = asyncio.Queue()
        self._queues.append(queue)
        self.stream_opened.set()
        try:
            if self.send_initial:
                yield api_pb2.ListAndWatchResponse(devices=self.devices)
            while True:
                item = await queue.get()
                if isinstance(item, _End):
                    if item.code is not None:
                        await context.abort(item.code, "stream broken")
                    return
                yield api_pb2.ListAndWatchResponse(devices=item)
        finally:
            self._queues.remove(queue)
            self.stream_closed.set()

    async def Allocate(self, request: Any, context: Any) -> Any:
        self.calls.append("Allocate")
        self.allocate_requests.append(request)
        if self.allocate_error is not None:
            await context.abort(self.allocate_error, "no such device")
        if self.allocate_empty:
            return api_pb2.AllocateResponse()
        responses = [
            api_pb2.ContainerAllocateResponse(envs={"DEVICES": ",".join(r.devices_ids)})
            for r in request.container_requests
        ]
        return api_pb2.AllocateResponse(container_responses=responses)

    async def GetPreferredAllocation(self, request: Any, context: Any) -> Any:
        self.calls.append("GetPreferredAllocation")
        self.preferred_requests.append(request)
        answer = api_pb2.ContainerPreferredAllocationResponse(deviceIDs=self.preferred_answer)
        return api_pb2.PreferredAllocationResponse(container_responses=[answer])

    async def PreStartContainer(self, request: Any, context: Any) -> Any:
        self.calls.append("PreStartContainer")
        self.pre_start_requests.append(request)
        self.pre_start_deadlines.append(context.time_remaining())
        return api_pb2.PreStartContainerResponse()


PluginFactory = Callable[..., Awaitable[FakePlugin]]


@pytest.fixture
def plugin_dir(short_dir: Path) -> Path:
    return short_dir / "dp"


@pytest_asyncio.fixture
async def kubelet(plugin_dir: Path) -> AsyncIterator[FakeKubelet]:
    async with FakeKubelet(plugin_dir) as fake:
        yield fake


async def _started_plugins(
    directory: str,
) -> tuple[PluginFactory, list[FakePlugin]]:
    started: list[FakePlugin] = []

    async def make(
        name: str = "p.sock", devices: Iterable[api_pb2.Device] = (), **kwargs: Any
    ) -> FakePlugin:
        plugin = FakePlugin(os.path.join(directory, name), devices, **kwargs)
        await plugin.start()
        started.append(plugin)
        return plugin

    return make, started


@pytest_asyncio.fixture
async def plugins(kubelet: FakeKubelet) -> AsyncIterator[PluginFactory]:
    """Start FakePlugins in the kubelet's directory; stop them before the kubelet."""
    make, started = await _started_plugins(kubelet.plugin_dir)
    yield make
    for plugin in started:
        await plugin.stop()


def kind(path: str | Path) -> str:
    """What is at ``path``: socket, file, dir, symlink or missing (symlinks not followed)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return "missing"
    for name, test in [
        ("symlink", stat.S_ISLNK),
        ("socket", stat.S_ISSOCK),
        ("dir", stat.S_ISDIR),
        ("file", stat.S_ISREG),
    ]:
        if test(mode):
            return name
    return "other"


def populate(directory: Path) -> None:
    """Add a regular file, a subdir holding a socket, a stray socket, a link to a socket."""
    (directory / "notes.txt").write_text("keep me")
    (directory / "sub").mkdir()
    with socket.socket(socket.AF_UNIX) as nested, socket.socket(socket.AF_UNIX) as stray:
        nested.bind(str(directory / "sub" / "nested.sock"))
        stray.bind(str(directory / "stray.sock"))
    (directory / "link.sock").symlink_to(directory / "sub" / "nested.sock")


async def expect_rpc_error(awaitable: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable
    return info.value


TWO = [dev("d1"), dev("d2")]


class TestPublicSurface:
    def test_fake_kubelet_names_are_exported(self) -> None:
        """host.testing exports the fake kubelet and its records by name."""
        mine = {
            "Allocation",
            "DeviceState",
            "FakeKubelet",
            "KubeletError",
            "KubeletMode",
            "Registration",
            "Rejection",
            "ResourceState",
        }
        assert mine <= set(host.testing.__all__)
        assert host.testing.FakeKubelet is FakeKubelet

    def test_bad_mode_is_refused(self, plugin_dir: Path) -> None:
        """An unknown mode fails at construction, naming the value."""
        with pytest.raises(ValueError, match=r"mode must be one of .* got '1\.99'"):
            FakeKubelet(plugin_dir, mode="1.99")  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("endpoint", "joined"),
        [
            ("p.sock", "/d/p.sock"),
            ("/tmp/x.sock", "/d/tmp/x.sock"),
            ("a/b.sock", "/d/a/b.sock"),
            ("../x", "/x"),
            ("", "/d"),
        ],
    )
    def test_endpoint_joins_like_go(self, endpoint: str, joined: str) -> None:
        """The plugin socket is filepath.Join(dir, endpoint), absolute endpoints included."""
        assert go_join("/d", endpoint) == joined


class TestLifecycle:
    @pytest.mark.asyncio
    async def test_start_creates_dir_and_socket(self, plugin_dir: Path) -> None:
        """start() creates the plugin directory and serves kubelet.sock in it."""
        async with FakeKubelet(plugin_dir) as kubelet:
            assert kubelet.running
            assert Path(kubelet.socket_path) == plugin_dir / "kubelet.sock"
            assert kind(kubelet.socket_path) == "socket"

    @pytest.mark.asyncio
    async def test_stop_ends_streams_and_leaves_files(
        self, kubelet: FakeKubelet, plugins: PluginFactory
    ) -> None:
        """stop() closes plugin connections; kubelet.sock and plugin sockets stay on disk."""
        plugin = await plugins(devices=TWO)
        await plugin.register(kubelet)
        await kubelet.wait_for_resource(RESOURCE, healthy=2)
        inode = os.stat(kubelet.socket_path).st_ino
        await kubelet.stop()
        await plugin.wait_stream_closed()
        assert not kubelet.running
        assert os.stat(kubelet.socket_path).st_ino == inode  # never unlinked nor recreated
        assert kind(kubelet.socket_path) == "socket"
        assert kind(plugin.socket_path) == "socket"
        with socket.socket(socket.AF_UNIX) as probe, pytest.raises(ConnectionRefusedError):
            probe.connect(kubelet.socket_path)

    @pytest.mark.asyncio
    async def test_stop_is_idempotent(self, kubelet: FakeKubelet) -> None:
        """Stopping twice is harmless."""
        await kubelet.stop()
        await kubelet.stop()
        assert not kubelet.running

    @pytest.mark.asyncio
    async def test_path_too_long_is_refused(self, short_dir: Path) -> None:
        """A plugin_dir too long for a Unix socket fails at start with the path named."""
        fake = FakeKubelet(short_dir / ("x" * 120))
        with pytest.raises(KubeletError, match="longer than 107 bytes"):
            await fake.start()


class TestRegisterValidation:
    @pytest.mark.asyncio
    async def test_bad_version(self, kubelet: FakeKubelet, plugins: PluginFactory) -> None:
        """A version other than v1beta1 gets UNKNOWN with kubelet's exact text; no dial."""
        plugin = await plugins(devices=TWO)
        error = await expect_rpc_error(plugin.register(kubelet, version="v1alpha"))
        assert error.code() == grpc.StatusCode.UNKNOWN
        expected = (
            'requested API version "v1alpha" is not supported by kubelet. '
            'Supported version is ["v1beta1"]'
        )
        assert error.details() == expected
        assert [r.reason for r in kubelet.rejected] == [expected]
        assert plugin.calls == []
        assert kubelet.registrations == ()

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        "name", ["gpu", "Example.com/gpu", "kubernetes.io/gpu", "example.com/a/b", "example.com/"]
    )
    async def test_bad_resource_name(
        self, kubelet: FakeKubelet, plugins: PluginFactory, name: str
    ) -> None:
        """An invalid extended resource name gets kubelet's exact text."""
        plugin = await plugins(devices=TWO)
        error = await expect_rpc_error(plugin.register(kubelet, name))
        assert error.code() == grpc.StatusCode.UNKNOWN
        assert error.details() == f'the ResourceName "{name}" is invalid'
        assert plugin.calls == []

    @pytest.mark.asyncio
    async def test_version_is_checked_first(
        self, kubelet: FakeKubelet, plugins: PluginFactory
    ) -> None:
        """With both wrong, the version error wins."""
        plugin = await plugins()
        error = await expect_rpc_error(plugin.register(kubelet, "gpu", version=""))
        assert error.details().startswith('requested API version ""')


class TestRegisterConnects:
    @pytest.mark.asyncio
    async def test_register_before_serving_fails_to_dial(self, plugin_dir: Path) -> None:
        """Registering before the plugin serves fails with the dial error; nothing registered."""
        async with FakeKubelet(plugin_dir, dial_timeout=0.3) as kubelet:
            plugin = FakePlugin(str(plugin_dir / "p.sock"), TWO)  # never started
            error = await expect_rpc_error(plugin.register(kubelet))
            assert error.code() == grpc.StatusCode.UNKNOWN
            assert error.details() == "failed to dial device plugin: context deadline exceeded"
            assert kubelet.registrations == ()
            assert kubelet.resources == {}
            with pytest.raises(KubeletError, match=r"unknown Device Plugin example\.com/gpu"):
                kubelet.options(RESOURCE)

    @pytest.mark.asyncio
    async def test_options_failure_rejects_without_list_and_watch(
        self, kubelet: FakeKubelet, plugins: PluginFactory
    ) -> None:
        """GetDevicePluginOptions failing rejects the registration; ListAndWatch is never called."""
        plugin = await plugins(devices=TWO)
        plugin.options_error = grpc.StatusCode.INTERNAL
        error = await expect_rpc_error(plugin.register(kubelet))
        assert error.code() == grpc.StatusCode.UNKNOWN
        assert error.details() == (
            "failed to get device plugin options: rpc error: code = Internal desc = options broken"
        )
        assert plugin.calls == ["GetDevicePluginOptions"]
        assert kubelet.registrations == ()
        assert RESOURCE not in kubelet.resources
        assert kubelet.rejected[-1].reason == error.details()

    @pytest.mark.asyncio
    async def test_unimplemented_options_rejects(
        self, kubelet: FakeKubelet, plugin_dir: Path
    ) -> None:
        """A plugin without GetDevicePluginOptions cannot register on 1.25+."""
        server = grpc.aio.server()
        api_pb2_grpc.add_DevicePluginServicer_to_server(api_pb2_grpc.DevicePluginServicer(), server)
        server.add_insecure_port(f"unix:{plugin_dir}/bare.sock")
        await server.start()
        try:
            plugin = FakePlugin(str(plugin_dir / "bare.sock"))
            error = await expect_rpc_error(plugin.register(kubelet))
        finally:
            await server.stop(None)
        assert error.details().startswith(
            "failed to get device plugin options: rpc error: code = Unimplemented"
        )

    @pytest.mark.asyncio
    async def test_success_dials_options_then_list_and_watch(
        self, kubelet: FakeKubelet, plugins: PluginFactory
    ) -> None:
        """A good registration calls GetDevicePluginOptions once, then ListAndWatch once."""
        options = api_pb2.DevicePluginOptions(pre_start_required=True)
        plugin = await plugins(devices=TWO, options=options)
        await plugin.register(kubelet, options=api_pb2.DevicePluginOptions())
        assert plugin.calls[0] == "GetDevicePluginOptions"
        state = await kubelet.wait_for_resource(RESOURCE, count=2, healthy=2)
        assert plugin.calls == ["GetDevicePluginOptions", "ListAndWatch"]
        (registration,) = kubelet.registrations
        assert registration.socket_path == plugin.socket_path
        assert registration.request.resource_name == RESOURCE
        # 1.25+ ignores RegisterRequest.options and caches GetDevicePluginOptions' answer.
        assert kubelet.options(RESOURCE).pre_start_required
        assert state.options is not None
        assert state.options.pre_start_required
        assert state.connected
        assert state.socket_path == plugin.socket_path
        assert state.registrations == 1

    @pytest.mark.asyncio
    async def test_absolute_endpoint_is_joined_under_plugin_dir(
        self, kubelet: FakeKubelet, plugins: PluginFactory
    ) -> None:
        """An absolute endpoint lands under the plugin dir, as with Go's filepath.Join."""
        os.mkdir(os.path.join(kubelet.plugin_dir, "sub"))
        plugin = await plugins("sub/p.sock", TWO)
        await plugin.register(kubelet, endpoint="/sub/p.sock")
        state = await kubelet.wait_for_resource(RESOURCE, healthy=2)
        assert state.socket_path == plugin.socket_path


class TestListAndWatch:
    @pytest.mark.asyncio
    async def test_absent_until_first_message(
        self, kubelet: FakeKubelet, plugins: PluginFactory
    ) -> None:
        """A registered resource is absent from the node status until its first message."""
        plugin = await plugins(devices=TWO, send_initial=False)
        await plugin.register(kubelet)
        await plugin.wait_stream_opened()
        assert RESOURCE not in kubelet.resources
        plugin.send([dev("d1")])
        state = await kubelet.wait_for_resource(RESOURCE)
        assert (state.capacity, state.allocatable) == (1, 1)

    @pytest.mark.asyncio
    async def test_snapshots_replace_and_count_health(
        self, kubelet: FakeKubelet, plugins: PluginFactory
    ) -> None:
        """Each message is a full snapshot; only the exact string "Healthy" counts."""
        plugin = await plugins(
            devices=[dev("a"), dev("b", "healthy"), dev("c", UNHEALTHY), dev("d", "")]
        )
        await plugin.register(kubelet)
        state = await kubelet.wait_for_resource(RESOURCE, count=4)
        assert (state.capacity, state.allocatable) == (4, 1)
        assert state.healthy == {"a"}
        assert state.devices["b"].health == "healthy"
        assert not state.devices["b"].healthy
        plugin.send([dev("a", UNHEALTHY), dev("e", numa=[0, 1])])
        state = await kubelet.wait_for_resource(RESOURCE, count=2, healthy=1)
        assert set(state.devices) == {"a", "e"}
        assert state.devices["e"] == (HEALTHY, (0, 1))
        assert state.updates == 2
        plugin.send([])
        state = await kubelet.wait_for_resource(RESOURCE, count=0)
        assert (state.capacity, state.allocatable, state.connected) == (0, 0, True)

    @pytest.mark.asyncio
    async def test_stream_end_keeps_capacity_zeroes_allocatable(
        self, kubelet: FakeKubelet, plugins: PluginFactory
    ) -> None:
        """The plugin ending its stream: allocatable 0, capacity kept, stopped, no retry."""
        plugin = await plugins(devices=[dev("d1"), dev("d2"), dev("d3", UNHEALTHY)])
        await plugin.register(kubelet)
        await kubelet.wait_for_resource(RESOURCE, count=3, healthy=2)
        plugin.end_streams()
        await kubelet.wait_for(lambda: kubelet.resources[RESOURCE].stopped)
        state = kubelet.resources[RESOURCE]
        assert (state.capacity, state.allocatable) == (3, 0)
        assert state.unhealthy == {"d1", "d2", "d3"}
        assert state.stopped_at is not None
        assert not state.removed
        assert plugin.calls.count("ListAndWatch") == 1
        with pytest.raises(KubeletError, match="has been stopped"):
            await kubelet.allocate(RESOURCE, ["d1"])

    @pytest.mark.asyncio
    async def test_stream_error_before_any_message_gives_zero(
        self, kubelet: FakeKubelet, plugins: PluginFactory
    ) -> None:
        """ListAndWatch failing at once leaves the resource present at 0/0."""
        plugin = await plugins(devices=TWO)
        plugin.list_error = grpc.StatusCode.INTERNAL
        await plugin.register(kubelet)
        state = await kubelet.wait_for_resource(RESOURCE)
        assert (state.capacity, state.allocatable, state.connected) == (0, 0, False)

    @pytest.mark.asyncio
    async def test_message_over_4_mib_fails_the_stream(
        self, kubelet: FakeKubelet, plugins: PluginFactory
    ) -> None:
        """A ListAndWatch message over kubelet's 4 MiB receive limit ends the stream."""
        many = [dev(f"device-{i:08d}-" + "x" * 48) for i in range(75_000)]
        assert api_pb2.ListAndWatchResponse(devices=many).ByteSize() > 4 * 1024 * 1024
        plugin = await plugins(devices=many)
        await plugin.register(kubelet)
        state = await kubelet.wait_for_resource(RESOURCE, timeout=15)
        assert (state.capacity, state.allocatable, state.connected) == (0, 0, False)

    @pytest.mark.asyncio
    async def test_grace_period_removes_resource(self, plugin_dir: Path, short_dir: Path) -> None:
        """After the grace period a stopped resource is removed and reported at 0."""
        async with FakeKubelet(plugin_dir, grace_period=0.2) as kubelet:
            make, _started = await _started_plugins(kubelet.plugin_dir)
            plugin = await make(devices=TWO)
            await plugin.register(kubelet)
            await kubelet.wait_for_resource(RESOURCE, healthy=2)
            plugin.end_streams(grpc.StatusCode.UNAVAILABLE)
            await kubelet.wait_for(lambda: kubelet.resources[RESOURCE].removed)
            state = kubelet.resources[RESOURCE]
            assert (state.capacity, state.allocatable) == (0, 0)
            await plugin.stop()

    @pytest.mark.asyncio
    async def test_reregistration_within_grace_restores(
        self, kubelet: FakeKubelet, plugins: PluginFactory
    ) -> None:
        """A plugin registering again after its stream ended gets its counts back."""
        plugin = await plugins(devices=TWO)
        await plugin.register(kubelet)
        await kubelet.wait_for_resource(RESOURCE, healthy=2)
        plugin.end_streams()
        await kubelet.wait_for_resource(RESOURCE, count=2, healthy=0)
        await plugin.register(kubelet)
        state = await kubelet.wait_for_resource(RESOURCE, count=2, healthy=2)
        assert state.connected
        assert state.registrations == 2
        assert state.stopped_at is None


class TestRestart:
    @pytest.mark.asyncio
    async def test_restart_unlinks_sockets_only(
        self, kubelet: FakeKubelet, plugins: PluginFactory
    ) -> None:
        """Restart removes sockets directly in the dir; files, subdirs and checkpoint stay."""
        directory = Path(kubelet.plugin_dir)
        plugin = await plugins(devices=TWO)
        await plugin.register(kubelet)
        await kubelet.wait_for_resource(RESOURCE, healthy=2)
        populate(directory)
        await kubelet.restart()
        await plugin.wait_stream_closed()
        assert {name: kind(directory / name) for name in os.listdir(directory)} == {
            "kubelet.sock": "socket",
            "notes.txt": "file",
            "sub": "dir",
            CHECKPOINT_NAME: "file",
        }
        assert kind(directory / "sub" / "nested.sock") == "socket"

    @pytest.mark.asyncio
    async def test_restart_restores_resources_stopped_at_zero(
        self, kubelet: FakeKubelet, plugins: PluginFactory
    ) -> None:
        """After restart a checkpointed resource is present at 0/0 until re-registration."""
        plugin = await plugins(devices=TWO)
        await plugin.register(kubelet)
        await kubelet.wait_for_resource(RESOURCE, healthy=2)
        await kubelet.restart()
        state = kubelet.resources[RESOURCE]
        assert (state.capacity, state.allocatable, state.connected) == (0, 0, False)
        assert state.stopped_at is not None
        assert state.socket_path is None
        await plugin.restart()
        await plugin.register(kubelet)
        state = await kubelet.wait_for_resource(RESOURCE, count=2, healthy=2)
        assert state.registrations == 2

    @pytest.mark.asyncio
    async def test_new_instance_reads_checkpoint(
        self, kubelet: FakeKubelet, plugins: PluginFactory, plugin_dir: Path
    ) -> None:
        """A second FakeKubelet on the same dir restores resources and allocations."""
        plugin = await plugins(devices=TWO)
        await plugin.register(kubelet)
        await kubelet.wait_for_resource(RESOURCE, healthy=2)
        allocation = await kubelet.allocate_like_kubelet(RESOURCE, 1, pod_uid="pod-1")
        await kubelet.stop()
        async with FakeKubelet(plugin_dir, grace_period=0.2) as second:
            assert second.resources[RESOURCE].capacity == 0
            (restored,) = second.allocations
            assert restored.device_ids == allocation.device_ids
            assert restored.response == allocation.response
            assert restored.pod_uid == "pod-1"
            await second.wait_for(lambda: second.resources[RESOURCE].removed)


class TestReRegistration:
    @pytest.mark.asyncio
    async def test_125_latest_snapshot_wins(
        self, kubelet: FakeKubelet, plugins: PluginFactory
    ) -> None:
        """1.25: the device set is whichever plugin of the resource sent last."""
        first = await plugins("a.sock", TWO)
        await first.register(kubelet)
        await kubelet.wait_for_resource(RESOURCE, count=2)
        second = await plugins("b.sock", [dev("x")])
        await second.register(kubelet)
        state = await kubelet.wait_for_resource(RESOURCE, count=1)
        assert set(state.devices) == {"x"}
        first.send([dev("y"), dev("z")])  # the old stream still feeds the same resource
        state = await kubelet.wait_for_resource(RESOURCE, count=2)
        assert set(state.devices) == {"y", "z"}
        assert state.socket_path == second.socket_path

    @pytest.mark.asyncio
    async def test_125_old_stream_end_disconnects_new_client(
        self, kubelet: FakeKubelet, plugins: PluginFactory
    ) -> None:
        """1.25: when the old instance's stream ends, kubelet drops the NEW one (runClient)."""
        old = await plugins("a.sock", TWO)
        await old.register(kubelet)
        await kubelet.wait_for_resource(RESOURCE, healthy=2)
        new = await plugins("b.sock", TWO)
        await new.register(kubelet)
        await kubelet.wait_for_registrations(2)
        # Register returns before kubelet's client opens ListAndWatch (it runs in its own
        # goroutine): dropped before that, the new instance would never see a stream.
        await new.wait_stream_opened()
        old.end_streams()
        await new.wait_stream_closed()
        state = await kubelet.wait_for_resource(RESOURCE, count=2, healthy=0)
        assert state.stopped
        assert state.socket_path == new.socket_path

    @pytest.mark.asyncio
    async def test_136_sockets_coexist_and_survivor_keeps_resource(self, plugin_dir: Path) -> None:
        """1.36: two sockets for one resource; one leaving keeps the resource healthy."""
        async with FakeKubelet(plugin_dir, mode="1.36") as kubelet:
            make, started = await _started_plugins(kubelet.plugin_dir)
            old = await make("a.sock", TWO)
            await old.register(kubelet)
            await kubelet.wait_for_resource(RESOURCE, healthy=2)
            new = await make("b.sock", TWO)
            await new.register(kubelet)
            await kubelet.wait_for(lambda: len(kubelet.resources[RESOURCE].endpoints) == 2)
            old.end_streams()
            await kubelet.wait_for(lambda: len(kubelet.resources[RESOURCE].endpoints) == 1)
            state = kubelet.resources[RESOURCE]
            assert state.endpoints == (new.socket_path,)
            assert (state.allocatable, state.connected) == (2, True)
            assert not new.stream_closed.is_set()
            response = await kubelet.allocate(RESOURCE, ["d1"])
            assert response.container_responses[0].envs["DEVICES"] == "d1"
            assert new.calls[-1] == "Allocate"
            for plugin in started:
                await plugin.stop()

    @pytest.mark.asyncio
    async def test_136_same_socket_rejected_while_connected(self, plugin_dir: Path) -> None:
        """1.36: a registration from a still-connected socket fails; after it drops, it works."""
        async with FakeKubelet(plugin_dir, mode="1.36") as kubelet:
            make, started = await _started_plugins(kubelet.plugin_dir)
            plugin = await make("a.sock", TWO)
            await plugin.register(kubelet)
            await kubelet.wait_for_resource(RESOURCE, healthy=2)
            error = await expect_rpc_error(plugin.register(kubelet))
            assert error.code() == grpc.StatusCode.UNKNOWN
            assert "device plugin already connected" in error.details()
            assert plugin.socket_path in error.details()
            assert kubelet.resources[RESOURCE].connected
            assert not plugin.stream_closed.is_set()
            plugin.end_streams()
            await kubelet.wait_for_resource(RESOURCE, healthy=0)
            await plugin.register(kubelet)
            await kubelet.wait_for_resource(RESOURCE, healthy=2)
            for started_plugin in started:
                await started_plugin.stop()

    @pytest.mark.asyncio
    async def test_124_registers_before_dialling(self, plugin_dir: Path) -> None:
        """1.24: Register returns at once; a failed dial is only recorded; options from request."""
        async with FakeKubelet(plugin_dir, mode="1.24", dial_timeout=0.3) as kubelet:
            ghost = FakePlugin(str(plugin_dir / "ghost.sock"))
            await ghost.register(kubelet)
            await kubelet.wait_for(lambda: len(kubelet.rejected) == 1)
            (rejection,) = kubelet.rejected
            assert not rejection.reported
            assert rejection.reason.startswith("failed to dial device plugin")
            make, started = await _started_plugins(kubelet.plugin_dir)
            plugin = await make(devices=TWO)
            await plugin.register(
                kubelet, options=api_pb2.DevicePluginOptions(pre_start_required=True)
            )
            await kubelet.wait_for_resource(RESOURCE, healthy=2)
            assert plugin.calls == ["ListAndWatch"]
            assert kubelet.options(RESOURCE).pre_start_required
            for started_plugin in started:
                await started_plugin.stop()

    @pytest.mark.asyncio
    async def test_124_old_stream_end_spares_new_endpoint(self, plugin_dir: Path) -> None:
        """1.24: the old instance ending does not touch the endpoint that replaced it."""
        async with FakeKubelet(plugin_dir, mode="1.24") as kubelet:
            make, started = await _started_plugins(kubelet.plugin_dir)
            old = await make("a.sock", TWO)
            await old.register(kubelet)
            await kubelet.wait_for_resource(RESOURCE, healthy=2)
            new = await make("b.sock", TWO)
            await new.register(kubelet)
            await kubelet.wait_for(
                lambda: kubelet.resources[RESOURCE].socket_path == new.socket_path
            )
            old.end_streams()
            await old.wait_stream_closed()
            new.send([dev("d1"), dev("d2"), dev("d3")])
            state = await kubelet.wait_for_resource(RESOURCE, healthy=3)
            assert state.connected
            for started_plugin in started:
                await started_plugin.stop()


class TestClientHelpers:
    @pytest.mark.asyncio
    async def test_allocate_round_trip(self, kubelet: FakeKubelet, plugins: PluginFactory) -> None:
        """allocate() sends one ContainerAllocateRequest and returns the plugin's answer."""
        plugin = await plugins(devices=TWO)
        await plugin.register(kubelet)
        await kubelet.wait_for_resource(RESOURCE)
        response = await kubelet.allocate(RESOURCE, ["d2", "d1"])
        assert response.container_responses[0].envs["DEVICES"] == "d2,d1"
        (request,) = plugin.allocate_requests
        assert [list(r.devices_ids) for r in request.container_requests] == [["d2", "d1"]]

    @pytest.mark.asyncio
    async def test_allocate_errors(self, kubelet: FakeKubelet, plugins: PluginFactory) -> None:
        """A plugin error surfaces as AioRpcError; an empty response as kubelet's error."""
        plugin = await plugins(devices=TWO)
        await plugin.register(kubelet)
        await kubelet.wait_for_resource(RESOURCE)
        plugin.allocate_error = grpc.StatusCode.INVALID_ARGUMENT
        error = await expect_rpc_error(kubelet.allocate(RESOURCE, ["zz"]))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        plugin.allocate_error = None
        plugin.allocate_empty = True
        with pytest.raises(KubeletError, match="no containers return in allocation response"):
            await kubelet.allocate(RESOURCE, ["d1"])

    @pytest.mark.asyncio
    async def test_preferred_allocation_only_when_advertised(
        self, kubelet: FakeKubelet, plugins: PluginFactory
    ) -> None:
        """GetPreferredAllocation round-trips if advertised, else kubelet refuses to call it."""
        options = api_pb2.DevicePluginOptions(get_preferred_allocation_available=True)
        offering = await plugins("a.sock", TWO, options=options)
        await offering.register(kubelet)
        offering.preferred_answer = ["d2"]
        response = await kubelet.preferred_allocation(RESOURCE, ["d1", "d2"], ["d2"], size=1)
        assert list(response.container_responses[0].deviceIDs) == ["d2"]
        (request,) = offering.preferred_requests[0].container_requests
        assert list(request.available_deviceIDs) == ["d1", "d2"]
        assert list(request.must_include_deviceIDs) == ["d2"]
        assert request.allocation_size == 1
        silent = await plugins("b.sock", TWO)
        await silent.register(kubelet, "example.com/other")
        with pytest.raises(KubeletError, match="get_preferred_allocation_available"):
            await kubelet.preferred_allocation("example.com/other", ["d1"], size=1)
        assert "GetPreferredAllocation" not in silent.calls

    @pytest.mark.asyncio
    async def test_pre_start_only_when_required(
        self, kubelet: FakeKubelet, plugins: PluginFactory
    ) -> None:
        """PreStartContainer carries a 30 s deadline and is refused if not required."""
        options = api_pb2.DevicePluginOptions(pre_start_required=True)
        plugin = await plugins("a.sock", TWO, options=options)
        await plugin.register(kubelet)
        await kubelet.pre_start(RESOURCE, ["d1"])
        assert list(plugin.pre_start_requests[0].devices_ids) == ["d1"]
        (deadline,) = plugin.pre_start_deadlines
        assert deadline is not None
        assert 25 < deadline < 31
        other = await plugins("b.sock", TWO)
        await other.register(kubelet, "example.com/other")
        with pytest.raises(KubeletError, match="pre_start_required"):
            await kubelet.pre_start("example.com/other", ["d1"])

    @pytest.mark.asyncio
    async def test_allocate_like_kubelet_uses_preference_then_fallback(
        self, kubelet: FakeKubelet, plugins: PluginFactory
    ) -> None:
        """The preference is intersected with free healthy devices and topped up."""
        options = api_pb2.DevicePluginOptions(
            get_preferred_allocation_available=True, pre_start_required=True
        )
        devices = [dev("d1"), dev("d2"), dev("d3"), dev("d4", UNHEALTHY)]
        plugin = await plugins(devices=devices, options=options)
        await plugin.register(kubelet)
        await kubelet.wait_for_resource(RESOURCE, healthy=3)
        plugin.preferred_answer = ["d3", "d4", "bogus"]
        first = await kubelet.allocate_like_kubelet(RESOURCE, 2)
        assert first.device_ids == ("d3", "d1")
        (request,) = plugin.preferred_requests[0].container_requests
        assert sorted(request.available_deviceIDs) == ["d1", "d2", "d3"]
        assert list(request.must_include_deviceIDs) == []
        assert request.allocation_size == 2
        assert list(plugin.allocate_requests[-1].container_requests[0].devices_ids) == [
            "d3",
            "d1",
        ]
        assert first.response.envs["DEVICES"] == "d3,d1"
        await kubelet.start_container(first)
        assert list(plugin.pre_start_requests[-1].devices_ids) == ["d3", "d1"]
        with pytest.raises(KubeletError, match=r"Requested: 2, Available: 1, which is"):
            await kubelet.allocate_like_kubelet(RESOURCE, 2)
        await kubelet.release(first)
        second = await kubelet.allocate_like_kubelet(RESOURCE, 3)
        assert set(second.device_ids) == {"d1", "d2", "d3"}
        assert kubelet.allocations == (second,)

    @pytest.mark.asyncio
    async def test_preferred_allocation_request_as_kubelet_sends_it(self, short_dir: Path) -> None:
        """IDs in Go map order (random, seedable), reusable devices as must-include IDs
        (also among the available ones), and the size of the whole request."""
        options = api_pb2.DevicePluginOptions(get_preferred_allocation_available=True)
        ids = [f"d{i:02}" for i in range(20)]
        orders = []
        for index, seed in enumerate((1, 2, 1)):
            # A directory each: a kubelet restores the allocations checkpointed there.
            async with FakeKubelet(short_dir / f"k{index}", seed=seed) as kubelet:
                make, started = await _started_plugins(kubelet.plugin_dir)
                plugin = await make(devices=[dev(i) for i in ids], options=options)
                await plugin.register(kubelet)
                await kubelet.wait_for_resource(RESOURCE, healthy=20)
                init = await kubelet.allocate_like_kubelet(RESOURCE, 2, pod_uid="p")
                await kubelet.release(init)
                plugin.preferred_answer = ["d19"]
                main = await kubelet.allocate_like_kubelet(
                    RESOURCE, 3, pod_uid="p", reusable=init.device_ids
                )
                (request,) = plugin.preferred_requests[-1].container_requests
                assert sorted(request.available_deviceIDs) == ids
                assert list(request.must_include_deviceIDs) == list(init.device_ids)
                assert request.allocation_size == 3
                assert main.device_ids == (*init.device_ids, "d19")
                orders.append(
                    list(plugin.preferred_requests[0].container_requests[0].available_deviceIDs)
                )
                for started_plugin in started:
                    await started_plugin.stop()
        assert orders[0] == orders[2]  # the same seed, the same order
        assert orders[0] != orders[1]
        assert orders[0] != sorted(orders[0])

    @pytest.mark.asyncio
    async def test_reusable_devices_enough_means_no_preference_call(
        self, kubelet: FakeKubelet, plugins: PluginFactory
    ) -> None:
        """Kubelet asks for a preference only when devices are still needed."""
        options = api_pb2.DevicePluginOptions(get_preferred_allocation_available=True)
        plugin = await plugins(devices=TWO, options=options)
        await plugin.register(kubelet)
        await kubelet.wait_for_resource(RESOURCE, healthy=2)
        allocation = await kubelet.allocate_like_kubelet(RESOURCE, 1, reusable=["d2"])
        assert allocation.device_ids == ("d2",)
        assert plugin.preferred_requests == []

    @pytest.mark.asyncio
    async def test_allocate_like_kubelet_admission_errors(
        self, kubelet: FakeKubelet, plugins: PluginFactory
    ) -> None:
        """Unregistered, unhealthy and failing plugins give kubelet's admission texts."""
        with pytest.raises(KubeletError, match="cannot allocate unregistered device"):
            await kubelet.allocate_like_kubelet(RESOURCE, 1)
        plugin = await plugins(devices=[dev("d1", UNHEALTHY)])
        await plugin.register(kubelet)
        await kubelet.wait_for_resource(RESOURCE, count=1)
        with pytest.raises(KubeletError, match="no healthy devices present"):
            await kubelet.allocate_like_kubelet(RESOURCE, 1)
        plugin.send(TWO)
        await kubelet.wait_for_resource(RESOURCE, healthy=2)
        plugin.allocate_error = grpc.StatusCode.INTERNAL
        with pytest.raises(
            KubeletError,
            match=r"^Allocate failed due to rpc error: code = Internal desc = no such device, "
            r"which is unexpected$",
        ):
            await kubelet.allocate_like_kubelet(RESOURCE, 1)
        assert kubelet.allocations == ()


class TestWaits:
    @pytest.mark.asyncio
    async def test_timeout_says_what_and_state(self, kubelet: FakeKubelet) -> None:
        """A wait that times out names what it awaited and the current state."""
        with pytest.raises(TimeoutError, match=r"resource 'example.com/gpu'.*state: running"):
            await kubelet.wait_for_resource(RESOURCE, timeout=0.05)

    @pytest.mark.asyncio
    async def test_wait_for_registrations_filters_by_resource(
        self, kubelet: FakeKubelet, plugins: PluginFactory
    ) -> None:
        """wait_for_registrations counts accepted registrations of one resource."""
        a = await plugins("a.sock", TWO)
        b = await plugins("b.sock", TWO)
        await a.register(kubelet)
        await b.register(kubelet, "example.com/other")
        (registration,) = await kubelet.wait_for_registrations(1, "example.com/other")
        assert registration.socket_path == b.socket_path
        assert len(await kubelet.wait_for_registrations(2)) == 2

    @pytest.mark.asyncio
    async def test_resource_state_is_a_snapshot(
        self, kubelet: FakeKubelet, plugins: PluginFactory
    ) -> None:
        """A ResourceState does not change after it was read."""
        plugin = await plugins(devices=TWO)
        await plugin.register(kubelet)
        before: ResourceState = await kubelet.wait_for_resource(RESOURCE, healthy=2)
        plugin.send([dev("d1")])
        await kubelet.wait_for_resource(RESOURCE, count=1)
        assert before.capacity == 2
        assert set(before.devices) == {"d1", "d2"}


_PLUGIN_PROCESS = textwrap.dedent(
    """
    import asyncio, sys
    import grpc
    from host._api import api_pb2, api_pb2_grpc

    class Plugin(api_pb2_grpc.DevicePluginServicer):
        async def GetDevicePluginOptions(self, request, context):
            return api_pb2.DevicePluginOptions()

        async def ListAndWatch(self, request, context):
            yield api_pb2.ListAndWatchResponse(
                devices=[api_pb2.Device(ID="p1", health="Healthy")]
            )
            await asyncio.Event().wait()

    async def main(kubelet_socket, plugin_socket):
        server = grpc.aio.server()
        api_pb2_grpc.add_DevicePluginServicer_to_server(Plugin(), server)
        server.add_insecure_port("unix:" + plugin_socket)
        await server.start()
        async with grpc.aio.insecure_channel("unix:" + kubelet_socket) as channel:
            await api_pb2_grpc.RegistrationStub(channel).Register(
                api_pb2.RegisterRequest(
                    version="v1beta1", endpoint="proc.sock", resource_name="example.com/proc"
                )
            )
        print("registered", flush=True)
        await server.wait_for_termination()

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


class TestOtherProcess:
    @pytest.mark.asyncio
    async def test_plugin_in_another_process(self, kubelet: FakeKubelet) -> None:
        """A plugin process registers and streams to the in-process fake kubelet."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _PLUGIN_PROCESS,
            kubelet.socket_path,
            os.path.join(kubelet.plugin_dir, "proc.sock"),
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            state = await kubelet.wait_for_resource("example.com/proc", healthy=1, timeout=30)
            assert set(state.devices) == {"p1"}
        finally:
            process.kill()
            await process.wait()
        await kubelet.wait_for(lambda: kubelet.resources["example.com/proc"].stopped)
        assert kubelet.resources["example.com/proc"].capacity == 1
