"""Shared pieces of the benchmarks: statistics, /proc readings, child processes, a kubelet.

Every benchmark child (the kubelet, the Allocate client, host processes) speaks JSON
lines on stdout and takes one-word commands on stdin. Times crossing process
boundaries are ``time.monotonic_ns()`` values: CLOCK_MONOTONIC is system-wide on
Linux, so a timestamp taken in one process compares with one taken in another.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar

_T = TypeVar("_T")


class TreeScanner:
    """Notifies one tree, then idles; the benchmark notifies through the manager's notifier."""

    def __init__(self, tree: Any) -> None:
        self.tree = tree

    async def scan(self, notifier: Any) -> None:
        notifier.notify(self.tree)
        await asyncio.Future()


BENCH_DIR = Path(__file__).resolve().parent
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


# -- statistics --------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``pct`` % at or below it."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


# -- /proc -------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (VmRSS)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads), in seconds.

    From /proc/PID/stat, whose times are counted in clock ticks: coarse (10 ms) but
    it includes threads that have exited. See :func:`thread_cpu_ns` for precision.
    """
    with open(f"/proc/{pid}/stat") as stat:
        # The command name may hold spaces; the fields after its closing ')' are fixed.
        fields = stat.read().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def thread_cpu_ns(pid: int) -> dict[int, int]:
    """Nanoseconds each live thread of ``pid`` has run (schedstat: exact, not sampled)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
            out[int(tid)] = int(stat.read().split()[0])
    return out


def cpu_ns_between(before: dict[int, int], after: dict[int, int]) -> int:
    """CPU time run between two :func:`thread_cpu_ns` readings by the threads alive at the end."""
    return sum(ns - before.get(tid, 0) for tid, ns in after.items())


def machine_description() -> str:
    """CPU count and model, Python and grpcio versions: the machine the figures ran on."""
    import grpc

    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    python = ".".join(map(str, sys.version_info[:3]))
    return f"{os.cpu_count()} CPUs ({model}), Python {python}, grpcio {grpc.__version__}"


# -- child processes ---------------------------------------------------------------------


class EventLines:
    """A bench child's events as JSON lines on stdout, written a few at a time.

    Each event's ``t`` (``time.monotonic_ns()``) is taken when the event happens; its
    line then waits up to ``delay`` seconds for the next ones, so that a burst (a
    hundred Registers arriving together) costs one ``write`` and one wake-up of the
    reading benchmark instead of one each. On a busy machine every wake-up of the
    reader can also preempt the writer, which made the trace a visible part of what it
    measured. Outside a running event loop a line is written at once; :meth:`flush`
    writes what is pending (call it before the loop ends).
    """

    def __init__(self, delay: float = 0.005) -> None:
        self.delay = delay
        self.pending: list[str] = []

    def emit(self, event: str, t: int | None = None, **fields: Any) -> None:
        """Record ``event`` with ``t`` (default: now) and ``fields``; write it soon."""
        fields["ev"] = event
        fields["t"] = time.monotonic_ns() if t is None else t
        self.pending.append(json.dumps(fields))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if len(self.pending) == 1:
            loop.call_later(self.delay, self.flush)

    def flush(self) -> None:
        """Write the pending lines (blocking: the parent reads promptly)."""
        if self.pending:
            lines, self.pending = self.pending, []
            lines.append("")
            sys.stdout.write("\n".join(lines))
            sys.stdout.flush()


async def in_scratch_dir(prefix: str, work: Callable[[Path], Awaitable[_T]]) -> _T:
    """Run ``work`` in a fresh directory under /tmp, removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        return await work(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def child_env() -> dict[str, str]:
    """The environment for children: no DEVPLUGIN_* settings leaking in from the caller."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DEVPLUGIN_")}


