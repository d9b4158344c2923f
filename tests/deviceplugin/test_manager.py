"""Manager behaviour end to end: scanner -> manager -> gRPC server -> fake kubelet."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest

from host.deviceplugin import DeviceSpec, pluginapi
from host.testing import FakeKubelet
from tests.scanners import QueueScanner

from .conftest import ServeFn
from .helpers import info, node, tree_of

pytestmark = pytest.mark.asyncio

EXAMPLES = Path(__file__).parent / "examples"


def sockets_in(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if p.is_socket()}


class TestSeedExample:
    async def test_example_registers_allocates_and_stops_cleanly(
        self, kubelet: FakeKubelet, short_dir: Path
    ) -> None:
        """The seed README's program registers yellow, answers Allocate, and SIGTERM cleans up."""
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / "seed_color.py"), str(short_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            state = await kubelet.wait_for_resource("color.example.com/yellow", count=1, timeout=20)
            assert state.allocatable == 1
            response = await kubelet.allocate("color.example.com/yellow", ["dev0"])
            assert [DeviceSpec.of(d) for d in response.container_responses[0].devices] == [
                node("/dev/null")
            ]
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.to_thread(proc.communicate, timeout=10)
        assert proc.returncode == 0, err.decode()
        assert sockets_in(short_dir) == {"kubelet.sock"}


class TestNotifierDiff:
    async def test_added_updated_removed_types(
        self, kubelet: FakeKubelet, serve: ServeFn, short_dir: Path
    ) -> None:
        """A new type gets a server, an update reaches kubelet, a gone type stops its server."""
        scanner = QueueScanner(tree_of({"a": {"a0": info()}}))
        await serve("ex.com", scanner)
        await kubelet.wait_for_resource("ex.com/a", count=1)

        scanner.trees.put_nowait(tree_of({"a": {"a0": info(), "a1": info()}, "b": {"b0": info()}}))
        await kubelet.wait_for_resource("ex.com/a", count=2)
        await kubelet.wait_for_resource("ex.com/b", count=1)
        assert "ex.com-b.sock" in sockets_in(short_dir)

        scanner.trees.put_nowait(tree_of({"a": {"a1": info()}}))
        await kubelet.wait_for(lambda: "ex.com-b.sock" not in sockets_in(short_dir))
        state = await kubelet.wait_for_resource("ex.com/a", count=1)
        assert set(state.devices) == {"a1"}

    @pytest.mark.parametrize("message", ["", "warm"], ids=["equal tree", "message alone"])
    async def test_unchanged_tree_sends_nothing_new(
        self, kubelet: FakeKubelet, serve: ServeFn, message: str
    ) -> None:
        """An equal tree, or one whose health messages alone changed, resends no list."""
        scanner = QueueScanner(tree_of({"a": {"a0": info()}}))
        manager = await serve("ex.com", scanner)
        await kubelet.wait_for_resource("ex.com/a", count=1)
        service = manager._services["a"]
        version = service._version
        scanner.trees.put_nowait(tree_of({"a": {"a0": info(health_message=message)}}))
        scanner.trees.put_nowait(tree_of({"a": {"a0": info(), "a1": info()}}))
        await kubelet.wait_for_resource("ex.com/a", count=2)
        assert service._version == version + 1

    async def test_every_stream_gets_every_update(
        self, kubelet: FakeKubelet, serve: ServeFn, short_dir: Path
    ) -> None:
        """Several ListAndWatch streams all receive the newest snapshot."""
        scanner = QueueScanner(tree_of({"a": {"a0": info()}}))
        await serve("ex.com", scanner)
        await kubelet.wait_for_resource("ex.com/a", count=1)
        received: list[asyncio.Queue[list[str]]] = [asyncio.Queue() for _ in range(3)]

        async def watch(queue: asyncio.Queue[list[str]]) -> None:
            async with grpc.aio.insecure_channel(f"unix://{short_dir}/ex.com-a.sock") as ch:
                stub = _stub(ch)
                async for message in stub.ListAndWatch(pluginapi.Empty()):
                    queue.put_nowait(sorted(d.ID for d in message.devices))

        watchers = [asyncio.create_task(watch(q)) for q in received]
        try:
            for queue in received:
                assert await asyncio.wait_for(queue.get(), 5) == ["a0"]
            scanner.trees.put_nowait(tree_of({"a": {"a0": info(), "a9": info()}}))
            for queue in received:
                assert await asyncio.wait_for(queue.get(), 5) == ["a0", "a9"]
        finally:
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)

    async def test_notify_from_a_thread_and_plain_scan(
        self, kubelet: FakeKubelet, serve: ServeFn
    ) -> None:
        """A plain (non-async) scan runs in a thread and its notify reaches kubelet."""
        stop = threading.Event()

        class ThreadScanner:
            def scan(self, notifier: Any) -> None:
                notifier.notify(tree_of({"t": {"t0": info()}}))
                stop.wait(30)

        try:
            await serve("ex.com", ThreadScanner())
            state = await kubelet.wait_for_resource("ex.com/t", count=1)
            assert state.allocatable == 1
        finally:
            stop.set()

    async def test_notify_rejects_non_tree(self, serve: ServeFn) -> None:
        """notify() with something that is not a DeviceTree fails in the scanner, clearly."""
        seen: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

        class BadScanner:
            async def scan(self, notifier: Any) -> None:
                try:
                    notifier.notify({"a": {}})
                except TypeError as exc:
                    seen.set_result(exc)
                await asyncio.Event().wait()

        await serve("ex.com", BadScanner())
        exc = await asyncio.wait_for(seen, 5)
        assert "DeviceTree" in str(exc)


