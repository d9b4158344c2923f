"""The Manager: runs a scanner and serves one resource per device type it reports."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import signal
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from host.deviceplugin._cdi import DEFAULT_CDI_DIR, qualified_name
from host.deviceplugin._cdi_store import CdiSpecStore, CdiSpecUnavailableError, InUse
from host.deviceplugin._endpoint import Backoff, ResourceEndpoint
from host.deviceplugin._feed import ScannerFeed, Snapshot
from host.deviceplugin._guard import DEFAULT_CALL_TIMEOUT, PluginCaller
from host.deviceplugin._healthlog import HealthChange, HealthLog
from host.deviceplugin._names import instance_id_error, resource_name_error, socket_name
from host.deviceplugin._observer import LOG_FIELDS, NULL_OBSERVER, Observer, log_context
from host.deviceplugin._registry import PluginsRegistryEndpoint
from host.deviceplugin._service import DevicePluginService, PostAllocateHook, RpcError
from host.deviceplugin._types import HEALTHY, UNHEALTHY, DeviceInfo, Notifier, Scanner
from host.deviceplugin._watcher import PluginDirWatcher

__all__ = [
    "DEFAULT_CDI_DIR",
    "DEFAULT_PLUGINS_REGISTRY_DIR",
    "DEFAULT_PLUGIN_DIR",
    "REGISTRATIONS",
    "Manager",
    "ResourceStatus",
]

log = logging.getLogger("host.deviceplugin.manager")

DEFAULT_PLUGINS_REGISTRY_DIR = "/var/lib/kubelet/plugins_registry"
"""Where kubelet's plugin watcher looks for sockets (``{root-dir}/plugins_registry``)."""

REGISTRATIONS: dict[str, type[ResourceEndpoint]] = {
    "kubelet-socket": ResourceEndpoint,
    "plugins-registry": PluginsRegistryEndpoint,
}
"""How kubelet learns about a resource, by ``--registration`` name."""

DEFAULT_PLUGIN_DIR = "/var/lib/kubelet/device-plugins/"
"""Where kubelet looks for device-plugin sockets (hard-coded in kubelet)."""


@dataclass(frozen=True)
class ResourceStatus:
    """What one resource looks like from the plugin's side."""

    resource_name: str
    socket_path: Path
    devices: int
    healthy: int
    registered: bool
    ready: bool
    registrations: int
    problem: str | None = None
    """Why the last attempt to serve or register failed (None once registered)."""
    not_ready_reason: str | None = None
    """Why the resource is not ``ready`` (e.g. its socket cannot be created), None if it is."""


