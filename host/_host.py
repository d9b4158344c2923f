"""The host runtime: every plugin's Managers as tasks of one event loop, one-shot scans, logging.

``run`` wires each :class:`~host._loader.ScannerRecord` to a
:class:`~host.deviceplugin.Manager` sharing one plugin-directory watcher and every
plugin's ``devplugin_post_allocate`` hook, then serves them all until SIGTERM or
SIGINT. ``scan`` runs each scanner until its first notification, without kubelet.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import json
import logging
import re
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

if TYPE_CHECKING:
    import lightkube

    from host._http import HttpServer
    from host._loader import PluginRecord, PostAllocateHook, ScannerRecord
    from host._metrics import HostMetrics
    from host.deviceplugin._cdi_store import InUse
    from host.deviceplugin._types import DeviceInfo, DeviceTree
    from host.deviceplugin._watchdog import LoopWatchdog, PluginLocator
    from host.dra import DraOptions

__all__ = [
    "JsonFormatter",
    "ScanOutcome",
    "Servable",
    "TextFormatter",
    "build_dra_servers",
    "build_managers",
    "configure_logging",
    "device_json",
    "plugin_locator",
    "run_host",
    "scan_all",
    "scan_report",
    "serve_all",
    "start_metrics_server",
]

log = logging.getLogger("host")

# -- logging ---------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and ``exc_info`` if any.

    ``plugin`` and ``resource`` are added where the record knows them: given with
    ``extra={"plugin": ...}``, or set for the task that logs (the Managers set them for
    their scanners, servers and gRPC handlers).
    """

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a single line of JSON."""
        from host.deviceplugin._observer import LOG_FIELDS

        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = LOG_FIELDS.get()
        for name in ("plugin", "resource"):
            value = getattr(record, name, None) or fields.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, one line per record (a traceback may follow).

    Control characters in the message are escaped (a newline as backslash-n): a device
    ID or a plugin's exception text is data, and must not forge a log line of its own.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        """Format the record's line with its message escaped."""
        record.message = _escape_controls(record.message)
        return super().formatMessage(record)


def _escape_controls(text: str) -> str:
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at the time of each record.

    Test runners swap ``sys.stderr`` per test; a handler bound to one stream would
    outlive it.
    """

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Send the host's and the plugins' logs to stderr at ``level``, as text or JSON lines.

    Calling it again replaces the handler it installed before.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _StderrHandler):
            root.removeHandler(handler)
    handler = _StderrHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())


# -- scan: each scanner until its first tree -------------------------------------------

Snapshot = Mapping[str, Mapping[str, "DeviceInfo"]]


class _FirstTreeNotifier:
    """Keeps the first tree a scanner publishes; ``notify`` may come from the scan's thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self.tree: Snapshot | None = None
        self.error: str | None = None
        self.notified = asyncio.Event()

    def notify(self, tree: DeviceTree) -> None:
        """Record ``tree`` if it is the first; later trees are ignored."""
        from host.deviceplugin._types import DeviceTree

        if not isinstance(tree, DeviceTree):
            raise TypeError(f"notify() expects a DeviceTree, got {type(tree).__name__}")
        # Copied now: the scanner may go on changing its tree after notify returns.
        snapshot = {dev_type: dict(tree[dev_type]) for dev_type in tree}
        with self._lock:
            if self.tree is not None:
                return
            self.tree = snapshot
        # The loop is closed once scan_all has returned; nobody is waiting then.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self.notified.set)


@dataclass(frozen=True)
class ScanOutcome:
    """What one scanner reported first, or why it reported nothing."""

    record: ScannerRecord
    tree: Snapshot | None = None
    error: str | None = None


async def scan_all(scanners: Sequence[ScannerRecord], seconds: float) -> list[ScanOutcome]:
    """Run every scanner at once until each has notified once, failed, or ``seconds`` passed."""
    return list(await asyncio.gather(*(_scan_once(record, seconds) for record in scanners)))


