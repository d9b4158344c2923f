"""Rolling updates of a DRA driver: 20 rolls under Prepare / Unprepare load, nothing lost.

The instances are DraPlugins in the test's loop (stopping one runs what SIGTERM runs in
the host), against the fake API server over HTTP and the fake DRA kubelet over gRPC;
the benchmark ``tests/bench/dra_rolling.py`` rolls host processes and prints figures.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import lightkube
import pytest

from host.dra import DraPlugin
from host.testing import FakeApiServer, FakeDraKubelet
from host.testing._apiserver_fixtures import apiserver, apiserver_kubeconfig
from tests.dra.helpers import DRIVER, NODE, Dirs, client, gpu
from tests.reliability.dra_rolling import describe, roll_instances
from tests.scanners import QueueScanner

pytestmark = pytest.mark.asyncio

__all__ = ["apiserver", "apiserver_kubeconfig", "client"]

ROLLS = 20
CARDS = 4


class InProcessInstance:
    """A DraPlugin serving as a task of the test's loop."""

    def __init__(self, plugin: DraPlugin, instance_id: str) -> None:
        self.plugin = plugin
        self.instance_id = instance_id
        self.endpoint = str(plugin.driver.socket_path)
        self.task = asyncio.create_task(plugin.serve(), name=f"instance {instance_id}")

    async def stop(self) -> int:
        """Cancel the serving task (what the host's SIGTERM handler does); 0 when clean."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        return 0


class TestDraRollingUpdate:
    async def test_twenty_rolls_under_load(
        self, apiserver: FakeApiServer, client: lightkube.AsyncClient, short_dir: Path
    ) -> None:
        """No prepare or unprepare fails, no claim is lost, the slices are never gone,
        never duplicated, never rewritten, their generation never goes back."""
        dirs = Dirs(short_dir)
        tree = {"i915": {f"card{i}": gpu(i) for i in range(CARDS)}}

        async def start(instance_id: str) -> InProcessInstance:
            from host.deviceplugin import DeviceTree

            devices = DeviceTree()
            for dev_id, info in tree["i915"].items():
                devices.add_device("i915", dev_id, info)
            plugin = DraPlugin(
                "gpu",
                DRIVER,
                QueueScanner(devices),  # type: ignore[arg-type]
                client,
                node_name=NODE,
                plugin_dir=dirs.plugins,
                registry_dir=dirs.registry,
                cdi_dir=dirs.cdi,
                instance_id=instance_id,
            )
            return InProcessInstance(plugin, instance_id)

        kubelet = FakeDraKubelet(dirs.registry, apiserver=apiserver, node_name=NODE)
        async with kubelet:
            figures = await roll_instances(
                start,  # type: ignore[arg-type]
                kubelet=kubelet,
                api=apiserver,
                driver=DRIVER,
                node=NODE,
                devices=[f"i915-card{i}" for i in range(CARDS)],
                data_dir=dirs.plugins / DRIVER,
                cdi_dir=dirs.cdi,
                rolls=ROLLS,
                ready=lambda i: i.plugin.not_ready_reason is None,  # type: ignore[attr-defined]
            )
        summary = describe(figures)
        load = figures.load
        assert load.failed == [], summary
        assert load.lost == [], summary
        assert load.prepared > ROLLS, summary
        assert load.repeated > 0, summary
        assert load.never_unprepared == 0, summary
        assert figures.leftovers == [], figures.leftovers  # unprepared, yet recorded
        assert figures.exit_codes == [0] * ROLLS
        assert figures.slices.empty == 0, summary
        assert figures.slices.duplicates == [], summary
        assert figures.slices.max_slices == 1, summary
        gens = figures.slices.generations
        assert gens == sorted(gens), summary
        assert figures.slice_writes == 0, summary
        assert figures.wipes == [("", 0)], summary  # only kubelet's start
        # every instance served calls: kubelet moved to each new one as it came
        assert len(kubelet.calls) == ROLLS + 1, dict(kubelet.calls)
