"""Sockets served on a private path with a hard link where kubelet dials them.

Kubelet's start-up cleanup unlinks every socket in the device-plugin directory; a
resource then gives its socket its name back with one ``link``, keeping its gRPC
server, instead of serving a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from host.deviceplugin import Manager
from host.deviceplugin._socketfile import (
    PRIVATE_DIR,
    UnixSocketServer,
    private_socket_path,
    remove_stale_private_sockets,
)
from host.deviceplugin._watcher import PluginDirWatcher, WatchEvent, WatchEventKind, socket_identity
from host.testing import FakeKubelet
from tests.scanners import QueueScanner

from .conftest import ServeFn
from .helpers import info, tree_of

pytestmark = pytest.mark.asyncio


def sockets_in(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if p.is_socket()} if directory.is_dir() else set()


def dead_socket(path: Path) -> None:
    """Leave a socket file nobody listens on at ``path`` (what a killed process leaves)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()


def still_open(sock: socket.socket) -> bool:
    """Whether the peer of a non-blocking ``sock`` has not closed it (reads what is there)."""
    while True:
        try:
            if sock.recv(65536) == b"":
                return False
        except BlockingIOError:
            return True


async def restart_ten_times(
    kubelet: FakeKubelet, public: Path, private: Path, served: object
) -> None:
    """Restart kubelet ten times; after each, the same socket is back at ``public``."""
    for round_ in range(2, 12):
        await kubelet.restart()
        await kubelet.wait_for(
            lambda round_=round_: (  # type: ignore[misc]
                kubelet.resources["ex.com/a"].registrations == round_
                and kubelet.resources["ex.com/a"].allocatable == 1
            ),
            timeout=5,
        )
        assert socket_identity(public) == served
        assert socket_identity(private) == served


class TestKubeletRestart:
    async def test_restart_relinks_the_same_server(
        self, kubelet: FakeKubelet, serve: ServeFn, short_dir: Path
    ) -> None:
        """After each restart the public name is a link to the very socket served first."""
        await serve("ex.com", QueueScanner(tree_of({"a": {"a0": info()}})))
        await kubelet.wait_for_resource("ex.com/a", count=1, healthy=1)
        public = short_dir / "ex.com-a.sock"
        private = short_dir / PRIVATE_DIR / "ex.com-a.sock"
        served = socket_identity(private)
        assert served is not None
        assert socket_identity(public) == served
        # A connection the server holds: a new server (inode numbers may be reused, so
        # the identity alone proves little) would have closed it.
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.closing(probe):
            probe.connect(str(public))
            probe.setblocking(False)
            await restart_ten_times(kubelet, public, private, served)
            assert still_open(probe)
        await kubelet.allocate("ex.com/a", ["a0"])

    async def test_stop_removes_both_names(self, kubelet: FakeKubelet, short_dir: Path) -> None:
        """A stopped manager leaves neither its public socket nor the private one."""
        manager = Manager(
            "ex.com",
            QueueScanner(tree_of({"a": {"a0": info()}})),
            plugin_dir=short_dir,
            cdi_dir=short_dir / "cdi",
        )
        task = asyncio.create_task(manager.serve())
        await kubelet.wait_for_resource("ex.com/a", count=1)
        assert sockets_in(short_dir / PRIVATE_DIR) == {"ex.com-a.sock"}
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert sockets_in(short_dir) == {"kubelet.sock"}
        assert sockets_in(short_dir / PRIVATE_DIR) == set()


class TestStaleSockets:
    async def test_sweep_removes_dead_sockets_and_keeps_live_ones(self, short_dir: Path) -> None:
        """Dead sockets go; a live one (another instance's) and other files stay."""
        directory = short_dir / PRIVATE_DIR
        directory.mkdir()
        dead_socket(directory / "old-1.sock")
        dead_socket(directory / "old-2.sock")
        (directory / "notes.txt").write_text("not a socket")
        live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        live.bind(str(directory / "other.sock"))
        live.listen()
        try:
            assert await remove_stale_private_sockets(directory, set()) == 2
            assert sockets_in(directory) == {"other.sock"}
            assert (directory / "notes.txt").exists()
        finally:
            live.close()

    async def test_a_killed_hosts_sockets_are_swept_at_start(
        self, kubelet: FakeKubelet, serve: ServeFn, short_dir: Path
    ) -> None:
        """A previous pod's private sockets (another instance id) do not pile up."""
        directory = short_dir / PRIVATE_DIR
        directory.mkdir()
        dead_socket(directory / "ex.com-a-old1.sock")
        dead_socket(directory / "ex.com-a.sock")  # our own name, left by a killed host
        UnixSocketServer._swept.discard(str(directory))
        await serve("ex.com", QueueScanner(tree_of({"a": {"a0": info()}})))
        await kubelet.wait_for_resource("ex.com/a", count=1, healthy=1)
        assert sockets_in(directory) == {"ex.com-a.sock"}
        assert socket_identity(directory / "ex.com-a.sock") == socket_identity(
            short_dir / "ex.com-a.sock"
        )


