"""FakeDraKubelet validates registrations as kubelet's DRA handler does."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from host._pluginwatcher import RegistrationServicer
from host.dra import build_slices
from host.testing import (
    DraHealthClient,
    FakeApiServer,
    FakeClaims,
    FakeDraKubelet,
    KubeletError,
)
from host.testing._apiserver_fixtures import apiserver
from tests.dra.helpers import DRIVER, NODE, Dirs, DriverRunner, snapshot

pytestmark = pytest.mark.asyncio

__all__ = ["apiserver"]


@pytest_asyncio.fixture
async def registry() -> AsyncIterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="drk", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def serve_registration(
    socket: Path,
    *,
    plugin_type: str = "DRAPlugin",
    name: str = "gpu.example.com",
    endpoint: str = "/tmp/x/dra.sock",
    versions: Sequence[str] = ("v1.DRAPlugin",),
) -> tuple[grpc.aio.Server, RegistrationServicer]:
    servicer = RegistrationServicer(
        plugin_type=plugin_type, name=name, endpoint=endpoint, supported_versions=versions
    )
    server = grpc.aio.server()
    servicer.add_to_server(server)
    server.add_insecure_port(f"unix:{socket}")
    await server.start()
    return server, servicer


class TestValidation:
    @pytest.mark.parametrize(
        ("kwargs", "error"),
        [
            (
                {"plugin_type": "DevicePlugin"},
                "no handler registered for plugin type: DevicePlugin at socket",
            ),
            (
                {"versions": ("v1alpha3.NodeService",)},
                "none of services supported by the plugin",
            ),
            ({"name": "Not_A_Name"}, "invalid driver name 'Not_A_Name'"),
            ({"endpoint": "/tmp/" + "x" * 120 + "/dra.sock"}, "is longer than 107 bytes"),
        ],
    )
    async def test_refused(self, registry: Path, kwargs: dict[str, object], error: str) -> None:
        """A bad PluginInfo is refused with kubelet's words; the plugin is told why."""
        server, servicer = await serve_registration(registry / "p-reg.sock", **kwargs)  # type: ignore[arg-type]
        try:
            async with FakeDraKubelet(registry) as kubelet:
                await kubelet.wait_for(lambda: bool(kubelet.rejections), what="a rejection")
                path, message = kubelet.rejections[0]
                assert path == str(registry / "p-reg.sock")
                assert error in message
                assert message.startswith("RegisterPlugin error -- ")
                assert await servicer.wait_for_status() is False
                assert error in servicer.error
                assert kubelet.drivers == {}
        finally:
            await server.stop(None)

    async def test_same_endpoint_twice(self, registry: Path) -> None:
        """A second socket announcing an endpoint already registered is refused."""
        one, _ = await serve_registration(registry / "a-reg.sock")
        two, _ = await serve_registration(registry / "b-reg.sock")
        try:
            async with FakeDraKubelet(registry) as kubelet:
                await kubelet.wait_for_driver("gpu.example.com")
                await kubelet.wait_for(lambda: bool(kubelet.rejections), what="a rejection")
                assert (
                    "already registered for DRA driver plugin gpu.example.com"
                    in (kubelet.rejections[0][1])
                )
                assert len(kubelet.drivers["gpu.example.com"]) == 1
        finally:
            await one.stop(None)
            await two.stop(None)

    async def test_hidden_sockets_ignored(self, registry: Path) -> None:
        """Sockets whose names start with '.' are not registered."""
        server, servicer = await serve_registration(registry / ".hidden-reg.sock")
        try:
            async with FakeDraKubelet(registry) as kubelet:
                visible, _ = await serve_registration(
                    registry / "v-reg.sock", name="other.example.com"
                )
                try:
                    await kubelet.wait_for_driver("other.example.com")
                    assert servicer.status_count == 0
                    assert list(kubelet.drivers) == ["other.example.com"]
                finally:
                    await visible.stop(None)
        finally:
            await server.stop(None)

    async def test_calls_need_a_registered_driver(self, registry: Path) -> None:
        """Calling a driver kubelet does not know fails as kubelet does."""
        async with FakeDraKubelet(registry) as kubelet:
            with pytest.raises(
                KubeletError, match=r"DRA driver gpu\.example\.com is not registered"
            ):
                await kubelet.prepare("gpu.example.com", [("ns", "c", "uid")])


@pytest_asyncio.fixture
async def runner(registry: Path) -> AsyncIterator[DriverRunner]:
    drivers = DriverRunner(Dirs(registry), FakeClaims())
    try:
        yield drivers
    finally:
        for driver in list(drivers.tasks):
            await drivers.stop(driver)