async def _scan_once(record: ScannerRecord, seconds: float) -> ScanOutcome:
    from host.deviceplugin._guard import describe
    from host.deviceplugin._scanning import run_scan

    notifier = _FirstTreeNotifier(asyncio.get_running_loop())
    scan = asyncio.create_task(
        run_scan(record.scanner, notifier, plugin=record.plugin), name=f"scan {record.namespace}"
    )
    notified = asyncio.create_task(notifier.notified.wait())
    try:
        await asyncio.wait({scan, notified}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        scan.cancel()
        notified.cancel()
        await asyncio.gather(scan, notified, return_exceptions=True)
    if notifier.tree is not None:
        return ScanOutcome(record, tree=notifier.tree)
    if not scan.done() or scan.cancelled():
        return ScanOutcome(record, error=f"no devices reported within {seconds:g} s")
    exc = scan.exception()
    if exc is not None:
        cause = exc.__cause__ or exc
        log.debug("scanner of plugin %r failed", record.plugin, exc_info=cause)
        return ScanOutcome(record, error=f"scan raised {describe(cause)}")
    return ScanOutcome(record, error="scan returned without calling notify")


def device_json(dev_id: str, info: DeviceInfo) -> dict[str, Any]:
    """One device as ``scan --json`` prints it: id, health, nodes, topology, and extras if set."""
    device: dict[str, Any] = {
        "id": dev_id,
        "health": info.state,
        "nodes": [node.host_path for node in info.nodes],
        "topology": list(info.numa_nodes),
    }
    if info.health_message:
        device["health_message"] = info.health_message
    if info.mounts:
        device["mounts"] = [
            {
                "host_path": mount.host_path,
                "container_path": mount.container_path,
                "read_only": mount.read_only,
            }
            for mount in info.mounts
        ]
    if info.envs:
        device["envs"] = dict(info.envs)
    if info.annotations:
        device["annotations"] = dict(info.annotations)
    if info.cdi_spec is not None:
        from host.deviceplugin._cdi import qualified_name

        device["cdi"] = qualified_name(info.cdi_spec)
    return device


def scan_report(outcomes: Sequence[ScanOutcome]) -> dict[str, list[dict[str, Any]]]:
    """Map each resource name ``namespace/type`` to its devices, sorted by name and ID."""
    report: dict[str, list[dict[str, Any]]] = {}
    for outcome in outcomes:
        for dev_type, devices in (outcome.tree or {}).items():
            report[f"{outcome.record.namespace}/{dev_type}"] = [
                device_json(dev_id, devices[dev_id]) for dev_id in sorted(devices, key=_natural)
            ]
    return dict(sorted(report.items()))


def _natural(text: str) -> list[Any]:
    """Sort key putting ``card2`` before ``card10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


# -- run: every Manager in one loop ----------------------------------------------------


class Servable(Protocol):
    """Anything served until cancelled, as :meth:`host.deviceplugin.Manager.serve` is."""

    async def serve(self) -> None:
        """Serve until cancelled."""


def build_managers(
    scanners: Sequence[ScannerRecord],
    post_allocators: Sequence[PostAllocateHook] = (),
    *,
    plugin_dir: Path,
    kubelet_socket: Path | None = None,
    cdi_dir: Path,
    metrics: HostMetrics | None = None,
    instance_id: str | None = None,
    registration: str = "kubelet-socket",
    plugins_registry_dir: Path | None = None,
    cdi_in_use: InUse | None = None,
) -> list[tuple[str, Servable]]:
    """Build one Manager per scanner, labelled ``plugin namespace``.

    All share one socket-directory watcher (one inotify watch for the process) and
    every plugin's post-allocate hook. With ``metrics``, each Manager reports to it.
    ``instance_id`` names their sockets; ``registration`` and ``plugins_registry_dir``
    choose how kubelet learns of them; ``cdi_in_use`` tells their CDI spec stores what
    running containers hold (see :class:`~host.deviceplugin.Manager`). Call it with the
    event loop running.
    """
    from host.deviceplugin import Manager, PluginDirWatcher
    from host.deviceplugin._manager import DEFAULT_PLUGINS_REGISTRY_DIR

    registry_dir = plugins_registry_dir or Path(DEFAULT_PLUGINS_REGISTRY_DIR)
    if registration == "plugins-registry":
        # kubelet.sock, when its directory is mounted too, lets a resource that kubelet
        # dropped register again at once instead of at the plugin watcher's next pass.
        socket = kubelet_socket or plugin_dir / "kubelet.sock"
        watcher = PluginDirWatcher(registry_dir, socket if socket.parent.is_dir() else None)
    else:
        watcher = PluginDirWatcher(plugin_dir, kubelet_socket)
    servers: list[tuple[str, Servable]] = []
    for record in scanners:
        manager = Manager(
            record.namespace,
            record.scanner,
            plugin_dir=plugin_dir,
            kubelet_socket=kubelet_socket,
            cdi_dir=cdi_dir,
            watcher=watcher,
            post_allocators=post_allocators,
            plugin_name=record.plugin,
            observer=None if metrics is None else metrics.observer(record.plugin),
            instance_id=instance_id,
            registration=registration,
            plugins_registry_dir=registry_dir,
            cdi_in_use=cdi_in_use,
        )
        if metrics is not None:
            metrics.add_manager(manager)
        servers.append((f"plugin {record.plugin!r} namespace {record.namespace}", manager))
    if metrics is not None:
        metrics.add_watcher(watcher)
    return servers


def build_dra_servers(
    scanners: Sequence[ScannerRecord],
    dra: DraOptions | None,
    *,
    cdi_dir: Path,
    instance_id: str | None = None,
    metrics: HostMetrics | None = None,
) -> tuple[lightkube.AsyncClient | None, list[tuple[str, Servable]]]:
    """Build a DRA driver per scanner, sharing one Kubernetes client (the caller closes it).

    With ``metrics``, each driver's readiness counts in ``/readyz``.

    Returns ``(None, [])`` when there is nothing to serve as DRA, or when the client
    cannot be made (logged: the device plugins are served all the same).
    """
    if not scanners or dra is None:
        return None, []
    from host.dra import build_dra_plugins, kube_client

    try:
        client = kube_client(dra.kubeconfig)
    except Exception as exc:  # checked before the start: only a file changed since
        log.error("DRA drivers not served: no Kubernetes API client: %s", exc)
        return None, []
    servers: list[tuple[str, Servable]] = []
    for label, plugin in build_dra_plugins(
        scanners, client, dra, cdi_dir=cdi_dir, instance_id=instance_id
    ):
        if metrics is not None:
            metrics.add_dra_plugin(plugin)
        servers.append((label, plugin))
    log.info(
        "serving %d DRA driver(s) on node %s: %s",
        len(servers),
        dra.node_name,
        ", ".join(record.namespace for record in scanners),
    )
    return client, servers


def plugin_locator(scanners: Sequence[ScannerRecord]) -> PluginLocator:
    """Where each plugin's code lives, for the loop watchdog to name a blocking plugin."""
    from host.deviceplugin._watchdog import PluginLocator

    locator = PluginLocator()
    for record in scanners:
        locator.add(record.plugin, [record.scanner])
    return locator


async def serve_all(
    servers: Sequence[tuple[str, Servable]],
    stop: asyncio.Event,
    *,
    metrics: HostMetrics | None = None,
    watchdog: LoopWatchdog | None = None,
) -> int:
    """Serve every server as its own task until ``stop`` is set; return the exit status.

    A server that crashes is logged and the rest go on. Returns 0 when stopped,
    1 when every server has ended by itself. Either way, the servers still running
    are cancelled and awaited, so they clean up before this returns. With ``metrics``,
    kubelet restarts and the event-loop lag are measured meanwhile, and a server that
    ends is reported to it (the host is then not ready).
    """
    if metrics is None:
        return await _serve_all(servers, stop, None, watchdog)
    async with metrics.serving():
        return await _serve_all(servers, stop, metrics, watchdog)


async def _serve_all(
    servers: Sequence[tuple[str, Servable]],
    stop: asyncio.Event,
    metrics: HostMetrics | None,
    watchdog: LoopWatchdog | None,
) -> int:
    tasks: dict[asyncio.Task[Any], tuple[str, Servable]] = {
        asyncio.create_task(server.serve(), name=f"serve {label}"): (label, server)
        for label, server in servers
    }
    stopping = asyncio.create_task(stop.wait(), name="wait for stop")
    running = set(tasks)
    if watchdog is not None:
        watchdog.start()
    try:
        while running:
            done, _ = await asyncio.wait(running | {stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stopping in done:
                log.info("stopping %d manager(s)", len(running))
                return 0
            for task in done:
                running.discard(task)
                label, server = tasks[task]
                if task.cancelled():
                    reason = "was cancelled"
                    log.error("%s was cancelled; the other plugins go on", label)
                elif task.exception() is not None:
                    exc = task.exception()
                    reason = f"crashed: {type(exc).__name__}: {exc}"
                    log.error("%s crashed; the other plugins go on", label, exc_info=exc)
                else:
                    reason = "stopped serving"
                    log.warning("%s stopped serving", label)
                if metrics is not None:
                    metrics.manager_ended(server, reason)
        log.error("every manager has stopped; exiting")
        return 1
    finally:
        stopping.cancel()
        for task in running:
            task.cancel()
        await asyncio.gather(stopping, *running, return_exceptions=True)
        if watchdog is not None:
            watchdog.stop()


TRIM_INTERVAL = 5.0
"""Seconds between two ``malloc_trim`` calls (a few ms each, in a worker thread)."""

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
_MMAP_THRESHOLD = 128 * 1024


def return_large_buffers_to_the_os() -> Callable[[], None] | None:
    """Make glibc give memory back: large blocks mmapped, freed pages trimmed on request.

    glibc raises its mmap threshold as large blocks are freed, so after a few large
    requests (a device list, a request of many IDs) their memory stays in the heap,
    fragmented, and the host's RSS keeps the peak; gRPC's reader threads keep freed
    pages in arenas of their own. Fixing the threshold, and calling the returned trim
    function now and then (``malloc_trim``), keeps RSS near what the host holds.
    Returns None where the C library is not glibc.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        if not libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD):
            return None
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return lambda: trim(0)


async def trim_memory_every(trim: Callable[[], None], interval: float = TRIM_INTERVAL) -> None:
    """Give freed memory back to the OS every ``interval`` seconds, until cancelled."""
    while True:
        await asyncio.sleep(interval)
        await asyncio.to_thread(trim)  # walks every arena: off the loop


def run_host(
    scanners: Sequence[ScannerRecord],
    post_allocators: Sequence[PostAllocateHook] = (),
    *,
    plugin_dir: Path,
    kubelet_socket: Path | None = None,
    cdi_dir: Path,
    plugins: Sequence[PluginRecord] = (),
    metrics_address: tuple[str, int] | None = None,
    instance_id: str | None = None,
    registration: str = "kubelet-socket",
    plugins_registry_dir: Path | None = None,
    pod_resources_socket: Path | None = None,
    dra: DraOptions | None = None,
) -> int:
    """Serve every scanner under one event loop until SIGTERM/SIGINT; return the exit status.

    With ``metrics_address`` (host, port), ``/metrics``, ``/healthz``, ``/readyz`` and
    ``/status`` are served over HTTP from the same loop; ``plugins`` (every discovered
    plugin's record) tells readiness and status which plugins failed to load. The
    plugins named in ``dra`` are served as DRA drivers (:class:`~host.dra.DraPlugin`,
    one Kubernetes client for all) instead of device plugins.
    """
    if not scanners:
        log.error("no scanners to run: every enabled plugin failed or none returned a scanner")
        return 1

    trim = return_large_buffers_to_the_os()

    from host.deviceplugin import configure_pod_resources, pod_resources

    if pod_resources_socket is not None:
        configure_pod_resources(pod_resources_socket)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        metrics = http = client = None
        as_dra = dra.plugins if dra is not None else frozenset()
        device_plugins = [record for record in scanners if record.plugin not in as_dra]
        drivers = [record for record in scanners if record.plugin in as_dra]
        trimmer: asyncio.Task[None] | None = None
        try:
            if metrics_address is not None:
                metrics, http = await start_metrics_server(plugins, metrics_address)
                if http is None:
                    return 1
            servers = build_managers(
                device_plugins,
                post_allocators,
                plugin_dir=plugin_dir,
                kubelet_socket=kubelet_socket,
                cdi_dir=cdi_dir,
                metrics=metrics,
                instance_id=instance_id,
                registration=registration,
                plugins_registry_dir=plugins_registry_dir,
                # Stale CDI specs are collected only when kubelet says nobody holds them.
                cdi_in_use=pod_resources().devices_in_use,
            )
            client, dra_servers = build_dra_servers(
                drivers, dra, cdi_dir=cdi_dir, instance_id=instance_id, metrics=metrics
            )
            servers += dra_servers
            # Everything loaded so far (modules, plugins, managers) lives as long as the
            # host: out of the collector's sight, a full collection no longer walks it
            # on the loop (a /status of 100,000 devices waited 0.7 s for it otherwise).
            gc.freeze()
            log.info(
                "serving %d namespace(s) from %d plugin(s) in %s",
                len(device_plugins),
                len({record.plugin for record in device_plugins}),
                plugin_dir,
            )
            from host.deviceplugin._watchdog import LoopWatchdog

            on_stall = None if metrics is None else metrics.watchdog_stalled
            watchdog = LoopWatchdog(plugin_locator(scanners), on_stall=on_stall)
            if trim is not None:
                trimmer = asyncio.create_task(trim_memory_every(trim), name="trim memory")
            return await serve_all(servers, stop, metrics=metrics, watchdog=watchdog)
        finally:
            if trimmer is not None:
                trimmer.cancel()
            if http is not None:
                await http.stop()
            if client is not None:
                await client.close()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)

    return asyncio.run(main())


async def start_metrics_server(
    plugins: Sequence[PluginRecord], address: tuple[str, int]
) -> tuple[HostMetrics, HttpServer | None]:
    """Make a host's metrics and serve them on ``address``; the server is None if it cannot bind.

    The failure to bind is logged with the address and the reason.
    """
    from host._health import http_routes
    from host._http import HttpServer, format_address
    from host._metrics import HostMetrics

    metrics = HostMetrics(plugins)
    http = HttpServer(http_routes(metrics), *address)
    try:
        await http.start()
    except OSError as exc:
        log.error("cannot serve metrics on %s: %s", format_address(*address), exc.strerror or exc)
        return metrics, None
    log.info("metrics, probes and status on http://%s", http.address)
    return metrics, http
