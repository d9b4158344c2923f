"""What the idxd and vfio scanners share: sysfs readers, node specs, env renumbering, the loop."""

from __future__ import annotations

import logging

from hostplugins import _scanloop
from hostplugins._allocation import renumber_envs
from hostplugins._scanloop import Problems
from hostplugins._sysfs import device_spec, natural_key, numa_topology, read_attr

__all__ = [
    "PeriodicScanner",
    "Problems",
    "device_spec",
    "natural_key",
    "numa_topology",
    "read_attr",
    "renumber_envs",
]


class PeriodicScanner(_scanloop.PeriodicScanner):
    """Runs :meth:`scan_once` every ``scan_interval`` seconds and on :meth:`rescan`.

    The shared loop of :mod:`hostplugins._scanloop`, with the ``scan_interval`` and
    ``log`` the idxd and vfio scanners read. Subclasses implement
    ``scan_once(problems)``; each problem is logged when it first appears, not on
    every scan.
    """

    def __init__(
        self, scan_interval: float, log: logging.Logger, namespace: str | None = None
    ) -> None:
        super().__init__(interval=scan_interval, logger=log, namespace=namespace)

    @property
    def scan_interval(self) -> float:
        """Seconds between scans."""
        return self._interval

    @property
    def log(self) -> logging.Logger:
        """Where problems are logged."""
        return self._log