def one_slice(api: FakeApiServer) -> None:
    node_uid = api.add_node(NODE)["metadata"]["uid"]
    built = build_slices(driver=DRIVER, node_name=NODE, node_uid=node_uid, snapshot=snapshot(1))
    for item in built.slices:
        api.put_resource_slice(item)


class TestSeveralInstances:
    async def test_calls_go_to_the_newest_connected_instance(self, runner: DriverRunner) -> None:
        """Both instances connected: the newer one is called; one whose DRA socket is gone
        (still registered) is passed over for a connected older one."""
        dirs = runner.dirs
        async with FakeDraKubelet(dirs.registry) as kubelet:
            # registered in this order (a restarted kubelet finds them in any order)
            old = await runner.start(instance_id="old")
            first = await kubelet.wait_for_driver(DRIVER)
            new = await runner.start(instance_id="new")
            await kubelet.wait_for_driver(DRIVER, after=first.registered_at)
            await kubelet.wait_for(
                lambda: len(kubelet.connected(DRIVER)) == 2, what="both connected"
            )
            chosen = kubelet.chosen(DRIVER)
            assert chosen is not None
            assert chosen.endpoint == str(new.socket_path)
            assert await kubelet.unprepare(DRIVER, [("default", "c", "uid-x")]) == {"uid-x": ""}
            assert kubelet.calls == {str(new.socket_path): 1}

            # a third instance whose DRA socket nobody serves: registered, never connected
            ghost = dirs.plugins / DRIVER / "dra-ghost.sock"
            server, _ = await serve_registration(
                dirs.registry / f"{DRIVER}-ghost-reg.sock", name=DRIVER, endpoint=str(ghost)
            )
            try:
                await kubelet.wait_for(lambda: len(kubelet.drivers[DRIVER]) == 3)
                assert kubelet.drivers[DRIVER][-1].endpoint == str(ghost)
                assert kubelet.connected(DRIVER) == (str(old.socket_path), str(new.socket_path))
                chosen = kubelet.chosen(DRIVER)
                assert chosen is not None
                assert chosen.endpoint == str(new.socket_path)
                await runner.stop(new)  # its registration goes: deregistered
                await kubelet.wait_for(lambda: len(kubelet.drivers[DRIVER]) == 2)
                chosen = kubelet.chosen(DRIVER)
                assert chosen is not None
                assert chosen.endpoint == str(old.socket_path)
            finally:
                await server.stop(None)

    async def test_a_driver_without_connected_instance_is_wiped(
        self, runner: DriverRunner, apiserver: FakeApiServer
    ) -> None:
        """Kubelet start wipes the node's slices; the last instance gone, the driver's
        slices are wiped after the delay; none is queued while another is connected."""
        dirs = runner.dirs
        one_slice(apiserver)
        kubelet = FakeDraKubelet(
            dirs.registry, apiserver=apiserver, node_name=NODE, wiping_delay=0.05
        )
        async with kubelet:
            assert kubelet.wipes == (("", 1),)
            one_slice(apiserver)  # the driver publishes again
            first = await runner.start(instance_id="a")
            second = await runner.start(instance_id="b")
            await kubelet.wait_for(lambda: len(kubelet.connected(DRIVER)) == 2)
            assert kubelet.pending_wipes == frozenset()
            await runner.stop(first)
            await kubelet.wait_for(lambda: len(kubelet.drivers[DRIVER]) == 1)
            assert kubelet.pending_wipes == frozenset()
            assert len(apiserver.resource_slices(driver=DRIVER)) == 1
            await runner.stop(second)
            await kubelet.wait_for(lambda: len(kubelet.wipes) == 2, what="the wipe")
            assert kubelet.wipes[-1] == (DRIVER, 1)
            assert apiserver.resource_slices(driver=DRIVER) == []


async def test_a_deregistration_cancelled_while_it_ends_a_health_stream_stays_cancelled() -> None:
    """The plugin watcher stopping during a deregistration ends it: the health stream's
    cancellation does not swallow the caller's (the watcher's loop ran on, its stop hung)."""

    async def changed() -> None:
        pass

    health = DraHealthClient(("v1.DRAResourceHealth",), retry_interval=5.0, changed=changed)
    channel = grpc.aio.insecure_channel("unix:/tmp/no-such-dra-plugin.sock")
    try:
        health.watch(DRIVER, "/tmp/x.sock", ("v1.DRAResourceHealth",), channel)
        assert len(health.streams(DRIVER)) == 1
        deregistering = asyncio.create_task(health.unwatch(DRIVER, "/tmp/x.sock"))
        await asyncio.sleep(0)  # one loop pass: the task starts, ends the stream, waits
        assert health.streams(DRIVER) == ()
        assert not deregistering.done()
        deregistering.cancel()  # as the watcher's stop does
        await asyncio.wait({deregistering})
        assert deregistering.cancelled()
    finally:
        await channel.close()
