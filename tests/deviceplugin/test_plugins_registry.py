"""Registration through kubelet's plugin watcher: sockets in the plugins registry.

The Manager serves ``pluginregistration.Registration`` beside ``v1beta1.DevicePlugin``
on each socket in the registry directory; the fake kubelet's plugin watcher finds,
validates and connects them as kubelet does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from host._api import pluginregistration_pb2, pluginregistration_pb2_grpc
from host._pluginwatcher import DEVICE_PLUGIN_TYPE, DRA_PLUGIN_TYPE, RegistrationServicer
from host.deviceplugin import Manager
from host.deviceplugin._endpoint import API_VERSION
from host.deviceplugin._service import DevicePluginService
from host.deviceplugin._watcher import PluginDirWatcher
from host.testing import FakeKubelet, KubeletMode
from tests.scanners import QueueScanner

from .conftest import ServeFn
from .helpers import info, tree_of

pytestmark = pytest.mark.asyncio

INTERVAL = 0.05


@pytest_asyncio.fixture
async def registry_kubelet(short_dir: Path) -> AsyncIterator[FakeKubelet]:
    fake = FakeKubelet(
        short_dir / "dp", registry_dir=short_dir / "reg", reconcile_interval=INTERVAL
    )
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


async def serve_registry(
    serve: ServeFn, short_dir: Path, *, knows_kubelet_sock: bool = False, **kwargs: object
) -> Manager:
    registry = short_dir / "reg"
    kubelet_socket = short_dir / "dp" / "kubelet.sock" if knows_kubelet_sock else None
    return await serve(
        "ex.com",
        QueueScanner(tree_of({"a": {"a0": info(), "a1": info()}})),
        plugin_dir=short_dir / "dp",
        registration="plugins-registry",
        plugins_registry_dir=registry,
        watcher=PluginDirWatcher(registry, kubelet_socket),
        **kwargs,
    )


class TestRegistration:
    async def test_the_plugin_watcher_registers_the_socket(
        self, registry_kubelet: FakeKubelet, serve: ServeFn, short_dir: Path
    ) -> None:
        """The socket in the registry is found, registered and used; no Register call."""
        manager = await serve_registry(serve, short_dir)
        state = await registry_kubelet.wait_for_resource("ex.com/a", healthy=2)
        socket = short_dir / "reg" / "ex.com-a.sock"
        assert state.socket_path == str(socket)
        assert [r.socket_path for r in registry_kubelet.registrations] == [str(socket)]
        assert registry_kubelet.registrations[0].request.endpoint == str(socket)
        assert not (short_dir / "dp" / "ex.com-a.sock").exists()
        # Kubelet's plugin watcher walks sub-directories too: nothing is hidden there.
        assert [p.name for p in (short_dir / "reg").iterdir()] == ["ex.com-a.sock"]
        await registry_kubelet.wait_for(lambda: manager.resources["ex.com/a"].ready)
        assert manager.resources["ex.com/a"].registrations == 1
        response = await registry_kubelet.allocate("ex.com/a", ["a1"])
        assert len(response.container_responses) == 1

    async def test_get_info_answers_as_kubelet_expects(
        self, registry_kubelet: FakeKubelet, serve: ServeFn, short_dir: Path
    ) -> None:
        """GetInfo: type DevicePlugin, the resource name, this socket, versions [v1beta1]."""
        await serve_registry(serve, short_dir)
        await registry_kubelet.wait_for_resource("ex.com/a")
        socket = short_dir / "reg" / "ex.com-a.sock"
        async with grpc.aio.insecure_channel(f"unix:{socket}") as channel:
            stub = pluginregistration_pb2_grpc.RegistrationStub(channel)
            got = await stub.GetInfo(pluginregistration_pb2.InfoRequest(), timeout=5)
        assert (got.type, got.name, got.endpoint, list(got.supported_versions)) == (
            "DevicePlugin",
            "ex.com/a",
            str(socket),
            ["v1beta1"],
        )

    async def test_kubelet_restart_registers_it_again(
        self, registry_kubelet: FakeKubelet, serve: ServeFn, short_dir: Path
    ) -> None:
        """A restarted kubelet finds the socket by itself; the resource comes back."""
        manager = await serve_registry(serve, short_dir)
        await registry_kubelet.wait_for_resource("ex.com/a", healthy=2)
        await registry_kubelet.restart()
        await registry_kubelet.wait_for(
            lambda: (
                registry_kubelet.resources["ex.com/a"].registrations == 2
                and registry_kubelet.resources["ex.com/a"].allocatable == 2
                and manager.resources["ex.com/a"].ready
            ),
            what="re-registration after the restart",
        )
        # The restarted kubelet may ask GetInfo on the socket the plugin is re-creating
        # (its stream ended with the old kubelet): that call fails, and kubelet's
        # reconciler tries the new socket on its next pass, as the real one does
        # (pluginwatcher operation_generator: no status is sent to the plugin then).
        # What must never happen is a validation refusal.
        assert all("GetInfo" in r.reason for r in registry_kubelet.rejected)

    async def test_a_refusal_is_shown_in_readiness_with_kubelets_reason(
        self, registry_kubelet: FakeKubelet, serve: ServeFn, short_dir: Path
    ) -> None:
        """NotifyRegistrationStatus(false): not ready, and the reason is kubelet's."""
        manager = await serve_registry(serve, short_dir)
        await registry_kubelet.wait_for_resource("ex.com/a", healthy=2)
        await registry_kubelet.wait_for(lambda: manager.resources["ex.com/a"].ready)
        await registry_kubelet.stop()  # so that only the refusal below speaks
        # Its stream gone, the plugin re-creates its socket for kubelet to find again.
        await registry_kubelet.wait_for(
            lambda: (manager.resources["ex.com/a"].not_ready_reason or "").startswith(
                "waiting for kubelet's plugin watcher"
            ),
            what="the socket re-created",
        )
        socket = short_dir / "reg" / "ex.com-a.sock"
        reason = "RegisterPlugin error -- plugin registration failed with err: no"
        async with grpc.aio.insecure_channel(f"unix:{socket}") as channel:
            stub = pluginregistration_pb2_grpc.RegistrationStub(channel)
            status = pluginregistration_pb2.RegistrationStatus(
                plugin_registered=False, error=reason
            )
            await stub.NotifyRegistrationStatus(status, timeout=5)
        status_now = manager.resources["ex.com/a"]
        assert not status_now.ready
        assert not status_now.registered
        assert status_now.not_ready_reason == f"kubelet refused the registration: {reason}"


