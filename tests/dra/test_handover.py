"""Rolling update of a DRA driver: the newest instance publishes the slices, the older stands by."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from host.dra import DraPlugin
from host.dra._handover import PUBLISHER_FILE, PublisherHandover
from host.testing import FakeApiServer
from tests.dra.helpers import DRIVER, Dirs, PluginRunner, gpu
from tests.dra.helpers import gpu_tree as tree
from tests.dra.helpers import published_devices as device_names
from tests.scanners import QueueScanner

pytestmark = pytest.mark.asyncio

MUTATIONS = ("POST", "PUT", "PATCH", "DELETE")


def slice_writes(api: FakeApiServer, since: int = 0) -> list[str]:
    return [
        f"{r.method} {r.path}"
        for r in api.requests[since:]
        if r.method in MUTATIONS and "resourceslices" in r.path
    ]


@pytest.fixture
def generations(apiserver: FakeApiServer) -> list[int]:
    """The pool's generation after every change of a stored object, in order."""
    seen: list[int] = []

    def changed() -> None:
        slices = apiserver.resource_slices(driver=DRIVER)
        if slices:
            seen.append(max(s["spec"]["pool"]["generation"] for s in slices))

    apiserver.on_change = changed
    return seen


class Instances:
    """Driver instances of the test (rolling update), each serving as a task."""

    def __init__(self, plugins: PluginRunner) -> None:
        self.plugins = plugins

    async def start(self, instance_id: str, *cards: int, **kwargs: Any) -> DraPlugin:
        """Serve an instance of cards ``cards``; return once its DRA socket listens."""
        plugin = self.plugins.start(QueueScanner(tree(*cards)), instance_id=instance_id, **kwargs)
        async with asyncio.timeout(10):
            await plugin.driver.wait_serving()
        return plugin

    async def stop(self, plugin: DraPlugin) -> None:
        await self.plugins.stop(plugin)


@pytest.fixture
def instances(dra_plugins: PluginRunner) -> Instances:
    return Instances(dra_plugins)


async def publisher_checked(plugin: DraPlugin, snapshot: dict[str, Any]) -> bool:
    """Hand ``snapshot`` to the plugin's publisher; return its next answer to may_write."""
    asked = plugin.publisher.may_write
    assert asked is not None
    answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    async def spy() -> bool:
        allowed = await asked()
        if not answer.done():
            answer.set_result(allowed)
        return allowed

    plugin.publisher.update(snapshot)  # the check below comes after it
    plugin.publisher.may_write = spy
    try:
        async with asyncio.timeout(10):
            return await answer
    finally:
        plugin.publisher.may_write = asked


def named_publisher(dirs: Dirs) -> str:
    return str(json.loads((dirs.plugins / DRIVER / PUBLISHER_FILE).read_text())["instance"])


class TestHandover:
    async def test_the_newer_instance_publishes_the_older_stands_by(
        self, apiserver: FakeApiServer, instances: Instances, dirs: Dirs, generations: list[int]
    ) -> None:
        """Where their versions publish differently, the older one never writes over the newer."""
        old = await instances.start("pod-old", 0, 1, cleanup_on_exit=True)
        await apiserver.wait_for(lambda: device_names(apiserver) == ["i915-card0", "i915-card1"])
        assert named_publisher(dirs) == "pod-old"

        new = await instances.start("pod-new", 0, 1, 2)
        await apiserver.wait_for(lambda: len(device_names(apiserver)) == 3, what="new slices")
        assert named_publisher(dirs) == "pod-new"
        assert new.not_ready_reason in (None, "not registered with kubelet yet")

        before = len(apiserver.requests)
        assert await publisher_checked(old, {"i915": {"card0": gpu(0)}}) is False
        assert old.publisher.status.standby
        assert old.not_ready_reason == "not registered with kubelet yet"  # not a slice problem
        await instances.stop(old)  # cleanup_on_exit: not the newer one's slices
        assert slice_writes(apiserver, before) == []
        assert len(device_names(apiserver)) == 3
        assert generations == sorted(generations)

    async def test_the_older_publishes_again_when_the_newer_goes(
        self, apiserver: FakeApiServer, instances: Instances, dirs: Dirs, generations: list[int]
    ) -> None:
        """A roll undone: the newer instance stops, the older adopts its slices and publishes."""
        old = await instances.start("pod-old", 0, 1)
        await apiserver.wait_for(lambda: len(device_names(apiserver)) == 2)
        new = await instances.start("pod-new", 0, 1, 2)
        await apiserver.wait_for(lambda: len(device_names(apiserver)) == 3)
        await instances.stop(new)
        assert len(device_names(apiserver)) == 3  # left in place

        old.publisher.request_resync()
        await apiserver.wait_for(lambda: len(device_names(apiserver)) == 2, what="old again")
        assert not old.publisher.status.standby
        assert named_publisher(dirs) == "pod-old"
        assert generations == sorted(generations)

    async def test_same_slices_adopted_without_a_write(
        self, apiserver: FakeApiServer, instances: Instances, generations: list[int]
    ) -> None:
        """The usual roll: the new instance builds the same slices and writes nothing."""
        await instances.start("pod-old", 0, 1, 2)
        await apiserver.wait_for(lambda: len(device_names(apiserver)) == 3)
        slices = apiserver.resource_slices(driver=DRIVER)
        before = len(apiserver.requests)
        new = await instances.start("pod-new", 0, 1, 2)
        async with asyncio.timeout(10):
            await new.publisher.wait_status(lambda status: status.synced)
        assert slice_writes(apiserver, before) == []
        assert apiserver.resource_slices(driver=DRIVER) == slices  # same objects, same versions


class TestPublisherHandover:
    async def test_a_dead_publisher_is_taken_over(self, dirs: Dirs) -> None:
        """The file names an instance whose socket is gone: this one publishes and says so."""
        data = dirs.plugins / DRIVER
        gone = PublisherHandover(data, "pod-gone", data / "dra-pod-gone.sock")
        gone.claim()
        me = PublisherHandover(data, "pod-me", data / "dra-pod-me.sock")
        assert me.may_publish() is True
        assert named_publisher(dirs) == "pod-me"

    async def test_an_unreadable_file_does_not_stop_publishing(self, dirs: Dirs) -> None:
        """Garbage in publisher.json: publish (the node's devices stay published)."""
        data = dirs.plugins / DRIVER
        data.mkdir(parents=True)
        (data / PUBLISHER_FILE).write_text("{not json")
        assert PublisherHandover(data, "pod-me", data / "dra.sock").may_publish() is True
