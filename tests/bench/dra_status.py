"""What the DRA view costs: ``python tests/bench/dra_status.py [--devices N] [--claims N]``.

One DRA driver (default 1,000 devices, 200 prepared claims each reserved for a pod)
served in this process against the fake API server and the fake DRA kubelet, beside
nothing else, read the way the host's HTTP handlers read it:

* ``/metrics`` rendered whole (the DRA gauges are read from the driver at each scrape);
* ``/readyz`` (readiness of everything);
* ``/status``: the part taken on the event loop (:func:`host._health.status_parts`) and
  the encoding done in a worker thread, with the default 100 devices per driver and
  with every device; the size of the document.

Each figure is the median and the maximum of ``--rounds`` repetitions, in milliseconds,
printed as JSON. Not collected by pytest; never run in CI; well under 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import TreeScanner

from host._health import STATUS_DEVICES, readiness, status_parts
from host._metrics import HostMetrics
from host.deviceplugin import HEALTHY, UNHEALTHY, DeviceInfo, DeviceSpec, DeviceTree
from host.dra import DraPlugin, kube_client
from host.testing import FakeApiServer, FakeDraKubelet

DRIVER = "gpu.example.com"
NODE = "bench-node"


def _tree(devices: int) -> DeviceTree:
    tree = DeviceTree()
    for index in range(devices):
        path = f"/dev/bench/card{index}"
        node = DeviceSpec(host_path=path, container_path=path, permissions="rw")
        state = UNHEALTHY if index % 50 == 49 else HEALTHY
        tree.add_device("i915", f"card{index}", DeviceInfo(state=state, nodes=[node]))
    return tree


def _ms(run: Callable[[], object], rounds: int) -> dict[str, float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return {"p50_ms": round(statistics.median(times), 2), "max_ms": round(max(times), 2)}


async def main(devices: int, claims: int, rounds: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="drs", dir="/tmp"))
    api = FakeApiServer(nodes=[NODE])
    kubelet = FakeDraKubelet(root / "reg")
    await api.start()
    await kubelet.start()
    client = kube_client(api.write_kubeconfig(root / "kubeconfig"))
    plugin = DraPlugin(
        "gpu",
        DRIVER,
        TreeScanner(_tree(devices)),
        client,
        node_name=NODE,
        plugin_dir=root / "plugins",
        registry_dir=root / "reg",
        cdi_dir=root / "cdi",
    )
    metrics = HostMetrics()
    metrics.add_dra_plugin(plugin)
    task = asyncio.create_task(plugin.serve())
    try:
        async with asyncio.timeout(30):
            await kubelet.wait_for_driver(DRIVER, timeout=30)
            await plugin.publisher.wait_status(lambda status: status.synced)
        known = plugin.driver.devices
        names = sorted(name for name, (_, _, info) in known.items() if info.state == HEALTHY)
        refs = []
        for index in range(claims):
            device = names[index % len(names)]
            result = {"request": "gpu", "driver": DRIVER, "pool": NODE, "device": device}
            pod = {"resource": "pods", "name": f"pod-{index}", "uid": f"pod-uid-{index}"}
            claim = api.add_claim(
                "bench",
                f"claim-{index}",
                allocation={"devices": {"results": [result]}},
                reserved_for=[pod],
            )
            refs.append(("bench", f"claim-{index}", claim["metadata"]["uid"]))
        for start in range(0, len(refs), 50):
            await kubelet.prepare(DRIVER, refs[start : start + 50])
        assert len(plugin.driver.prepared_claims) == claims, "every claim prepared"
        some = status_parts(metrics, STATUS_DEVICES)
        every = status_parts(metrics, None)
        figures = {
            "devices": devices,
            "prepared_claims": claims,
            "metrics_render": _ms(metrics.render, rounds),
            "readyz": _ms(lambda: readiness(metrics), rounds),
            "status_on_loop_100_devices": _ms(lambda: status_parts(metrics, 100), rounds),
            "status_encode_100_devices": _ms(some.encode, rounds),
            "status_encode_every_device": _ms(every.encode, rounds),
            "status_bytes_100_devices": len(some.encode()),
            "status_bytes_every_device": len(every.encode()),
        }
        document = json.loads(every.encode())
        assert len(document["dra"][DRIVER]["claims"]) == claims
        return figures
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await kubelet.stop()
        await client.close()
        await api.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--claims", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.devices, args.claims, args.rounds)), indent=2))
