"""DRA NodePrepareResources benchmark: ``python tests/bench/dra_prepare.py [--calls N]``.

Two figures, each with its target:

* one claim per NodePrepareResources call, including the claim fetch (an in-memory
  claim source: the driver's own cost), the CDI spec write and the checkpoint write:
  p50 / p99 latency as the caller sees it (target p99 <= 3 ms);
* the driver's CPU time per prepare + unprepare pair (all threads of this process; a
  figure the machine's load hardly moves), with the two gRPC calls and in-process
  without them (``DraDriver.prepare`` / ``unprepare`` called directly: the driver's
  own work);
* the floor: NodeUnprepareResources of a claim the driver does not know (one gRPC
  round trip, no I/O), p50 / p99, for what the machine allows;
* 20 claims in one call with 100 ms of injected API latency per claim fetch: the
  total time of the call (target <= 0.3 s: the fetches run concurrently).

Every prepare writes its per-claim CDI spec (on a tmpfs here, as /var/run/cdi is on
a node) and appends a line to the checkpoint (on disk by default, ``--dir /dev/shm``
for a tmpfs); nothing is fsynced (host/dra/_store.py says why). ``--instance-id ID``
serves as one instance of a rolling update (every change under ``flock``).
``--api`` reads the claims through the host's Kubernetes client (lightkube, HTTP) from
a fake API server in a third process instead of the in-memory claim source: the
fetch as it is in a cluster, minus the network. The driver serves in this process;
the caller is a separate Python process speaking gRPC on the Unix socket, as kubelet
does. ``--profile FILE`` runs cProfile in the driver's process during the single-claim
calls, saves the statistics to FILE (``python -m pstats FILE``) and prints the
functions with the most time of their own (profiling inflates them, about threefold).
Not collected by pytest; never run in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc

from host._api import dra_v1_pb2, dra_v1_pb2_grpc
from host.deviceplugin import DeviceInfo, DeviceSpec
from host.dra import ClaimRef, DraDriver, KubeClaimSource, kube_client
from host.testing import FakeApiServer, FakeClaims, allocated_claim, write_kubeconfig

DRIVER = "gpu.example.com"
NODE = "bench-node"
BATCH = 20
LATENCY = 0.1


async def in_process(driver: DraDriver, calls: int) -> float:
    """Return the driver's CPU seconds per prepare + unprepare called without gRPC."""
    refs = [ClaimRef("bench", f"c{i}", f"uid-{i}") for i in range(8)]
    cpu_start = 0.0
    for i in range(calls + 50):
        if i == 50:  # warm-up
            cpu_start = time.process_time()
        ref = refs[i % 8]
        outcome = (await driver.prepare([ref]))[ref.uid]
        assert not isinstance(outcome, Exception), outcome
        await driver.unprepare([ref])
    return (time.process_time() - cpu_start) / calls


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def client(socket: str, calls: int) -> None:
    """Run in the child: time the calls, print the figures as JSON."""
    async with grpc.aio.insecure_channel(f"unix:{socket}") as channel:
        stub = dra_v1_pb2_grpc.DRAPluginStub(channel)
        one: list[float] = []
        for i in range(calls + 50):
            claim = dra_v1_pb2.Claim(namespace="bench", name=f"c{i % 8}", uid=f"uid-{i % 8}")
            start = time.perf_counter()
            response = await stub.NodePrepareResources(
                dra_v1_pb2.NodePrepareResourcesRequest(claims=[claim])
            )
            elapsed = time.perf_counter() - start
            assert not response.claims[claim.uid].error, response.claims[claim.uid].error
            await stub.NodeUnprepareResources(
                dra_v1_pb2.NodeUnprepareResourcesRequest(claims=[claim])
            )
            if i >= 50:  # warm-up
                one.append(elapsed)
        print(json.dumps({"one": one}), flush=True)
        sys.stdin.readline()
        floor: list[float] = []
        unknown = dra_v1_pb2.NodeUnprepareResourcesRequest(
            claims=[dra_v1_pb2.Claim(namespace="bench", name="none", uid="none")]
        )
        for i in range(calls + 50):
            start = time.perf_counter()
            await stub.NodeUnprepareResources(unknown)
            if i >= 50:
                floor.append(time.perf_counter() - start)
        print(json.dumps({"floor": floor}), flush=True)
        sys.stdin.readline()  # the parent injects latency, then says go
        batch = [
            dra_v1_pb2.Claim(namespace="bench", name=f"b{i}", uid=f"buid-{i}") for i in range(BATCH)
        ]
        start = time.perf_counter()
        response = await stub.NodePrepareResources(
            dra_v1_pb2.NodePrepareResourcesRequest(claims=batch)
        )
        total = time.perf_counter() - start
        errors = [r.error for r in response.claims.values() if r.error]
        assert not errors, errors
        print(json.dumps({"batch": total}), flush=True)


