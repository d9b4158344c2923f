"""One scanner plugin served to kubelet as a DRA driver: prepare, unprepare, register.

The flow: the host hands every frozen device snapshot of the plugin to
:meth:`DraDriver.update`; kubelet calls NodePrepareResources with the claims of a pod;
the driver reads each claim from the API server (all claims at once), keeps the
allocation results of its driver and pool (the node name), writes a CDI spec per
prepared device, records the claim in its checkpoint and answers with the devices and
their CDI device IDs. NodeUnprepareResources removes the claim's CDI specs and record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

import grpc

from host.deviceplugin._cdi import DEFAULT_CDI_DIR, CdiSpecWriter
from host.deviceplugin._cdi_store import InUse
from host.deviceplugin._guard import PluginCaller
from host.deviceplugin._scanning import check_interval_of
from host.deviceplugin._types import DeviceInfo
from host.dra._checkpoint import CHECKPOINT_NAME, ClaimCheckpoint
from host.dra._claimbuild import ClaimBuilder
from host.dra._claimgc import PluginSpecCollector
from host.dra._claimsource import ClaimNotFoundError, ClaimSource
from host.dra._health import DeviceHealth, DeviceHealthService
from host.dra._kubelet import UnixSocketServer, add_dra_servicers
from host.dra._prepare import ClaimError, ClaimRef, PreparedClaim, allocated_devices
from host.dra._registration import SUPPORTED_VERSIONS, dra_registration_servicer
from host.dra._slices import device_names
from host.dra._sockets import (
    DEFAULT_DRA_PLUGIN_DIR,
    DEFAULT_REGISTRY_DIR,
    dra_socket_path,
    registration_socket_path,
    validate_driver_name,
)
from host.dra._socketwatch import keep_sockets
from host.dra._store import NOT_NOW, ClaimStore

__all__ = ["CallObserver", "DeviceNamer", "DraDriver"]

log = logging.getLogger("host.dra")

DeviceNamer = Callable[[Iterable[tuple[str, str]]], Mapping[tuple[str, str], str]]
"""Names every ``(device type, device id)`` of a snapshot as its ResourceSlices do."""

CallObserver = Callable[[str, float, int], None]
"""Told of each answered call: ``(method, seconds, claims that failed)``; ``method`` is
``NodePrepareResources`` or ``NodeUnprepareResources``."""


DRAIN_GRACE = 5.0
"""Seconds the calls in flight get to finish when the driver stops."""
HANDOVER_QUIET = 0.25
"""With an instance id: at stop, the DRA service keeps serving until no call has come
for this long (kubelet sends new calls to the newer instance by then; a call it sent
here just before is still on its way)."""
HANDOVER_MAX = 2.0
"""... but no longer than this."""

_T = TypeVar("_T")
_R = TypeVar("_R")

SERIALIZE_LOCK_NAME = "serialize.lock"
"""With an instance id, the file that serialises both instances' changes (flock)."""


async def _each(step: Callable[[ClaimRef], Awaitable[_R]], refs: Sequence[ClaimRef]) -> list[_R]:
    """Run ``step`` for every claim concurrently (one claim, the common call: no task)."""
    if len(refs) == 1:
        return [await step(refs[0])]
    return list(await asyncio.gather(*(step(ref) for ref in refs)))


