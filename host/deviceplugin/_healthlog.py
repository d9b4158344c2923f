"""Log lines for device health changes: one per change, grouped, escaped, rate-limited.

A device turning Unhealthy is worth a line with the plugin's reason; a scanner failing
with 1,000 devices is worth one line, not 1,000; and a plugin whose messages change at
every notify (a temperature in the text) must not flood the log. So:

* a line only when a device's health or message changes (a new healthy device without
  a message is no news);
* devices that changed to the same health and message share a line (5 names shown),
  at most :data:`GROUPS_PER_UPDATE` lines per update, the rest counted;
* at most :data:`LINES_PER_MINUTE` lines a minute per source (token bucket); the
  lines dropped are counted in the next line that gets through;
* the plugin's message is data: it is logged quoted and escaped (``repr``), never as
  text that could fake another line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import NamedTuple, Protocol

from host.deviceplugin._types import HEALTHY

__all__ = ["GROUPS_PER_UPDATE", "LINES_PER_MINUTE", "HealthChange", "HealthLog", "HealthState"]


class HealthState(Protocol):
    """A device's health as logged: its name, ``Healthy``/``Unhealthy``/..., the message."""

    @property
    def device(self) -> str:
        """The device's name as the reader knows it."""
        ...

    @property
    def health(self) -> str:
        """The device's health."""
        ...

    @property
    def message(self) -> str:
        """Why the device is in that state (may be empty)."""
        ...


class HealthChange(NamedTuple):
    """A :class:`HealthState` of a device-plugin device (its ID, state and message)."""

    device: str
    health: str
    message: str


GROUPS_PER_UPDATE = 10
"""Lines one update may log; the remaining changes are summed up in one more."""

LINES_PER_MINUTE = 30
"""Health lines one driver may log in a minute (bursts up to this many)."""

_NAMES_SHOWN = 5


class HealthLog:
    """Logs the health changes of one source's devices on ``logger``.

    ``source`` starts every line: ``"DRA driver gpu.intel.com"``, ``"resource
    gpu.intel.com/i915"``.
    """

    def __init__(self, source: str, logger: logging.Logger) -> None:
        self.source = source
        self._log = logger
        self._tokens = float(LINES_PER_MINUTE)
        self._refilled = time.monotonic()
        self._dropped = 0

    def changes(self, changed: Sequence[tuple[HealthState | None, HealthState]]) -> None:
        """Log ``(before, after)`` pairs of one update (``before`` None: a new device)."""
        groups: dict[tuple[str, str], list[str]] = {}
        for before, after in changed:
            if before is None and after.health == HEALTHY and not after.message:
                continue
            groups.setdefault((after.health, after.message), []).append(after.device)
        if not groups:
            return
        items = list(groups.items())
        for (health, message), devices in items[:GROUPS_PER_UPDATE]:
            self._line(health, message, devices)
        rest = items[GROUPS_PER_UPDATE:]
        if rest:
            count = sum(len(devices) for _, devices in rest)
            self._emit(
                logging.WARNING,
                "%s: %d more device(s) changed health (see /status)",
                count,
            )

    def _line(self, health: str, message: str, devices: list[str]) -> None:
        shown = ", ".join(devices[:_NAMES_SHOWN])
        if len(devices) > _NAMES_SHOWN:
            shown += f" and {len(devices) - _NAMES_SHOWN} more"
        noun = "device" if len(devices) == 1 else f"{len(devices)} devices"
        reason = repr(message) if message else "no message"
        level = logging.INFO if health == HEALTHY else logging.WARNING
        self._emit(level, "%s: %s %s now %s: %s", noun, shown, health, reason)

    def _emit(self, level: int, fmt: str, *args: object) -> None:
        if not self._log.isEnabledFor(level):
            return
        now = time.monotonic()
        self._tokens = min(
            float(LINES_PER_MINUTE),
            self._tokens + (now - self._refilled) * LINES_PER_MINUTE / 60.0,
        )
        self._refilled = now
        if self._tokens < 1.0:
            self._dropped += 1
            return
        self._tokens -= 1.0
        dropped, self._dropped = self._dropped, 0
        if dropped:
            fmt += " (%d health line(s) before this one not logged: over %d a minute)"
            args = (*args, dropped, LINES_PER_MINUTE)
        self._log.log(level, fmt, self.source, *args)
