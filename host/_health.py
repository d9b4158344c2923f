"""What ``/readyz`` and ``/status`` answer: readiness with reasons, and the live node as JSON.

Both read the Managers a :class:`~host._metrics.HostMetrics` was given, at the moment
they are asked; nothing here is cached.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from host import __version__
from host._host import _natural, device_json
from host.deviceplugin import UNHEALTHY, DeviceInfo

if TYPE_CHECKING:
    from host._dra_status import DraPart
    from host._http import Response, Route
    from host._metrics import HostMetrics
    from host.deviceplugin import Manager, ResourceStatus

__all__ = [
    "HTTP_PATHS",
    "STATUS_DEVICES",
    "StatusParts",
    "http_routes",
    "readiness",
    "status_json",
    "status_parts",
]

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text format that ``generate_latest`` writes for legacy metric names."""

STATUS_DEVICES = 100
"""Devices listed per resource by ``/status`` unless ``?devices=N`` or ``?devices=all``."""

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


def readiness(
    metrics: HostMetrics, resources: Sequence[tuple[Manager, str, ResourceStatus]] | None = None
) -> list[dict[str, str]]:
    """Everything that keeps the host from being ready; an empty list means ready.

    Ready: every enabled plugin loaded, every Manager still serving, and every resource
    it serves registered with kubelet with its ListAndWatch stream open; every DRA
    driver serving, registered with kubelet and its ResourceSlices published. ``resources``:
    :meth:`HostMetrics.resources` when the caller has just read it (reading it counts
    every device).
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
    for manager, name, status in metrics.resources() if resources is None else resources:
        reason = _not_ready_reason(status)
        if reason is not None:
            problems.append({"plugin": manager.plugin_name, "resource": name, "reason": reason})
    for plugin in metrics.dra_plugins:
        reason = metrics.ended.get(id(plugin)) or plugin.not_ready_reason
        if reason is not None:
            problems.append(
                {"plugin": plugin.plugin, "dra_driver": plugin.namespace, "reason": reason}
            )
    return problems


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC).isoformat()


@dataclass(frozen=True)
class _ResourcePart:
    name: str
    fields: dict[str, Any]
    devices: Mapping[str, DeviceInfo]
    forced_unhealthy: bool
    limit: int | None


@dataclass(frozen=True)
class StatusParts:
    """What ``/status`` shows, taken on the loop: cheap references, encoded elsewhere."""

    head: dict[str, Any]
    resources: list[_ResourcePart]
    dra: list[DraPart] = field(default_factory=list)

    def encode(self) -> bytes:
        """Return the status document as JSON; safe to run in a worker thread.

        Each resource is encoded on its own, so a thread doing this lets the loop run
        between resources instead of holding the interpreter for the whole document.
        """
        chunks = []
        for part in self.resources:
            devices = []
            ids = sorted(part.devices, key=_natural)[: part.limit]
            for dev_id in ids:
                info = part.devices[dev_id]
                device = device_json(dev_id, info)
                if part.forced_unhealthy:
                    device["health"] = UNHEALTHY
                device["numa"] = device["topology"]
                devices.append(device)
            chunks.append(
                f"{json.dumps(part.name)}: {json.dumps(part.fields | {'devices': devices})}"
            )
        dra = json.dumps({part.fields["driver"]: part.to_json() for part in self.dra})
        head = json.dumps(self.head)[:-1]  # reopened to append the resources
        return f'{head}, "resources": {{{", ".join(chunks)}}}, "dra": {dra}}}\n'.encode()


def status_parts(metrics: HostMetrics, devices_shown: int | None = None) -> StatusParts:
    """Take what ``/status`` shows: plugins with their state, resources, DRA drivers, readiness.

    Resources carry the keys ``devplugin-host simulate`` shows (capacity, allocatable,
    registrations, connected, devices with id, health and NUMA nodes), plus the socket,
    since when they are registered, and why they are not ready. Device lists are
    taken as they are (copies of frozen mappings), not encoded: see :meth:`StatusParts.encode`.
    With ``devices_shown``, each resource lists at most that many devices (the first by
    ID) and says how many more it has in ``more_devices``. DRA drivers, under ``dra`` by
    driver name, are shown side by side with them (see :func:`host._dra_status.dra_part`),
    their devices cut short the same way.
    """
    servers = [(m.plugin_name, id(m)) for m in metrics.managers]
    servers += [(p.plugin, id(p)) for p in metrics.dra_plugins]
    serving = {name for name, _ in servers}
    stopped = {name for name, key in servers if key in metrics.ended}
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
    resources = []
    statuses = sorted(metrics.resources(), key=lambda item: item[1])
    for manager, name, status in statuses:
        registered_since = metrics.registered_at.get((manager.plugin_name, name))
        fields = {
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
        }
        devices = manager.devices(name)
        if devices_shown is not None and len(devices) > devices_shown:
            fields["more_devices"] = len(devices) - devices_shown
        copied = devices.copy() if isinstance(devices, MappingProxyType) else dict(devices)
        # healthy == 0: a failed scanner, every device is Unhealthy to kubelet.
        resources.append(_ResourcePart(name, fields, copied, status.healthy == 0, devices_shown))
    problems = readiness(metrics, statuses)
    head = {"version": __version__, "ready": not problems, "not_ready": problems}
    from host._dra_status import dra_part

    dra = [
        dra_part(plugin, ended=metrics.ended.get(id(plugin)), devices_shown=devices_shown)
        for plugin in sorted(metrics.dra_plugins, key=lambda plugin: plugin.namespace)
    ]
    return StatusParts(head | {"plugins": plugins}, resources, dra)


def status_json(metrics: HostMetrics) -> dict[str, Any]:
    """Return the status document (see :func:`status_parts`) as a dict."""
    document: dict[str, Any] = json.loads(status_parts(metrics).encode())
    return document


def http_routes(metrics: HostMetrics) -> dict[str, Route]:
    """Return the handlers of :data:`HTTP_PATHS` for one host."""
    from host._http import Response, json_response

    def metrics_page(query: Mapping[str, str]) -> Response:
        return Response(200, metrics.render(), METRICS_CONTENT_TYPE)

    def healthz(query: Mapping[str, str]) -> Response:
        # Answered from the event loop itself: a stuck loop never gets here.
        return Response(200, b"ok\n")

    def readyz(query: Mapping[str, str]) -> Response:
        problems = readiness(metrics)
        if problems:
            return json_response(503, {"ready": False, "not_ready": problems})
        return json_response(200, {"ready": True, "not_ready": []})

    encoding = asyncio.Lock()  # one document at a time: a flood of /status queues up

    async def status(query: Mapping[str, str]) -> Response:
        wanted = query.get("devices", str(STATUS_DEVICES))
        if wanted != "all" and not wanted.isdigit():
            message = f"devices must be a number or 'all', got {wanted!r}\n"
            return Response(400, message.encode())
        parts = status_parts(metrics, None if wanted == "all" else int(wanted))
        async with encoding:
            # Thousands of devices take seconds to encode: not on the loop kubelet needs.
            body = await asyncio.to_thread(parts.encode)
        return Response(200, body, "application/json")

    return dict(zip(HTTP_PATHS, (metrics_page, healthz, readyz, status), strict=True))
