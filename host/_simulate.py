"""``devplugin-host simulate``: the enabled plugins against a fake kubelet, shown live.

Every scanner gets a Manager exactly as under ``run`` (:func:`host._host.build_managers`),
but the plugin and CDI directories live in a fresh directory under /tmp and the kubelet
is :class:`host.testing.FakeKubelet`, in the same event loop. Every change the kubelet
sees becomes an event (registration, rejection, device list, disconnection, restart,
allocation); the resources with their devices are printed as a table or JSON.
``--allocate`` admits a container the way kubelet does (GetPreferredAllocation first
when offered, then Allocate) and prints the response. The printing, as text or JSON, lives in
:mod:`host._simulate_output`; what is overheard of scanners and kubelet in
:mod:`host._simulate_observe`; the ``--dra`` half (fake API server, DRA kubelet, claims)
in :mod:`host._simulate_dra`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from host._config import ConfigError
from host._host import build_managers, serve_all
from host._loader import PostAllocateHook, ScannerRecord
from host._simulate_dra import DraSimulation
from host._simulate_observe import KubeletObserver, ObservedScanner
from host._simulate_output import Event, SimulationOutput, resource_json, response_json
from host.deviceplugin import PodResourcesClient
from host.deviceplugin._names import resource_name_error
from host.testing import FakeKubelet, KubeletError, KubeletMode

__all__ = ["AllocationRequest", "Event", "SimulationPlan", "parse_allocation", "simulate"]

log = logging.getLogger("host.simulate")


@dataclass(frozen=True)
class AllocationRequest:
    """One ``--allocate RESOURCE=COUNT``: a container asking for COUNT devices."""

    resource: str
    count: int


def parse_allocation(text: str, source: str = "--allocate") -> AllocationRequest:
    """Parse ``RESOURCE=COUNT``; raise ConfigError saying what is wrong with ``text``."""
    resource, equals, count = (part.strip() for part in text.partition("="))
    if not equals or not resource or not count:
        raise ConfigError(
            f"{source} expects RESOURCE=COUNT (e.g. devices.devplugin.io/kvm=1), got {text!r}"
        )
    if not count.isdigit() or int(count) < 1:
        raise ConfigError(f"{source} {text}: COUNT must be a whole number >= 1, got {count!r}")
    reason = resource_name_error(resource)
    if reason is not None:
        raise ConfigError(f"{source} {text}: {resource!r} is not a resource name: {reason}")
    return AllocationRequest(resource, int(count))


@dataclass(frozen=True)
class SimulationPlan:
    """What to simulate, and when to stop: ``once``, after ``duration`` s, or on a signal."""

    allocations: tuple[AllocationRequest, ...] = ()
    restart_every: float | None = None
    duration: float | None = None
    once: bool = False
    timeout: float = 10.0
    """Seconds to wait for every resource to register (and again after each restart)."""
    kubelet_mode: KubeletMode = "1.25"
    registration: str = "kubelet-socket"
    """``plugins-registry``: the fake kubelet's plugin watcher registers the sockets."""
    dra: frozenset[str] = frozenset()
    """Plugins served as DRA drivers, to a fake API server and DRA kubelet."""


# -- the simulation ----------------------------------------------------------------------


