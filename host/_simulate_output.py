"""Output of ``devplugin-host simulate``: event lines and tables, JSON lines, JSON documents.

:mod:`host._simulate` runs the simulation and reports what happens as :class:`Event`
records and JSON-ready dicts (:func:`resource_json`, :func:`response_json`);
:class:`SimulationOutput` prints them as text (timestamped event lines, a table of
resources, allocations) or JSON (one line per event live, one document with ``--once``).
"""

from __future__ import annotations

import datetime
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from host._api import api_pb2
from host.deviceplugin import HEALTHY
from host.testing import ResourceState

__all__ = [
    "SHOWN_DEVICES",
    "Event",
    "SimulationOutput",
    "allocation_text",
    "claim_text",
    "drivers_text",
    "resource_json",
    "resources_table",
    "response_json",
    "slices_text",
]

SHOWN_DEVICES = 10
"""Devices listed per resource in the table; the rest are summed up in one line."""


@dataclass(frozen=True)
class Event:
    """Something the kubelet saw or the simulation did, at wall-clock ``time``."""

    kind: str
    message: str
    time: float = field(default_factory=time.time)
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Return the event as a JSON object: time (ISO 8601, UTC), event, message, details."""
        stamp = datetime.datetime.fromtimestamp(self.time, datetime.UTC).isoformat()
        return {"time": stamp, "event": self.kind, "message": self.message, **self.data}

    def line(self) -> str:
        """Return the event as one line of text, local time first."""
        stamp = datetime.datetime.fromtimestamp(self.time).strftime("%H:%M:%S.%f")[:-3]
        return f"{stamp}  {self.message}"


def _natural(text: str) -> list[Any]:
    """Sort key putting ``card2`` before ``card10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def resource_json(state: ResourceState) -> dict[str, Any]:
    """Return one resource as kubelet sees it: counts, registrations, devices by natural ID."""
    return {
        "capacity": state.capacity,
        "allocatable": state.allocatable,
        "registrations": state.registrations,
        "connected": state.connected,
        "devices": [
            {"id": dev_id, "health": device.health, "numa": list(device.numa_nodes)}
            for dev_id, device in sorted(state.devices.items(), key=lambda item: _natural(item[0]))
        ],
    }


def response_json(response: api_pb2.ContainerAllocateResponse) -> dict[str, Any]:
    """Return an Allocate response as JSON: devices, mounts, envs, annotations, CDI devices."""
    paths = ("host_path", "container_path")
    return {
        "devices": [
            {**{key: getattr(d, key) for key in paths}, "permissions": d.permissions}
            for d in response.devices
        ],
        "mounts": [
            {**{key: getattr(m, key) for key in paths}, "read_only": m.read_only}
            for m in response.mounts
        ],
        "envs": dict(sorted(response.envs.items())),
        "annotations": dict(sorted(response.annotations.items())),
        "cdi_devices": [device.name for device in response.cdi_devices],
    }


class SimulationOutput:
    """Where results go: event lines and tables, JSON lines, or one JSON document (--once)."""

    def __init__(self, write: Callable[[str], None], *, as_json: bool, once: bool) -> None:
        self._write = write
        self._json = as_json
        self._once = once
        self.events: list[Event] = []

    def event(self, event: Event) -> None:
        """Record an event; print it as a line of text, or a JSON line (live mode)."""
        self.events.append(event)
        if not self._json:
            self._write(event.line())
        elif not self._once:
            self._write(json.dumps(event.to_json()))

    def snapshot(self, resources: Mapping[str, Any], dra: Mapping[str, Any] | None = None) -> None:
        """Show the resources as kubelet sees them now, and the DRA slices (live mode)."""
        if self._json:
            data = {"resources": resources} | ({"dra": dra} if dra is not None else {})
            self._write(json.dumps(Event("snapshot", "", data=data).to_json()))
            return
        if resources or dra is None:
            self._write(f"-- resources as kubelet sees them:\n{resources_table(resources)}")
        if dra is not None:
            self._write(f"-- ResourceSlices as the API server holds them:\n{slices_text(dra)}")
            self._write(f"-- DRA drivers:\n{drivers_text(dra)}")

    def allocation(self, result: Mapping[str, Any]) -> None:
        """Print an allocation as text (live mode); JSON shows it as its event."""
        if not self._json and not self._once:
            self._write(allocation_text(result))

    def finish(self, document: Mapping[str, Any], elapsed: float) -> None:
        """Print the end result: the whole document (--once) or the final state (live)."""
        if self._json and self._once:
            events = [event.to_json() for event in self.events]
            self._write(json.dumps({**document, "events": events}, indent=2))
        elif self._json:
            self._write(json.dumps(Event("summary", "", data=document).to_json()))
        elif self._once:
            if document["resources"] or "dra" not in document:
                self._write(resources_table(document["resources"]))
            if "dra" in document:
                self._write(slices_text(document["dra"]))
                self._write(drivers_text(document["dra"]))
            for result in document["allocations"]:
                self._write(allocation_text(result))
        else:
            self._write(f"-- after {elapsed:.1f} s:")
            if document["resources"] or "dra" not in document:
                self._write(resources_table(document["resources"]))
            if "dra" in document:
                self._write(slices_text(document["dra"]))
                self._write(drivers_text(document["dra"]))


