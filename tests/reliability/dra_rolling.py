"""Rolling updates of a DRA driver under Prepare / Unprepare load, shared by test and benchmark.

One roll is what a DaemonSet with ``maxSurge: 1`` does: start the new instance (its own
instance id, as the pod UID), wait until it is ready (kubelet connected to it, the
slices handed over to it), stop the old one (SIGTERM) and wait until kubelet has only
the new one. Meanwhile workers prepare claims as kubelet does, hold a few (so claims
prepared by one instance are repeated and unprepared by the next), repeat a prepare
now and then, and unprepare. The fake API server reports every change of the
ResourceSlices, so gaps, duplicates and generations are exact, not sampled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from host.dra._checkpoint import CHECKPOINT_NAME, ClaimCheckpoint
from host.dra._handover import PUBLISHER_FILE
from host.testing import FakeApiServer, FakeDraKubelet
from host.testing._kubelet_dra import DraDevice

ClaimTriple = tuple[str, str, str]


class Instance(Protocol):
    """One running instance of the driver (an in-process task or a host process)."""

    instance_id: str
    endpoint: str
    """Its DRA socket, as kubelet knows it."""

    async def stop(self) -> int:
        """Stop it as SIGTERM does; return its exit status."""


StartInstance = Callable[[str], Awaitable[Instance]]


@dataclass
class SliceWatch:
    """Every state of the node's pool the API server went through."""

    api: FakeApiServer
    driver: str
    node: str
    generations: list[int] = field(default_factory=list)
    empty: int = 0
    """Changes after which the pool had no slice (a gap in published devices)."""
    duplicates: list[str] = field(default_factory=list)
    """Device names found in two slices at once."""
    max_slices: int = 0
    published: bool = False

    def __post_init__(self) -> None:
        self.api.on_change = self.changed

    def changed(self) -> None:
        """Record the pool as it is now."""
        slices = self.api.resource_slices(driver=self.driver, node_name=self.node)
        if not slices:
            self.empty += self.published
            return
        self.published = True
        self.max_slices = max(self.max_slices, len(slices))
        self.generations.append(max(s["spec"]["pool"]["generation"] for s in slices))
        names = [d["name"] for s in slices for d in s["spec"].get("devices", ())]
        self.duplicates += sorted({n for n in names if names.count(n) > 1})


