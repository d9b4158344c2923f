"""The benchmarks, measured side by side in one run: ``python tests/bench/run.py``.

Prints one table: Allocate latency against a floor server, update propagation, scale
(100 resources x 1,000 devices), footprint of one host with 8 plugins against 8 hosts,
recovery after kubelet restarts, what metrics cost on Allocate (7), DRA notify ->
ResourceSlice stored at 1,000 devices (8), and a well-behaved plugin's Allocate while
another misbehaves (9, ``isolation.py``); each figure with its target and a verdict.
``--quick`` shrinks the sizes and the idle window for a fast run (its verdicts are
indicative only); ``--soak`` adds the soak (100,000 Allocate calls with concurrent
updates, RSS growth). Not collected by pytest (no ``test_`` files here): never run in CI.

Every child process (the kubelet, the Allocate client, hosts) is a separate Python
process, as kubelet is; see ``common.py`` for how times cross process boundaries.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from common import (
    BENCH_DIR,
    Child,
    Kubelet,
    TreeScanner,
    cpu_ns_between,
    cpu_seconds,
    machine_description,
    percentile,
    rss_bytes,
    thread_cpu_ns,
)
from dra_bench import dra_slice_latency
from floor_server import serve_floor
from frozen import frozen_rows
from isolation import isolation_rows
from report import Row, format_table, mib, ms, us

from host._api import api_pb2
from host.deviceplugin import HEALTHY, UNHEALTHY, DeviceInfo, DeviceSpec, DeviceTree, Manager


@dataclass(frozen=True)
class Sizes:
    """How much each figure measures; ``full`` is the issue's, ``quick`` a smoke run."""

    allocate_calls: int
    propagation_rounds: int
    scale_types: int
    scale_devices: int
    touches: int
    restarts: int
    idle_seconds: float


FULL = Sizes(6000, 200, 100, 1000, 50, 20, 60.0)
QUICK = Sizes(1000, 40, 100, 100, 10, 5, 10.0)


def node(path: str) -> DeviceSpec:
    return DeviceSpec(host_path=path, container_path=path, permissions="rw")


class PlainAllocateScanner(TreeScanner):
    """Answers Allocate itself with a plain method: the host runs it in a worker thread."""

    def __init__(self, tree: DeviceTree, table: dict[str, api_pb2.ContainerAllocateResponse]):
        super().__init__(tree)
        self.table = table

    def allocate(self, request: api_pb2.AllocateRequest) -> api_pb2.AllocateResponse:
        return api_pb2.AllocateResponse(
            container_responses=[self.table[c.devices_ids[0]] for c in request.container_requests]
        )


class AsyncAllocateScanner(PlainAllocateScanner):
    """Answers Allocate itself with a coroutine: the host awaits it on the loop."""

    async def allocate(  # type: ignore[override]
        self, request: api_pb2.AllocateRequest
    ) -> api_pb2.AllocateResponse:
        return super().allocate(request)


@contextlib.asynccontextmanager
async def serving(manager: Manager):  # type: ignore[no-untyped-def]
    task = asyncio.create_task(manager.serve())
    try:
        yield manager
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- 1. Allocate latency -----------------------------------------------------------------


