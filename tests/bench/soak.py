"""Soak: 100,000 Allocate calls while the devices keep changing; the host's RSS must not grow.

``python tests/bench/soak.py [--calls N]`` (or ``run.py --soak``). A host process
serves one resource of 16 devices and notifies a changed tree every 10 ms (the last
device flips health; kubelet gets every list); a client process calls Allocate
serially on the other devices. The host's RSS is read every 5,000 calls; the growth is
the last reading minus the one after the first 10,000 calls (warm-up: caches, arenas
and gRPC's pools fill up first). Target: < 5 MiB. Not run in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from common import BENCH_DIR, Child, Kubelet, in_scratch_dir, machine_description, rss_bytes
from report import Row, format_table, mib

WARMUP_CALLS = 10_000
SAMPLE_EVERY = 5_000


async def soak_rows(work: Path, calls: int = 100_000) -> list[Row]:
    """Run the soak in ``work`` and return its table rows."""
    plugin_dir = work / "soak"
    plugin_dir.mkdir()
    kubelet = await Kubelet.launch(plugin_dir)
    namespace = "soak.bench.example.com"
    spec = {
        "plugin_dir": str(plugin_dir),
        "cdi_dir": str(work / "cdi-soak"),
        "namespace": namespace,
        "types": 1,
        "devices": 16,
        "update_interval": 0.01,
    }
    host = await Child.spawn("soak host", BENCH_DIR / "host_proc.py", json.dumps(spec))
    samples: dict[int, int] = {}
    try:
        await kubelet.wait_all_listed({f"{namespace}/t0": 16}, 0, 60)
        lists_before = sum(1 for _ in kubelet.lists_since(0))
        client_spec = {
            "targets": {"ours": str(plugin_dir / f"{namespace}-t0.sock")},
            "ids": [f"d{i}" for i in range(8)],
            "warmup": 0,
            "blocks": 1,
            "block": calls,
            "progress": SAMPLE_EVERY,
        }
        client = await Child.spawn(
            "soak client", BENCH_DIR / "allocate_client.py", json.dumps(client_spec)
        )
        for done in range(SAMPLE_EVERY, calls + 1, SAMPLE_EVERY):
            await client.wait_event(
                lambda e, n=done: e.get("calls") == n, 600, f"{done:,} Allocate calls"
            )
            samples[done] = rss_bytes(host.pid)
        await client.wait_event(lambda e: e["ev"] == "latencies", 600, "the end of the soak")
        await client.stop()
        updates = sum(1 for _ in kubelet.lists_since(0)) - lists_before
        await host.send("quit")
        await host.stop()
    finally:
        await host.stop()
        await kubelet.stop()
    baseline = samples[min(WARMUP_CALLS, calls)]
    growth = samples[calls] - baseline
    peak = max(samples.values())
    return [
        Row(
            "soak",
            f"host RSS growth over {calls:,} Allocate calls with {updates:,} updates "
            f"(after {WARMUP_CALLS:,} -> end)",
            f"{mib(growth)} ({mib(baseline)} -> {mib(samples[calls])}, peak {mib(peak)})",
            "< 5 MiB",
            growth < 5 * 2**20,
        )
    ]


async def main(calls: int) -> None:
    rows = await in_scratch_dir("soak", lambda work: soak_rows(work, calls))
    print(format_table(rows, f"devplugin-host soak on {machine_description()}"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000, help="Allocate calls in total")
    options = parser.parse_args()
    if options.calls < SAMPLE_EVERY or options.calls % SAMPLE_EVERY:
        sys.exit(f"--calls must be a positive multiple of {SAMPLE_EVERY:,}")
    asyncio.run(main(options.calls))