class Manager:
    """Serves every device type a scanner reports as a kubelet device plugin.

    The Python counterpart of Intel's ``dpapi.NewManager(namespace, plugin).Run()``::

        Manager("color.example.com", ColorScanner()).run()

    Each device type ``T`` becomes resource ``<namespace>/T`` served by its own gRPC
    server on ``<plugin_dir>/<namespace>-T.sock`` (``-`` in the namespace doubled, see
    :func:`~host.deviceplugin._names.socket_name`), registered with kubelet and
    re-registered whenever kubelet restarts. With ``instance_id`` (the pod UID of the
    host), sockets are named ``<namespace>-T-<tag>.sock`` so that two hosts (the old
    and the new pod of a rolling update) serve the same resources side by side.
    With ``registration="plugins-registry"`` the sockets go to ``plugins_registry_dir``
    instead, where kubelet's plugin watcher finds and registers them (no ``Register``
    call, no ``kubelet.sock``); ``watcher`` must then watch that directory.
    """

    def __init__(
        self,
        namespace: str,
        scanner: Scanner,
        *,
        plugin_dir: str | os.PathLike[str] = DEFAULT_PLUGIN_DIR,
        kubelet_socket: str | os.PathLike[str] | None = None,
        cdi_dir: str | os.PathLike[str] = DEFAULT_CDI_DIR,
        watcher: PluginDirWatcher | None = None,
        post_allocators: Sequence[PostAllocateHook] = (),
        plugin_name: str | None = None,
        scan_backoff: tuple[float, float] = (1.0, 60.0),
        register_backoff: tuple[float, float] = (0.5, 30.0),
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        observer: Observer | None = None,
        instance_id: str | None = None,
        cdi_in_use: InUse | None = None,
        cdi_check_interval: float = 60.0,
        cdi_retry_backoff: tuple[float, float] = (1.0, 60.0),
        registration: str = "kubelet-socket",
        plugins_registry_dir: str | os.PathLike[str] = DEFAULT_PLUGINS_REGISTRY_DIR,
    ) -> None:
        self.plugin_name = plugin_name or namespace
        if registration not in REGISTRATIONS:
            raise ValueError(
                f"registration must be one of {', '.join(REGISTRATIONS)}, got {registration!r}"
            )
        self.registration = registration
        if instance_id is not None and (problem := instance_id_error(instance_id)):
            raise ValueError(f"instance id {instance_id!r} cannot be used: {problem}")
        self.instance_id = instance_id
        reason = resource_name_error(f"{namespace}/x")
        if reason is not None:
            raise ValueError(
                f"plugin {self.plugin_name!r}: namespace {namespace!r} cannot form resource "
                f"names: {reason}"
            )
        if not callable(getattr(scanner, "scan", None)):
            raise TypeError(
                f"plugin {self.plugin_name!r}: scanner {scanner!r} has no scan(notifier) method"
            )
        self.namespace = namespace
        self.scanner = scanner
        self.plugin_dir = Path(plugin_dir)
        self.kubelet_socket = (
            Path(kubelet_socket) if kubelet_socket is not None else self.plugin_dir / "kubelet.sock"
        )
        self.cdi_dir = Path(cdi_dir)
        self.socket_dir = (
            Path(plugins_registry_dir) if registration == "plugins-registry" else self.plugin_dir
        )
        """Where the resources' sockets are: the plugin directory or the plugins registry."""
        self._endpoint_type = REGISTRATIONS[registration]
        self._watcher = watcher or PluginDirWatcher(self.socket_dir, self.kubelet_socket)
        self._post_allocators = tuple(post_allocators)
        self._register_backoff = register_backoff
        # cdi_in_use tells which devices running containers hold (kubelet's PodResources);
        # without it, stale CDI spec files are never collected.
        self._cdi = CdiSpecStore(
            self.cdi_dir,
            namespace,
            in_use=cdi_in_use,
            on_failed_change=self._cdi_failed_changed,
            check_interval=cdi_check_interval,
            retry_backoff=cdi_retry_backoff,
        )
        self._feed = ScannerFeed(self.plugin_name, namespace, scanner, backoff=scan_backoff)
        self._feed.subscribe(self._apply)
        self._caller = PluginCaller(self.plugin_name, timeout=call_timeout)
        self._tree: Snapshot = {}
        self._tree_cdi: Mapping[str, frozenset[str]] = {}
        self._tree_noted: Mapping[str, frozenset[str]] = {}
        self._health_logs: dict[str, HealthLog] = {}
        self._services: dict[str, DevicePluginService] = {}
        self._endpoints: dict[str, ResourceEndpoint] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._invalid_types: set[str] = set()
        self._scan_failed = False
        self._serving = False
        self.observer = observer or NULL_OBSERVER
        """Told of every RPC, snapshot sent and registration of this Manager's resources."""

    # -- public -----------------------------------------------------------------------

    @property
    def notifier(self) -> Notifier:
        """The Notifier the scanner receives."""
        return self._feed.notifier

    @property
    def feed(self) -> ScannerFeed:
        """The scanner's feed of frozen snapshots (the Manager is one of its consumers)."""
        return self._feed

    @property
    def resources(self) -> Mapping[str, ResourceStatus]:
        """The status of every resource being served, by resource name."""
        out = {}
        for dev_type, endpoint in self._endpoints.items():
            service = endpoint.service
            devices = self._tree.get(dev_type, {})
            healthy = sum(d.state == HEALTHY for d in devices.values())
            out[service.resource_name] = ResourceStatus(
                resource_name=service.resource_name,
                socket_path=endpoint.socket_path,
                devices=len(devices),
                healthy=0 if self._scan_failed else healthy,
                registered=endpoint.registered,
                ready=endpoint.ready,
                registrations=endpoint.registrations,
                problem=endpoint.problem,
                not_ready_reason=endpoint.not_ready_reason,
            )
        return out

    def devices(self, resource_name: str) -> Mapping[str, DeviceInfo]:
        """Return the devices of a served resource as last reported (none if not served)."""
        dev_type = resource_name.removeprefix(f"{self.namespace}/")
        service = self._services.get(dev_type)
        return {} if service is None else service.devices

    async def collect_cdi_garbage(self) -> list[Path]:
        """Run one pass of CDI spec garbage collection now; return the files removed.

        It also runs every ``cdi_check_interval`` seconds. A spec file goes in the
        second pass that finds it held by no device of this manager and by no running
        container (``cdi_in_use``); without ``cdi_in_use`` nothing is ever collected.
        """
        return await self._cdi.collect_garbage()

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop cleanly (blocking)."""
        asyncio.run(_serve_until_signalled(self.serve()))

    async def serve(self) -> None:
        """Scan and serve until cancelled; cancellation stops every server cleanly."""
        self._serving = True
        LOG_FIELDS.set({**LOG_FIELDS.get(), "plugin": self.plugin_name})
        self.socket_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        self._cdi.start()
        feed = asyncio.create_task(self._feed.run(), name=f"feed {self.namespace}")
        try:
            await asyncio.Future()  # until cancelled
        finally:
            self._serving = False
            feed.cancel()
            # A stop must end: SIGTERM is followed by SIGKILL, and a test's teardown by
            # nothing. Each step is bounded and a step that overruns is named in the log.
            await _bounded_step(self._stop_all(), f"plugin {self.plugin_name!r}: stopping")
            await _bounded_step(
                _quietly_awaited(feed), f"plugin {self.plugin_name!r}: ending the scanner feed"
            )
            self._caller.close()

    # -- snapshots ----------------------------------------------------------------------

    def _apply(self, tree: Snapshot, scan_failed: bool) -> None:
        if not self._serving:
            return
        if scan_failed != self._scan_failed:
            self._scan_failed = scan_failed
            for service in self._services.values():
                service.update(all_unhealthy=scan_failed)
        old, old_cdi, old_noted = self._tree, self._tree_cdi, self._tree_noted
        if tree is old:
            return
        self._tree, self._tree_cdi = tree, self._feed.cdi_ids
        self._tree_noted = self._feed.noted_ids
        for dev_type, devices in tree.items():
            before = old.get(dev_type)
            if before is devices:
                continue  # unchanged: the feed kept the same mapping
            # A new mapping is a changed type (its fingerprint differs): comparing the
            # devices again would cost a Python __eq__ per device.
            if before is None:
                self._add_type(dev_type, devices)
            else:
                self._update_type(dev_type, devices, before, old_cdi.get(dev_type, _NO_IDS))
            self._log_health(dev_type, devices, before, old_noted.get(dev_type, _NO_IDS))
        for dev_type in old.keys() - tree.keys():
            self._remove_type(dev_type, old[dev_type], old_cdi.get(dev_type, _NO_IDS))

    # -- resources --------------------------------------------------------------------

    def _add_type(self, dev_type: str, devices: Mapping[str, DeviceInfo]) -> None:
        resource_name = f"{self.namespace}/{dev_type}"
        reason = resource_name_error(resource_name)
        if reason is not None:
            if dev_type not in self._invalid_types:
                self._invalid_types.add(dev_type)
                log.error(
                    "plugin %r: device type %r gives invalid resource name %r: %s; "
                    "not serving it (the other types are served)",
                    self.plugin_name,
                    dev_type,
                    resource_name,
                    reason,
                )
            return
        self._sync_cdi(dev_type, devices, {}, _NO_IDS)
        service = DevicePluginService(
            resource_name,
            self.scanner,
            caller=self._caller,
            post_allocators=(*self._post_allocators, self._ensure_cdi_specs),
            cdi_name=qualified_name,
            observer=self.observer,
        )
        service.unhealthy_reason = functools.partial(self._cdi.failure, resource_name)
        service.update(self._offered(resource_name, devices), all_unhealthy=self._scan_failed)
        endpoint = self._endpoint_type(
            service,
            self.socket_dir / socket_name(self.namespace, dev_type, self.instance_id),
            self._watcher,
            backoff=Backoff(*self._register_backoff),
        )
        self._services[dev_type] = service
        self._endpoints[dev_type] = endpoint
        task = asyncio.get_running_loop().create_task(
            endpoint.run(),
            name=f"serve {resource_name}",
            # Its logs, and those of its gRPC handlers, name the plugin and the resource.
            context=log_context(plugin=self.plugin_name, resource=resource_name),
        )
        task.add_done_callback(functools.partial(_log_task_end, resource_name=resource_name))
        self._tasks[dev_type] = task
        log.info(
            "plugin %r: serving %s (%d devices)", self.plugin_name, resource_name, len(devices)
        )

    def _update_type(
        self,
        dev_type: str,
        devices: Mapping[str, DeviceInfo],
        old: Mapping[str, DeviceInfo],
        old_cdi: frozenset[str],
    ) -> None:
        service = self._services.get(dev_type)
        if service is None:
            return  # an invalid type: never served
        self._sync_cdi(dev_type, devices, old, old_cdi)
        service.update(self._offered(service.resource_name, devices))

    def _remove_type(
        self, dev_type: str, old: Mapping[str, DeviceInfo], old_cdi: frozenset[str]
    ) -> None:
        self._invalid_types.discard(dev_type)
        self._services.pop(dev_type, None)
        self._endpoints.pop(dev_type, None)
        task = self._tasks.pop(dev_type, None)
        if task is not None:
            task.cancel()
            log.info(
                "plugin %r: %s/%s is gone; stopping it", self.plugin_name, self.namespace, dev_type
            )
        self._sync_cdi(dev_type, {}, old, old_cdi)

    def _log_health(
        self,
        dev_type: str,
        devices: Mapping[str, DeviceInfo],
        old: Mapping[str, DeviceInfo] | None,
        old_noted: frozenset[str],
    ) -> None:
        """Log the devices whose health or health message changed.

        Kubelet hears only Healthy/Unhealthy; the message is for the operator.

        Visits only the devices that are not Healthy or carry a message, now or before
        (the feed tells which), like :meth:`_sync_cdi`.
        """
        now_noted = self._tree_noted.get(dev_type, _NO_IDS)
        if (not now_noted and not old_noted) or dev_type not in self._services:
            return
        changed: list[tuple[HealthChange | None, HealthChange]] = []
        for dev_id in sorted(now_noted | old_noted):
            new_info = devices.get(dev_id)
            old_info = old.get(dev_id) if old is not None else None
            if new_info is None or new_info is old_info:
                continue
            after = HealthChange(dev_id, new_info.state, new_info.health_message)
            before = None
            if old_info is not None:
                before = HealthChange(dev_id, old_info.state, old_info.health_message)
                if before == after:
                    continue
            changed.append((before, after))
        if changed:
            resource_name = f"{self.namespace}/{dev_type}"
            health_log = self._health_logs.get(resource_name)
            if health_log is None:
                health_log = HealthLog(f"resource {resource_name}", log)
                self._health_logs[resource_name] = health_log
            health_log.changes(changed)

    def _sync_cdi(
        self,
        dev_type: str,
        devices: Mapping[str, DeviceInfo],
        old: Mapping[str, DeviceInfo],
        old_cdi: frozenset[str],
    ) -> None:
        """Write the CDI specs of new or changed devices, release those of gone ones.

        Runs on the loop for every changed type, but visits only the devices that carry
        a spec now or did before (the feed tells which): a type without CDI specs costs
        nothing however many devices it has.
        """
        now_cdi = self._tree_cdi.get(dev_type, _NO_IDS) if devices else _NO_IDS
        if not now_cdi and not old_cdi:
            return
        resource_name = f"{self.namespace}/{dev_type}"
        for dev_id in now_cdi | old_cdi:
            new_info, old_info = devices.get(dev_id), old.get(dev_id)
            if new_info is old_info:
                continue
            spec = new_info.cdi_spec if new_info is not None else None
            if old_info is not None and old_info.cdi_spec == spec:
                continue
            if spec is None:
                self._cdi.release(resource_name, dev_id)
            else:
                self._cdi.hold(resource_name, dev_id, spec)

    def _offered(
        self, resource_name: str, devices: Mapping[str, DeviceInfo]
    ) -> Mapping[str, DeviceInfo]:
        """``devices`` as advertised: Unhealthy while their CDI spec cannot be written."""
        failed = self._cdi.failed(resource_name)
        if not failed:
            return devices
        offered = dict(devices)
        for dev_id in failed & offered.keys():
            offered[dev_id] = dataclasses.replace(offered[dev_id], state=UNHEALTHY)
        return offered

    def _cdi_failed_changed(self, resource_names: set[str]) -> None:
        for dev_type, service in self._services.items():
            if service.resource_name in resource_names:
                service.update(self._offered(service.resource_name, self._tree.get(dev_type, {})))

    async def _ensure_cdi_specs(self, resource_name: str, response: Any) -> None:
        """Post-allocate: every spec file the response names is on disk (waits if needed)."""
        names = [c.name for cresp in response.container_responses for c in cresp.cdi_devices]
        if not names:
            return
        try:
            await self._cdi.ensure(names)
        except CdiSpecUnavailableError as exc:
            raise RpcError(
                grpc.StatusCode.FAILED_PRECONDITION, f"resource {resource_name}: {exc}"
            ) from exc

    async def _stop_all(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._services.clear()
        self._endpoints.clear()
        await self._cdi.close()  # spec files stay: containers may restart without Allocate


_NO_IDS: frozenset[str] = frozenset()

STOP_LIMIT = 10.0
"""Seconds each step of a Manager's stop may take before it is abandoned (logged)."""


async def _bounded_step(step: Awaitable[None], what: str) -> None:
    try:
        async with asyncio.timeout(STOP_LIMIT):
            await step
    except TimeoutError:
        log.error("%s took over %g s; going on without it", what, STOP_LIMIT)


async def _quietly_awaited(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _log_task_end(task: asyncio.Task[None], resource_name: str) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("%s: server task failed", resource_name, exc_info=exc)


async def _serve_until_signalled(coro: Any) -> None:
    """Run ``coro`` as a task; SIGTERM and SIGINT cancel it (a clean stop)."""
    loop = asyncio.get_running_loop()
    task: asyncio.Task[None] = asyncio.ensure_future(coro)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