async def allocate_latency(work: Path, sizes: Sizes) -> list[Row]:
    plugin_dir = work / "alloc"
    plugin_dir.mkdir()
    kubelet = await Kubelet.launch(plugin_dir)
    ids = [f"dev{i}" for i in range(8)]
    tree = DeviceTree()
    table = {}
    for dev_id in ids:
        info = DeviceInfo(nodes=[node(f"/dev/bench/{dev_id}")], envs={"BENCH_DEVICE": dev_id})
        tree.add_device("dev", dev_id, info)
        table[dev_id] = api_pb2.ContainerAllocateResponse(
            devices=[
                api_pb2.DeviceSpec(
                    host_path=n.host_path,
                    container_path=n.container_path,
                    permissions=n.permissions,
                )
                for n in info.nodes
            ],
            envs=dict(info.envs),
        )
    manager = Manager(
        "alloc.bench.example.com", TreeScanner(tree), plugin_dir=plugin_dir, cdi_dir=work / "cdi"
    )
    # The same answer from a plugin's own allocate: plain (worker thread) and coroutine.
    plain = Manager(
        "plain.bench.example.com",
        PlainAllocateScanner(tree, table),
        plugin_dir=plugin_dir,
        cdi_dir=work / "cdi",
    )
    coro = Manager(
        "coro.bench.example.com",
        AsyncAllocateScanner(tree, table),
        plugin_dir=plugin_dir,
        cdi_dir=work / "cdi",
    )
    floor_dir = work / "floor"
    floor_dir.mkdir()
    floor = await serve_floor(floor_dir / "floor.sock", table)
    try:
        async with serving(manager), serving(plain), serving(coro):
            names = [f"{m.namespace}/dev" for m in (manager, plain, coro)]
            await kubelet.wait_all_listed(dict.fromkeys(names, 8), 0, 30)
            sockets = [
                m.resources[n].socket_path
                for m, n in zip((manager, plain, coro), names, strict=True)
            ]
            blocks = 6
            spec = {
                "targets": {
                    "ours": str(sockets[0]),
                    "floor": str(floor_dir / "floor.sock"),
                    "plain": str(sockets[1]),
                    "coro": str(sockets[2]),
                },
                "ids": ids,
                "warmup": 500,
                "blocks": blocks,
                "block": sizes.allocate_calls // blocks,
            }
            client = await Child.spawn(
                "allocate client", BENCH_DIR / "allocate_client.py", _json(spec)
            )
            result = await client.wait_event(
                lambda e: e["ev"] == "latencies", 600, "Allocate latencies"
            )
            await client.stop()
    finally:
        await floor.stop(None)
        await kubelet.stop()
    ours, base = result["latencies"]["ours"], result["latencies"]["floor"]
    plain_l, coro_l = result["latencies"]["plain"], result["latencies"]["coro"]
    rows = [
        Row(
            "1",
            "  plugin's own allocate, p50 / p99: plain (worker thread, deadline) "
            f"{us(percentile(plain_l, 50))} / {us(percentile(plain_l, 99))}, "
            f"coroutine {us(percentile(coro_l, 50))} / {us(percentile(coro_l, 99))}",
            f"thread hop p50 +{us(percentile(plain_l, 50) - percentile(coro_l, 50))}",
            "-",
            None,
        )
    ]
    for pct in (50, 99):
        a, b = percentile(ours, pct), percentile(base, pct)
        rows.append(
            Row(
                "1",
                f"Allocate p{pct}, ours / floor ({len(ours):,} calls each)",
                f"{us(a)} / {us(b)} = {a / b:.2f}x",
                "<= 1.3x",
                a / b <= 1.3,
            )
        )
    return rows


def cdi_tree(round_: int, count: int) -> DeviceTree:
    """``dev``: 8 plain devices; ``cdi``: ``count`` devices, each with a spec of its own."""
    tree = DeviceTree()
    for i in range(8):
        tree.add_device("dev", f"dev{i}", DeviceInfo(nodes=[node(f"/dev/bench/dev{i}")]))
    for i in range(count):
        spec = {
            "cdiVersion": "0.3.0",
            "kind": "bench.example.com/cdi",
            "devices": [
                {"name": f"c{i}", "containerEdits": {"env": [f"ROUND={round_}", f"DEV={i}"]}}
            ],
        }
        tree.add_device("cdi", f"c{i}", DeviceInfo(nodes=[node(f"/dev/bench/c{i}")], cdi_spec=spec))
    return tree


