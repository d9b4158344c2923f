"""Helpers the built-in plugins' tests share: tree views, a notifier, a fake-kubelet harness."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from host._api import api_pb2_grpc
from host.deviceplugin import DeviceTree, Manager, Scanner
from host.testing import FakeKubelet

__all__ = ["QueueNotifier", "ids", "plugin_stub", "scanning", "served"]


def ids(tree: DeviceTree) -> dict[str, list[str]]:
    """The tree as ``{device type: sorted IDs}``."""
    return {dev_type: sorted(devices) for dev_type, devices in tree.items()}


class QueueNotifier:
    """Collects notified trees; the test awaits them instead of sleeping."""

    def __init__(self) -> None:
        self.trees: asyncio.Queue[DeviceTree] = asyncio.Queue()

    def notify(self, tree: DeviceTree) -> None:
        self.trees.put_nowait(tree)

    async def next_matching(self, predicate: Callable[[DeviceTree], bool]) -> DeviceTree:
        async with asyncio.timeout(5):
            while True:
                tree = await self.trees.get()
                if predicate(tree):
                    return tree


@contextlib.asynccontextmanager
async def scanning(scanner: Scanner) -> AsyncIterator[QueueNotifier]:
    """Run ``scanner.scan`` into a :class:`QueueNotifier`; cancel it afterwards."""
    notifier = QueueNotifier()
    task = asyncio.create_task(scanner.scan(notifier))
    try:
        yield notifier
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def served(short_dir: Path, namespace: str, scanner: Scanner) -> AsyncIterator[FakeKubelet]:
    """Serve ``scanner`` under ``namespace`` to a fake kubelet; stop both afterwards."""
    async with FakeKubelet(short_dir) as kubelet:
        manager = Manager(namespace, scanner, plugin_dir=short_dir, cdi_dir=short_dir / "cdi")
        task = asyncio.create_task(manager.serve())
        try:
            yield kubelet
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def plugin_stub(
    kubelet: FakeKubelet, resource: str
) -> AsyncIterator[api_pb2_grpc.DevicePluginAsyncStub]:
    """A DevicePlugin stub on the socket kubelet knows for ``resource``."""
    path = kubelet.resources[resource].socket_path
    async with grpc.aio.insecure_channel(f"unix://{path}") as channel:
        yield api_pb2_grpc.DevicePluginStub(channel)