class TestNames:
    async def test_invalid_type_is_skipped_others_serve(
        self, kubelet: FakeKubelet, serve: ServeFn, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A type that makes an invalid resource name is reported; valid types still serve."""
        caplog.set_level(logging.ERROR)
        await serve(
            "ex.com", QueueScanner(tree_of({"bad/type": {"x": info()}, "ok": {"o": info()}}))
        )
        await kubelet.wait_for_resource("ex.com/ok", count=1)
        assert "bad/type" in caplog.text
        assert "ex.com/bad/type" not in kubelet.resources

    async def test_invalid_namespace_fails_at_construction(self) -> None:
        """An invalid namespace is a clear error naming the plugin and the name."""
        from host.deviceplugin import Manager

        with pytest.raises(ValueError, match=r"plugin 'colors'.*'Example\.COM'"):
            Manager("Example.COM", QueueScanner(), plugin_name="colors")


class TestSocketSafety:
    async def test_socket_of_a_live_process_is_not_taken_over(
        self,
        kubelet: FakeKubelet,
        serve: ServeFn,
        short_dir: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A socket another process serves is never unlinked; we serve once it is gone."""
        path = short_dir / "ex.com-a.sock"
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        other.bind(str(path))
        other.listen()
        inode = path.stat().st_ino
        try:
            await serve("ex.com", QueueScanner(tree_of({"a": {"a0": info()}})))
            await kubelet.wait_for(lambda: "already in use" in caplog.text)
            assert path.stat().st_ino == inode
            assert "ex.com/a" not in kubelet.resources
        finally:
            other.close()
            path.unlink()
        await kubelet.wait_for_resource("ex.com/a", count=1)

    async def test_regular_file_at_socket_path_is_left_alone(
        self,
        kubelet: FakeKubelet,
        serve: ServeFn,
        short_dir: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A non-socket file at our socket path is reported and never removed."""
        path = short_dir / "ex.com-a.sock"
        path.write_text("keep me")
        await serve("ex.com", QueueScanner(tree_of({"a": {"a0": info()}})))
        await kubelet.wait_for(lambda: "is not a socket" in caplog.text)
        assert path.read_text() == "keep me"

    async def test_stale_socket_is_replaced(
        self, kubelet: FakeKubelet, serve: ServeFn, short_dir: Path
    ) -> None:
        """A socket file nobody listens on (a crashed plugin's) is replaced."""
        path = short_dir / "ex.com-a.sock"
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dead.bind(str(path))
        dead.close()
        await serve("ex.com", QueueScanner(tree_of({"a": {"a0": info()}})))
        await kubelet.wait_for_resource("ex.com/a", count=1)


class TestCleanStop:
    async def test_cancel_removes_only_our_sockets_and_keeps_specs(
        self, kubelet: FakeKubelet, short_dir: Path
    ) -> None:
        """Cancelling serve() stops servers and removes our sockets, nothing else; CDI specs
        stay for containers that restart without a new Allocate."""
        from host.deviceplugin import Manager

        (short_dir / "unrelated.txt").write_text("x")
        spec = cdi_spec("dev0")
        manager = Manager(
            "ex.com",
            QueueScanner(tree_of({"a": {"a0": info(cdi_spec=spec)}, "b": {"b0": info()}})),
            plugin_dir=short_dir,
            cdi_dir=short_dir / "cdi",
        )
        task = asyncio.create_task(manager.serve())
        await kubelet.wait_for_resource("ex.com/a", count=1)
        await kubelet.wait_for_resource("ex.com/b", count=1)
        await kubelet.allocate("ex.com/a", ["a0"])
        assert len(list((short_dir / "cdi").glob("*.json"))) == 1
        task.cancel()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 1.0)
        assert sockets_in(short_dir) == {"kubelet.sock"}
        assert (short_dir / "unrelated.txt").exists()
        assert len(list((short_dir / "cdi").glob("*.json"))) == 1


def cdi_spec(name: str) -> dict[str, Any]:
    return {
        "cdiVersion": "0.5.0",
        "kind": "example.com/dev",
        "devices": [{"name": name, "containerEdits": {"deviceNodes": [{"path": "/dev/null"}]}}],
    }


def _stub(channel: grpc.aio.Channel) -> Any:
    from host._api import api_pb2_grpc

    return api_pb2_grpc.DevicePluginStub(channel)


class TestTopology:
    async def test_numa_nodes_reach_kubelet(self, kubelet: FakeKubelet, serve: ServeFn) -> None:
        """A device's topology is sent in ListAndWatch; a device without one has none."""
        from host.deviceplugin import NUMANode, TopologyInfo

        numa = TopologyInfo(nodes=[NUMANode(ID=1), NUMANode(ID=3)])
        await serve("ex.com", QueueScanner(tree_of({"a": {"t": info(topology=numa), "n": info()}})))
        state = await kubelet.wait_for_resource("ex.com/a", count=2)
        assert tuple(state.devices["t"].numa_nodes) == (1, 3)
        assert tuple(state.devices["n"].numa_nodes) == ()
