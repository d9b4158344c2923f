"""A plugin host process for the scale, recovery and soak figures.

``python host_proc.py SPEC_JSON``. Serves one Manager (as ``devplugin-host run`` does
for one scanner) whose scanner reports ``types`` device types of ``devices`` devices
each, every device with one device node, as a sysfs scanner would build them. Spec
keys: ``plugin_dir``, ``cdi_dir``, ``namespace``, ``types``, ``devices``, and for the
soak ``update_interval`` (seconds between updates of one device no client allocates).

Stdout, JSON lines with ``t`` = ``time.monotonic_ns()``: ``imported``, ``built`` (the
tree exists), ``serving``, and after each ``touch`` command a ``touched`` event.

With ``BENCH_TRACE=1`` in the environment it also reports the steps of a kubelet
restart: ``watch`` (``kind``, ``name``: what the directory watch told the endpoints),
``bind`` / ``served`` (``res``: a resource's socket about to be (re-)created; created
and served) and ``rsend`` (``res``:
a Register call about to be sent).

Stdin commands:

``touch same`` / ``touch fresh``
    Flip the health of one device of one resource (round robin over the resources)
    and notify the whole tree. ``same`` hands over the scanner's own DeviceInfo
    objects for the unchanged devices; ``fresh`` equal but distinct ones, as a scanner
    that rebuilds its tree on every scan does. The event carries the time spent in
    ``notify()`` and in the manager's apply step on the loop (``notify_ns``,
    ``apply_ns``), the loop thread's CPU time in both (``cpu_ns``: what a busy machine
    does not inflate), and the resource touched.
``quit``
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from typing import Any

from host.deviceplugin import HEALTHY, UNHEALTHY, DeviceInfo, DeviceSpec, DeviceTree, Manager

_flush_scheduled = False


def _flush() -> None:
    global _flush_scheduled
    _flush_scheduled = False
    sys.stdout.flush()


def emit(event: str, **fields: Any) -> None:
    """Write one event line, timed now; flushed at the end of this turn of the loop.

    One flush (a write to the pipe) per turn instead of one per event: after a kubelet
    restart 100 resources emit some 300 events within a few turns.
    """
    global _flush_scheduled
    fields["ev"] = event
    fields["t"] = time.monotonic_ns()
    sys.stdout.write(json.dumps(fields) + "\n")
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        sys.stdout.flush()
        return
    if not _flush_scheduled:
        _flush_scheduled = True
        loop.call_soon(_flush)


emit("imported")


def build_infos(types: int, devices: int) -> list[list[DeviceInfo]]:
    return [
        [
            DeviceInfo(
                state=HEALTHY,
                nodes=[
                    DeviceSpec(
                        host_path=f"/dev/bench/t{t}/d{i}",
                        container_path=f"/dev/bench/t{t}/d{i}",
                        permissions="rw",
                    )
                ],
            )
            for i in range(devices)
        ]
        for t in range(types)
    ]


def flipped(info: DeviceInfo) -> DeviceInfo:
    return DeviceInfo(state=UNHEALTHY if info.state == HEALTHY else HEALTHY, nodes=info.nodes)


class BenchScanner:
    """Notifies its tree once and then on the bench's command."""

    def __init__(self, tree: DeviceTree) -> None:
        self.tree = tree

    async def scan(self, notifier: Any) -> None:
        notifier.notify(self.tree)
        await asyncio.Future()