class SwitchScanner:
    """Reports the tree it is given, whenever it is given one."""

    def __init__(self, tree: DeviceTree) -> None:
        self.tree = tree
        self.notifier: object = None

    async def scan(self, notifier: object) -> None:
        self.notifier = notifier
        notifier.notify(self.tree)  # type: ignore[attr-defined]
        await asyncio.Future()


async def cdi_write_latency(work: Path, sizes: Sizes) -> list[Row]:
    """Figure "cdi": Allocate of another resource while 1,000 CDI specs are (re)written."""
    plugin_dir = work / "cdiw"
    plugin_dir.mkdir()
    cdi_dir = BENCH_DIR / ".cdi-bench"  # on the disk of the checkout, not a tmpfs
    shutil.rmtree(cdi_dir, ignore_errors=True)
    kubelet = await Kubelet.launch(plugin_dir)
    count, rounds = 1000, 2
    scanner = SwitchScanner(cdi_tree(0, count))
    manager = Manager("cdiw.bench.example.com", scanner, plugin_dir=plugin_dir, cdi_dir=cdi_dir)
    windows: list[tuple[int, int]] = []
    try:
        async with serving(manager):
            await kubelet.wait_all_listed(
                {"cdiw.bench.example.com/dev": 8, "cdiw.bench.example.com/cdi": count}, 0, 60
            )
            socket = manager.resources["cdiw.bench.example.com/dev"].socket_path
            spec = {
                "targets": {"ours": str(socket)},
                "ids": [f"dev{i}" for i in range(8)],
                "warmup": 200,
                "blocks": 1,
                "block": 4000 if not sizes.restarts < 20 else 2000,
                "progress": 200,
                "stamps": True,
            }
            client = await Child.spawn(
                "allocate client", BENCH_DIR / "allocate_client.py", _json(spec)
            )
            await client.wait_event(lambda e: e["ev"] == "progress", 60, "calls under way")
            for round_ in range(1, rounds + 1):
                start = time.monotonic_ns()
                scanner.notifier.notify(cdi_tree(round_, count))  # type: ignore[attr-defined]
                last = cdi_dir / "bench.example.com-cdi-c999.json"
                # Polled on purpose: the file is written by the host's worker thread; polling it
                # is what measures "on disk".
                while f"ROUND={round_}" not in (last.read_text() if last.exists() else ""):  # noqa: ASYNC110
                    await asyncio.sleep(0.005)
                windows.append((start, time.monotonic_ns()))
                await asyncio.sleep(0.3)
            result = await client.wait_event(
                lambda e: e["ev"] == "latencies", 600, "Allocate latencies"
            )
            await client.stop()
    finally:
        await kubelet.stop()
        shutil.rmtree(cdi_dir, ignore_errors=True)
    latencies, stamps = result["latencies"]["ours"], result["stamps"]["ours"]
    during = [
        lat
        for lat, t in zip(latencies, stamps, strict=True)
        if any(a <= t <= b for a, b in windows)
    ]
    quiet = [
        lat
        for lat, t in zip(latencies, stamps, strict=True)
        if not any(a - 50_000_000 <= t <= b + 50_000_000 for a, b in windows)
    ]
    write_s = sum(b - a for a, b in windows) / len(windows) / 1e9
    return [
        Row(
            "cdi",
            f"Allocate of another resource while {count:,} CDI specs are written "
            f"({len(during)} calls in {rounds} rounds; p50 / p99 / max)",
            f"{ms(percentile(during, 50))} / {ms(percentile(during, 99))} / {ms(max(during))}",
            "p99 <= 5 ms",
            percentile(during, 99) <= 5e6,
        ),
        Row(
            "cdi",
            f"  same, no writes under way ({len(quiet)} calls; p50 / p99)",
            f"{ms(percentile(quiet, 50))} / {ms(percentile(quiet, 99))}",
            "-",
            None,
        ),
        Row(
            "cdi",
            f"  writing {count:,} specs (notify -> last file on disk)",
            f"{write_s:.2f} s",
            "-",
            None,
        ),
    ]