@dataclass
class DraLoad:
    """Workers preparing, holding, repeating and unpreparing claims until cancelled."""

    kubelet: FakeDraKubelet
    api: FakeApiServer
    driver: str
    node: str
    devices: list[str]
    hold: int = 6
    prepared: int = 0
    unprepared: int = 0
    repeated: int = 0
    failed: list[str] = field(default_factory=list)
    """Calls that failed or answered with an error."""
    lost: list[str] = field(default_factory=list)
    """Repeated prepares whose answer differed from the first (the record was lost)."""
    latencies: list[float] = field(default_factory=list)
    held: deque[tuple[ClaimTriple, tuple[DraDevice, ...]]] = field(default_factory=deque)
    stopping: bool = False
    """Set to let every worker finish its round and return."""
    _count: int = 0
    _done: set[str] = field(default_factory=set)
    _prepared: set[str] = field(default_factory=set)

    @property
    def never_unprepared(self) -> int:
        """Claims prepared and not unprepared (0 once :meth:`drain` has run)."""
        return len(self._prepared - self._done)

    def _new_claim(self) -> ClaimTriple:
        self._count += 1
        name = f"claim-{self._count}"
        result = {
            "request": "gpu",
            "driver": self.driver,
            "pool": self.node,
            "device": self.devices[self._count % len(self.devices)],
        }
        claim = self.api.add_claim("default", name, allocation={"devices": {"results": [result]}})
        return ("default", name, claim["metadata"]["uid"])

    async def _prepare(self, triple: ClaimTriple) -> tuple[DraDevice, ...] | None:
        began = time.monotonic()
        where = self._chosen()
        try:
            outcome = (await self.kubelet.prepare(self.driver, [triple]))[triple[2]]
        except Exception as err:
            self.failed.append(f"prepare {triple[1]} at {where}: {type(err).__name__}: {err}")
            return None
        self.latencies.append(time.monotonic() - began)
        if outcome.error:
            self.failed.append(f"prepare {triple[1]}: {outcome.error}")
            return None
        return outcome.devices

    def _chosen(self) -> str:
        chosen = self.kubelet.chosen(self.driver)
        return Path(chosen.endpoint).name if chosen is not None else "no instance"

    async def unprepare(self, triple: ClaimTriple) -> None:
        """Unprepare one claim as kubelet does; record a failure."""
        where = self._chosen()
        try:
            error = (await self.kubelet.unprepare(self.driver, [triple]))[triple[2]]
        except Exception as err:
            self.failed.append(f"unprepare {triple[1]} at {where}: {type(err).__name__}: {err}")
            return
        if error:
            self.failed.append(f"unprepare {triple[1]}: {error}")
        else:
            self.unprepared += 1
            self._done.add(triple[2])

    async def worker(self) -> None:
        """One worker: prepare a new claim, repeat an old one's prepare, unprepare the oldest."""
        while not self.stopping:
            triple = self._new_claim()
            try:
                devices = await self._prepare(triple)
            except asyncio.CancelledError:
                self.held.append((triple, ()))  # perhaps prepared: drained at the end
                raise
            if devices is None:
                await asyncio.sleep(0.001)  # pacing only: a failure returns at once
                continue
            self.prepared += 1
            self._prepared.add(triple[2])
            self.held.append((triple, devices))
            if self._count % 3 == 0:
                # taken out meanwhile: kubelet never unprepares a claim it is preparing
                again, first = self.held.popleft()
                repeated = await self._prepare(again)
                self.held.append((again, first))
                self.repeated += 1
                if repeated is not None and repeated != first:
                    self.lost.append(f"{again[1]}: first {first}, then {repeated}")
            if len(self.held) > self.hold:
                oldest = self.held.popleft()
                try:
                    await self.unprepare(oldest[0])
                except asyncio.CancelledError:
                    self.held.appendleft(oldest)  # unprepared again at the end (idempotent)
                    raise

    async def drain(self) -> None:
        """Unprepare every claim still held."""
        while self.held:
            triple, _ = self.held.popleft()
            await self.unprepare(triple)


@dataclass
class DraRollFigures:
    """What the rolls did to the claims, the slices and kubelet's view."""

    rolls: int
    load: DraLoad
    slices: SliceWatch
    exit_codes: list[int]
    ready: list[float]
    """Seconds from starting an instance to it being ready (connected, slices handed over)."""
    settle: list[float]
    """Seconds from SIGTERM of the old instance to kubelet knowing only the new one."""
    slice_writes: int
    """Writes of ResourceSlices during the rolls (0: every instance adopted them as they were)."""
    wipes: list[tuple[str, int]]
    leftovers: list[str]
    """Claims still recorded, or claim CDI files left, after the last unprepare."""


def _publisher(data_dir: Path) -> str | None:
    try:
        return str(json.loads((data_dir / PUBLISHER_FILE).read_text())["instance"])
    except (OSError, ValueError, KeyError):
        return None


def _slice_writes(api: FakeApiServer, since: int) -> int:
    return sum(
        1
        for r in api.requests[since:]
        if r.method in ("POST", "PUT", "PATCH", "DELETE") and "resourceslices" in r.path
    )


async def _wait_ready(
    kubelet: FakeDraKubelet,
    driver: str,
    instance: Instance,
    data_dir: Path,
    ready: Callable[[], bool],
    timeout: float,  # noqa: ASYNC109 - a bound per wait
) -> None:
    def done() -> bool:
        return (
            instance.endpoint in kubelet.connected(driver)
            and _publisher(data_dir) == instance.instance_id
            and ready()
        )

    # Another process writes publisher.json: kubelet's 50 ms re-check is the pacing.
    await kubelet.wait_for(done, timeout, what=f"instance {instance.instance_id} ready")


