"""The dsa and iaa plugins' options: declarations for the host and their validated form."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from host import ConfigError, Option

__all__ = ["DSA", "DSA_DRIVERS", "IAA", "IdxdKind", "IdxdSettings", "idxd_options"]

DSA_DRIVERS = ("idxd", "vfio-pci")


@dataclass(frozen=True)
class IdxdKind:
    """Which idxd accelerator a plugin serves: DSA or IAA (the only differences)."""

    plugin: str
    """The plugin name, as in ``--enable`` and error messages: ``dsa``, ``iaa``."""
    namespace: str
    """The resource namespace: ``dsa.intel.com``, ``iaa.intel.com``."""
    prefix: str
    """The device name prefix: ``<sysfs>/bus/dsa/devices/<prefix>*/wq*``, ``<devfs>/<prefix>/``."""


DSA = IdxdKind(plugin="dsa", namespace="dsa.intel.com", prefix="dsa")
"""Intel Data Streaming Accelerator: ``dsa*`` devices, nodes in ``/dev/dsa``."""
IAA = IdxdKind(plugin="iaa", namespace="iaa.intel.com", prefix="iax")
"""Intel In-Memory Analytics Accelerator: ``iax*`` devices, nodes in ``/dev/iax``."""


def idxd_options(kind: IdxdKind) -> tuple[Option, ...]:
    """Return the options of ``kind``'s plugin (``driver`` only for DSA)."""
    options = [
        Option(
            "shared-dev-num",
            default=1,
            help="number of containers that may share one shared-mode work queue: "
            "each gets IDs wq-<type>-shared-<wq>-0..n-1 (dedicated queues are never shared)",
        ),
        Option(
            "scan-interval",
            default=5.0,
            help=f"seconds between two scans of /sys/bus/dsa/devices/{kind.prefix}*/wq*",
        ),
    ]
    if kind == DSA:
        options.insert(
            1,
            Option(
                "driver",
                default="idxd",
                help="'idxd': expose the enabled work queues (wq-<type>-<mode>); 'vfio-pci': "
                "expose whole DSA devices bound to vfio-pci as dsa.intel.com/vfio "
                "(shared-dev-num is ignored)",
                choices=DSA_DRIVERS,
            ),
        )
    return tuple(options)


@dataclass(frozen=True, kw_only=True)
class IdxdSettings:
    """A dsa or iaa plugin's validated settings; construction raises :class:`ConfigError`."""

    plugin: str = DSA.plugin
    """The plugin these settings are for (names it in error messages)."""
    shared_dev_num: int = 1
    driver: str = "idxd"
    scan_interval: float = 5.0

    def _error(self, message: str) -> ConfigError:
        return ConfigError(f"plugin {self.plugin!r}: {message}")

    def __post_init__(self) -> None:
        if self.shared_dev_num < 1:
            raise self._error(
                "option shared-dev-num must be >= 1 (the number of containers sharing one "
                f"shared work queue), got {self.shared_dev_num}"
            )
        if self.plugin == DSA.plugin:
            if self.driver not in DSA_DRIVERS:
                raise self._error(
                    f"invalid value for option driver: {self.driver!r}; "
                    f"valid values: {', '.join(DSA_DRIVERS)}"
                )
        elif self.driver != "idxd":
            raise self._error(f"only driver 'idxd' is supported, got {self.driver!r}")
        if not (math.isfinite(self.scan_interval) and self.scan_interval > 0):
            raise self._error(f"option scan-interval must be > 0 seconds, got {self.scan_interval}")

    @classmethod
    def from_options(cls, kind: IdxdKind, options: Mapping[str, Any]) -> IdxdSettings:
        """Build ``kind``'s settings from the host's parsed option values (defaults if missing).

        Raises :class:`ConfigError` for a value of the wrong type or out of range.
        """

        def error(message: str) -> ConfigError:
            return ConfigError(f"plugin {kind.plugin!r}: {message}")

        shared = options.get("shared-dev-num", 1)
        if isinstance(shared, bool) or not isinstance(shared, int | str):
            raise error(f"option shared-dev-num must be an integer, got {shared!r}")
        try:
            shared_dev_num = int(shared)
        except ValueError:
            raise error(f"option shared-dev-num must be an integer, got {shared!r}") from None
        interval = options.get("scan-interval", 5.0)
        if isinstance(interval, bool) or not isinstance(interval, int | float | str):
            raise error(f"option scan-interval must be a number of seconds, got {interval!r}")
        try:
            scan_interval = float(interval)
        except ValueError:
            raise error(
                f"option scan-interval must be a number of seconds, got {interval!r}"
            ) from None
        return cls(
            plugin=kind.plugin,
            shared_dev_num=shared_dev_num,
            driver=str(options.get("driver", "idxd")),
            scan_interval=scan_interval,
        )
