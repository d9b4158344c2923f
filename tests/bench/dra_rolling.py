"""Rolling updates of a DRA driver under claim load: ``python tests/bench/dra_rolling.py``.

Replaces ``devplugin-host run --dra gpu`` ``--rolls`` times (default 20), each host a
real subprocess with its own ``--instance-id`` (as the pod UID): start the new host,
wait until it is ready (kubelet connected to its DRA socket, the ResourceSlices handed
over to it), SIGTERM the old one, wait until kubelet knows only the new one. The fake
API server and the fake DRA kubelet (with its plugin watcher) run in this process, as
do three workers preparing claims as kubelet does, holding a few, repeating a prepare
now and then and unprepaing, back to back. Prints: failed and lost calls (target 0),
gaps and duplicates in the published slices, slice writes during the rolls (0: each
host adopted them as they were), prepare latency under the rolls, the time to ready
and from SIGTERM to kubelet settled. Not collected by pytest; never run in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for tests.*

from report import Row, format_table

from host.dra._sockets import dra_socket_path
from host.testing import FakeApiServer, FakeDraKubelet
from hostplugins.gpu.fakedev import FakeGpu, FakeGpuTree, write_gpu_tree
from tests.reliability.dra_rolling import DraRollFigures, percentile, roll_instances
from tests.reliability.rolling import HostProcess

DRIVER = "gpu.intel.com"
NODE = "bench-node"
CARDS = 4


class HostInstance(HostProcess):
    """``devplugin-host run --dra gpu`` as one instance of the driver."""

    endpoint: str


async def start_host(work: Path, kubeconfig: Path, instance_id: str) -> HostInstance:
    """Start a host serving the gpu plugin as DRA driver ``gpu.intel.com``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DEVPLUGIN_", "NODE_NAME", "KUBECONFIG"))
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "host.cli", "run",
        "--enable", "gpu", "--dra", "gpu", "--node-name", NODE,
        "--kubeconfig", str(kubeconfig), "--instance-id", instance_id,
        "--plugin-dir", str(work / "dp"), "--cdi-dir", str(work / "cdi"),
        "--dra-plugin-dir", str(work / "plugins"), "--plugins-registry-dir", str(work / "reg"),
        "--sysfs-root", str(work / "root" / "sys"), "--devfs-root", str(work / "root" / "dev"),
        "--log-level", "info",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    host = HostInstance(process, instance_id)
    host.endpoint = str(dra_socket_path(work / "plugins", DRIVER, instance_id))
    return host


async def measure(rolls: int) -> tuple[DraRollFigures, FakeDraKubelet]:
    """Roll ``rolls`` times under load against a fresh API server and kubelet."""
    work = Path(tempfile.mkdtemp(prefix="drroll", dir="/tmp"))
    try:
        write_gpu_tree(work / "root", FakeGpuTree(cards=[FakeGpu(driver="i915")] * CARDS))
        (work / "dp").mkdir()
        async with FakeApiServer(nodes=[NODE]) as api:
            kubeconfig = api.write_kubeconfig(work / "kubeconfig")
            kubelet = FakeDraKubelet(work / "reg", apiserver=api, node_name=NODE)
            async with kubelet:
                figures = await roll_instances(
                    lambda instance_id: start_host(work, kubeconfig, instance_id),
                    kubelet=kubelet,
                    api=api,
                    driver=DRIVER,
                    node=NODE,
                    data_dir=work / "plugins" / DRIVER,
                    cdi_dir=work / "cdi",
                    rolls=rolls,
                )
            return figures, kubelet
    finally:
        shutil.rmtree(work, ignore_errors=True)


def rows(figures: DraRollFigures) -> list[Row]:
    """The table of one run."""
    load, watch, n = figures.load, figures.slices, figures.rolls
    lat = [t * 1000 for t in load.latencies]
    gens = watch.generations
    return [
        Row("calls", f"Prepare / Unprepare failed ({load.prepared:,} prepared, "
            f"{load.repeated:,} repeated, {load.unprepared:,} unprepared)",
            str(len(load.failed)), "0", not load.failed),
        Row("claims", "repeated prepare answered differently (a record lost)",
            str(len(load.lost)), "0", not load.lost),
        Row("claims", "claims still recorded / claim CDI files left after the last unprepare",
            str(len(figures.leftovers)), "0", not figures.leftovers),
        Row("slices", "changes that left the pool without a slice",
            str(watch.empty), "0", watch.empty == 0),
        Row("slices", "device in two slices at once / most slices at once",
            f"{len(watch.duplicates)} / {watch.max_slices}", "0 / 1",
            not watch.duplicates and watch.max_slices == 1),
        Row("slices", f"ResourceSlice writes during {n} rolls (adopted as they were)",
            str(figures.slice_writes), "0", figures.slice_writes == 0),
        Row("slices", "pool generation never went back",
            f"{gens[0] if gens else '-'} .. {gens[-1] if gens else '-'}", "monotonic",
            gens == sorted(gens)),
        Row("slices", "kubelet wipes (besides its own start)",
            str(len(figures.wipes) - 1), "0", len(figures.wipes) == 1),
        Row("latency", "prepare under the rolls, p50 / p99 / max",
            f"{percentile(lat, 50):.1f} / {percentile(lat, 99):.1f} / {max(lat, default=0):.1f} ms",
            "-", None),
        Row("roll", "start of a host -> ready (kubelet connected, slices handed over), p50 / max",
            f"{percentile(figures.ready, 50) * 1000:.0f} / {max(figures.ready) * 1000:.0f} ms",
            "-", None),
        Row("roll", "SIGTERM of the old host -> kubelet knows only the new, p50 / max",
            f"{percentile(figures.settle, 50) * 1000:.0f} / {max(figures.settle) * 1000:.0f} ms",
            "-", None),
        Row("roll", "old hosts exiting 0", f"{figures.exit_codes.count(0)} / {n}",
            f"{n} / {n}", figures.exit_codes.count(0) == n),
    ]  # fmt: skip


async def main(rolls: int) -> None:
    started = time.monotonic()
    figures, kubelet = await measure(rolls)
    elapsed = time.monotonic() - started
    for text in figures.load.failed[:3] + figures.load.lost[:3] + figures.leftovers[:3]:
        print(f"failed: {text}")
    print(format_table(rows(figures), f"DRA rolling updates, {rolls} rolls ({elapsed:.0f} s)"))
    print(f"calls per instance: {sorted(kubelet.calls.values())}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rolls", type=int, default=20)
    asyncio.run(main(parser.parse_args().rolls))