class Child:
    """A child process speaking JSON lines on stdout; ``events`` keeps every line it sent."""

    def __init__(self, process: asyncio.subprocess.Process, label: str) -> None:
        self.process = process
        self.label = label
        self.events: list[dict[str, Any]] = []
        self.stderr_lines: list[str] = []
        self._changed = asyncio.Condition()
        self._readers = [
            asyncio.create_task(self._read_stdout()),
            asyncio.create_task(self._read_stderr()),
        ]

    @classmethod
    async def spawn(cls, label: str, *args: str | os.PathLike[str]) -> Self:
        """Start ``python args...`` with pipes on stdin, stdout and stderr."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *map(str, args),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=child_env(),
            limit=64 * MIB,
        )
        return cls(process, label)

    @property
    def pid(self) -> int:
        """The child's process ID."""
        return self.process.pid

    async def _read_stdout(self) -> None:
        # Whatever the pipe holds at once, parsed and announced together: one wake-up
        # of the waiters per read, not per line (a restart of 100 resources sends ~400).
        assert self.process.stdout is not None
        partial = b""
        while True:
            chunk = await self.process.stdout.read(1 << 16)
            *lines, partial = (partial + chunk).split(b"\n") if chunk else (partial, b"")
            events = []
            for line in lines:
                with contextlib.suppress(ValueError):
                    events.append(json.loads(line))
            if events:
                async with self._changed:
                    self.events.extend(events)
                    self._changed.notify_all()
            if not chunk:
                break
        async with self._changed:
            self._changed.notify_all()

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.stderr_lines.append(line.decode(errors="replace").rstrip())
        async with self._changed:
            self._changed.notify_all()

    async def send(self, command: str) -> None:
        """Write one command line to the child's stdin."""
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        await self.process.stdin.drain()

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float,  # noqa: ASYNC109 - a deadline per wait reads best here
        what: str,
    ) -> None:
        """Wait until ``predicate()`` holds, re-checked after every line the child sends."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                while not predicate():
                    if self.process.returncode is not None:
                        raise RuntimeError(
                            f"{self.label} exited ({self.process.returncode}) while waiting "
                            f"for {what}; stderr:\n" + "\n".join(self.stderr_lines[-30:])
                        )
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.5):
                            await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(
                f"{self.label}: no {what} within {timeout} s; stderr:\n"
                + "\n".join(self.stderr_lines[-30:])
            ) from None

    async def wait_event(
        self,
        match: Callable[[dict[str, Any]], bool],
        timeout: float,  # noqa: ASYNC109 - as wait_for
        what: str,
        start: int = 0,
    ) -> dict[str, Any]:
        """Wait for the first event from index ``start`` on that ``match`` accepts."""
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            for event in self.events[start:]:
                if match(event):
                    found.append(event)
                    return True
            return False

        await self.wait_for(seen, timeout, what)
        return found[0]

    async def stop(self, timeout: float = 20.0) -> int:  # noqa: ASYNC109 - as wait_for
        """SIGTERM, then SIGKILL after ``timeout`` seconds; return the exit status."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        for reader in self._readers:
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        assert self.process.returncode is not None
        return self.process.returncode


# -- the bench kubelet, seen from the benchmark ------------------------------------------


class Kubelet(Child):
    """The bench kubelet (``kubelet_proc.py``) running in its own process."""

    @classmethod
    async def launch(cls, plugin_dir: Path) -> Kubelet:
        """Start a bench kubelet on ``plugin_dir`` and wait until it serves."""
        kubelet = await cls.spawn("bench kubelet", BENCH_DIR / "kubelet_proc.py", plugin_dir)
        await kubelet.wait_event(lambda e: e["ev"] == "up", 30, "kubelet start")
        return kubelet

    def lists_since(self, index: int) -> Iterable[dict[str, Any]]:
        """ListAndWatch messages received from event index ``index`` on."""
        return (e for e in self.events[index:] if e["ev"] == "list")

    def registrations_since(self, index: int) -> list[str]:
        """Resource names registered from event index ``index`` on (one per Register)."""
        return [e["res"] for e in self.events[index:] if e["ev"] == "reg"]

    async def wait_all_listed(
        self,
        resources: dict[str, int],
        start: int,
        timeout: float,  # noqa: ASYNC109 - as wait_for
    ) -> int:
        """Wait until each resource sent a list of its expected size since ``start``.

        Returns the monotonic time (ns) of the last of those first complete lists.
        """
        first: dict[str, int] = {}
        seen = start

        def complete() -> bool:
            # Only the events since the last look: a check per line read stays cheap.
            nonlocal seen
            events, seen = self.events[seen:], len(self.events)
            for event in events:
                if event["ev"] != "list":
                    continue
                name = event["res"]
                if name not in first and resources.get(name) == event["n"]:
                    first[name] = event["t"]
            return len(first) == len(resources)

        await self.wait_for(complete, timeout, f"device lists of {len(resources)} resources")
        return max(first.values())

    async def restart(self) -> int:
        """Restart kubelet; return the monotonic time (ns) its new socket appeared."""
        start = len(self.events)
        await self.send("restart")
        up = await self.wait_event(lambda e: e["ev"] == "up", 30, "kubelet restart", start)
        return int(up["t"])
