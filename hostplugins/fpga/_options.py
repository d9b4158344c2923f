"""The FPGA plugin's options: declarations for the host and their validated form."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from host import ConfigError, Option

__all__ = ["MODES", "OPTIONS", "FpgaSettings"]

MODES = ("af", "region", "regiondevel")

OPTIONS = (
    Option(
        "mode",
        default="af",
        help="'af': one resource per accelerator function (af-...), one device per port; "
        "'region': one resource per FPGA interface (region-<id>), one device per region, "
        "programmed by the CRI hook; 'regiondevel': like region plus the FME node, no hook",
        choices=MODES,
    ),
    Option(
        "scan-interval",
        default=5.0,
        help="seconds between two scans of /sys/class/fpga or /sys/class/fpga_region",
    ),
)


def _error(message: str) -> ConfigError:
    return ConfigError(f"plugin 'fpga': {message}")


@dataclass(frozen=True, kw_only=True)
class FpgaSettings:
    """The FPGA plugin's validated settings; construction raises :class:`ConfigError`."""

    mode: str = "af"
    scan_interval: float = 5.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise _error(
                f"invalid value for option mode: {self.mode!r}; valid values: {', '.join(MODES)}"
            )
        if not (math.isfinite(self.scan_interval) and self.scan_interval > 0):
            raise _error(f"option scan-interval must be > 0 seconds, got {self.scan_interval}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> FpgaSettings:
        """Build settings from the host's parsed option values (missing ones take defaults)."""
        interval = options.get("scan-interval", 5.0)
        if isinstance(interval, bool):
            raise _error(f"option scan-interval must be a number of seconds, got {interval!r}")
        try:
            seconds = float(interval)
        except (TypeError, ValueError):
            raise _error(
                f"option scan-interval must be a number of seconds, got {interval!r}"
            ) from None
        return cls(mode=options.get("mode", "af"), scan_interval=seconds)
