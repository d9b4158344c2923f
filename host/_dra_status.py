"""The DRA half of ``/status``, ``devplugin-host status`` and ``simulate --dra``: one driver's view.

:func:`dra_part` takes what a :class:`~host.dra.DraPlugin` knows, on the event loop and
cheaply (references to frozen snapshots, a copy of the prepared claims); :meth:`DraPart.to_json`
turns it into the status document's entry for that driver, anywhere (a worker thread):
registration with kubelet, the pool and its slices, devices with health and taint,
prepared claims with whom they are reserved for and their CDI device IDs, the
publisher's state and readiness. :func:`dra_text` shows those entries as text.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from host._host import _natural
from host.deviceplugin import HEALTHY, UNHEALTHY, DeviceInfo

if TYPE_CHECKING:
    from host.dra import ClaimConsumer, DeviceHealth, DraPlugin, PreparedClaim

__all__ = [
    "DraPart",
    "dra_json",
    "dra_part",
    "dra_text",
    "healthy_count",
]


def healthy_count(devices: Mapping[str, tuple[str, str, DeviceInfo]], scan_failed: bool) -> int:
    """Devices a driver offers untainted: the healthy ones, none while its scanner is failed."""
    if scan_failed:
        return 0  # every device is tainted then, as in the slices
    return sum(info.state == HEALTHY for _type, _id, info in devices.values())


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC).isoformat()


def _registration(plugin: DraPlugin) -> dict[str, Any]:
    driver = plugin.driver
    servicer = driver.registration
    if not driver.serving:
        state, error = "not serving", None
    elif servicer.registered is None:
        state, error = "waiting for kubelet", None
    elif servicer.registered:
        state, error = "registered", None
    else:
        state, error = "refused", servicer.error
    return {
        "state": state,
        "error": error,
        "socket": str(driver.socket_path),
        "registration_socket": str(driver.registration_socket_path),
        "versions": list(servicer.supported_versions),
    }


@dataclass(frozen=True)
class DraPart:
    """One DRA driver as the status shows it, taken on the loop, encoded anywhere."""

    fields: dict[str, Any]
    devices: Mapping[str, tuple[str, str, DeviceInfo]]
    reported: Mapping[str, DeviceHealth]
    scan_failed: bool
    claims: tuple[tuple[PreparedClaim, tuple[ClaimConsumer, ...] | None], ...]
    limit: int | None

    def to_json(self) -> dict[str, Any]:
        """Return the driver's status entry (see :func:`dra_part`)."""
        from host.dra._slices import unhealthy_taint_key  # host.dra imports lightkube

        taint = f"{unhealthy_taint_key(self.fields['driver'])}:NoSchedule"
        healthy = healthy_count(self.devices, self.scan_failed)
        devices = []
        for name in sorted(self.devices, key=_natural)[: self.limit]:
            dev_type, dev_id, info = self.devices[name]
            usable = info.state == HEALTHY and not self.scan_failed
            told = self.reported.get(name)
            devices.append(
                {
                    "name": name,
                    "type": dev_type,
                    "id": dev_id,
                    "health": HEALTHY if usable else UNHEALTHY,
                    "taints": [] if usable else [taint],
                    "numa": list(info.numa_nodes),
                    # What kubelet's health stream says (Unknown: the scanner fell silent).
                    "reported_health": told.health if told else None,
                    "health_message": (told.message if told else info.health_message) or None,
                    "health_since": _iso(told.since) if told else None,
                }
            )
        claims = [
            {
                "namespace": claim.ref.namespace,
                "name": claim.ref.name,
                "uid": claim.ref.uid,
                "reserved_for": None
                if consumers is None
                else [consumer.to_json() for consumer in consumers],
                "devices": [
                    {
                        "device": device.device,
                        "pool": device.pool,
                        "requests": list(device.request_names),
                        "cdi_device_ids": list(device.cdi_device_ids),
                    }
                    for device in claim.devices
                ],
            }
            for claim, consumers in self.claims
        ]
        total = len(self.devices)
        counts = {"device_count": total, "healthy": healthy, "unhealthy": total - healthy}
        more = {"more_devices": total - len(devices)} if total > len(devices) else {}
        return self.fields | counts | {"devices": devices} | more | {"claims": claims}


