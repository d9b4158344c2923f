"""Figure 9: isolation under fire: a well-behaved plugin's Allocate while another misbehaves.

One ``devplugin-host run`` process serves ``good`` (two devices) and ``bad`` (a plugin
module written per scenario) to the bench kubelet. While a fault is on, a separate
client process measures good's Allocate latency; the host's RSS and open file
descriptors are read before, at the peak, and after the fault. Scenarios:

* baseline: nothing misbehaves;
* bad's plain ``allocate`` never returns, and a client keeps 20 calls to it open;
* a client keeps sending Allocate requests of 200,000 IDs (refused undecoded: too big);
* 50 ListAndWatch streams on bad's resource that never read, while bad re-publishes a
  2.2 MB device list every 0.1 s;
* bad's coroutine scanner blocks the loop (``time.sleep(0.3)`` every second): Allocate
  waits by design; the figure is how soon the watchdog names the culprit.

``BENCH_SHOW_STALLS=1`` prints the host's watchdog lines after each scenario: where
the loop was held (the host's own code included), to see what a p99 is made of.
``BENCH_PROFILE=FILE`` runs the host under cProfile (its loop thread), stats to FILE.

Standalone: ``python tests/bench/isolation.py [--only slow,flood] [--calls N]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
from common import BENCH_DIR, Child, Kubelet, percentile, rss_bytes
from report import Row, mib, ms

from host._api import api_pb2, api_pb2_grpc

GOOD = Path(__file__).resolve().parents[1] / "reliability" / "good.py"
"""The well-behaved plugin, shared with the chaos suite: ``good.example.com/dev``."""

BAD = """
import asyncio, time
from host import hookimpl
from host.deviceplugin import HEALTHY, UNHEALTHY, DeviceInfo, DeviceTree

DEVICES = {devices}
BLOCK = {block}

def tree(unhealthy):
    tree = DeviceTree()
    for i in range(DEVICES):
        state = UNHEALTHY if i == unhealthy else HEALTHY
        dev_id = f"bench-device-{{i:08d}}-padding-padding-pad"
        tree.add_device("dev", dev_id, DeviceInfo(state=state))
    return tree

# Built once: the scanner's own work stays off the figure; the host's is measured.
TREES = [tree(-1), tree(0)] if DEVICES > 1 else [tree(-1)]

class Scanner:
    async def scan(self, notifier):
        flip = 0
        while True:
            notifier.notify(TREES[flip % len(TREES)])
            flip += 1
            await asyncio.sleep(0.1 if DEVICES > 1 else 1.0)
            if BLOCK:
                time.sleep(BLOCK)

    def allocate(self, request):
        time.sleep(3600)

@hookimpl
def devplugin_scanners(config):
    return [("bad.bench.example.com", Scanner())]
