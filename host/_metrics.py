"""The host's Prometheus metrics: one registry per host, events counted, states read at scrape.

:class:`HostMetrics` owns a :class:`prometheus_client.CollectorRegistry` of its own (never
the global one), so several hosts in one process, or tests, never share a series.
Counters and histograms are updated when their event happens, through the
:class:`~host.deviceplugin.Observer` each Manager is given (:meth:`HostMetrics.observer`);
gauges (devices by health, registration state, snapshot sizes) are read from the
Managers when ``/metrics`` is scraped, so nothing is kept twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from host import __version__
from host._metrics_dra import DraMetrics
from host.deviceplugin import HEALTHY, UNHEALTHY, Observer
from host.deviceplugin._watcher import PluginDirWatcher, WatchEvent, WatchEventKind

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from host._loader import PluginRecord
    from host.deviceplugin import Manager, ResourceStatus
    from host.deviceplugin._watchdog import Stall
    from host.dra import DraPlugin

__all__ = ["LOOP_TICK", "HostMetrics"]

LOOP_TICK = 0.5
"""Seconds between two ticks of the event-loop lag probe."""

RPC_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
"""Allocate-path latency buckets: a healthy Allocate takes well under a millisecond."""

LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Event-loop lag buckets."""


class _ManagerObserver(Observer):
    """Counts one Manager's events into its host's metrics, labelled with its plugin."""

    def __init__(self, metrics: HostMetrics, plugin: str) -> None:
        self._metrics = metrics
        self._plugin = plugin
        # Label lookups take a lock and build a tuple: keep the children of hot series.
        self._rpc: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._sent: dict[str, Any] = {}

    def rpc_finished(self, resource_name: str, method: str, code: str, seconds: float) -> None:
        """Count the call by result and observe its latency."""
        key = (resource_name, method, code)
        children = self._rpc.get(key)
        if children is None:
            labels = (self._plugin, resource_name, method)
            children = self._rpc[key] = (
                self._metrics.rpc_handled.labels(*labels, code),
                self._metrics.rpc_duration.labels(*labels),
            )
        children[0].inc()
        children[1].observe(seconds)

    def stream_opened(self, resource_name: str) -> None:
        """One more ListAndWatch stream is open."""
        self._metrics.streams.labels(self._plugin, resource_name).inc()

    def stream_closed(self, resource_name: str) -> None:
        """One ListAndWatch stream ended."""
        self._metrics.streams.labels(self._plugin, resource_name).dec()

    def snapshot_sent(self, resource_name: str, message: Any) -> None:
        """Count the device list and keep it for its size."""
        child = self._sent.get(resource_name)
        if child is None:
            child = self._sent[resource_name] = self._metrics.snapshots.labels(
                self._plugin, resource_name
            )
        child.inc()
        self._metrics.last_snapshot[(self._plugin, resource_name)] = message

    def registered(self, resource_name: str, registrations: int) -> None:
        """Count the registration (a re-registration after the first of this server)."""
        labels = (self._plugin, resource_name)
        self._metrics.registrations.labels(*labels).inc()
        if registrations > 1:
            self._metrics.reregistrations.labels(*labels).inc()
        self._metrics.registered_at[labels] = time.time()