# -- 2. Update propagation -----------------------------------------------------------------


def health_tree(count: int, unhealthy_first: bool) -> DeviceTree:
    """``count`` devices with fresh DeviceInfo objects; the first one unhealthy if asked."""
    tree = DeviceTree()
    for index in range(count):
        state = UNHEALTHY if unhealthy_first and index == 0 else HEALTHY
        path = f"/dev/bench/p{index}"
        tree.add_device("dev", f"p{index}", DeviceInfo(state=state, nodes=[node(path)]))
    return tree


async def propagation(work: Path, sizes: Sizes) -> list[Row]:
    plugin_dir = work / "prop"
    plugin_dir.mkdir()
    kubelet = await Kubelet.launch(plugin_dir)
    targets = {10: 2e6, 1000: None, 10000: 50e6}
    rows = []
    try:
        for count, target in targets.items():
            namespace = f"prop{count}.bench.example.com"
            resource = f"{namespace}/dev"
            trees = [health_tree(count, False), health_tree(count, True)]
            manager = Manager(
                namespace, TreeScanner(trees[0]), plugin_dir=plugin_dir, cdi_dir=work / "cdi"
            )
            rounds = sizes.propagation_rounds if count < 10000 else sizes.propagation_rounds // 2
            latencies = []
            async with serving(manager):
                await kubelet.wait_all_listed({resource: count}, 0, 60)
                for round_ in range(10 + rounds):  # the first 10 warm up
                    unhealthy = (round_ + 1) % 2
                    start = len(kubelet.events)
                    sent = time.monotonic_ns()
                    manager.notifier.notify(trees[unhealthy])
                    event = await kubelet.wait_event(
                        lambda e, r=resource, u=unhealthy: (
                            e["ev"] == "list" and e["res"] == r and e["unhealthy"] == u
                        ),
                        30,
                        f"the list of {resource} with {unhealthy} unhealthy",
                        start,
                    )
                    if round_ >= 10:
                        latencies.append(event["t"] - sent)
            p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
            rows.append(
                Row(
                    "2",
                    f"notify -> kubelet has the list, {count:,} devices (p50 / p99)",
                    f"{ms(p50)} / {ms(p99)}",
                    "-" if target is None else f"p99 <= {target / 1e6:g} ms",
                    None if target is None else p99 <= target,
                )
            )
    finally:
        await kubelet.stop()
    return rows