class Host:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.types: int = spec["types"]
        self.devices: int = spec["devices"]
        self.infos = build_infos(self.types, self.devices)
        self.fresh_infos: list[list[DeviceInfo]] | None = None  # built on first use
        self.scanner = BenchScanner(self.tree_of(self.infos))
        emit("built")
        self.manager = Manager(
            spec["namespace"],
            self.scanner,
            plugin_dir=spec["plugin_dir"],
            cdi_dir=spec["cdi_dir"],
        )
        self.touches = 0
        self.applied: asyncio.Future[tuple[int, int]] | None = None
        self.update_interval: float | None = spec.get("update_interval")

    def tree_of(self, infos: list[list[DeviceInfo]]) -> DeviceTree:
        tree = DeviceTree()
        for t, row in enumerate(infos):
            for i, info in enumerate(row):
                tree.add_device(f"t{t}", f"d{i}", info)
        return tree

    def timed_apply(self) -> None:
        # Wraps the manager's apply step (scheduled by notify on the loop) to time it.
        start, cpu = time.perf_counter_ns(), time.thread_time_ns()
        self.original_apply()
        elapsed = (time.perf_counter_ns() - start, time.thread_time_ns() - cpu)
        if self.applied is not None and not self.applied.done():
            self.applied.set_result(elapsed)

    async def touch(self, how: str) -> None:
        t = self.touches % self.types
        self.touches += 1
        self.infos[t][0] = flipped(self.infos[t][0])
        if how == "fresh":
            if self.fresh_infos is None:
                self.fresh_infos = build_infos(self.types, self.devices)
            # Distinct objects from those notified last time, so that every unchanged
            # device is compared by value, as after a rebuilt scan.
            source, self.fresh_infos = self.fresh_infos, self.infos
            for row, own in zip(source, self.infos, strict=True):
                row[0] = own[0]
            self.infos = source
        tree = self.tree_of(self.infos)
        self.applied = asyncio.get_running_loop().create_future()
        start, cpu = time.perf_counter_ns(), time.thread_time_ns()
        self.manager.notifier.notify(tree)
        notify_ns, notify_cpu_ns = time.perf_counter_ns() - start, time.thread_time_ns() - cpu
        apply_ns, apply_cpu_ns = await self.applied
        emit(
            "touched",
            res=f"{self.manager.namespace}/t{t}",
            notify_ns=notify_ns,
            apply_ns=apply_ns,
            cpu_ns=notify_cpu_ns + apply_cpu_ns,
        )

    async def churn(self) -> None:
        """Soak: update the last device of the first type every ``update_interval``."""
        assert self.update_interval is not None
        while True:
            await asyncio.sleep(self.update_interval)
            row = self.infos[0]
            row[-1] = flipped(row[-1])
            self.manager.notifier.notify(self.tree_of(self.infos))

    def trace(self) -> None:
        """Report the restart steps (``BENCH_TRACE``): watch events, re-serves, Registers."""
        from host.deviceplugin._endpoint import ResourceEndpoint
        from host.deviceplugin._watcher import WatchEvent

        def on_event(event: WatchEvent) -> None:
            emit("watch", kind=event.kind.value, name=event.name)

        self.manager._watcher.subscribe(on_event)
        ensure_socket = ResourceEndpoint._ensure_socket
        call_register = ResourceEndpoint._call_register

        async def traced_serve(endpoint: ResourceEndpoint) -> None:
            emit("bind", res=endpoint.service.resource_name)
            await ensure_socket(endpoint)
            emit("served", res=endpoint.service.resource_name)

        async def traced_register(endpoint: ResourceEndpoint, request: Any) -> None:
            emit("rsend", res=endpoint.service.resource_name)
            await call_register(endpoint, request)

        ResourceEndpoint._ensure_socket = traced_serve  # type: ignore[method-assign]
        ResourceEndpoint._call_register = traced_register  # type: ignore[method-assign]

    async def run(self) -> None:
        if os.environ.get("BENCH_TRACE"):
            self.trace()
        self.original_apply = self.manager.feed._apply_pending
        self.manager.feed._apply_pending = self.timed_apply  # type: ignore[method-assign]
        serve = asyncio.create_task(self.manager.serve())
        emit("serving")
        churn = asyncio.create_task(self.churn()) if self.update_interval else None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        try:
            async for line in reader:
                command = line.decode().split()
                if command[:1] == ["touch"]:
                    await self.touch(command[1])
                elif command == ["quit"]:
                    break
        finally:
            for task in (churn, serve):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task


if __name__ == "__main__":
    if os.environ.get("BENCH_HOST_LOG"):  # e.g. DEBUG: the host's log on stderr, monotonic ns
        logging.basicConfig(
            level=os.environ["BENCH_HOST_LOG"],
            format="%(mono)d %(name)s %(levelname)s: %(message)s",
        )
        old_factory = logging.getLogRecordFactory()

        def record_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = old_factory(*args, **kwargs)
            record.mono = time.monotonic_ns()
            return record

        logging.setLogRecordFactory(record_factory)
    profile = os.environ.get("BENCH_HOST_PROFILE")  # a file: cProfile statistics of the run
    profiler = None
    if profile:
        import cProfile
        import signal

        signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop: still dump
        profiler = cProfile.Profile()
        profiler.enable()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(Host(json.loads(sys.argv[1])).run())
    if profiler is not None and profile:
        profiler.disable()
        profiler.dump_stats(profile)
