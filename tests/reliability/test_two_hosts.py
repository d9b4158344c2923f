"""Two host processes on one plugin directory: the second refuses and steals nothing.

Both run ``devplugin-host run --plugin-module twin_hooks.py`` (the same resource) as
real subprocesses against one FakeKubelet.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from host.deviceplugin._socketfile import private_socket_path
from host.testing import FakeKubelet

pytestmark = pytest.mark.asyncio

HOOKS = Path(__file__).with_name("twin_hooks.py")
RESOURCE = "twin.example.com/dev"
SOCKET = "twin.example.com-dev.sock"


class HostProcess:
    """One ``devplugin-host run`` subprocess, its stderr kept line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.lines.append(line.decode(errors="replace").rstrip())

    def logged(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    async def stop(self) -> int:
        """SIGTERM; the exit status (SIGKILL after 20 s, which fails the caller's check)."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 20)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        await self._reader
        assert self.process.returncode is not None
        return self.process.returncode


StartFn = Callable[[str], Awaitable[HostProcess]]


@pytest_asyncio.fixture
async def start_host(short_dir: Path) -> AsyncIterator[StartFn]:
    """Start ``devplugin-host run`` on ``short_dir``; every host is stopped at teardown."""
    started: list[HostProcess] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVPLUGIN_")}

    async def start(label: str) -> HostProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "host.cli", "run",
            "--plugin-dir", str(short_dir), "--cdi-dir", str(short_dir / f"cdi-{label}"),
            "--enable", "twin_hooks", "--plugin-module", str(HOOKS), "--log-level", "info",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        host = HostProcess(process)
        started.append(host)
        return host

    try:
        yield start
    finally:
        for host in started:
            with contextlib.suppress(ProcessLookupError):
                await host.stop()


def inode(path: Path) -> int:
    return os.stat(path).st_ino


SO_ACCEPTCON = 0x10000
"""The flag /proc/net/unix shows on a listening socket."""


def listens_on(process: HostProcess, path: Path) -> bool:
    """Whether ``process`` holds a socket listening on ``path`` (by /proc, not by file name).

    A socket file's inode number can be reused after an unlink, so an unchanged inode
    alone does not prove nobody replaced the socket. The host listens on the private
    path of which ``path`` is a hard link: /proc names the socket by the path it was
    bound to, so that path, and the same inode at both names, is what proves it.
    """
    private = private_socket_path(path)
    assert private is not None
    if not private.exists() or inode(private) != inode(path):
        return False
    path = private
    owned = set()
    for fd in os.listdir(f"/proc/{process.process.pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{process.process.pid}/fd/{fd}")
            if link.startswith("socket:["):
                owned.add(link[len("socket:[") : -1])
    with open("/proc/net/unix") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return any(
        len(row) >= 8 and row[7] == str(path) and row[6] in owned and int(row[3], 16) & SO_ACCEPTCON
        for row in rows
    )


class TestSecondHost:
    async def test_refuses_clearly_and_leaves_the_first_serving(
        self, kubelet: FakeKubelet, start_host: StartFn, short_dir: Path
    ) -> None:
        """The second host logs that the socket is in use; the first keeps socket and kubelet."""
        first = await start_host("first")
        await kubelet.wait_for_resource(RESOURCE, count=2, healthy=2, timeout=30)
        socket = short_dir / SOCKET
        served_inode = inode(socket)

        second = await start_host("second")
        refusal = f"socket {socket} is already in use by another process; not taking it over"
        await kubelet.wait_for(
            lambda: second.logged(refusal), timeout=30, what="the second host's refusal"
        )
        assert second.process.returncode is None  # it waits for the socket to be free
        assert inode(socket) == served_inode
        assert listens_on(first, socket)
        assert not listens_on(second, socket)
        assert [r.socket_path for r in kubelet.registrations] == [str(socket)]
        response = await kubelet.allocate(RESOURCE, ["twin0"])
        assert [d.host_path for d in response.container_responses[0].devices] == ["/dev/twin0"]

        assert await second.stop() == 0
        assert inode(socket) == served_inode  # its clean stop did not remove the first's socket
        assert listens_on(first, socket)
        assert kubelet.resources[RESOURCE].connected
        assert len(kubelet.registrations) == 1
        await kubelet.allocate(RESOURCE, ["twin1"])
        assert first.process.returncode is None
        assert not first.logged("in use")

    async def test_takes_over_once_the_first_is_gone(
        self, kubelet: FakeKubelet, start_host: StartFn, short_dir: Path
    ) -> None:
        """When the first host stops (its socket removed), the waiting second one serves."""
        first = await start_host("first")
        await kubelet.wait_for_resource(RESOURCE, count=2, timeout=30)
        socket = short_dir / SOCKET
        second = await start_host("second")
        await kubelet.wait_for(
            lambda: second.logged("already in use by another process"),
            timeout=30,
            what="the second host's refusal",
        )

        assert await first.stop() == 0
        # Kubelet (up to 1.35) may handle the end of the first host's stream after the
        # second host registered, and drop the second's connection by name: the second
        # then registers again. Served means: that end handled, the second connected.
        await kubelet.wait_for(
            lambda: (
                kubelet.resources[RESOURCE].streams_ended >= 1
                and kubelet.resources[RESOURCE].registrations >= 2
                and kubelet.resources[RESOURCE].connected
                and kubelet.resources[RESOURCE].allocatable == 2
            ),
            timeout=30,
            what="the second host's registration",
        )
        assert kubelet.registrations[-1].socket_path == str(socket)
        assert listens_on(second, socket)
        await kubelet.allocate(RESOURCE, ["twin0"])
        assert await second.stop() == 0
        assert not socket.exists()
