"""``devplugin-host status``: read a running host's ``/status`` and show it as ``simulate`` does."""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping
from typing import Any

from host._http import format_address, parse_address

__all__ = ["fetch_status", "status_text"]

TEXT_DEVICES = 10
"""Devices per resource the text view lists (as ``simulate``), so only these are fetched."""

_ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def fetch_status(address: str, timeout: float, devices: int | None = None) -> dict[str, Any]:
    """GET ``/status`` from the host at ``address`` (``HOST:PORT``).

    ``devices``: at most this many devices per resource (None: all of them).

    A bad address raises ConfigError; a host that cannot be reached, or that answers
    with anything but a JSON document, raises OSError with one line saying so.
    """
    host, port = parse_address(address, "--address")
    host = _ANY_ADDRESS.get(host, host)
    path = f"/status?devices={'all' if devices is None else devices}"
    url = f"http://{format_address(host, port)}{path}"
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise OSError(f"cannot reach a host at {url}: {reason or type(exc).__name__}") from None
    finally:
        connection.close()
    if response.status != 200:
        raise OSError(f"{url} answered {response.status} {response.reason}")
    try:
        document = json.loads(body)
    except ValueError:
        raise OSError(f"{url} did not answer JSON: is that a devplugin-host?") from None
    if not isinstance(document, dict) or "resources" not in document:
        raise OSError(f"{url} did not answer a host status: is that a devplugin-host?")
    return document


def status_text(document: Mapping[str, Any]) -> str:
    """Return the status as text: plugins, resources, DRA drivers, readiness.

    Resources as ``simulate`` shows them; each DRA driver with its registration, pool,
    publisher, devices and prepared claims (see :func:`host._dra_status.dra_text`).
    """
    from host._dra_status import dra_text
    from host._simulate_output import resources_table

    lines = [f"devplugin-host {document.get('version', '?')}"]
    disabled = []
    for plugin in document.get("plugins", []):
        if plugin["state"] == "disabled":
            disabled.append(plugin["name"])
            continue
        line = f"plugin {plugin['name']}  {plugin['source']}  {plugin['state']}"
        if plugin.get("error"):
            line += f": {plugin['error']}"
        lines.append(line)
    if disabled:
        lines.append(f"disabled: {', '.join(disabled)}")
    drivers = document.get("dra") or {}
    if document["resources"] or not drivers:
        lines += ["", resources_table(document["resources"])]
    if drivers:
        lines += ["", dra_text(drivers)]
    lines.append("")
    problems = document.get("not_ready", [])
    if document.get("ready"):
        every = "every resource registered and streamed"
        if drivers:
            every += ", every DRA driver registered and its slices published"
        lines.append(f"ready: every plugin loaded, {every}")
    else:
        lines.append("NOT READY:")
        for problem in problems:
            what = (
                problem.get("resource")
                or problem.get("dra_driver")
                or problem.get("namespace")
                or problem.get("plugin")
            )
            lines.append(f"    {what}: {problem['reason']}")
    return "\n".join(lines)