async def apiserver(claims_json: str) -> None:
    """Run in the child: serve the claims, print the URL, stop when stdin closes."""
    async with FakeApiServer(nodes=[NODE]) as api:
        for claim in json.loads(claims_json):
            meta = claim["metadata"]
            api.add_claim(
                meta["namespace"],
                meta["name"],
                uid=meta["uid"],
                allocation=claim["status"]["allocation"],
            )
        print(api.url, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


class ApiClaims:
    """The claims from a fake API server in its own process, read with lightkube."""

    def __init__(self, url: str, kubeconfig: Path) -> None:
        write_kubeconfig(kubeconfig, url)
        self.client = kube_client(kubeconfig)
        self.source = KubeClaimSource(self.client)
        self.latency = 0.0

    async def get_claim(self, namespace: str, name: str) -> Mapping[str, Any]:
        if self.latency:
            await asyncio.sleep(self.latency)
        return await self.source.get_claim(namespace, name)


async def main(
    calls: int, base: str, instance_id: str | None, use_api: bool, profile: str | None = None
) -> None:
    root = Path(tempfile.mkdtemp(prefix="drab", dir=base))
    # /var/run/cdi is a tmpfs on a node; the checkpoint lives on disk under /var/lib.
    cdi_root = Path(tempfile.mkdtemp(prefix="drab", dir="/dev/shm"))
    claims = FakeClaims()
    devices = {
        "i915": {
            f"card{i}": DeviceInfo(
                nodes=[
                    DeviceSpec(host_path=f"/dev/dri/card{i}", container_path=f"/dev/dri/card{i}")
                ]
            )
            for i in range(BATCH)
        }
    }
    result = {"driver": DRIVER, "pool": NODE, "request": "gpu"}
    everything = [
        allocated_claim("bench", f"c{i}", f"uid-{i}", [{**result, "device": f"i915-card{i}"}])
        for i in range(8)
    ] + [
        allocated_claim("bench", f"b{i}", f"buid-{i}", [{**result, "device": f"i915-card{i}"}])
        for i in range(BATCH)
    ]
    for claim in everything:
        claims.put(claim)
    source: FakeClaims | ApiClaims = claims
    api_proc = None
    if use_api:
        api_proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--apiserver",
            json.dumps(everything),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert api_proc.stdout is not None
        url = (await api_proc.stdout.readline()).decode().strip()
        source = ApiClaims(url, root / "kubeconfig")
    driver = DraDriver(
        DRIVER,
        NODE,
        None,
        source,
        plugin_dir=root / "plugins",
        registry_dir=root / "reg",
        cdi_dir=cdi_root,
        instance_id=instance_id,
    )
    driver.update(devices)
    task = asyncio.create_task(driver.serve())
    try:
        await driver.wait_serving()
        alone = await in_process(driver, calls)
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--client",
            str(driver.socket_path),
            "--calls",
            str(calls),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            limit=64 * 1024 * 1024,  # one JSON line with every timing
        )
        assert child.stdout is not None
        assert child.stdin is not None
        profiler = cProfile.Profile() if profile else None
        cpu_start = time.process_time()
        if profiler is not None:
            profiler.enable()
        one = json.loads(await child.stdout.readline())["one"]
        if profiler is not None:
            profiler.disable()
        cpu = (time.process_time() - cpu_start) / (len(one) + 50)
        cpu_start = time.process_time()
        child.stdin.write(b"go\n")
        await child.stdin.drain()
        floor = json.loads(await child.stdout.readline())["floor"]
        floor_cpu = (time.process_time() - cpu_start) / (len(floor) + 50)
        source.latency = LATENCY
        child.stdin.write(b"go\n")
        await child.stdin.drain()
        batch = json.loads(await child.stdout.readline())["batch"]
        await child.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if isinstance(source, ApiClaims):
            await source.client.close()
        if api_proc is not None:
            assert api_proc.stdin is not None
            api_proc.stdin.close()
            await api_proc.wait()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(cdi_root, ignore_errors=True)
    if profiler is not None and profile:
        profiler.dump_stats(profile)
        print(f"profile of the driver's process during the single-claim calls: {profile}")
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)
    p50, p99 = percentile(one, 50) * 1e3, percentile(one, 99) * 1e3
    mode = "API server via lightkube" if use_api else "in-memory claims"
    mode += f", instance {instance_id} (flock)" if instance_id else ""
    print(f"load average {os.getloadavg()[0]:.2f}; {mode}")
    print(f"{'figure':<58} {'value':>10} {'target':>10}  verdict")
    for q in (50, 99):
        print(
            f"{f'floor: NodeUnprepareResources, unknown claim (no I/O), p{q}':<58} "
            f"{percentile(floor, q) * 1e3:>8.2f}ms"
        )
    print(
        f"{'NodePrepareResources, 1 claim incl. fetch, p50 (' + str(calls) + ' calls)':<58} "
        f"{p50:>8.2f}ms {'':>10}"
    )
    print(
        f"{'NodePrepareResources, 1 claim incl. fetch, p99':<58} {p99:>8.2f}ms {'<= 3 ms':>10}"
        f"  {'ok' if p99 <= 3 else 'MISS'}"
    )
    print(
        f"{'driver CPU per prepare + unprepare (this process, all threads)':<58} "
        f"{cpu * 1e3:>8.2f}ms"
    )
    print(f"{'  the same in-process, without the gRPC calls':<58} {alone * 1e3:>8.2f}ms")
    print(f"{'  the same for one floor call':<58} {floor_cpu * 1e3:>8.2f}ms")
    print(
        f"{f'NodePrepareResources, {BATCH} claims, {LATENCY * 1e3:.0f} ms API latency each':<58} "
        f"{batch:>9.3f}s {'<= 0.3 s':>10}  {'ok' if batch <= 0.3 else 'MISS'}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--client", metavar="SOCKET")
    parser.add_argument("--apiserver", metavar="CLAIMS", help=argparse.SUPPRESS)
    parser.add_argument(
        "--api",
        action="store_true",
        help="read claims through lightkube from a fake API server in its own process",
    )
    parser.add_argument(
        "--dir",
        default="/tmp",
        help="where the checkpoint goes (default /tmp, on disk; /dev/shm leaves out the "
        "disk's fsync time); CDI specs always go to /dev/shm, a tmpfs like /var/run/cdi",
    )
    parser.add_argument(
        "--instance-id",
        help="serve as this instance (rolling update): every change under flock(serialize.lock)",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="cProfile the driver's process during the single-claim calls, save to FILE",
    )
    args = parser.parse_args()
    if args.client:
        asyncio.run(client(args.client, args.calls))
    elif args.apiserver:
        asyncio.run(apiserver(args.apiserver))
    else:
        asyncio.run(main(args.calls, args.dir, args.instance_id, args.api, args.profile))