"""

_HOST_MAIN = (
    "import cProfile, os; from host.cli import main; "
    "cProfile.run('main()', os.environ['BENCH_PROFILE'])"
    if os.environ.get("BENCH_PROFILE")
    else "from host.cli import main; main()"
)

Fault = Callable[[Path, Path], "contextlib.AbstractAsyncContextManager[None]"]


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextlib.asynccontextmanager
async def no_fault(good: Path, bad: Path) -> AsyncIterator[None]:
    yield


@contextlib.asynccontextmanager
async def stuck_allocates(good: Path, bad: Path) -> AsyncIterator[None]:
    async with grpc.aio.insecure_channel(f"unix://{bad}") as channel:
        stub = api_pb2_grpc.DevicePluginStub(channel)
        request = api_pb2.AllocateRequest(
            container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=["bench-device-"])]
        )
        calls = [stub.Allocate(request) for _ in range(20)]
        try:
            yield
        finally:
            for call in calls:
                call.cancel()


@contextlib.asynccontextmanager
async def huge_requests(good: Path, bad: Path) -> AsyncIterator[None]:
    request = api_pb2.AllocateRequest(
        container_requests=[
            api_pb2.ContainerAllocateRequest(devices_ids=[str(i) for i in range(200_000)])
        ]
    )
    sent = 0

    async def flood(stub: api_pb2_grpc.DevicePluginStub) -> None:
        nonlocal sent
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await stub.Allocate(request)
            sent += 1

    async with grpc.aio.insecure_channel(f"unix://{good}") as channel:
        stub = api_pb2_grpc.DevicePluginStub(channel)
        tasks = [asyncio.create_task(flood(stub)) for _ in range(2)]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def slow_readers(good: Path, bad: Path) -> AsyncIterator[None]:
    async with grpc.aio.insecure_channel(
        f"unix://{bad}", options=[("grpc.max_receive_message_length", 64 * 2**20)]
    ) as channel:
        stub = api_pb2_grpc.DevicePluginStub(channel)
        calls = [stub.ListAndWatch(api_pb2.Empty()) for _ in range(50)]
        try:
            yield
        finally:
            for call in calls:
                call.cancel()


async def scenario(
    work: Path, label: str, fault: Fault, *, devices: int = 1, block: float = 0.0, calls: int
) -> tuple[list[Row], list[str]]:
    plugin_dir = Path(tempfile.mkdtemp(prefix="iso", dir=work))
    (work / "bad.py").write_text(BAD.format(devices=devices, block=block))
    kubelet = await Kubelet.launch(plugin_dir)
    host = await Child.spawn(
        "host",
        "-c",
        _HOST_MAIN,
        "run",
        "--enable",
        "good,bad",
        "--plugin-module",
        GOOD,
        "--plugin-module",
        work / "bad.py",
        "--plugin-dir",
        plugin_dir,
        "--cdi-dir",
        work / "cdi",
    )
    try:
        await kubelet.wait_all_listed(
            {"good.example.com/dev": 2, "bad.bench.example.com/dev": devices}, 0, 60
        )
        good, bad = _socket(plugin_dir, "good"), _socket(plugin_dir, "bad")
        await asyncio.sleep(1)  # start-up garbage gone before the idle reading
        rss_idle, fds_idle = rss_bytes(host.pid), open_fds(host.pid)
        peak = rss_idle
        async with fault(good, bad):
            spec = {"targets": {"good": str(good)}, "ids": ["g0", "g1"], "warmup": 20,
                    "blocks": 1, "block": calls}  # fmt: skip
            client = await Child.spawn("client", BENCH_DIR / "allocate_client.py", _json(spec))
            done = asyncio.create_task(
                client.wait_event(lambda e: e["ev"] == "latencies", 600, "latencies")
            )
            while not done.done():
                peak = max(peak, rss_bytes(host.pid))
                await asyncio.wait({done}, timeout=0.2)
            result = done.result()
            await client.stop()
        named = [line for line in host.stderr_lines if "plugin 'bad'" in line]
        if os.environ.get("BENCH_SHOW_STALLS"):
            print("\n".join(line for line in host.stderr_lines if "blocked" in line))
        stall_named = next(
            (line for line in host.stderr_lines if "blocked" in line and "so far" in line), None
        )
        await asyncio.sleep(6)  # the fault's connections wind down; the host trims every 5 s
        rss_after, fds_after = rss_bytes(host.pid), open_fds(host.pid)
    finally:
        await host.stop()
        await kubelet.stop()
    latencies = result["latencies"]["good"]
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    blocking = block > 0
    rows = [
        Row(
            "9",
            f"good's Allocate p50 / p99 while {label}",
            f"{ms(p50)} / {ms(p99)}",
            "-" if blocking else "p99 < 50 ms",
            None if blocking else p99 < 50e6,
        ),
        Row(
            "9",
            f"  host RSS idle / peak / after, open fds before / after ({label})",
            f"{mib(rss_idle)} / {mib(peak)} / {mib(rss_after)}, {fds_idle} / {fds_after}",
            "peak <= 2x idle, after within 10 %",
            peak <= 2 * rss_idle and rss_after <= 1.1 * rss_idle,
        ),
    ]
    notes = named[:1] + ([stall_named] if stall_named else [])
    if blocking:
        rows.append(
            Row(
                "9",
                "  watchdog names the blocking plugin (first stall, log line present)",
                "yes" if stall_named and "plugin 'bad'" in stall_named else "no",
                "within 1 s",
                bool(stall_named and "plugin 'bad'" in stall_named),
            )
        )
    return rows, notes


def _socket(plugin_dir: Path, plugin: str) -> Path:
    return next(plugin_dir.glob(f"{plugin}.*example.com*dev*.sock"))


def _json(value: object) -> str:
    import json

    return json.dumps(value)


async def isolation_rows(work: Path, calls: int, only: set[int] | None = None) -> list[Row]:
    """The scenarios (all, or those indexed in ``only``), one after another: figure 9."""
    rows: list[Row] = []
    runs: list[tuple[str, Fault, dict[str, float]]] = [
        ("nothing misbehaves", no_fault, {}),
        ("bad's plain allocate hangs (20 calls open)", stuck_allocates, {}),
        ("a client floods 200,000-ID Allocates", huge_requests, {}),
        ("50 streams never read a 2.2 MB list sent every 0.1 s", slow_readers,
         {"devices": 50_000}),
        ("bad's coroutine scan blocks the loop 0.3 s a second", no_fault, {"block": 0.3}),
    ]  # fmt: skip
    for index, (label, fault, kwargs) in enumerate(runs):
        if only is not None and index not in only:
            continue
        found, _ = await scenario(work, label, fault, calls=calls, **kwargs)  # type: ignore[arg-type]
        rows += found
    return rows


SCENARIOS = {"baseline": 0, "hang": 1, "flood": 2, "slow": 3, "block": 4}


async def _main(only: set[str], calls: int) -> None:
    import shutil

    from common import machine_description
    from report import format_table

    work = Path(tempfile.mkdtemp(prefix="bench", dir="/tmp"))
    try:
        rows = await isolation_rows(work, calls, {SCENARIOS[name] for name in only})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(format_table(rows, f"figure 9 on {machine_description()}"))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default=",".join(SCENARIOS), help=f"scenarios, of {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--calls", type=int, default=600, help="Allocate calls per scenario")
    options = parser.parse_args()
    asyncio.run(_main(set(options.only.split(",")), options.calls))
