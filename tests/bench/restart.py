"""Kubelet restart -> every resource listed again, step by step: ``python tests/bench/restart.py``.

Figure 6 of the README, standalone and traced. One host process serves ``--types``
resources (default 10 and 100, 10 devices each) to the bench kubelet
(``kubelet_proc.py``, its own process); the kubelet restarts ``--restarts`` times
(default 20 at each size). Each step of the recovery is timed from the new kubelet's
start (``up``: its socket cleanup done, just before ``kubelet.sock`` is bound), in ms,
as the last resource reaches it:

* ``clean``: the kubelet's socket cleanup done (before ``up``: negative);
* ``ready``: the kubelet serves ``kubelet.sock``;
* ``watch``: the host's directory watch reports the new ``kubelet.sock``;
* ``served``: every resource's socket re-created and served;
* ``rsend``: every Register call sent;
* ``rin``: every Register arrived at kubelet;
* ``dialed``: kubelet's dial back to every plugin connected;
* ``reg``: every GetDevicePluginOptions answered (Register returns);
* ``list``: every resource's first complete ListAndWatch message received (the figure).

Also the longest time one Register took from the host to the kubelet (``rsend->rin``)
and the CPU time spent per restart (from the restart command to the last list) by the
host (all threads, and its event-loop thread alone: ``host loop``), by the kubelet
process, by the kubelet's event-loop thread alone (``kubelet
loop``; the rest is grpcio's own threads) and by this benchmark process (``bench
cpu``: reading the trace, on the same CPUs). Prints p50 / p99 / max of each step, the target
(p99 of ``list``: 50 ms at 10 resources, 150 ms at 100) and the load average.
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_DIR, Child, Kubelet, cpu_ns_between, percentile, thread_cpu_ns

STEPS = ("clean", "ready", "watch", "served", "rsend", "rin", "dialed", "reg", "list")
CPU = ("rsend->rin", "host cpu", "host loop", "kubelet cpu", "kubelet loop", "bench cpu")
TARGET_MS = {10: 50, 100: 150}


def last_of(events: list[dict[str, Any]], kind: str, names: set[str], after: int) -> int | None:
    """Time (ns) by which each of ``names`` had its first ``kind`` event after ``after``."""
    first: dict[str, int] = {}
    for event in events:
        if event["ev"] != kind or event["t"] < after:
            continue
        name = event.get("res")
        if name in names and name not in first:
            first[name] = event["t"]
    return max(first.values()) if len(first) == len(names) else None


async def measure(types: int, restarts: int) -> dict[str, list[float]]:
    """Restart the kubelet ``restarts`` times; per step, the ms from ``up`` to it."""
    work = Path(tempfile.mkdtemp(prefix="dprs", dir="/tmp"))
    plugin_dir = work / "dp"
    plugin_dir.mkdir()
    namespace = "restart.bench.example.com"
    resources = {f"{namespace}/t{t}": 10 for t in range(types)}
    names = set(resources)
    spec = {
        "plugin_dir": str(plugin_dir),
        "cdi_dir": str(work / "cdi"),
        "namespace": namespace,
        "types": types,
        "devices": 10,
    }
    os.environ["BENCH_TRACE"] = "1"
    kubelet = await Kubelet.launch(plugin_dir)
    host = await Child.spawn("restart host", BENCH_DIR / "host_proc.py", json_arg(spec))
    steps: dict[str, list[float]] = {step: [] for step in (*STEPS, *CPU)}
    try:
        await kubelet.wait_all_listed(resources, 0, 60)
        for _ in range(restarts):
            start = len(kubelet.events)
            cpu = thread_cpu_ns(host.pid), thread_cpu_ns(kubelet.pid), thread_cpu_ns(os.getpid())
            sent = time.monotonic_ns()
            up = await kubelet.restart()
            await kubelet.wait_all_listed(resources, start, 60)
            host_cpu = thread_cpu_ns(host.pid)
            steps["host cpu"].append(cpu_ns_between(cpu[0], host_cpu) / 1e6)
            steps["host loop"].append((host_cpu[host.pid] - cpu[0].get(host.pid, 0)) / 1e6)
            kubelet_cpu = thread_cpu_ns(kubelet.pid)
            steps["kubelet cpu"].append(cpu_ns_between(cpu[1], kubelet_cpu) / 1e6)
            loop_ns = kubelet_cpu[kubelet.pid] - cpu[1].get(kubelet.pid, 0)
            steps["kubelet loop"].append(loop_ns / 1e6)
            steps["bench cpu"].append(cpu_ns_between(cpu[2], thread_cpu_ns(os.getpid())) / 1e6)
            # The children write their trace lines a few ms late (common.EventLines).
            await host.wait_for(
                lambda up=up: last_of(host.events, "rsend", names, up) is not None,
                10,
                "the Registers",
            )
            host_events = [e for e in host.events if e["t"] >= sent]
            watched = [
                e["t"]
                for e in host_events
                if e["ev"] == "watch" and e["kind"] == "kubelet-started" and e["t"] >= up
            ]
            times: dict[str, int | None] = {"watch": min(watched) if watched else None}
            # Sockets are unlinked by the kubelet's cleanup, just before "up".
            times["served"] = last_of(host_events, "served", names, sent)
            times["rsend"] = last_of(host_events, "rsend", names, up)
            clean = [e["t"] for e in kubelet.events[start:] if e["ev"] == "clean"]
            times["clean"] = clean[0] if clean else None
            ready = [e["t"] for e in kubelet.events[start:] if e["ev"] == "ready"]
            times["ready"] = ready[0] if ready else None
            for step in ("rin", "dialed", "reg", "list"):
                times[step] = last_of(kubelet.events[start:], step, names, up)
            sends = {e["res"]: e["t"] for e in host_events if e["ev"] == "rsend" and e["t"] >= up}
            arrivals = {
                e["res"]: e["t"]
                for e in kubelet.events[start:]
                if e["ev"] == "rin" and e["t"] >= up
            }
            flights = [arrivals[n] - sends[n] for n in names if n in sends and n in arrivals]
            if flights:
                steps["rsend->rin"].append(max(flights) / 1e6)
            for step, t in times.items():
                if t is not None:
                    steps[step].append((t - up) / 1e6)
        await host.send("quit")
    finally:
        await host.stop()
        await kubelet.stop()
        shutil.rmtree(work, ignore_errors=True)
    return steps


def json_arg(value: object) -> str:
    """``value`` as the JSON argument of a bench child."""
    import json

    return json.dumps(value)


async def main(sizes: list[int], restarts: int) -> None:
    """Measure and print each size."""
    for types in sizes:
        steps = await measure(types, restarts)
        target = TARGET_MS.get(types)
        print(f"\n{types} resources, {restarts} restarts: ms from kubelet up (p50 / p99 / max)")
        for step in (*STEPS, *CPU):
            values = steps[step]
            if not values:
                print(f"  {step:7} -")
                continue
            p50, p99 = percentile(values, 50), percentile(values, 99)
            print(f"  {step:11} {p50:7.1f} / {p99:7.1f} / {max(values):7.1f}")
        if target is not None and steps["list"]:
            p99 = percentile(steps["list"], 99)
            verdict = "PASS" if p99 <= target else "MISS"
            print(f"  target: list p99 <= {target} ms: {verdict}")
    print(f"\nload average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", default="10,100", help="comma-separated resource counts")
    parser.add_argument("--restarts", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main([int(t) for t in args.types.split(",")], args.restarts))
