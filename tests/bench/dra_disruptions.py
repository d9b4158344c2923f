"""DRA disruptions: ``python tests/bench/dra_disruptions.py [--outage S] [--mode M] [--rounds N]``.

How long ``run --dra`` takes to be whole again after each disruption its end-to-end
tests check (``tests/reliability/test_dra_e2e.py``, ``test_dra_host_restart.py``):

* kubelet restarts (the fake DRA kubelet stops, starts again and wipes the node's
  slices as kubelet does): until the driver is registered again, and until its slices
  are back (p50 / max over ``--rounds``);
* an API-server outage of ``--outage`` seconds (10 by default; ``--mode unavailable``:
  503s, ``refuse``: connections refused) during which one device turns Unhealthy and
  another arrives: from the end of the outage until the newest state is stored, and
  how many publishing attempts failed meanwhile (exponential backoff from 0.5 s);
* the host killed (SIGKILL) and started again as a new process: from the start until
  kubelet has registered it again, and until it has answered kubelet's repeated
  prepare of a claim prepared before the kill (checkpoint restored).

The host, the fake API server and the fake DRA kubelet share this process's loop for
the first two; the restarted host is a ``devplugin-host run`` subprocess (its import
time counts). The fake kubelet looks at its registry every 20 ms (kubelet: every 1 s,
and it registers a driver at most once a second): the registration figures are the
host's part. Not collected by pytest; never run in CI. Under 60 s with the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from host import hookimpl
from host.deviceplugin import HEALTHY, DeviceInfo, DeviceSpec, DeviceTree, Notifier
from host.testing import FakeApiServer, FakeDraKubelet, HostHandle, allocate_claim, start_host
from hostplugins.gpu.fakedev import FakeGpu, FakeGpuTree, write_gpu_tree

NODE = "bench-node"
DRIVER = "bench.example.com"


def tree(count: int, unhealthy: int = -1) -> DeviceTree:
    """``count`` devices ``d0``..; device ``unhealthy`` (if any) Unhealthy."""
    result = DeviceTree()
    for index in range(count):
        node = DeviceSpec(host_path="/dev/null", container_path=f"/dev/d{index}")
        state = "Unhealthy" if index == unhealthy else HEALTHY
        result.add_device("dev", f"d{index}", DeviceInfo(state=state, nodes=[node]))
    return result


class QueueScanner:
    """Notifies each tree put on ``trees``."""

    def __init__(self) -> None:
        self.trees: asyncio.Queue[DeviceTree] = asyncio.Queue()

    async def scan(self, notifier: Notifier) -> None:
        while True:
            notifier.notify(await self.trees.get())


class BenchPlugin:
    def __init__(self, scanner: QueueScanner) -> None:
        self.scanner = scanner

    @hookimpl
    def devplugin_scanners(self, config: object) -> list[tuple[str, object]]:
        return [(DRIVER, self.scanner)]


def devices(api: FakeApiServer, driver: str) -> dict[str, bool]:
    """Device name -> tainted, as the API server holds the driver's slices."""
    return {
        device["name"]: bool(device.get("taints"))
        for item in api.resource_slices(driver=driver, node_name=NODE)
        for device in item["spec"]["devices"]
    }