def dra_part(
    plugin: DraPlugin, *, ended: str | None = None, devices_shown: int | None = None
) -> DraPart:
    """Take what ``/status`` shows of one DRA driver; call it on the event loop.

    The entry (:meth:`DraPart.to_json`) holds the plugin, driver and node; the
    registration with kubelet (``state``: ``not serving``, ``waiting for kubelet``,
    ``registered`` or ``refused`` with kubelet's ``error``; the sockets); the pool
    (name and generation) and the names of its ResourceSlices; the publisher (synced,
    ``standby`` while another instance publishes, failures in a row, ``errors_total``
    since start, last error, when it last succeeded and since when it fails); the
    scanner (failed, restarts); devices by health (``device_count``, ``healthy``,
    ``unhealthy``) and the first ``devices_shown`` by name, each with type, ID, health
    and taints as the slices publish them, NUMA nodes, and what the health stream
    tells kubelet (``reported_health``, ``Unknown`` too; ``health_message``;
    ``health_since``); every prepared claim with namespace, name, UID,
    ``reserved_for`` (the claim's ``status.reservedFor`` when the driver fetched it,
    None when unknown: prepared before a restart) and its devices with their CDI
    device IDs; readiness and why not. ``ended``: why the driver stopped before the
    host (then it is not ready).
    """
    publisher = plugin.publisher.status
    prepared = plugin.driver.prepared_claims
    reason = ended or plugin.not_ready_reason
    fields = {
        "plugin": plugin.plugin,
        "driver": plugin.namespace,
        "node": plugin.driver.node_name,
        "state": "stopped" if ended else "serving",
        "registration": _registration(plugin),
        "pool": {"name": plugin.driver.node_name, "generation": publisher.generation},
        "slices": list(publisher.slices),
        "publisher": {
            "synced": publisher.synced,
            "standby": publisher.standby,
            "failures": publisher.failures,
            "errors_total": publisher.errors_total,
            "last_error": publisher.last_error,
            "last_success": _iso(publisher.last_success),
            "failing_since": _iso(publisher.failing_since),
        },
        "scanner": {
            "failed": plugin.feed.scan_failed,
            "restarts": plugin.feed.scanner_restarts,
        },
        "prepared_claims": len(prepared),
        "ready": reason is None,
        "not_ready": reason,
    }
    claims = tuple(
        (prepared[uid], plugin.consumers.of(uid))
        for uid in sorted(prepared, key=lambda uid: str(prepared[uid].ref))
    )
    driver = plugin.driver
    return DraPart(
        fields, driver.devices, driver.device_health, plugin.feed.scan_failed, claims, devices_shown
    )


def dra_json(plugins: Sequence[DraPlugin], ended: Mapping[int, str]) -> dict[str, Any]:
    """Every driver's status entry by driver name (all devices; for ``simulate``)."""
    return {
        plugin.namespace: dra_part(plugin, ended=ended.get(id(plugin))).to_json()
        for plugin in plugins
    }


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("    " + "  ".join([*cells, row[-1]]))
    return lines


def _claim_rows(claims: Sequence[Mapping[str, Any]]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [("CLAIM", "UID", "RESERVED FOR", "DEVICES", "CDI IDS")]
    for claim in claims:
        consumers = claim["reserved_for"]
        if consumers is None:
            held = "unknown"
        else:
            held = (
                ",".join(
                    c["name"] if c["resource"] == "pods" else f"{c['resource']}/{c['name']}"
                    for c in consumers
                )
                or "-"
            )
        devices = claim["devices"]
        ids = [cdi for device in devices for cdi in device["cdi_device_ids"]]
        rows.append(
            (
                f"{claim['namespace']}/{claim['name']}",
                claim["uid"],
                held,
                ",".join(device["device"] for device in devices) or "-",
                " ".join(ids) or "-",
            )
        )
    return rows


def _seconds(iso: str | None) -> str:
    """``2026-12-02T16:49:28.411114+00:00`` as ``2026-12-02T16:49:28Z`` (text only)."""
    return "-" if iso is None else f"{iso[:19]}Z"


def _publisher_line(publisher: Mapping[str, Any]) -> str:
    if publisher["failures"]:
        state = (
            f"FAILING since {_seconds(publisher['failing_since'])} "
            f"({publisher['failures']} attempt(s)): {publisher['last_error']}"
        )
    elif publisher.get("standby"):
        state = "standing by: another instance of the driver publishes (rolling update)"
    elif publisher["last_success"] is None:
        state = "not published yet"
    else:
        state = f"last publish ok at {_seconds(publisher['last_success'])}"
        state += "" if publisher["synced"] else ", newer devices pending"
    return f"    publisher: {state}; {publisher['errors_total']} failed attempt(s) since start"


def dra_text(drivers: Mapping[str, Mapping[str, Any]], *, devices: bool = True) -> str:
    """Return each DRA driver's entry as text: state, pool, publisher, devices, claims.

    ``devices=False`` leaves the device rows out (``simulate`` lists the published
    slices' devices already).
    """
    from host._status_client import TEXT_DEVICES

    blocks = []
    for name, driver in drivers.items():
        registration = driver["registration"]
        state = registration["state"]
        if registration["error"]:
            state += f": {registration['error']}"
        if driver.get("state") == "stopped":
            state = "stopped"
        pool = driver["pool"]
        lines = [
            f"DRA driver {name}  plugin {driver['plugin']}  {state}",
            f"    pool {pool['name']}  generation {pool['generation']}  "
            f"ResourceSlices {len(driver['slices'])}  devices {driver['device_count']} "
            f"({driver['healthy']} healthy, {driver['unhealthy']} unhealthy)  "
            f"prepared claims {driver['prepared_claims']}",
            _publisher_line(driver["publisher"]),
        ]
        if driver["scanner"]["failed"]:
            lines.append("    scanner FAILED: every device tainted until it reports again")
        shown = driver["devices"][:TEXT_DEVICES] if devices else []  # as many as fetched
        if shown:
            messages = any(d["health_message"] for d in shown)
            head = ("DEVICE", "TYPE", "ID", "HEALTH", "TAINTS") + (("MESSAGE",) if messages else ())
            rows = [head] + [
                (
                    d["name"],
                    d["type"],
                    d["id"],
                    d.get("reported_health") or d["health"],
                    " ".join(d["taints"]) or "-",
                )
                + ((d["health_message"] or "-",) if messages else ())
                for d in shown
            ]
            lines += _table(rows)
            more = driver["device_count"] - len(shown)
            if more:
                unhealthy = driver["unhealthy"] - sum(d["health"] != HEALTHY for d in shown)
                lines.append(f"    ... {more} more ({unhealthy} unhealthy)")
        if driver["claims"]:
            lines += _table(_claim_rows(driver["claims"]))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