def resources_table(resources: Mapping[str, Mapping[str, Any]]) -> str:
    """Return each resource's counts, then its first devices, as text."""
    blocks = []
    for name, resource in resources.items():
        state = "" if resource["connected"] else "  (disconnected)"
        lines = [
            f"{name}  capacity {resource['capacity']}  allocatable {resource['allocatable']}  "
            f"registrations {resource['registrations']}{state}"
        ]
        devices = resource["devices"]
        rows = [("ID", "HEALTH", "NUMA")] + [
            (d["id"], d["health"], ",".join(map(str, d["numa"])) or "-")
            for d in devices[:SHOWN_DEVICES]
        ]
        widths = [max(len(row[column]) for row in rows) for column in range(2)]
        lines += [f"    {r[0].ljust(widths[0])}  {r[1].ljust(widths[1])}  {r[2]}" for r in rows]
        rest = devices[SHOWN_DEVICES:]
        hidden = resource.get("more_devices", 0)  # a list cut short (devplugin-host status)
        if hidden:
            more = len(rest) + hidden
            healthy = resource["allocatable"] - sum(d["health"] == HEALTHY for d in devices)
        else:
            more, healthy = len(rest), sum(d["health"] == HEALTHY for d in rest)
        if more:
            health = "all Healthy" if healthy == more else f"{healthy} Healthy"
            lines.append(f"    ... {more} more ({health})")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) or "no resources registered"


def slices_text(drivers: Mapping[str, Mapping[str, Any]]) -> str:
    """Return each DRA driver's published slices as text: counts, then its first devices."""
    blocks = []
    for driver, published in drivers.items():
        devices = published["devices"]
        lines = [f"{driver}  ResourceSlices {published['slices']}  devices {len(devices)}"]
        rows = [("DEVICE", "TYPE", "ID", "TAINTS")] + [
            (d["name"], d["type"] or "-", d["id"] or "-", " ".join(d["taints"]) or "-")
            for d in devices[:SHOWN_DEVICES]
        ]
        widths = [max(len(row[column]) for row in rows) for column in range(3)]
        lines += [
            "    " + "  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[3]])
            for r in rows
        ]
        if devices[SHOWN_DEVICES:]:
            lines.append(f"    ... {len(devices) - SHOWN_DEVICES} more")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def drivers_text(drivers: Mapping[str, Mapping[str, Any]]) -> str:
    """Return each DRA driver's own view (as ``devplugin-host status`` shows it) as text.

    Without its device rows: :func:`slices_text` lists the published devices already.
    """
    from host._dra_status import dra_text

    views = {name: driver["driver"] for name, driver in drivers.items() if "driver" in driver}
    return dra_text(views, devices=False)


def claim_text(result: Mapping[str, Any]) -> str:
    """Return one prepared DRA claim as text: its devices, each CDI ID and its spec file."""
    where = [f"pod {result['pod']}"] if result.get("pod") else []
    if result.get("device_class"):
        where.append(f"DeviceClass {result['device_class']}")
    if result.get("claim"):
        where.append(f"claim {result['claim']}")
    head = f"allocate {result['resource']}={result['requested']} ({', '.join(where)})"
    if result["error"] is not None:
        return f"{head}: FAILED: {result['error']}"
    lines = [f"{head}: {', '.join(result['devices'])}"]
    for cdi in result["cdi"]:
        lines.append(f"    cdi  {cdi['id']}")
        lines.append(f"         spec file {cdi['spec_file']}")
        lines += [f"         device {path}" for path in cdi["device_nodes"]]
        lines += [f"         env {env}" for env in cdi["env"]]
    return "\n".join(lines)


def allocation_text(result: Mapping[str, Any]) -> str:
    """Return one allocation as text: the chosen devices, then each part of the response.

    A DRA claim (a result with ``claim``) is shown by :func:`claim_text`.
    """
    if "claim" in result:
        return claim_text(result)
    head = f"allocate {result['resource']}={result['requested']}"
    if result["error"] is not None:
        return f"{head}: FAILED: {result['error']}"
    asked = " (GetPreferredAllocation asked first)" if result["preferred_allocation"] else ""
    response = result["response"]
    parts = {
        "devices": [
            f"{d['host_path']} -> {d['container_path']} ({d['permissions'] or '-'})"
            for d in response["devices"]
        ],
        "mounts": [
            f"{m['host_path']} -> {m['container_path']}{' (ro)' if m['read_only'] else ''}"
            for m in response["mounts"]
        ],
        "envs": [f"{key}={value}" for key, value in response["envs"].items()],
        "annotations": [f"{key}={value}" for key, value in response["annotations"].items()],
        "cdi devices": response["cdi_devices"],
    }
    lines = [f"{head}: {', '.join(result['devices'])}{asked}"]
    for label, items in parts.items():
        lines += [f"    {label if i == 0 else '':<12} {item}" for i, item in enumerate(items)]
    return "\n".join(lines)
