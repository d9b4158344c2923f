"""The Register channel shared by the resources of a process (KubeletChannel)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from pathlib import Path

import grpc
import pytest

from host._api import api_pb2
from host.deviceplugin import DeviceTree
from host.deviceplugin._kubelet_channel import KubeletChannel
from host.deviceplugin._watcher import PluginDirWatcher, WatchEvent, WatchEventKind
from host.testing import FakeKubelet
from tests.scanners import QueueScanner

from .conftest import ServeFn
from .helpers import info, registration_server

pytestmark = pytest.mark.asyncio


class TestKubeletChannel:
    async def test_one_channel_per_kubelet(self, short_dir: Path) -> None:
        """Resources of one watcher share a channel; a new kubelet.sock or a failure renews it."""
        watcher = PluginDirWatcher(short_dir)
        shared = KubeletChannel.of(watcher)
        assert KubeletChannel.of(watcher) is shared
        assert KubeletChannel.of(PluginDirWatcher(short_dir)) is not shared
        shared.acquire()
        shared.acquire()
        try:
            first = shared.channel()
            assert shared.channel() is first
            shared._on_event(WatchEvent(WatchEventKind.KUBELET_STARTED))
            second = shared.channel()
            assert second is not first
            shared.failed(first)  # an old channel's failure changes nothing
            assert shared.channel() is second
            shared.failed(second)
            assert shared.channel() is not second
        finally:
            await shared.release()
            assert KubeletChannel.of(watcher) is shared  # one resource still holds it
            await shared.release()
        assert KubeletChannel.of(watcher) is not shared
        assert second.get_state() is grpc.ChannelConnectivity.SHUTDOWN

    async def test_connect_follows_a_channel_replaced_while_it_waits(self, short_dir: Path) -> None:
        """A channel closing under a waiting connect() (another's call failed) is left."""
        watcher = PluginDirWatcher(short_dir)
        shared = KubeletChannel.of(watcher)
        shared.acquire()
        first = shared.channel()
        # A call in flight keeps the replaced channel closing (not shut down) meanwhile.
        held = first.unary_unary("/v1beta1.Registration/Register")(b"", wait_for_ready=True)
        try:
            connecting = asyncio.create_task(shared.connect())
            await asyncio.sleep(0)  # one loop pass: it waits for the channel to connect
            shared.failed(first)  # another resource's Register failed on it
            async with FakeKubelet(short_dir):
                async with asyncio.timeout(5):
                    # It ends connected (to the old channel if that one got there first,
                    # which is harmless: calls take the current one), never in UsageError.
                    connected = await connecting
            assert isinstance(connected, grpc.aio.Channel)
            assert shared.channel() is not first
        finally:
            held.cancel()
            await shared.release()

    async def test_resources_register_over_it_across_restarts(
        self, kubelet: FakeKubelet, serve: ServeFn, short_dir: Path
    ) -> None:
        """Three resources register once each per kubelet, before and after a restart."""
        tree = DeviceTree()
        for dev_type in ("a", "b", "c"):
            tree.add_device(dev_type, f"{dev_type}0", info())
        await serve("ex.com", QueueScanner(tree))
        for name in ("ex.com/a", "ex.com/b", "ex.com/c"):
            await kubelet.wait_for_resource(name, healthy=1)
        await kubelet.restart()
        await kubelet.wait_for_registrations(6)
        for name in ("ex.com/a", "ex.com/b", "ex.com/c"):
            await kubelet.wait_for_resource(name, healthy=1)
        assert sorted(r.request.resource_name for r in kubelet.registrations) == sorted(
            ["ex.com/a", "ex.com/b", "ex.com/c"] * 2
        )


class _DeafWatcher(PluginDirWatcher):
    """A directory watch that reports nothing (as with every inotify event late)."""

    async def _run(self) -> None:
        await asyncio.Future()


class TestRegisterAfterKubeletCleanup:
    async def test_socket_unlinked_while_connecting_is_served_before_register(
        self, serve: ServeFn, short_dir: Path
    ) -> None:
        """Kubelet's cleanup while we connect to kubelet.sock: Register finds our socket.

        Kubelet dials back inside Register; a socket it cannot find costs grpc-go's 1 s
        reconnect backoff. The connection is held until the plugin socket has been
        unlinked, with the watch deaf to it: only a check made once connected sees it.
        """
        registry = Path(tempfile.mkdtemp(prefix="rg", dir="/tmp"))
        found: list[bool] = []
        arrived = asyncio.Event()

        async def register(request: api_pb2.RegisterRequest, context: object) -> api_pb2.Empty:
            found.append((short_dir / request.endpoint).exists())
            arrived.set()
            return api_pb2.Empty()

        server = await registration_server(registry / "k.sock", register)
        accepted, release = asyncio.Event(), asyncio.Event()
        pipes: list[asyncio.Task[None]] = []
        writers: list[asyncio.StreamWriter] = []

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            accepted.set()
            await release.wait()
            upstream = await asyncio.open_unix_connection(str(registry / "k.sock"))
            writers.append(upstream[1])
            pipes.append(asyncio.create_task(pipe(reader, upstream[1])))
            pipes.append(asyncio.create_task(pipe(upstream[0], writer)))

        proxy = await asyncio.start_unix_server(hold, path=str(short_dir / "kubelet.sock"))
        try:
            tree = DeviceTree()
            tree.add_device("a", "a0", info())
            await serve("ex.com", QueueScanner(tree), watcher=_DeafWatcher(short_dir))
            async with asyncio.timeout(10):
                await accepted.wait()
            sockets = [p for p in short_dir.iterdir() if p.is_socket() and p.name != "kubelet.sock"]
            assert [p.name for p in sockets] == ["ex.com-a.sock"]
            sockets[0].unlink()  # kubelet's cleanup, just before it serves
            release.set()
            async with asyncio.timeout(10):
                await arrived.wait()
            assert found == [True]
        finally:
            proxy.close()
            for writer in writers:
                writer.close()
            for task in pipes:
                task.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            await proxy.wait_closed()
            await server.stop(None)
            shutil.rmtree(registry, ignore_errors=True)
