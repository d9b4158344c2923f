"""The Register channel shared by the resources of a process (KubeletChannel)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from host.deviceplugin import DeviceTree
from host.deviceplugin._kubelet_channel import KubeletChannel
from host.deviceplugin._watcher import PluginDirWatcher, WatchEvent, WatchEventKind
from host.testing import FakeKubelet

from .conftest import QueueScanner, ServeFn
from .helpers import info

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