class _KeyedLocks:
    """One asyncio lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class DraDriver:
    """Serves one scanner plugin's devices to kubelet as DRA driver ``driver_name``.

    ``node_name`` is the pool of every device (the ResourceSlices name it so);
    ``scanner``'s optional ``allocate`` / ``post_allocate`` shape the CDI edits;
    ``claims`` reads ResourceClaims. Sockets and the checkpoint live under
    ``plugin_dir/<driver>`` and ``registry_dir`` (see :mod:`host.dra._sockets`; an
    ``instance_id``, the pod UID, selects the rolling-update socket names and shares
    the checkpoint with the other instance under ``flock``); CDI specs go
    to ``cdi_dir`` through ``cdi_writer`` (pass the device-plugin manager's writer to
    share spec files both serve). ``device_name`` names a snapshot's devices; the default
    is the ResourceSlice builder's :func:`~host.dra.device_names`, so claims name the
    devices the slices publish. ``caller`` runs the scanner's ``allocate`` /
    ``post_allocate`` behind the plugin wall (default: a caller of the driver's own).
    ``cdi_in_use`` (kubelet's PodResources: ``pod_resources().devices_in_use``) lets
    the driver collect the plugin's own CDI specs that nothing holds any more, every
    ``cdi_check_interval`` seconds (see :mod:`host.dra._claimgc`); without it they stay.
    ``health`` streams the devices' health to kubelet on the DRA socket (default: one
    honouring the scanner's ``check_interval``).

    Run :meth:`serve` as a task; feed it with :meth:`update`. Prepared claims and their
    CDI specs outlive the driver (a restarted host finds them in the checkpoint);
    ResourceSlices are the publisher's business, not the driver's.
    """

    def __init__(
        self,
        driver_name: str,
        node_name: str,
        scanner: object,
        claims: ClaimSource,
        *,
        plugin_dir: str | Path = DEFAULT_DRA_PLUGIN_DIR,
        registry_dir: str | Path = DEFAULT_REGISTRY_DIR,
        cdi_dir: str | Path = DEFAULT_CDI_DIR,
        instance_id: str | None = None,
        cdi_writer: CdiSpecWriter | None = None,
        device_name: DeviceNamer | None = None,
        caller: PluginCaller | None = None,
        cdi_in_use: InUse | None = None,
        cdi_check_interval: float = 60.0,
        health: DeviceHealthService | None = None,
    ) -> None:
        self.driver_name = validate_driver_name(driver_name)
        if not node_name:
            raise ValueError(f"DRA driver {driver_name}: the node name must not be empty")
        self.node_name = node_name
        self.data_dir = Path(plugin_dir) / driver_name
        self.socket_path = dra_socket_path(plugin_dir, driver_name, instance_id)
        self.registration_socket_path = registration_socket_path(
            registry_dir, driver_name, instance_id
        )
        self._source = claims
        self._builder = ClaimBuilder(driver_name, scanner, caller)
        self._device_names = device_name or device_names
        self._store = ClaimStore(
            driver_name,
            ClaimCheckpoint(self.data_dir / CHECKPOINT_NAME, driver_name),
            cdi_writer if cdi_writer is not None else CdiSpecWriter(cdi_dir, driver_name),
            lock_path=self.data_dir / SERIALIZE_LOCK_NAME if instance_id else None,
        )
        self.cdi_collector = PluginSpecCollector(self._store, cdi_in_use, cdi_check_interval)
        """Collects the plugin's own CDI specs once nothing holds them."""
        self._devices: dict[str, tuple[str, str, DeviceInfo]] = {}
        self._have_snapshot = False
        self._scan_failed = False
        self._locks = _KeyedLocks()
        self._rolling = bool(instance_id)
        self._last_call = 0.0
        # Shared mode: one worker thread at a time waits for the file lock; the other
        # claims wait here, on the loop, instead of each holding a worker thread.
        self._shared_gate = asyncio.Lock()
        self._serving = asyncio.Event()
        self.registration = dra_registration_servicer(driver_name, str(self.socket_path))
        """The plugin-watcher Registration servicer: kubelet's verdicts land here."""
        self.on_call: CallObserver | None = None
        """Told of every prepare and unprepare answered (the host's metrics)."""
        if health is None:
            plugin = caller.plugin if caller is not None else driver_name
            health = DeviceHealthService(
                driver_name, node_name, check_interval=check_interval_of(scanner, plugin=plugin)
            )
        self.health = health
        """The device health service (``DRAResourceHealth``) kubelet streams from."""

    def __repr__(self) -> str:
        return f"DraDriver({self.driver_name!r}, node={self.node_name!r})"

    # -- state -----------------------------------------------------------------------

    @property
    def prepared_claims(self) -> Mapping[str, PreparedClaim]:
        """The prepared claims by UID (a read-only view)."""
        return self._store.claims

    @property
    def devices(self) -> Mapping[str, tuple[str, str, DeviceInfo]]:
        """The current devices by published name: ``(device type, device id, DeviceInfo)``."""
        return MappingProxyType(self._devices)

    @property
    def device_health(self) -> Mapping[str, DeviceHealth]:
        """Each device's health as kubelet is told, by published name (a read-only view).

        ``Healthy``, ``Unhealthy`` or ``Unknown`` (the scanner broke its
        ``check_interval`` promise), with the plugin's message or the host's reason.
        """
        return self.health.health

    @property
    def serving(self) -> bool:
        """Whether the DRA service and the registration socket are up."""
        return self._serving.is_set()

    async def wait_serving(self) -> None:
        """Return once :meth:`serve` has both sockets up."""
        await self._serving.wait()

    def update(
        self,
        snapshot: Mapping[str, Mapping[str, DeviceInfo]],
        scan_failed: bool = False,
        *,
        scan_error: str | None = None,
    ) -> None:
        """Take the scanner's latest devices (type → id → DeviceInfo).

        ``scan_failed`` means the scanner failed (``scan_error`` says how) and its
        devices are unusable for now: like unhealthy devices (tainted
        ``<driver>/unhealthy`` in the slices) they are refused to new claims that do
        not tolerate that taint; prepared claims stay. Kubelet's health stream reports
        them Unhealthy with ``scan_error``.
        """
        names = self._device_names(
            (dev_type, dev_id) for dev_type, by_id in snapshot.items() for dev_id in by_id
        )
        devices = {
            name: (dev_type, dev_id, snapshot[dev_type][dev_id])
            for (dev_type, dev_id), name in names.items()
        }
        self._devices = devices
        self._have_snapshot = True
        self._scan_failed = scan_failed
        self.health.update(devices, scan_failed, scan_error)

    # -- prepare / unprepare ---------------------------------------------------------

    async def prepare(self, claims: Sequence[ClaimRef]) -> Mapping[str, PreparedClaim | ClaimError]:
        """Prepare ``claims`` concurrently; return each UID's prepared claim or error.

        A claim already prepared is answered from the record without asking the API
        server. A claim is answered as prepared once the checkpoint holds it.
        """
        started = time.perf_counter()
        self._last_call = time.monotonic()
        unique = list({ref.uid: ref for ref in claims}.values())
        outcomes = await _each(self._prepare_one, unique)
        self._observe("NodePrepareResources", started, outcomes)
        return dict(zip((ref.uid for ref in unique), outcomes, strict=True))

    def _observe(self, method: str, started: float, outcomes: Sequence[object]) -> None:
        if self.on_call is not None:
            failed = sum(isinstance(outcome, ClaimError) for outcome in outcomes)
            self.on_call(method, time.perf_counter() - started, failed)

    async def _lookup(self, uid: str) -> PreparedClaim | None:
        if not self._store.shared:
            return self._store.get(uid)
        known = self._store.lookup_now(uid)
        if known is NOT_NOW:
            async with self._shared_gate:
                return await asyncio.to_thread(self._store.lookup, uid)
        return known

    async def _in_store(self, change: Callable[[_T], _R], arg: _T) -> _R:
        """Run a blocking store change in a worker thread (in shared mode, one at a time)."""
        if self._store.shared:
            async with self._shared_gate:
                return await asyncio.to_thread(change, arg)
        return await asyncio.to_thread(change, arg)

    async def _prepare_one(self, ref: ClaimRef) -> PreparedClaim | ClaimError:
        known = await self._lookup(ref.uid)
        if known is not None:
            return known  # the common repeat: no API call
        async with self._locks.hold(ref.uid):
            # Prepared meanwhile by this process? (add finds the other instance's.)
            known = self._store.get(ref.uid)
            if known is not None:
                return known
            try:
                claim = await self._build_claim(ref)
                added = self._store.add_now(claim)
                if added is NOT_NOW:
                    added = await self._in_store(self._store.add, claim)
                claim = added
            except ClaimError as err:
                log.info("DRA driver %s: %s", self.driver_name, err)
                return err
            except ValueError as err:
                log.error(
                    "DRA driver %s: claim %s: invalid CDI spec: %s", self.driver_name, ref, err
                )
                return ClaimError(f"claim {ref}: invalid CDI spec: {err}")
            except OSError as err:
                log.error("DRA driver %s: claim %s: %s", self.driver_name, ref, err)
                return ClaimError(f"claim {ref}: cannot record it as prepared: {err}")
            log.info(
                "DRA driver %s: prepared claim %s (%s): %s",
                self.driver_name,
                ref,
                ref.uid,
                ", ".join(d.device for d in claim.devices),
            )
            return claim

    async def _build_claim(self, ref: ClaimRef) -> PreparedClaim:
        if not ref.namespace or not ref.name:
            raise ClaimError(f"claim {ref} ({ref.uid}): namespace and name are required")
        try:
            data = await self._source.get_claim(ref.namespace, ref.name)
        except ClaimNotFoundError as err:
            raise ClaimError(f"claim {ref} not found: {err}") from err
        except Exception as err:
            raise ClaimError(f"cannot read claim {ref} from the API server: {err}") from err
        if not self._have_snapshot:
            raise ClaimError(
                f"claim {ref}: driver {self.driver_name} has no device list yet (retry)"
            )
        allocated = allocated_devices(
            data,
            ref,
            driver=self.driver_name,
            pool=self.node_name,
            devices=self._devices,
            scan_failed=self._scan_failed,
        )
        devices, specs = await self._builder.build(ref, allocated)
        return PreparedClaim(ref, tuple(devices), tuple(specs))

    async def unprepare(self, claims: Sequence[ClaimRef]) -> Mapping[str, ClaimError | None]:
        """Unprepare ``claims``: remove their CDI specs and records.

        A claim this driver does not know is done already (kubelet repeats calls and
        may ask any instance). A claim is answered as done once the checkpoint no
        longer holds it.
        """
        started = time.perf_counter()
        self._last_call = time.monotonic()
        unique = list({ref.uid: ref for ref in claims}.values())
        outcomes = await _each(self._unprepare_one, unique)
        self._observe("NodeUnprepareResources", started, outcomes)
        return dict(zip((ref.uid for ref in unique), outcomes, strict=True))

    async def _unprepare_one(self, ref: ClaimRef) -> ClaimError | None:
        # Shared mode: the removal looks the claim up itself, under the same lock.
        if not self._store.shared and self._store.get(ref.uid) is None:
            return None
        async with self._locks.hold(ref.uid):
            try:
                claim = self._store.remove_now(ref.uid)
                if claim is NOT_NOW:
                    claim = await self._in_store(self._store.remove, ref.uid)
            except OSError as err:
                log.error("DRA driver %s: claim %s: %s", self.driver_name, ref, err)
                return ClaimError(f"claim {ref}: cannot unprepare it: {err}")
            if claim is not None:
                log.info("DRA driver %s: unprepared claim %s (%s)", self.driver_name, ref, ref.uid)
            return None

    # -- serving ---------------------------------------------------------------------

    async def _quiet_down(self) -> None:
        """Serve on until no call came for :data:`HANDOVER_QUIET` (rolling update).

        Kubelet picked this instance for a call just before it took the newer one: the
        request may still be on its way, and a server that stops meanwhile refuses it
        (kubelet would retry it only at its next pod sync).
        """
        deadline = time.monotonic() + HANDOVER_MAX
        while (now := time.monotonic()) < deadline:
            quiet_at = self._last_call + HANDOVER_QUIET
            if now >= quiet_at:
                return
            await asyncio.sleep(min(quiet_at, deadline) - now)  # a pause, not a wait on state
        log.info(
            "DRA driver %s: still called %.1f s after the stop began; stopping anyway",
            self.driver_name,
            HANDOVER_MAX,
        )

    async def serve(self) -> None:
        """Serve the DRA service, then register with kubelet; run until cancelled.

        A socket file that goes away meanwhile is served again (see
        :func:`~host.dra._socketwatch.keep_sockets`). On the way out the DRA service
        stops (calls in flight get :data:`DRAIN_GRACE` seconds), then the registration;
        both sockets are removed; prepared claims, their CDI specs and the checkpoint
        stay.
        """
        restored = await asyncio.to_thread(self._store.restore)
        if restored:
            log.info(
                "DRA driver %s: %d prepared claim(s) restored from %s",
                self.driver_name,
                restored,
                self._store.checkpoint.path,
            )
        collector = asyncio.create_task(self.cdi_collector.run(), name="DRA CDI collection")
        dra = UnixSocketServer(
            self.socket_path,
            self._add_services,
            stop_grace=DRAIN_GRACE,
            end_streams=self.health.close,  # health streams never finish by themselves
        )
        registrar = UnixSocketServer(self.registration_socket_path, self.registration.add_to_server)
        try:
            await dra.start()  # kubelet connects at once after registering: serve first
            await registrar.start()
            self._serving.set()
            log.info(
                "DRA driver %s: serving %s, registered through %s (%s)",
                self.driver_name,
                self.socket_path,
                self.registration_socket_path,
                ", ".join(SUPPORTED_VERSIONS),
            )
            await keep_sockets(self.driver_name, dra, registrar)  # until cancelled
        finally:
            if self._rolling:
                await self._quiet_down()
            self._serving.clear()
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector
            # The calls in flight finish first, then the registration goes: kubelet
            # closes its connection to an instance as it deregisters it, cancelling
            # whatever that instance was still answering. Meanwhile kubelet sends new
            # calls to a connected instance (a rolling update's newer one).
            await dra.stop()
            await registrar.stop()

    def _add_services(self, server: grpc.aio.Server) -> None:
        add_dra_servicers(self, server)
        server.add_generic_rpc_handlers(self.health.rpc_handlers())