class HostMetrics:
    """Every metric of one host, its registry, and what ``/readyz`` and ``/status`` read.

    Built before the Managers; :meth:`add_manager` hands each Manager over (it is read
    at scrape time), :meth:`observer` gives the Observer to build it with.
    :meth:`loop_stalled` may be called from any thread.
    """

    def __init__(self, plugins: Sequence[PluginRecord] = ()) -> None:
        self.plugins = tuple(plugins)
        """Every discovered plugin's record, failed and disabled ones included."""
        self.managers: list[Manager] = []
        self.dra_plugins: list[DraPlugin] = []
        """The plugin namespaces served as DRA drivers (read by ``/readyz``)."""
        self.ended: dict[int, str] = {}
        """``id(manager)`` -> why that Manager (or DRA plugin) stopped before the host."""
        self.last_snapshot: dict[tuple[str, str], Any] = {}
        self.registered_at: dict[tuple[str, str], float] = {}
        self._sizes: dict[tuple[str, str], tuple[Any, int]] = {}
        self._watchers: list[PluginDirWatcher] = []
        self.registry = CollectorRegistry(auto_describe=True)
        """This host's registry (not prometheus_client's global one)."""
        r = self.registry
        pr = ("plugin", "resource")
        self.rpc_handled = Counter(
            "devplugin_rpc_handled",
            "Allocate, GetPreferredAllocation and PreStartContainer calls by gRPC status code.",
            [*pr, "method", "code"],
            registry=r,
        )
        self.rpc_duration = Histogram(
            "devplugin_rpc_duration_seconds",
            "Time to answer Allocate, GetPreferredAllocation and PreStartContainer.",
            [*pr, "method"],
            buckets=RPC_BUCKETS,
            registry=r,
        )
        self.streams = Gauge(
            "devplugin_listandwatch_streams", "ListAndWatch streams open.", pr, registry=r
        )
        self.snapshots = Counter(
            "devplugin_listandwatch_snapshots",
            "Device lists sent on ListAndWatch streams.",
            pr,
            registry=r,
        )
        self.registrations = Counter(
            "devplugin_registrations",
            "Successful Register calls to kubelet.",
            pr,
            registry=r,
        )
        self.reregistrations = Counter(
            "devplugin_reregistrations",
            "Successful Register calls after the first of a server (kubelet restarted or "
            "closed the stream).",
            pr,
            registry=r,
        )
        self.kubelet_restarts = Counter(
            "devplugin_kubelet_restarts",
            "Times kubelet.sock was (re-)created while the host ran: kubelet starts and restarts.",
            registry=r,
        )
        self.loop_lag = Histogram(
            "devplugin_event_loop_lag_seconds",
            f"How late a tick scheduled every {LOOP_TICK:g} s ran on the event loop.",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.loop_stalls = Counter(
            "devplugin_loop_stalls",
            "Event-loop stalls blamed on a plugin by the stall watchdog.",
            ["plugin"],
            registry=r,
        )
        self.loop_stall_seconds = Counter(
            "devplugin_loop_stall_seconds",
            "Event-loop time lost in stalls blamed on a plugin.",
            ["plugin"],
            registry=r,
        )
        failures = Counter(
            "devplugin_plugin_load_failures",
            "Enabled plugins that failed to load or activate (left out).",
            ["plugin"],
            registry=r,
        )
        for record in self.plugins:
            if record.enabled:
                failures.labels(record.name).inc(1 if record.error else 0)
                self.loop_stalls.labels(record.name)
                self.loop_stall_seconds.labels(record.name)
        r.register(_StateCollector(self))
        self.dra = DraMetrics(r, self.dra_plugins, self.ended)
        """The DRA drivers' series (read from :attr:`dra_plugins`)."""
        self._lock = threading.Lock()

    # -- wiring -------------------------------------------------------------------------

    def observer(self, plugin: str) -> Observer:
        """Return the Observer for a Manager of ``plugin``."""
        return _ManagerObserver(self, plugin)

    def add_manager(self, manager: Manager) -> None:
        """Read ``manager``'s resources at every scrape, readiness check and status."""
        self.managers.append(manager)

    def add_dra_plugin(self, plugin: DraPlugin) -> None:
        """Read ``plugin`` at every scrape, readiness check and status; time its calls."""
        self.dra_plugins.append(plugin)
        self.dra.watch(plugin)

    def add_watcher(self, watcher: PluginDirWatcher) -> None:
        """Count the kubelet restarts ``watcher`` sees, while :meth:`serving`."""
        if watcher not in self._watchers:
            self._watchers.append(watcher)

    def manager_ended(self, manager: object, reason: str) -> None:
        """Note that a Manager stopped serving while the host goes on (not ready)."""
        self.ended[id(manager)] = reason

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        """While in this block: watch for kubelet restarts, measure the event-loop lag."""
        unsubscribe = [watcher.subscribe(self._on_watch_event) for watcher in self._watchers]
        lag = asyncio.create_task(self.measure_loop_lag(), name="event-loop lag probe")
        try:
            yield
        finally:
            lag.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lag
            for stop in unsubscribe:
                stop()

    def _on_watch_event(self, event: WatchEvent) -> None:
        if event.kind is WatchEventKind.KUBELET_STARTED:
            self.kubelet_restarts.inc()

    # -- events -------------------------------------------------------------------------

    def loop_stalled(self, plugin: str, seconds: float) -> None:
        """Count an event-loop stall of ``seconds`` blamed on ``plugin``; any thread may call."""
        with self._lock:  # both series move together for a reader
            self.loop_stalls.labels(plugin).inc()
            self.loop_stall_seconds.labels(plugin).inc(max(seconds, 0.0))

    def watchdog_stalled(self, stall: Stall) -> None:
        """Count a stall the loop watchdog reports (its ``on_stall`` callback)."""
        self.loop_stalled(stall.culprit, stall.seconds)

    async def measure_loop_lag(self, interval: float = LOOP_TICK) -> None:
        """Observe, every ``interval`` s, how late the loop ran the tick; until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + interval
            await asyncio.sleep(interval)
            self.loop_lag.observe(max(loop.time() - due, 0.0))

    # -- reading ------------------------------------------------------------------------

    def render(self) -> bytes:
        """Return the Prometheus text exposition of every metric of this host.

        Without prometheus-client's ``*_created`` series: a timestamp per counter and
        histogram child, doubling the series for no use here.
        """
        return generate_latest(_WithoutCreated(self.registry))

    def snapshot_bytes(self, plugin: str, resource: str) -> int | None:
        """Size of the device list last sent for ``resource`` (None before the first)."""
        key = (plugin, resource)
        message = self.last_snapshot.get(key)
        if message is None:
            return None
        if isinstance(message, bytes):
            return len(message)
        cached = self._sizes.get(key)
        if cached is None or cached[0] is not message:
            cached = self._sizes[key] = (message, message.ByteSize())
        return cached[1]

    def resources(self) -> Iterator[tuple[Manager, str, ResourceStatus]]:
        """Every resource served: (its Manager, its name, its ResourceStatus)."""
        for manager in self.managers:
            for name, status in sorted(manager.resources.items()):
                yield manager, name, status


class _StateCollector(Collector):
    """Gauges read from the Managers at scrape time."""

    def __init__(self, metrics: HostMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # the series depend on what is served: collected at each scrape only

    def collect(self) -> Iterator[Metric]:
        from host._health import readiness

        metrics = self._metrics
        pr = ["plugin", "resource"]
        devices = GaugeMetricFamily(
            "devplugin_devices", "Devices advertised to kubelet, by health.", labels=[*pr, "health"]
        )
        registered = GaugeMetricFamily(
            "devplugin_resource_registered",
            "1 while the resource is registered with kubelet.",
            labels=pr,
        )
        ready = GaugeMetricFamily(
            "devplugin_resource_ready",
            "1 while the resource is registered and kubelet streams its device list.",
            labels=pr,
        )
        size = GaugeMetricFamily(
            "devplugin_last_snapshot_bytes",
            "Size of the last device list sent to kubelet (kubelet refuses over 4 MiB).",
            labels=pr,
        )
        statuses = list(metrics.resources())
        for manager, name, status in statuses:
            labels = [manager.plugin_name, name]
            devices.add_metric([*labels, HEALTHY], status.healthy)
            devices.add_metric([*labels, UNHEALTHY], status.devices - status.healthy)
            registered.add_metric(labels, int(status.registered))
            ready.add_metric(labels, int(status.ready))
            sent = metrics.snapshot_bytes(manager.plugin_name, name)
            if sent is not None:
                size.add_metric(labels, sent)
        yield from (devices, registered, ready, size)
        restarts = CounterMetricFamily(
            "devplugin_scanner_restarts",
            "Times a scanner failed (raised, or broke the rules) and was restarted.",
            labels=["plugin", "namespace"],
        )
        for manager in metrics.managers:
            restarts.add_metric(
                [manager.plugin_name, manager.namespace], manager.feed.scanner_restarts
            )
        for plugin in metrics.dra_plugins:
            restarts.add_metric([plugin.plugin, plugin.namespace], plugin.feed.scanner_restarts)
        yield restarts
        plugins = GaugeMetricFamily(
            "devplugin_plugin_info",
            "1 for every discovered plugin, with where it comes from and its state.",
            labels=["plugin", "source", "state"],
        )
        for record in metrics.plugins:
            state = "disabled" if not record.enabled else "failed" if record.error else "loaded"
            plugins.add_metric([record.name, record.source, state], 1)
        yield plugins
        host_ready = GaugeMetricFamily(
            "devplugin_ready", "1 while /readyz answers 200 (every resource ready)."
        )
        host_ready.add_metric([], int(not readiness(metrics, statuses)))
        yield host_ready
        info = GaugeMetricFamily(
            "devplugin_build_info", "devplugin-host version.", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info


class _WithoutCreated:
    """A registry's metrics without the ``_created`` samples.

    prometheus-client's own switch, ``disable_created_metrics``, is process-wide: it
    would change every other registry of the process too.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self._registry.collect():
            # Each collect() builds new Metric objects: editing them touches nothing kept.
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric
