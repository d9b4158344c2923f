"""What ``/readyz`` and ``/status`` answer: readiness with reasons, and the live node as JSON.

Both read the Managers a :class:`~host._metrics.HostMetrics` was given, at the moment
they are asked; nothing here is cached.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from host import __version__
from host._host import _natural, device_json
from host.deviceplugin import UNHEALTHY

if TYPE_CHECKING:
    from host._http import Response
    from host._metrics import HostMetrics
    from host.deviceplugin import ResourceStatus

__all__ = ["HTTP_PATHS", "http_routes", "readiness", "status_json"]

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text format that ``generate_latest`` writes for legacy metric names."""

HTTP_PATHS = ("/metrics", "/healthz", "/readyz", "/status")
"""What the metrics address serves."""


def _not_ready_reason(status: ResourceStatus) -> str | None:
    if status.ready:
        return None
    if status.registered:
        return "registered, but kubelet has no ListAndWatch stream open"
    if status.problem:
        return status.problem
    return "not registered with kubelet yet"


def readiness(metrics: HostMetrics) -> list[dict[str, str]]:
    """Everything that keeps the host from being ready; an empty list means ready.

    Ready: every enabled plugin loaded, every Manager still serving, and every resource
    it serves registered with kubelet with its ListAndWatch stream open.
    """
    problems: list[dict[str, str]] = []
    for record in metrics.plugins:
        if record.enabled and record.error:
            problems.append({"plugin": record.name, "reason": f"failed to load: {record.error}"})
    for manager in metrics.managers:
        ended = metrics.ended.get(id(manager))
        if ended is not None:
            problems.append(
                {"plugin": manager.plugin_name, "namespace": manager.namespace, "reason": ended}
            )
    for manager, name, status in metrics.resources():
        reason = _not_ready_reason(status)
        if reason is not None:
            problems.append({"plugin": manager.plugin_name, "resource": name, "reason": reason})
    return problems


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC).isoformat()


def status_json(metrics: HostMetrics) -> dict[str, Any]:
    """Return the live node: plugins with their state, resources with devices, readiness.

    Resources carry the keys ``devplugin-host simulate`` shows (capacity, allocatable,
    registrations, connected, devices with id, health and NUMA nodes), plus the socket,
    since when they are registered, and why they are not ready.
    """
    serving = {manager.plugin_name for manager in metrics.managers}
    stopped = {m.plugin_name for m in metrics.managers if id(m) in metrics.ended}
    plugins = []
    for record in metrics.plugins:
        if not record.enabled:
            state = "disabled"
        elif record.error:
            state = "failed"
        elif record.name in stopped:
            state = "stopped"
        elif record.name in serving:
            state = "serving"
        else:
            state = "loaded"
        plugins.append(
            {
                "name": record.name,
                "source": record.source,
                "distribution": record.distribution,
                "version": record.version,
                "state": state,
                "error": record.error,
            }
        )
    resources: dict[str, Any] = {}
    for manager, name, status in metrics.resources():
        forced = status.healthy == 0  # a failed scanner: every device is Unhealthy to kubelet
        devices = []
        for dev_id, info in sorted(manager.devices(name).items(), key=lambda i: _natural(i[0])):
            device = device_json(dev_id, info)
            if forced:
                device["health"] = UNHEALTHY
            device["numa"] = device["topology"]
            devices.append(device)
        registered_since = metrics.registered_at.get((manager.plugin_name, name))
        resources[name] = {
            "plugin": manager.plugin_name,
            "socket": str(status.socket_path),
            "capacity": status.devices,
            "allocatable": status.healthy,
            "registrations": status.registrations,
            "registered": status.registered,
            "registered_since": _iso(registered_since) if status.registered else None,
            "connected": status.ready,
            "ready": status.ready,
            "not_ready": _not_ready_reason(status),
            "snapshot_bytes": metrics.snapshot_bytes(manager.plugin_name, name),
            "devices": devices,
        }
    problems = readiness(metrics)
    return {
        "version": __version__,
        "ready": not problems,
        "not_ready": problems,
        "plugins": plugins,
        "resources": dict(sorted(resources.items())),
    }


def http_routes(metrics: HostMetrics) -> dict[str, Callable[[], Response]]:
    """Return the handlers of :data:`HTTP_PATHS` for one host."""
    from host._http import Response, json_response

    def metrics_page() -> Response:
        return Response(200, metrics.render(), METRICS_CONTENT_TYPE)

    def healthz() -> Response:
        # Answered from the event loop itself: a stuck loop never gets here.
        return Response(200, b"ok\n")

    def readyz() -> Response:
        problems = readiness(metrics)
        if problems:
            return json_response(503, {"ready": False, "not_ready": problems})
        return json_response(200, {"ready": True, "not_ready": []})

    def status() -> Response:
        return json_response(200, status_json(metrics))

    return dict(zip(HTTP_PATHS, (metrics_page, healthz, readyz, status), strict=True))
