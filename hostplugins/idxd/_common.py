"""What the idxd and vfio scanners share: sysfs readers, node specs, env renumbering, the loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from pathlib import Path

from host.deviceplugin import DeviceSpec, DeviceTree, Notifier, pluginapi

__all__ = [
    "PeriodicScanner",
    "Problems",
    "device_spec",
    "natural_key",
    "numa_topology",
    "read_attr",
    "renumber_envs",
]

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[str | int, ...]:
    """Sort key that orders ``wq0.2`` before ``wq0.10`` (plain sorting would not)."""
    return tuple(int(part) if part.isdigit() else part for part in _DIGITS.split(name))


def read_attr(path: Path) -> str | None:
    """Return a sysfs attribute's content, stripped, or None when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def numa_topology(device_dir: Path, sysfs_root: Path) -> pluginapi.TopologyInfo | None:
    """Return the NUMA nodes of the sysfs device ``device_dir`` (a work queue, a PCI function).

    Walks up from the device's real path while under ``<sysfs_root>/devices`` and stops
    at the first level that reports ``local_cpulist`` or a ``numa_node`` (``-1`` means
    none), as the framework's lookup from a device node does. Starting from the sysfs
    directory the scanner already has gives the same answer on a real host and also
    works in fake trees, whose device nodes are regular files.
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


def device_spec(path: Path, devfs_root: Path) -> pluginapi.DeviceSpec:
    """Return the ``rw`` spec of device node ``path``.

    The host path is the node as found (under ``devfs_root``); the container sees it
    under ``/dev`` at the same relative place, whatever the root.
    """
    try:
        container = "/dev/" + path.relative_to(devfs_root).as_posix()
    except ValueError:
        container = str(path)
    return DeviceSpec(host_path=str(path), container_path=container, permissions="rw")


def renumber_envs(response: pluginapi.AllocateResponse, prefix: str) -> None:
    """Re-key the ``<prefix><n>`` envs of each container to ``<prefix>0`` .. ``<prefix>k-1``.

    Each container is numbered on its own, in the order of the scan's numbers; other
    envs are left alone. (The Go plugins shared one map across containers, so a
    second container also got the first one's devices.)
    """
    pattern = re.compile(re.escape(prefix) + r"(\d+)")
    for container in response.container_responses:
        numbered = sorted(
            (int(match.group(1)), key)
            for key in container.envs
            if (match := pattern.fullmatch(key)) is not None
        )
        values = [container.envs[key] for _, key in numbered]
        for _, key in numbered:
            del container.envs[key]
        for index, value in enumerate(values):
            container.envs[f"{prefix}{index}"] = value


class Problems:
    """Collects what a scan had to skip, so the loop can log each problem once."""

    def __init__(self, sink: list[str] | None, log: logging.Logger) -> None:
        self._sink = sink
        self._log = log

    def add(self, message: str) -> None:
        """Record ``message`` (logged as a warning at once when nobody collects them)."""
        if self._sink is None:
            self._log.warning("%s", message)
        else:
            self._sink.append(message)


class PeriodicScanner:
    """Runs :meth:`scan_once` every ``scan_interval`` seconds and on :meth:`rescan`.

    Subclasses implement ``scan_once(problems)``; each problem is logged when it first
    appears, not on every scan.
    """

    def __init__(self, scan_interval: float, log: logging.Logger) -> None:
        self.scan_interval = scan_interval
        self.log = log
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._reported: set[str] = set()

    def scan_once(self, problems: list[str] | None = None) -> DeviceTree:
        """Scan once and return the tree; what had to be skipped goes to ``problems``."""
        raise NotImplementedError

    async def scan(self, notifier: Notifier) -> None:
        """Notify a fresh tree every interval, or sooner after :meth:`rescan`; until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        while True:
            self._wake.clear()
            problems: list[str] = []
            tree = await asyncio.to_thread(self.scan_once, problems)
            self._report(problems)
            notifier.notify(tree)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.scan_interval)

    def rescan(self) -> None:
        """Ask for a scan now rather than at the end of the interval; safe from any thread."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return  # not scanning yet: the first scan happens anyway
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to wake
            loop.call_soon_threadsafe(wake.set)

    def _report(self, problems: list[str]) -> None:
        current = set(problems)
        for message in problems:
            if message not in self._reported:
                self.log.warning("%s", message)
        self._reported = current
