"""Figure 7: what metrics cost on the Allocate path, metrics on against metrics off.

Two Managers serve the same eight devices in the benchmark's process, one built with
the Observer of a :class:`host._metrics.HostMetrics` (as ``run --metrics-address``
does), one without. While the client calls both, the metrics side also runs what a
host with metrics runs: the event-loop lag probe, and a scrape (the whole ``/metrics``
page rendered) every second, fifteen times Prometheus's default rate. Both Managers
share the loop, so that background work slows both alike: the difference left is what
each Allocate pays for its counter and histogram. The client alternates the two
targets block by block (``allocate_client.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

from common import BENCH_DIR, Child, Kubelet, TreeScanner, percentile
from report import Row, us

from host._metrics import HostMetrics
from host.deviceplugin import DeviceInfo, DeviceSpec, DeviceTree, Manager

SCRAPE_EVERY = 1.0


async def _scrape(metrics: HostMetrics) -> None:
    while True:
        await asyncio.sleep(SCRAPE_EVERY)
        metrics.render()


async def metrics_cost(work: Path, calls: int) -> list[Row]:
    """Allocate p50/p99 with metrics on and off, ``calls`` calls each."""
    plugin_dir = work / "metrics"
    plugin_dir.mkdir()
    kubelet = await Kubelet.launch(plugin_dir)
    ids = [f"dev{i}" for i in range(8)]
    tree = DeviceTree()
    for dev_id in ids:
        path = f"/dev/bench/{dev_id}"
        node = DeviceSpec(host_path=path, container_path=path, permissions="rw")
        tree.add_device("dev", dev_id, DeviceInfo(nodes=[node], envs={"BENCH_DEVICE": dev_id}))
    metrics = HostMetrics()
    managers = {
        label: Manager(
            f"{label}.bench.example.com",
            TreeScanner(tree),
            plugin_dir=plugin_dir,
            cdi_dir=work / "cdi-metrics",
            plugin_name="bench",
            observer=metrics.observer("bench") if label == "on" else None,
        )
        for label in ("on", "off")
    }
    metrics.add_manager(managers["on"])
    tasks = [asyncio.create_task(m.serve()) for m in managers.values()]
    tasks += [
        asyncio.create_task(metrics.measure_loop_lag()),
        asyncio.create_task(_scrape(metrics)),
    ]
    try:
        await kubelet.wait_all_listed(
            {f"{label}.bench.example.com/dev": 8 for label in managers}, 0, 30
        )
        blocks = 6
        spec = {
            "targets": {
                label: str(m.resources[f"{label}.bench.example.com/dev"].socket_path)
                for label, m in managers.items()
            },
            "ids": ids,
            "warmup": 500,
            "blocks": blocks,
            "block": calls // blocks,
        }
        client = await Child.spawn(
            "allocate client", BENCH_DIR / "allocate_client.py", json.dumps(spec)
        )
        result = await client.wait_event(
            lambda e: e["ev"] == "latencies", 600, "Allocate latencies"
        )
        await client.stop()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await kubelet.stop()
    on, off = result["latencies"]["on"], result["latencies"]["off"]
    counted = metrics.render().decode()
    assert 'method="Allocate"' in counted, "the metrics side counted no Allocate"
    rows = []
    for pct in (50, 99):
        a, b = percentile(on, pct), percentile(off, pct)
        rows.append(
            Row(
                "7",
                f"Allocate p{pct}, metrics on / off ({len(on):,} calls each)",
                f"{us(a)} / {us(b)} = {a / b:.2f}x",
                "<= 1.1x" if pct == 50 else "-",
                a / b <= 1.1 if pct == 50 else None,
            )
        )
    return rows