class TestWithoutLink:
    async def test_a_private_path_too_long_serves_the_public_one(self) -> None:
        """Where the private path would not fit a Unix socket, the socket is served directly."""
        base = Path(tempfile.mkdtemp(prefix="l" * 52, dir="/tmp"))  # 65 bytes: own per run
        try:
            public = base / ("s" * (107 - len(str(base)) - 1))
            assert len(str(public)) <= 107
            assert private_socket_path(public) is None
            server = UnixSocketServer(public, lambda _: None, link=True)
            await server.start()
            try:
                assert server.serving
                assert not (base / PRIVATE_DIR).exists()
                assert socket_identity(public) is not None
            finally:
                await server.stop()
            assert not public.exists()
        finally:
            with contextlib.suppress(OSError):
                base.rmdir()

    async def test_restore_after_unlink_without_link_serves_anew(self, short_dir: Path) -> None:
        """Without a link there is nothing to re-link: restore serves a new socket."""
        path = short_dir / "plain.sock"
        servers: list[object] = []
        server = UnixSocketServer(path, servers.append)
        await server.start()
        try:
            path.unlink()
            assert not server.serving
            await server.restore()
            assert server.serving
            assert len(servers) == 2  # a new gRPC server (inode numbers may be reused)
            assert not (short_dir / PRIVATE_DIR).exists()
        finally:
            await server.stop()

    async def test_restore_after_unlink_with_link_keeps_the_server(self, short_dir: Path) -> None:
        """With a link, restore is one link to the socket still listening."""
        path = short_dir / "linked.sock"
        servers: list[object] = []
        server = UnixSocketServer(path, servers.append, link=True)
        await server.start()
        try:
            first = socket_identity(path)
            path.unlink()
            assert not server.serving
            await server.restore()
            assert server.serving
            assert socket_identity(path) == first
            assert len(servers) == 1
        finally:
            await server.stop()
        assert sockets_in(short_dir) == set()
        assert sockets_in(short_dir / PRIVATE_DIR) == set()


class TestWatchByName:
    async def test_a_named_subscriber_hears_only_its_own_socket(self, short_dir: Path) -> None:
        """After a kubelet restart each resource hears of its own socket, not of all."""
        watcher = PluginDirWatcher(short_dir)
        everything: list[WatchEvent] = []
        mine: list[WatchEvent] = []
        changed = asyncio.Event()

        def hear(events: list[WatchEvent]) -> Callable[[WatchEvent], None]:
            def on_event(event: WatchEvent) -> None:
                events.append(event)
                changed.set()

            return on_event

        async def until(predicate: Callable[[], bool]) -> None:
            async with asyncio.timeout(5):
                while not predicate():
                    changed.clear()
                    await changed.wait()

        stops = [watcher.subscribe(hear(everything)), watcher.subscribe(hear(mine), name="a.sock")]
        try:
            for name in ("a.sock", "b.sock", "c.sock"):
                dead_socket(short_dir / name)
            await until(lambda: any(e.kind is WatchEventKind.RESYNC for e in everything))
            for name in ("b.sock", "a.sock", "c.sock"):
                (short_dir / name).unlink()
            removed = WatchEventKind.SOCKET_REMOVED
            await until(lambda: sum(e.kind is removed for e in everything) == 3)
            assert [e.name for e in mine if e.kind is removed] == ["a.sock"]
            assert any(e.kind is WatchEventKind.RESYNC for e in mine)  # unnamed events: all
        finally:
            for stop in stops:
                stop()