async def roll_instances(
    start: StartInstance,
    *,
    kubelet: FakeDraKubelet,
    api: FakeApiServer,
    driver: str,
    node: str,
    devices: list[str] | None = None,
    data_dir: Path,
    cdi_dir: Path,
    rolls: int,
    workers: int = 3,
    ready: Callable[[Instance], bool] = lambda _: True,
    timeout: float = 30.0,  # noqa: ASYNC109 - a bound per wait
) -> DraRollFigures:
    """Start an instance, then replace it ``rolls`` times under load; return the figures.

    ``start(instance_id)`` starts an instance; ``ready(instance)`` adds a readiness
    condition of its own (e.g. the in-process driver's ``not_ready_reason``); claims are
    allocated ``devices`` in turn (default: every device of the first slices).
    """
    watch = SliceWatch(api, driver, node)
    load = DraLoad(kubelet, api, driver, node, devices or [])
    running: list[Instance] = []
    exit_codes: list[int] = []
    ready_times: list[float] = []
    settle: list[float] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        old = await start("pod-0")
        running.append(old)
        await _wait_ready(kubelet, driver, old, data_dir, lambda: ready(old), timeout)
        await api.wait_for(lambda: watch.published, timeout, what="the first slices")
        load.devices = load.devices or sorted(
            device["name"]
            for item in api.resource_slices(driver=driver, node_name=node)
            for device in item["spec"].get("devices", ())
        )
        tasks = [asyncio.create_task(load.worker(), name=f"load {i}") for i in range(workers)]
        since = len(api.requests)
        for index in range(1, rolls + 1):
            began = time.monotonic()
            new = await start(f"pod-{index}")
            running.append(new)
            await _wait_ready(kubelet, driver, new, data_dir, lambda n=new: ready(n), timeout)  # type: ignore[misc]
            ready_times.append(time.monotonic() - began)
            stopped = time.monotonic()
            exit_codes.append(await old.stop())
            running.remove(old)
            await kubelet.wait_for(
                lambda n=new: [r.endpoint for r in kubelet.drivers.get(driver, ())] == [n.endpoint],  # type: ignore[misc]
                timeout,
                what=f"kubelet settled on {new.instance_id}",
            )
            settle.append(time.monotonic() - stopped)
            old = new
        writes = _slice_writes(api, since)
        load.stopping = True  # each worker ends its round: no call is left half done
        async with asyncio.timeout(timeout):
            await asyncio.gather(*tasks)
        tasks = []
        await load.drain()
        leftovers = [
            f"recorded: {uid}" for uid in ClaimCheckpoint(data_dir / CHECKPOINT_NAME, driver).load()
        ]
        leftovers += [p.name for p in cdi_dir.glob("*claim-*")] if cdi_dir.exists() else []
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for instance in running:
            with contextlib.suppress(ProcessLookupError):
                await instance.stop()
    return DraRollFigures(
        rolls=rolls,
        load=load,
        slices=watch,
        exit_codes=exit_codes,
        ready=ready_times,
        settle=settle,
        slice_writes=writes,
        wipes=list(kubelet.wipes),
        leftovers=leftovers,
    )


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` (0.0 when there are none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def describe(figures: DraRollFigures) -> dict[str, Any]:
    """The figures as plain data (for a failing assertion's message and the benchmark)."""
    load = figures.load
    return {
        "prepared": load.prepared,
        "unprepared": load.unprepared,
        "repeated": load.repeated,
        "failed": load.failed[:5],
        "lost": load.lost[:5],
        "exit_codes": sorted(set(figures.exit_codes)),
        "slice_writes": figures.slice_writes,
        "empty": figures.slices.empty,
        "duplicates": figures.slices.duplicates[:5],
        "wipes": figures.wipes,
        "leftovers": figures.leftovers[:5],
    }
