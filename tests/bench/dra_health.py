"""DRA device health benchmark: ``python tests/bench/dra_health.py [--changes N]``.

Figures (no targets of their own; the notify budget of the device-plugin path is the
yardstick: a notify should cost the loop about a millisecond per 1,000 devices):

* the driver's cost of a notify in which one device's health changed, as the loop
  pays it (``DraDriver.update``: naming the devices as the slices do, judging their
  health, encoding the health message), p50 / p99, at 1,000 and 10,000 devices (30
  notifies);
* notify -> a kubelet reader has the device's new health on its NodeWatchResources
  stream, p50 / p99, at 1,000 devices; the reader is a separate Python process
  speaking gRPC on the Unix socket, as kubelet does;
* a stream that is not read while the list changes ``--changes`` times (2,000
  devices): how many messages were handed to gRPC (the rest were never queued);
* bytes per device of the message.

Not collected by pytest; never run in CI. Runs in well under a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from host._api import dra_health_v1_pb2, dra_health_v1_pb2_grpc
from host.deviceplugin import UNHEALTHY, DeviceInfo, DeviceSpec
from host.dra import DraDriver
from host.testing import FakeClaims

DRIVER = "gpu.example.com"
NODE = "bench-node"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def snapshot(
    count: int, sick: int | None = None, step: int = 0
) -> dict[str, dict[str, DeviceInfo]]:
    devices = {}
    for i in range(count):
        path = f"/dev/accel/accel{i}"
        devices[f"a{i}"] = (
            DEVICES[i]
            if i != sick
            else DeviceInfo(
                state=UNHEALTHY,
                nodes=[DeviceSpec(host_path=path, container_path=path, permissions="rw")],
                health_message=f"ECC errors: {step}",
            )
        )
    return {"accel": devices}


DEVICES = [
    DeviceInfo(nodes=[DeviceSpec(host_path=f"/dev/accel/accel{i}", permissions="rw")])
    for i in range(10_000)
]


async def reader(socket: str) -> None:
    """Run in the child: print the monotonic time each new health of device 0 arrives."""
    async with grpc.aio.insecure_channel(
        f"unix:{socket}", options=[("grpc.max_receive_message_length", 64 << 20)]
    ) as channel:
        stub = dra_health_v1_pb2_grpc.DRAResourceHealthStub(channel)
        seen = None
        async for message in stub.NodeWatchResources(dra_health_v1_pb2.NodeWatchResourcesRequest()):
            first = message.devices[0].message
            if first != seen:
                seen = first
                print(json.dumps({"t": time.monotonic(), "m": first}), flush=True)


async def update_cost(root: Path, count: int, changes: int) -> tuple[float, float]:
    driver = DraDriver(DRIVER, NODE, None, FakeClaims(), plugin_dir=root / f"p{count}")
    driver.update(snapshot(count))
    times = []
    for step in range(changes):
        devices = snapshot(count, sick=step % count, step=step)
        start = time.perf_counter()
        driver.update(devices)
        times.append(time.perf_counter() - start)
        await asyncio.sleep(0)
    return percentile(times, 50), percentile(times, 99)


@contextlib.asynccontextmanager
async def served(root: Path, name: str, count: int) -> AsyncIterator[DraDriver]:
    driver = DraDriver(
        DRIVER, NODE, None, FakeClaims(), plugin_dir=root / name, registry_dir=root / f"{name}-reg"
    )
    driver.update(snapshot(count))
    serving = asyncio.create_task(driver.serve())
    await driver.wait_serving()
    try:
        yield driver
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)


async def end_to_end(root: Path, count: int, changes: int) -> tuple[float, float]:
    async with served(root, "e2e", count) as driver:
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--reader", str(driver.socket_path), stdout=subprocess.PIPE
        )
        assert child.stdout is not None
        await child.stdout.readline()  # the first message: the stream is open
        latencies = []
        try:
            for step in range(1, changes + 1):
                sent = time.monotonic()
                driver.update(snapshot(count, sick=0, step=step))
                line = json.loads(await child.stdout.readline())
                assert line["m"] == f"ECC errors: {step}", line
                latencies.append(line["t"] - sent)
        finally:
            child.kill()
            await child.wait()
    return percentile(latencies, 50), percentile(latencies, 99)


async def slow_reader(root: Path, count: int, changes: int) -> tuple[int, int]:
    async with (
        served(root, "slow", count) as driver,
        grpc.aio.insecure_channel(f"unix:{driver.socket_path}") as channel,
    ):
        call = dra_health_v1_pb2_grpc.DRAResourceHealthStub(channel).NodeWatchResources(
            dra_health_v1_pb2.NodeWatchResourcesRequest()
        )
        await call.read()
        before = driver.health.messages_sent
        for step in range(1, changes + 1):
            driver.update(snapshot(count, sick=step % count, step=step))
            await asyncio.sleep(0.001)
        sent = driver.health.messages_sent - before
        call.cancel()
        return sent, len(driver.health.encoded)


async def main(changes: int) -> None:
    logging.disable(logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="dh", dir="/tmp"))
    try:
        for count in (1_000, 10_000):
            p50, p99 = await update_cost(root, count, changes if count < 10_000 else 30)
            print(f"notify cost, one device changed, {count:,} devices: "
                  f"p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms")  # fmt: skip
        p50, p99 = await end_to_end(root, 1_000, changes)
        print(f"notify -> reader has the new health, 1,000 devices: "
              f"p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms")  # fmt: skip
        sent, size = await slow_reader(root, 2_000, changes)
        print(f"unread stream, {changes} changes of 2,000 devices: {sent} messages handed "
              f"to gRPC; {size / 2_000:.0f} bytes a device")  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--reader", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reader:
        asyncio.run(reader(args.reader))
    else:
        asyncio.run(main(args.changes))