async def dra_latency(work: Path, sizes: Sizes) -> list[Row]:
    return await dra_slice_latency(work, sizes.propagation_rounds // 4)


# -- 3 and 5. Scale, then recovery, on one host of 100 x 1,000 devices --------------------------


async def scale_and_recovery(work: Path, sizes: Sizes) -> list[Row]:
    plugin_dir = work / "scale"
    plugin_dir.mkdir()
    kubelet = await Kubelet.launch(plugin_dir)
    namespace = "scale.bench.example.com"
    types, devices = sizes.scale_types, sizes.scale_devices
    resources = {f"{namespace}/t{t}": devices for t in range(types)}
    spec = {
        "plugin_dir": str(plugin_dir),
        "cdi_dir": str(work / "cdi-scale"),
        "namespace": namespace,
        "types": types,
        "devices": devices,
    }
    spawned = time.monotonic_ns()
    host = await Child.spawn("scale host", BENCH_DIR / "host_proc.py", _json(spec))
    try:
        registered = await kubelet.wait_all_listed(resources, 0, 120)
        await host.wait_event(lambda e: e["ev"] == "serving", 10, "the serving event")
        phases = {e["ev"]: e["t"] for e in host.events}
        await asyncio.sleep(1)  # let start-up garbage go before reading RSS
        rss = rss_bytes(host.pid)
        size = f"{types} x {devices:,}"
        start_s = (registered - spawned) / 1e9
        scale_rows = [
            Row(
                "3",
                f"start -> all registered, {size} devices (process spawn -> last list)",
                f"{start_s:.2f} s",
                "<= 3 s",
                start_s <= 3,
            ),
            Row(
                "3",
                "  of which: interpreter + imports / building the tree / serving -> last list",
                f"{(phases['imported'] - spawned) / 1e9:.2f} / "
                f"{(phases['built'] - phases['imported']) / 1e9:.2f} / "
                f"{(registered - phases['serving']) / 1e9:.2f} s",
                "-",
                None,
            ),
            Row(
                "3", f"RSS of the host, {size} devices", mib(rss), "<= 150 MiB", rss <= 150 * 2**20
            ),
        ]
        for how in ("fresh", "same"):
            scale_rows += await touches(kubelet, host, how, sizes.touches, types)
        scale_rows += frozen_rows()
        recovery_rows = await recovery(kubelet, resources, sizes.restarts)
        await host.send("quit")
        await host.stop()
    finally:
        await host.stop()
        await kubelet.stop()
    return scale_rows + recovery_rows


async def touches(kubelet: Kubelet, host: Child, how: str, count: int, types: int) -> list[Row]:
    """Flip one device ``count`` times; time notify + apply; check only its resource is sent."""
    costs, cpu = [], []
    start = len(kubelet.events)
    for _ in range(count):
        mark = len(host.events)
        await host.send(f"touch {how}")
        touched = await host.wait_event(lambda e: e["ev"] == "touched", 60, "a touch", mark)
        costs.append(touched["notify_ns"] + touched["apply_ns"])
        cpu.append(touched["cpu_ns"])
        await kubelet.wait_event(
            lambda e, r=touched["res"]: e["ev"] == "list" and e["res"] == r,
            30,
            f"the list of {touched['res']}",
            start,
        )
    await asyncio.sleep(0.5)  # room for a list that should not come
    sent = Counter(e["res"] for e in kubelet.lists_since(start))
    only_touched = sum(sent.values()) == count and len(sent) == min(count, types)
    p50, p99 = percentile(costs, 50), percentile(costs, 99)
    label = {
        "fresh": "rebuilt tree (equal, new DeviceInfo objects)",
        "same": "same DeviceInfo objects",
    }[how]
    return [
        Row(
            "3",
            f"notify cost, 1 device changed, {label} (p50 / p99)",
            f"{ms(p50)} / {ms(p99)}",
            "<= 5 ms",
            p99 <= 5e6,
        ),
        Row(
            "3",
            f"  of which the loop thread's CPU time ({how}, p50 / p99)",
            f"{ms(percentile(cpu, 50))} / {ms(percentile(cpu, 99))}",
            "-",
            None,
        ),
        Row(
            "3",
            f"  lists sent to kubelet for {count} one-device changes ({how})",
            f"{sum(sent.values())} to {len(sent)} resource(s)",
            "only the changed one",
            only_touched,
        ),
    ]


async def recovery(kubelet: Kubelet, resources: dict[str, int], restarts: int) -> list[Row]:
    times = []
    duplicates = 0
    for _ in range(restarts):
        start = len(kubelet.events)
        up = await kubelet.restart()
        done = await kubelet.wait_all_listed(resources, start, 60)
        times.append(done - up)
        counts = Counter(kubelet.registrations_since(start))
        duplicates += sum(n - 1 for n in counts.values()) + len(resources.keys() - counts.keys())
    p50, p99 = percentile(times, 50), percentile(times, 99)
    return [
        Row(
            "5",
            f"kubelet restart -> all {len(resources)} resources listed again, "
            f"{restarts} restarts (p50 / p99)",
            f"{ms(p50)} / {ms(p99)}",
            "p99 <= 1 s",
            p99 <= 1e9,
        ),
        Row(
            "5",
            "  registrations other than exactly one per resource per restart",
            str(duplicates),
            "0",
            duplicates == 0,
        ),
    ]


async def restart_latency(work: Path, sizes: Sizes) -> list[Row]:
    """Figure 6: kubelet restart -> every resource registered and listed, at 10 and 100."""
    rows: list[Row] = []
    for types, target_ms in ((10, 50), (100, 150)):
        plugin_dir = work / f"restart{types}"
        plugin_dir.mkdir()
        kubelet = await Kubelet.launch(plugin_dir)
        namespace = "restart.bench.example.com"
        resources = {f"{namespace}/t{t}": 10 for t in range(types)}
        spec = {
            "plugin_dir": str(plugin_dir),
            "cdi_dir": str(work / f"cdi-restart{types}"),
            "namespace": namespace,
            "types": types,
            "devices": 10,
        }
        host = await Child.spawn("restart host", BENCH_DIR / "host_proc.py", _json(spec))
        try:
            await kubelet.wait_all_listed(resources, 0, 60)
            times = []
            for _ in range(sizes.restarts * 2):
                start = len(kubelet.events)
                up = await kubelet.restart()
                done = await kubelet.wait_all_listed(resources, start, 60)
                times.append(done - up)
            await host.send("quit")
        finally:
            await host.stop()
            await kubelet.stop()
        p50, p99 = percentile(times, 50), percentile(times, 99)
        rows.append(
            Row(
                "6",
                f"kubelet restart -> all {types} resources (10 devices each) listed again, "
                f"{len(times)} restarts (p50 / p99 / max)",
                f"{ms(p50)} / {ms(p99)} / {ms(max(times))}",
                f"p99 <= {target_ms} ms",
                p99 <= target_ms * 1e6,
            )
        )
    return rows


# -- 4. Footprint ------------------------------------------------------------------------


async def footprint(work: Path, sizes: Sizes) -> list[Row]:
    plugins = work / "fp-plugins"
    plugins.mkdir()
    names = [f"fp{i}" for i in range(8)]
    for name in names:
        shutil.copy(BENCH_DIR / "footprint_hooks.py", plugins / f"{name}.py")

    def host_args(plugin_dir: Path, chosen: list[str]) -> list[str]:
        args = ["-m", "host.cli", "run", "--plugin-dir", str(plugin_dir)]
        args += ["--cdi-dir", str(plugin_dir.with_name(plugin_dir.name + "-cdi"))]
        args += ["--enable", ",".join(chosen), "--log-level", "warning"]
        for name in chosen:
            args += ["--plugin-module", str(plugins / f"{name}.py")]
        return args

    one_dir, eight_dir = work / "fp-one", work / "fp-eight"
    one_dir.mkdir()
    eight_dir.mkdir()
    kubelets = [await Kubelet.launch(one_dir), await Kubelet.launch(eight_dir)]
    hosts: list[Child] = []
    try:
        one = await Child.spawn("host with 8 plugins", *host_args(one_dir, names))
        eight = [await Child.spawn(f"host {n}", *host_args(eight_dir, [n])) for n in names]
        hosts = [one, *eight]
        expected = {f"{n}.bench.example.com/dev": 8 for n in names}
        for kubelet in kubelets:
            await kubelet.wait_all_listed(expected, 0, 120)
        await asyncio.sleep(2)  # start-up over: idle from here on
        rss_one = rss_bytes(one.pid)
        rss_eight = sum(rss_bytes(h.pid) for h in eight)
        before = [thread_cpu_ns(h.pid) for h in hosts]
        ticks_before = [cpu_seconds(h.pid) for h in hosts]
        began = time.monotonic()
        await asyncio.sleep(sizes.idle_seconds)
        window = time.monotonic() - began
        spent = [
            cpu_ns_between(b, thread_cpu_ns(h.pid)) / 1e9
            for h, b in zip(hosts, before, strict=True)
        ]
        ticks = [cpu_seconds(h.pid) - b for h, b in zip(hosts, ticks_before, strict=True)]
    finally:
        codes = [await h.stop() for h in hosts]
        for kubelet in kubelets:
            await kubelet.stop()
    if any(codes):
        raise RuntimeError(f"a footprint host exited with {codes} after SIGTERM")
    cpu_one = spent[0] / window * 100
    cpu_one_ticks = ticks[0] / window * 100
    cpu_eight = sum(spent[1:]) / window * 100
    ratio = rss_one / rss_eight
    return [
        Row(
            "4",
            "RSS, 1 host with 8 plugins / 8 single-plugin hosts (sum)",
            f"{mib(rss_one)} / {mib(rss_eight)} = {ratio:.2f}x",
            "<= 0.3x",
            ratio <= 0.3,
        ),
        Row(
            "4",
            f"idle CPU over {window:.0f} s, 1 host with 8 plugins (of one core)",
            f"{cpu_one:.3f} % (clock ticks: {cpu_one_ticks:.2f} %)",
            "< 0.5 %",
            cpu_one < 0.5,
        ),
        Row(
            "4",
            f"  idle CPU over {window:.0f} s, 8 single-plugin hosts (sum)",
            f"{cpu_eight:.3f} %",
            "-",
            None,
        ),
    ]


# -- 7. Metrics cost ---------------------------------------------------------------------


async def allocate_metrics_cost(work: Path, sizes: Sizes) -> list[Row]:
    from metrics_cost import metrics_cost

    return await metrics_cost(work, sizes.allocate_calls)


# -- main --------------------------------------------------------------------------------


async def isolation_figures(work: Path, sizes: Sizes) -> list[Row]:
    return await isolation_rows(work, max(200, sizes.allocate_calls // 10))


def _json(value: object) -> str:
    import json

    return json.dumps(value)


async def main(quick: bool, soak: bool, strict: bool, only: set[str]) -> int:
    sizes = QUICK if quick else FULL
    work = Path(tempfile.mkdtemp(prefix="bench", dir="/tmp"))
    rows: list[Row] = []
    try:
        for figures, name, measure in (
            ({"1"}, "1 Allocate latency", allocate_latency),
            ({"2"}, "2 update propagation", propagation),
            ({"4"}, "4 footprint", footprint),
            ({"3", "5"}, "3 scale and 5 recovery", scale_and_recovery),
            ({"6"}, "6 restart latency at 10 and 100 resources", restart_latency),
            ({"7"}, "7 metrics cost on Allocate", allocate_metrics_cost),
            ({"8"}, "8 DRA notify -> ResourceSlice updated", dra_latency),
            ({"9"}, "9 isolation under fire", isolation_figures),
            ({"cdi"}, "cdi: Allocate while CDI specs are written", cdi_write_latency),
        ):
            if figures & only:
                print(f"measuring {name} ...", file=sys.stderr, flush=True)
                rows += await measure(work, sizes)
        if soak:
            from soak import soak_rows

            print("soaking ...", file=sys.stderr, flush=True)
            rows += await soak_rows(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows.sort(key=lambda row: row.figure)
    title = (
        f"devplugin-host benchmarks ({'QUICK run: smaller sizes' if quick else 'full run'}) "
        f"on {machine_description()}"
    )
    print(format_table(rows, title))
    missed = any(row.passed is False for row in rows)
    return 1 if strict and missed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, 10 s idle window")
    parser.add_argument("--soak", action="store_true", help="also run the soak")
    parser.add_argument("--strict", action="store_true", help="exit with 1 when a target is missed")
    parser.add_argument(
        "--only",
        default="1,2,3,4,5,6,7,8,9,cdi",
        help="comma-separated figures to measure (3 and 5 go together)",
    )
    options = parser.parse_args()
    only = set(options.only.split(","))
    raise SystemExit(asyncio.run(main(options.quick, options.soak, options.strict, only)))
