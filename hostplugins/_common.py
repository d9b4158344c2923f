"""What the ``npu``, ``dlb`` and ``sgx`` plugins share: sysfs reads, option checks, the scan loop.

``read_attr``, ``natural_key`` and ``numa_topology`` repeat ``hostplugins.gpu._sysfs``
on purpose: that module is the GPU plugin's own, and a private module of one plugin
is no dependency for another. A shared ``hostplugins/_sysfs.py`` for every built-in
plugin would remove the copy.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import math
import os
import re
from pathlib import Path

from host import ConfigError
from host.deviceplugin import DeviceSpec, DeviceTree, Notifier, pluginapi

__all__ = [
    "PeriodicScanner",
    "add_problem",
    "as_bool",
    "as_int",
    "as_seconds",
    "device_spec",
    "natural_key",
    "numa_topology",
    "plugin_error",
    "read_attr",
]

_DIGITS = re.compile(r"(\d+)")


# --- sysfs ---------------------------------------------------------------------------------


def natural_key(name: str) -> tuple[str | int, ...]:
    """Sort key that orders ``accel2`` before ``accel10`` (plain sorting would not)."""
    return tuple(int(part) if part.isdigit() else part for part in _DIGITS.split(name))


def read_attr(path: Path) -> str | None:
    """Return a sysfs attribute's content, stripped, or None when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def add_problem(problems: list[str] | None, message: str, logger: logging.Logger) -> None:
    """Append ``message`` to ``problems``, or log it as a warning when there is no list."""
    if problems is None:
        logger.warning("%s", message)
    else:
        problems.append(message)


def device_spec(path: Path) -> pluginapi.DeviceSpec:
    """Return the Go plugins' ``S(path)``: the node at the same path in the container, ``rw``."""
    return DeviceSpec(host_path=str(path), container_path=str(path), permissions="rw")


def numa_topology(device_dir: Path, sysfs_root: Path) -> pluginapi.TopologyInfo | None:
    """Return the NUMA nodes of sysfs device ``device_dir`` (e.g. a PCI function), or None.

    Walks up from the device's real path while under ``<sysfs_root>/devices`` and stops
    at the first level reporting ``local_cpulist`` or a ``numa_node`` (``-1``: none),
    as the framework's lookup does from a device node. Starting from the sysfs
    directory the scanner already knows gives the same answer on a real system and
    also works in fake trees, whose device nodes are regular files.
    """
    devices = os.path.join(os.path.realpath(sysfs_root), "devices") + os.sep
    level = os.path.realpath(device_dir)
    while level.startswith(devices):
        cpus = read_attr(Path(level, "local_cpulist")) or ""
        numas = read_attr(Path(level, "numa_node")) or ""
        if numas == "-1":
            numas = ""
        if cpus or numas:
            ids = sorted({int(n) for n in numas.split(",") if n.strip().isdigit()})
            if not ids:
                return None
            return pluginapi.TopologyInfo(nodes=[pluginapi.NUMANode(ID=i) for i in ids])
        level = os.path.dirname(level)
    return None


# --- options -------------------------------------------------------------------------------


def plugin_error(plugin: str, message: str) -> ConfigError:
    """Return a configuration error in the house format: ``plugin 'npu': option ...``."""
    return ConfigError(f"plugin {plugin!r}: {message}")


def as_int(plugin: str, option: str, value: object) -> int:
    """Return ``value`` as an integer (an int, or a string holding one); else ConfigError."""
    if isinstance(value, bool):
        raise plugin_error(plugin, f"option {option} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise plugin_error(plugin, f"option {option} must be an integer, got {value!r}") from None


def as_seconds(plugin: str, option: str, value: object) -> float:
    """Return ``value`` as a finite number of seconds; else ConfigError (no range check)."""
    message = f"option {option} must be a number of seconds, got {value!r}"
    if isinstance(value, bool):
        raise plugin_error(plugin, message)
    try:
        seconds = float(value if isinstance(value, int | float) else str(value).strip())
    except ValueError:
        raise plugin_error(plugin, message) from None
    if not math.isfinite(seconds):
        raise plugin_error(plugin, message)
    return seconds


def as_bool(plugin: str, option: str, value: object) -> bool:
    """Return ``value`` as a boolean (a bool, or true/false, yes/no, on/off, 1/0)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise plugin_error(plugin, f"option {option} must be true or false, got {value!r}")


# --- the scan loop -------------------------------------------------------------------------


class PeriodicScanner(abc.ABC):
    """A scanner that runs :meth:`scan_once` in a worker thread and notifies every tree.

    With ``interval`` > 0 it scans again every ``interval`` seconds; with 0 it scans
    once and then only when :meth:`rescan` asks (the Go SGX plugin's "scan once, then
    block"). Problems a scan reports are logged when they first appear, not on every
    scan, and a change in the number of devices per resource is logged at info level.
    """

    def __init__(self, *, namespace: str, interval: float, logger: logging.Logger) -> None:
        self._namespace = namespace
        self._interval = interval
        self._log = logger
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._reported: set[str] = set()
        self._counts: dict[str, int] | None = None

    @abc.abstractmethod
    def scan_once(self, problems: list[str] | None = None) -> DeviceTree:
        """Scan once and return the tree; append what had to be skipped to ``problems``."""

    async def scan(self, notifier: Notifier) -> None:
        """Notify a fresh tree every interval (or once) and on :meth:`rescan`, until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        while True:
            self._wake.clear()
            problems: list[str] = []
            tree = await asyncio.to_thread(self.scan_once, problems)
            self._report(problems)
            self._log_counts(tree)
            notifier.notify(tree)
            if self._interval > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._interval)
            else:
                await self._wake.wait()

    def rescan(self) -> None:
        """Ask for a scan now rather than at the end of the interval; safe from any thread."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return  # not scanning yet: the first scan happens anyway
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to wake
            loop.call_soon_threadsafe(wake.set)

    def _report(self, problems: list[str]) -> None:
        for message in problems:
            if message not in self._reported:
                self._log.warning("%s", message)
        self._reported = set(problems)

    def _log_counts(self, tree: DeviceTree) -> None:
        # The Go NPU plugin logs a count that is always 0 (it asks for the type
        # "npu.intel.com/accel"); these are the counts of the tree's own types.
        counts = {dev_type: tree.device_type_count(dev_type) for dev_type in tree}
        if counts == self._counts:
            return
        self._counts = counts
        found = ", ".join(f"{self._namespace}/{t}: {n}" for t, n in sorted(counts.items()))
        self._log.info("%s devices: %s", self._namespace, found or "none")
