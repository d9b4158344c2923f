"""Fixtures for the reliability suite: a fake kubelet, managers in the test's loop, counters."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest_asyncio

from host.deviceplugin import HEALTHY, DeviceInfo, DeviceSpec, DeviceTree, Manager
from host.testing import FakeKubelet


@pytest_asyncio.fixture
async def kubelet(short_dir: Path) -> AsyncIterator[FakeKubelet]:
    fake = FakeKubelet(short_dir)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


ServeFn = Callable[..., Awaitable[Manager]]


@pytest_asyncio.fixture
async def serve(short_dir: Path) -> AsyncIterator[ServeFn]:
    """Start managers as tasks of the test's loop (as the host does); cancel them at teardown."""
    tasks: list[asyncio.Task[None]] = []

    async def start(namespace: str, scanner: Any, **kwargs: Any) -> Manager:
        kwargs.setdefault("plugin_dir", short_dir)
        kwargs.setdefault("cdi_dir", short_dir / "cdi")
        kwargs.setdefault("scan_backoff", (0.05, 0.2))
        manager = Manager(namespace, scanner, **kwargs)
        tasks.append(asyncio.create_task(manager.serve(), name=f"test serve {namespace}"))
        return manager

    try:
        yield start
    finally:
        for task in tasks:
            task.cancel()
        await end_tasks(tasks)
        # The watcher's task is the managers' too, though none of them awaits it.
        await end_tasks([t for t in asyncio.all_tasks() if t.get_name().startswith("watch ")])


async def end_tasks(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` until they have ended, so that closing the loop can never hang.

    Once is enough unless a cancellation gets lost (test_shutdown.py guards against
    that); a hung CI run would hide which test lost it.
    """
    for task in tasks:
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1)
        if not task.cancelled():
            with contextlib.suppress(asyncio.CancelledError):
                task.result()  # a failure of the task itself fails the test


def node(path: str) -> DeviceSpec:
    return DeviceSpec(host_path=path, container_path=path, permissions="rw")


def info(path: str = "/dev/null", state: str = HEALTHY, **kwargs: Any) -> DeviceInfo:
    return DeviceInfo(state=state, nodes=[node(path)], **kwargs)


def tree_of(types: Mapping[str, Mapping[str, DeviceInfo]]) -> DeviceTree:
    tree = DeviceTree()
    for dev_type, devices in types.items():
        for dev_id, dev_info in devices.items():
            tree.add_device(dev_type, dev_id, dev_info)
    return tree


class SteadyScanner:
    """Notifies one tree, then scans on (idle) until cancelled."""

    def __init__(self, tree: DeviceTree) -> None:
        self.tree = tree

    async def scan(self, notifier: Any) -> None:
        notifier.notify(self.tree)
        await asyncio.Future()


@dataclass(frozen=True)
class ProcessCounts:
    """Open file descriptors, sockets among them, and asyncio tasks of this process."""

    fds: int
    sockets: int
    tasks: int

    @classmethod
    def now(cls) -> ProcessCounts:
        fds = sockets = 0
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):  # the fd of the listing itself is gone
                target = os.readlink(f"/proc/self/fd/{fd}")
                fds += 1
                sockets += target.startswith("socket:")
        return cls(fds, sockets, len(asyncio.all_tasks()))

    def at_most(self, other: ProcessCounts) -> bool:
        return self.fds <= other.fds and self.sockets <= other.sockets and self.tasks <= other.tasks


async def until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - a bound per wait reads best
    """Poll ``predicate`` (for state no FakeKubelet is there to announce) until it holds."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():  # noqa: ASYNC110 - polling state nothing announces
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise TimeoutError(f"no {what} within {timeout} s") from None


def socket_files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if p.is_socket()}