async def _serve_registration(
    socket: Path, servicer: RegistrationServicer, *handlers: grpc.GenericRpcHandler
) -> grpc.aio.Server:
    server = grpc.aio.server()
    servicer.add_to_server(server)
    server.add_generic_rpc_handlers(handlers)
    server.add_insecure_port(f"unix:{socket}")
    await server.start()
    return server


@asynccontextmanager
async def older_instance(socket: Path) -> AsyncIterator[None]:
    """An older instance of ex.com/a (2 devices) that does not look after its socket.

    A Manager re-creates its socket when the file goes, and kubelet's plugin watcher
    registers it again: a test that removes an older instance's socket for good needs
    an instance that leaves it gone. Its device list stream stays open until it stops.
    """
    service = DevicePluginService("ex.com/a", object())
    service.update({"a0": info(), "a1": info()})
    servicer = RegistrationServicer(
        plugin_type=DEVICE_PLUGIN_TYPE,
        name="ex.com/a",
        endpoint=str(socket),
        supported_versions=[API_VERSION],
    )
    server = await _serve_registration(socket, servicer, service.rpc_handler())
    try:
        yield
    finally:
        service.close()
        await server.stop(None)


class TestFakePluginWatcher:
    @pytest.mark.parametrize(
        ("plugin_type", "name", "versions", "reason"),
        [
            (
                DRA_PLUGIN_TYPE,
                "gpu.example.com",
                ["v1.DRAPlugin"],
                "RegisterPlugin error -- no handler registered for plugin type: DRAPlugin at "
                "socket {socket}",
            ),
            (
                DEVICE_PLUGIN_TYPE,
                "ex.com/a",
                ["v1alpha", "v2"],
                "RegisterPlugin error -- plugin validation failed with err: manager version, "
                "v1beta1, is not among plugin supported versions [v1alpha v2]",
            ),
            (
                DEVICE_PLUGIN_TYPE,
                "gpu",
                ["v1beta1"],
                "RegisterPlugin error -- plugin validation failed with err: invalid name of "
                'device plugin socket: the ResourceName "gpu" is invalid',
            ),
        ],
    )
    async def test_validates_and_notifies_like_kubelet(
        self,
        registry_kubelet: FakeKubelet,
        short_dir: Path,
        plugin_type: str,
        name: str,
        versions: list[str],
        reason: str,
    ) -> None:
        """Wrong type, versions or name: refused with kubelet's text, told by Notify."""
        socket = short_dir / "reg" / "bad.sock"
        servicer = RegistrationServicer(
            plugin_type=plugin_type, name=name, endpoint="", supported_versions=versions
        )
        server = await _serve_registration(socket, servicer)
        try:
            async with asyncio.timeout(5):
                registered = await servicer.wait_for_status()
        finally:
            await server.stop(None)
        expected = reason.format(socket=socket)
        assert registered is False
        assert servicer.error == expected
        assert [r.reason for r in registry_kubelet.rejected] == [expected]
        assert registry_kubelet.registrations == ()

    @pytest.mark.parametrize("mode", ["1.25", "1.36"])
    async def test_removing_an_older_socket_deregisters_per_kubelet_generation(
        self, short_dir: Path, serve: ServeFn, mode: KubeletMode
    ) -> None:
        """DeRegisterPlugin by name (1.25: the newer instance goes) or by socket (1.36)."""
        registry = short_dir / "reg"
        registry.mkdir()
        old_socket = registry / "old.sock"
        # The older instance stops after the kubelet: the end of its stream is not
        # what this test is about (1.25 would drop the newer instance for it too).
        async with (
            older_instance(old_socket),
            FakeKubelet(
                short_dir / "dp", mode=mode, registry_dir=registry, reconcile_interval=INTERVAL
            ) as kubelet,
        ):
            await kubelet.wait_for_resource("ex.com/a", healthy=2)
            new = await serve_registry(serve, short_dir, instance_id="new")
            await kubelet.wait_for(lambda: "ex.com/a" in new.resources, what="new serving")
            new_socket = str(new.resources["ex.com/a"].socket_path)
            await kubelet.wait_for(
                lambda: kubelet.resources["ex.com/a"].socket_path == new_socket,
                what="the new instance connected",
            )
            old_socket.unlink()  # kubelet sees the old instance's socket go
            # 1.25 disconnects the new instance too: it re-creates its socket and is
            # registered again. 1.36 leaves it alone.
            expected = 2 if mode == "1.25" else 1
            await kubelet.wait_for(
                lambda: (
                    kubelet.resources["ex.com/a"].endpoints == (new_socket,)
                    and kubelet.resources["ex.com/a"].allocatable == 2
                    and new.resources["ex.com/a"].ready
                    and [r.socket_path for r in kubelet.registrations].count(new_socket) == expected
                ),
                timeout=10,
                what="the new instance alone",
            )
            gaps = kubelet.zero_allocatable_spans("ex.com/a")
        assert len(gaps) == (1 if mode == "1.25" else 0)

    async def test_a_dropped_instance_registers_again_through_kubelet_sock(
        self, short_dir: Path, serve: ServeFn
    ) -> None:
        """With kubelet.sock at hand, the instance 1.25 drops calls Register at once."""
        registry = short_dir / "reg"
        registry.mkdir()
        old_socket = registry / "old.sock"
        async with (
            older_instance(old_socket),
            FakeKubelet(
                short_dir / "dp", mode="1.25", registry_dir=registry, reconcile_interval=INTERVAL
            ) as kubelet,
        ):
            await kubelet.wait_for_resource("ex.com/a", healthy=2)
            new = await serve_registry(serve, short_dir, instance_id="new", knows_kubelet_sock=True)
            await kubelet.wait_for(lambda: "ex.com/a" in new.resources, what="new serving")
            socket = new.resources["ex.com/a"].socket_path
            await kubelet.wait_for(
                lambda: kubelet.resources["ex.com/a"].socket_path == str(socket),
                what="the new instance connected",
            )
            served = socket.stat().st_ino
            old_socket.unlink()
            await kubelet.wait_for(
                lambda: (
                    kubelet.resources["ex.com/a"].allocatable == 2
                    and new.resources["ex.com/a"].ready
                    and len(kubelet.registrations) == 3
                ),
                timeout=10,
                what="the new instance registered again",
            )
            again = kubelet.registrations[-1]
            gaps = kubelet.zero_allocatable_spans("ex.com/a")
        # Named relative to the device-plugin directory, as kubelet joins it; the
        # socket was not re-created for the plugin watcher.
        assert again.request.endpoint == f"../reg/{socket.name}"
        assert again.socket_path == str(socket)
        assert socket.stat().st_ino == served
        assert len(gaps) == 1