class _Simulation:
    def __init__(
        self,
        scanners: Sequence[ScannerRecord],
        post_allocators: Sequence[PostAllocateHook],
        plan: SimulationPlan,
        output: SimulationOutput,
    ) -> None:
        self._records = scanners
        self._post_allocators = post_allocators
        self._plan = plan
        self._out = output
        self.problems: list[str] = []
        self.document: dict[str, Any] = {}
        self._allocations: list[dict[str, Any]] = []
        self._ended = asyncio.Event()
        self._started = time.monotonic()
        self._ready = False
        self._kubelet: FakeKubelet | None = None
        self._observer: KubeletObserver | None = None
        self._observed: list[ObservedScanner] = []
        self._pod_resources_socket: Path | None = None
        self._dra: DraSimulation | None = None

    @property
    def kubelet(self) -> FakeKubelet:
        assert self._kubelet is not None, "the simulation is not running"
        return self._kubelet

    def _flush(self) -> None:
        """Emit the events of every kubelet change so far."""
        if self._observer is not None:
            self._observer.poll()

    def _note(self, event: Event) -> None:
        """Emit one of the simulation's own events, after those of every kubelet change."""
        self._flush()
        self._out.event(event)

    def _problem(self, kind: str, message: str, **data: Any) -> None:
        self.problems.append(message)
        log.error("%s", message)
        self._note(Event(kind, message, data=data))

    async def run(self, workdir: Path) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._ended.set)
        try:
            await self._run_in(workdir)
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)

    async def _run_in(self, workdir: Path) -> None:
        plugin_dir, cdi_dir = workdir / "plugins", workdir / "cdi"
        mode = self._plan.kubelet_mode
        registry_dir = workdir / "registry"
        by_registry = self._plan.registration == "plugins-registry"
        self._pod_resources_socket = workdir / "pod-resources" / "kubelet.sock"
        self._kubelet = FakeKubelet(
            plugin_dir,
            mode=mode,
            registry_dir=registry_dir if by_registry else None,
            pod_resources_socket=self._pod_resources_socket,
        )
        await self.kubelet.start()  # first: kubelet's start removes the sockets in plugin_dir
        try:
            paths = {
                "workdir": str(workdir),
                "plugin_dir": str(plugin_dir),
                "cdi_dir": str(cdi_dir),
            }
            where = self.kubelet.socket_path
            if by_registry:
                paths["registry_dir"] = str(registry_dir)
                where = f"{where} with its plugin watcher on {registry_dir}"
            self._note(
                Event(
                    "kubelet-started",
                    f"fake kubelet {mode} on {where}, CDI specs in {cdi_dir}",
                    data={**paths, "mode": mode, "registration": self._plan.registration},
                )
            )
            loop = asyncio.get_running_loop()
            records = [r for r in self._records if r.plugin not in self._plan.dra]
            self._observed = [ObservedScanner(r, loop, self._first_tree) for r in records]
            servers = build_managers(
                [ScannerRecord(o.record.plugin, o.record.namespace, o) for o in self._observed],
                self._post_allocators,
                plugin_dir=plugin_dir,
                cdi_dir=cdi_dir,
                registration=self._plan.registration,
                plugins_registry_dir=registry_dir,
            )
            drivers = [r for r in self._records if r.plugin in self._plan.dra]
            if drivers:
                self._dra = DraSimulation(drivers, workdir, cdi_dir)
                servers += await self._dra.start()
                self._note(self._dra.started_event())
            stop = asyncio.Event()
            serving = asyncio.create_task(serve_all(servers, stop), name="simulate: managers")
            serving.add_done_callback(lambda _task: self._ended.set())
            self._observer = KubeletObserver(self.kubelet, self._out.event)
            watching = asyncio.create_task(self._observer.run(), name="simulate: observer")
            try:
                await self._drive()
            finally:
                watching.cancel()
                await asyncio.gather(watching, return_exceptions=True)
                self._observer.poll()
                self.document = self._document()
                self.kubelet.expect_plugins_to_stop()
                stop.set()  # the Managers stop first, so they never see the kubelet go
                if await serving != 0:
                    self.problems.append("every manager stopped serving")
        finally:
            await self.kubelet.stop()
            if self._dra is not None:
                await self._dra.stop()

    def _first_tree(self, observed: ObservedScanner) -> None:
        if not observed.types:
            plugin, namespace = observed.record.plugin, observed.record.namespace
            message = f"plugin {plugin!r} namespace {namespace}: no devices found"
            self._note(
                Event("no-devices", message, data={"plugin": plugin, "namespace": namespace})
            )

    async def _drive(self) -> None:
        plan = self._plan
        if plan.duration is not None:
            asyncio.get_running_loop().call_later(plan.duration, self._ended.set)
        self._ready = await self._wait_until(lambda: not self._missing(), plan.timeout)
        if self._ready:
            names = self._served()
            elapsed = time.monotonic() - self._started
            message = f"ready after {elapsed:.2f} s: every resource registered and sent its devices"
            if self._dra is not None:
                message += ", every DRA driver published its ResourceSlices and registered"
            self._note(Event("ready", message, data={"resources": names}))
            self._note_slices()
        elif not self._ended.is_set():
            missing = self._missing()
            message = f"timed out after {plan.timeout:g} s waiting for: {'; '.join(missing)}"
            self._problem("timeout", message, missing=missing)
        if not plan.once:
            self._flush()
            self._out.snapshot(
                self._resources(), self._dra.view() if self._dra is not None else None
            )
        for number, request in enumerate(plan.allocations, 1):
            await self._allocate(request, f"simulate-{number}")
        if plan.allocations:
            await self._report_in_use()
        if plan.once:
            return
        restarts = None
        if plan.restart_every is not None:
            restarts = asyncio.create_task(self._restart_periodically(plan.restart_every))
        await self._ended.wait()
        if restarts is not None:
            await restarts  # it returns by itself once _ended is set, never mid-restart

    async def _wait_until(self, predicate: Callable[[], bool], seconds: float) -> bool:
        """Wait for ``predicate``; False on timeout or when the simulation ends first."""
        with contextlib.suppress(TimeoutError):
            await self.kubelet.wait_for(
                lambda: self._ended.is_set() or predicate(), seconds, what="simulation state"
            )
        return not self._ended.is_set() and predicate()

    def _served(self) -> list[str]:
        return sorted(name for observed in self._observed for name in observed.resource_names())

    def _missing(self) -> list[str]:
        """Return what the simulation still waits for: first trees, then registrations."""
        resources = self.kubelet.resources
        missing = []
        for observed in self._observed:
            if observed.types is None:
                record = observed.record
                missing.append(f"plugin {record.plugin!r} namespace {record.namespace} to report")
                continue
            for name in observed.resource_names():
                state = resources.get(name)
                if state is None or state.removed or not state.connected or not state.updates:
                    missing.append(f"{name} to register and send its devices")
        return missing + (self._dra.missing() if self._dra is not None else [])

    def _resources(self) -> dict[str, dict[str, Any]]:
        return {name: resource_json(state) for name, state in self.kubelet.resources.items()}

    def _document(self) -> dict[str, Any]:
        rejected = [
            {"resource": r.request.resource_name, "endpoint": r.request.endpoint,
             "version": r.request.version, "reason": r.reason}
            for r in self.kubelet.rejected
        ]  # fmt: skip
        document = {
            "resources": self._resources(),
            "allocations": self._allocations,
            "rejected": rejected,
        }
        if self._dra is not None:
            document["dra"] = self._dra.view()
        return document

    def _note_slices(self) -> None:
        """Say what each DRA driver published: slices, devices, taints."""
        for event in self._dra.slice_events() if self._dra is not None else ():
            self._note(event)

    async def _report_in_use(self) -> None:
        """Say who holds which device, as kubelet's PodResources API tells it."""
        assert self._pod_resources_socket is not None, "the simulation is not running"
        client = PodResourcesClient(self._pod_resources_socket, ttl=0)
        held = await client.held_devices()
        if held is None:
            self._note(Event("in-use", "devices in use: unknown (no PodResources API)"))
            return
        for resource, devices in sorted(held.devices.items()):
            holders = {
                dev_id: [f"{h.namespace}/{h.pod}/{h.container}" for h in who]
                for dev_id, who in sorted(devices.items())
            }
            listed = ", ".join(f"{d} ({' '.join(h)})" for d, h in holders.items())
            self._note(
                Event(
                    "in-use",
                    f"{resource}: in use (PodResources): {listed}",
                    data={"resource": resource, "devices": holders},
                )
            )

    async def _allocate(self, request: AllocationRequest, pod_name: str = "") -> None:
        if self._dra is not None and self._dra.serves(request.resource):
            await self._allocate_claim(request)
            return
        result: dict[str, Any] = {
            "resource": request.resource,
            "requested": request.count,
            "devices": [],
            "preferred_allocation": False,
            "response": None,
            "error": None,
        }
        try:
            allocation = await self._admit(request, result, pod_name)
        except KubeletError as err:
            result["error"] = f"cannot allocate {request.count} of {request.resource}: {err}"
            self._problem("allocation-failed", result["error"], **result)
        else:
            result |= {"devices": list(allocation.device_ids)}
            result |= {"response": response_json(allocation.response)}
            message = f"{request.resource}: allocated {', '.join(allocation.device_ids)}"
            self._note(Event("allocated", message, data=result))
        self._allocations.append(result)
        self._out.allocation(result)

    async def _allocate_claim(self, request: AllocationRequest) -> None:
        """Allocate, prepare and resolve a ResourceClaim of a DRA driver's devices."""
        assert self._dra is not None
        result = await self._dra.allocate(request.resource, request.count)
        if result["error"] is not None:
            self._problem("allocation-failed", result["error"], **result)
        else:
            self._note(DraSimulation.prepared_event(result))
        self._allocations.append(result)
        self._out.allocation(result)

    async def _admit(
        self, request: AllocationRequest, result: dict[str, Any], pod_name: str = ""
    ) -> Any:
        """Check that kubelet could admit the container, then admit it as kubelet does."""
        name, count = request.resource, request.count
        state = self.kubelet.resources.get(name)
        if state is None or state.removed:
            if self._ready:
                served = ", ".join(self._served()) or "nothing"
                raise KubeletError(
                    f"the enabled plugins serve no such resource (they serve {served})"
                )
            if self._ended.is_set():
                raise KubeletError("the simulation ended before it registered")
            raise KubeletError(f"it did not register within {self._plan.timeout:g} s")
        in_use = {d for a in self.kubelet.allocations if a.resource == name for d in a.device_ids}
        if state.allocatable < count:
            raise KubeletError(
                f"only {state.allocatable} healthy device(s) of {count} requested "
                f"(capacity {state.capacity})"
            )
        if len(state.healthy - in_use) < count:
            raise KubeletError(
                f"only {len(state.healthy - in_use)} healthy device(s) free of {count} "
                f"requested ({len(in_use)} allocated before)"
            )
        options = state.options
        result["preferred_allocation"] = bool(
            options and options.get_preferred_allocation_available
        )
        return await self.kubelet.allocate_like_kubelet(name, count, pod_name=pod_name)

    async def _restart_periodically(self, every: float) -> None:
        restarts = 0
        while True:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can lose a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every):
                    await self._ended.wait()
            if self._ended.is_set():
                return
            before = {name: s.registrations for name, s in self.kubelet.resources.items()}
            started = time.monotonic()
            await self.kubelet.restart()
            restarts += 1
            message = f"kubelet restarted (restart {restarts})"
            self._note(Event("kubelet-restarted", message, data={"restart": restarts}))
            if await self._wait_until(
                functools.partial(self._reregistered, before), self._plan.timeout
            ):
                elapsed = time.monotonic() - started
                message = (
                    f"every resource registered again {elapsed:.2f} s after restart {restarts}"
                )
                self._note(Event("re-registered", message, data={"restart": restarts}))
            elif not self._ended.is_set():
                missing = "; ".join(self._missing()) or "every resource to register again"
                message = (
                    f"after kubelet restart {restarts}, timed out after {self._plan.timeout:g} s "
                    f"waiting for: {missing}"
                )
                self._problem("timeout", message, restart=restarts)

    def _reregistered(self, before: Mapping[str, int]) -> bool:
        resources = self.kubelet.resources
        return not self._missing() and all(
            resources[name].registrations > before.get(name, 0) for name in self._served()
        )


def simulate(
    scanners: Sequence[ScannerRecord],
    post_allocators: Sequence[PostAllocateHook],
    plan: SimulationPlan,
    *,
    as_json: bool,
    write: Callable[[str], None],
) -> list[str]:
    """Run the simulation in a new event loop, print through ``write``, return the problems.

    No problem means success: every resource registered (``once``), every allocation
    succeeded, every kubelet restart was followed by re-registration. Everything is
    cleaned up (sockets, CDI specs, the temporary directory) before the end result
    is printed.
    """
    output = SimulationOutput(write, as_json=as_json, once=plan.once)
    simulation = _Simulation(scanners, post_allocators, plan, output)
    started = time.monotonic()
    # Under /tmp, short: Unix socket paths must stay under 108 bytes. Removed only after
    # the loop has ended: a plugin-dir watcher still winding down must not see it vanish.
    workdir = Path(tempfile.mkdtemp(prefix="dpsim-", dir="/tmp"))
    try:
        asyncio.run(simulation.run(workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    output.finish(simulation.document, time.monotonic() - started)
    return simulation.problems
