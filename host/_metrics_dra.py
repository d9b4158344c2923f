"""The DRA drivers' Prometheus metrics: per driver and pool, beside the device-plugin ones.

Labels are ``plugin``, ``driver`` (the driver name, the plugin's namespace) and, where
the series is about the pool, ``pool`` (the node name: one pool per driver and node),
so a host has a handful of series per driver whatever its claims: claim UIDs, names
and devices are never labels (they are in ``/status``). Prepare and unprepare calls
are counted when they are answered (:meth:`DraMetrics.watch`); everything else is read
from the drivers when ``/metrics`` is scraped.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from host.deviceplugin import HEALTHY, UNHEALTHY

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from host.dra import DraPlugin

__all__ = ["DRA_BUCKETS", "DraMetrics"]

DRA_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
"""Prepare/unprepare latency buckets: an API round trip and a checkpoint write, or kubelet's
timeout (the request is bounded by it)."""


class DraMetrics:
    """The DRA series of one host's registry, and the drivers they are read from."""

    def __init__(
        self, registry: CollectorRegistry, plugins: list[DraPlugin], ended: Mapping[int, str]
    ) -> None:
        self.plugins = plugins
        """The host's DRA plugins (the list :class:`~host._metrics.HostMetrics` keeps)."""
        self.ended = ended
        """``id(plugin)`` -> why it stopped before the host (then it is not ready)."""
        labels = ("plugin", "driver", "method")
        self.calls = Histogram(
            "devplugin_dra_request_duration_seconds",
            "Time to answer kubelet's NodePrepareResources and NodeUnprepareResources.",
            labels,
            buckets=DRA_BUCKETS,
            registry=registry,
        )
        self.claim_errors = Counter(
            "devplugin_dra_claim_errors",
            "Claims answered with an error by NodePrepareResources or NodeUnprepareResources.",
            labels,
            registry=registry,
        )
        registry.register(_DraCollector(self))

    def watch(self, plugin: DraPlugin) -> None:
        """Count ``plugin``'s prepare and unprepare calls from now on."""
        children: dict[str, tuple[Any, Any]] = {}
        for method in ("NodePrepareResources", "NodeUnprepareResources"):
            key = (plugin.plugin, plugin.namespace, method)
            children[method] = (self.calls.labels(*key), self.claim_errors.labels(*key))

        def finished(method: str, seconds: float, failed: int) -> None:
            duration, errors = children[method]
            duration.observe(seconds)
            if failed:
                errors.inc(failed)

        plugin.driver.on_call = finished


def _families(plugins: Sequence[DraPlugin], ended: Mapping[int, str]) -> Iterator[Metric]:
    driver, pool = ["plugin", "driver"], ["plugin", "driver", "pool"]
    devices = GaugeMetricFamily(
        "devplugin_dra_devices",
        "Devices a DRA driver publishes in its pool, by the health kubelet is told: Healthy, "
        "Unhealthy (tainted) or Unknown (the scanner fell silent).",
        labels=[*pool, "health"],
    )
    slices = GaugeMetricFamily(
        "devplugin_dra_resource_slices",
        "ResourceSlices of the pool as last seen on the API server.",
        labels=pool,
    )
    generation = GaugeMetricFamily(
        "devplugin_dra_pool_generation", "The pool generation last published.", labels=pool
    )
    claims = GaugeMetricFamily(
        "devplugin_dra_prepared_claims", "Claims prepared on this node.", labels=driver
    )
    registered = GaugeMetricFamily(
        "devplugin_dra_driver_registered",
        "1 while kubelet has accepted the DRA driver's registration.",
        labels=driver,
    )
    ready = GaugeMetricFamily(
        "devplugin_dra_driver_ready",
        "1 while the DRA driver is ready (registered, slices published).",
        labels=driver,
    )
    publish_errors = CounterMetricFamily(
        "devplugin_dra_publish_errors",
        "Failed attempts to publish the ResourceSlices (each retried with backoff).",
        labels=driver,
    )
    failing = GaugeMetricFamily(
        "devplugin_dra_publish_failing_seconds",
        "How long publishing the ResourceSlices has kept failing (0 while it works).",
        labels=driver,
    )
    now = time.time()
    for plugin in plugins:
        status = plugin.publisher.status
        names = [plugin.plugin, plugin.namespace]
        pooled = [*names, plugin.driver.node_name]
        for state, count in _by_health(plugin).items():
            devices.add_metric([*pooled, state], count)
        slices.add_metric(pooled, len(status.slices))
        generation.add_metric(pooled, status.generation)
        claims.add_metric(names, len(plugin.driver.prepared_claims))
        registered.add_metric(names, int(bool(plugin.driver.registration.registered)))
        stopped = id(plugin) in ended
        ready.add_metric(names, int(not stopped and plugin.not_ready_reason is None))
        publish_errors.add_metric(names, status.errors_total)
        since = status.failing_since
        failing.add_metric(names, 0.0 if since is None else max(now - since, 0.0))
    yield from (devices, slices, generation, claims, registered, ready, publish_errors, failing)


def _by_health(plugin: DraPlugin) -> dict[str, int]:
    """Count the driver's devices by the health kubelet is told; every state, 0 included.

    Healthy, Unhealthy (the device's state, or every device while the scanner is
    failed: all tainted in the slices), Unknown (the scanner broke its
    ``check_interval`` promise): one series each, so a state's count reads 0 rather
    than missing, and the series add up to the pool's devices.
    """
    from host.dra._health import UNKNOWN  # host.dra is loaded: a DRA plugin exists

    counts = dict.fromkeys((HEALTHY, UNHEALTHY, UNKNOWN), 0)
    for entry in plugin.driver.device_health.values():
        counts[entry.health] += 1
    return counts


class _DraCollector(Collector):
    """DRA gauges read from the drivers at scrape time."""

    def __init__(self, metrics: DraMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # the series depend on the drivers served: collected at each scrape only

    def collect(self) -> Iterator[Metric]:
        yield from _families(self._metrics.plugins, self._metrics.ended)