async def in_process(root: Path, outage: float, mode: str, rounds: int) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    async with FakeApiServer() as api:
        kubelet = FakeDraKubelet(root / "reg", apiserver=api, node_name=NODE)
        await kubelet.start()
        scanner = QueueScanner()
        scanner.trees.put_nowait(tree(4))
        host: HostHandle = await start_host(
            plugin_dir=root / "dp",
            plugins={"bench": BenchPlugin(scanner)},
            cdi_dir=root / "cdi",
            dra=["bench"],
            node_name=NODE,
            kubeconfig=api.write_kubeconfig(root / "kubeconfig"),
            dra_plugin_dir=root / "plugins",
            plugins_registry_dir=root / "reg",
        )
        try:
            await kubelet.wait_for_driver(DRIVER, timeout=30)
            await api.wait_for(lambda: len(devices(api, DRIVER)) == 4, 30, "slices")
            registered, back = [], []
            for _ in range(rounds):
                await kubelet.stop()
                start = time.monotonic()
                await kubelet.start()
                await kubelet.wait_for_driver(DRIVER, after=start, timeout=30)
                registered.append(time.monotonic() - start)
                await api.wait_for(lambda: len(devices(api, DRIVER)) == 4, 30, "slices back")
                back.append(time.monotonic() - start)
            rows.append(
                (
                    f"kubelet restart -> driver registered again, p50 / max ({rounds} rounds)",
                    f"{statistics.median(registered) * 1e3:.0f} / {max(registered) * 1e3:.0f} ms",
                )
            )
            rows.append(
                (
                    "kubelet restart (slices wiped) -> slices back, p50 / max",
                    f"{statistics.median(back) * 1e3:.0f} / {max(back) * 1e3:.0f} ms",
                )
            )
            publisher = host.dra_plugins[DRIVER].publisher
            api.begin_outage(mode)  # type: ignore[arg-type]
            scanner.trees.put_nowait(tree(5, unhealthy=1))
            await asyncio.sleep(outage)  # the outage itself: wall-clock is the point here
            failures = publisher.status.failures
            ended = time.monotonic()
            await api.end_outage()
            await api.wait_for(
                lambda: devices(api, DRIVER) == {f"dev-d{i}": i == 1 for i in range(5)},
                60,
                "the newest state",
            )
            recovered = time.monotonic() - ended
            rows.append(
                (
                    f"API server {mode} for {outage:g} s -> newest state stored after its end",
                    f"{recovered:.2f} s ({failures} failed attempts)",
                )
            )
        finally:
            await host.stop()
            await kubelet.stop()
    return rows


def host_env() -> dict[str, str]:
    drop = ("DEVPLUGIN_", "NODE_NAME", "KUBECONFIG")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


async def spawn_host(root: Path, kubeconfig: Path, log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "host.cli", "run", "--enable", "gpu", "--dra", "gpu",
            "--node-name", NODE, "--kubeconfig", str(kubeconfig),
            "--plugin-dir", str(root / "dp"), "--cdi-dir", str(root / "cdi"),
            "--dra-plugin-dir", str(root / "plugins"),
            "--plugins-registry-dir", str(root / "reg"),
            "--sysfs-root", str(root / "gpu" / "sys"), "--devfs-root", str(root / "gpu" / "dev"),
            env=host_env(), stdout=out, stderr=out,
        )  # fmt: skip


async def host_restarts(root: Path, rounds: int) -> list[tuple[str, str]]:
    write_gpu_tree(root / "gpu", FakeGpuTree(cards=[FakeGpu(driver="i915")] * 2))
    (root / "dp").mkdir()
    gpu = "gpu.intel.com"
    async with FakeApiServer() as api:
        kubeconfig = api.write_kubeconfig(root / "kubeconfig")
        async with FakeDraKubelet(root / "reg", apiserver=api, node_name=NODE) as kubelet:
            process = await spawn_host(root, kubeconfig, root / "host.log")
            try:
                await kubelet.wait_for_driver(gpu, timeout=60)
                await api.wait_for(lambda: len(devices(api, gpu)) == 2, 60, "gpu slices")
                claim = await allocate_claim(
                    api, kubelet, f"{gpu}/i915", node_name=NODE, cdi_dir=root / "cdi"
                )
                registered, answered = [], []
                for _ in range(rounds):
                    process.send_signal(signal.SIGKILL)
                    await process.wait()
                    start = time.monotonic()
                    process = await spawn_host(root, kubeconfig, root / "host.log")
                    await kubelet.wait_for_driver(gpu, after=start, timeout=60)
                    registered.append(time.monotonic() - start)
                    outcome = (await kubelet.prepare(gpu, [claim.ref]))[claim.uid]
                    assert outcome.devices == claim.prepared, outcome
                    answered.append(time.monotonic() - start)
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
    return [
        (
            f"host SIGKILLed, new process -> registered with kubelet, p50 / max ({rounds})",
            f"{statistics.median(registered):.2f} / {max(registered):.2f} s",
        ),
        (
            "  -> repeated prepare of a claim from before answered (checkpoint)",
            f"{statistics.median(answered):.2f} / {max(answered):.2f} s",
        ),
    ]


async def main(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="dbd", dir="/tmp"))
    try:
        rows = await in_process(root / "a", args.outage, args.mode, args.rounds)
        rows += await host_restarts(root / "b", args.host_rounds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{'figure':<78} value")
    for what, value in rows:
        print(f"{what:<78} {value}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument("--mode", choices=["unavailable", "refuse"], default="unavailable")
    parser.add_argument("--rounds", type=int, default=5, help="kubelet restarts (default 5)")
    parser.add_argument("--host-rounds", type=int, default=3, help="host restarts (default 3)")
    asyncio.run(main(parser.parse_args()))
