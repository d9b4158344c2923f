"""The NPU plugin's options: declarations for the host and their validated form."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from host import Option
from hostplugins._common import as_int, as_seconds, plugin_error

__all__ = ["OPTIONS", "NpuSettings"]

PLUGIN = "npu"

OPTIONS = (
    Option(
        "shared-dev-num",
        default=1,
        help="number of containers that may share one NPU: each gets IDs accelN-0..accelN-(n-1)",
    ),
    Option(
        "scan-interval",
        default=5.0,
        help="seconds between two scans of /sys/class/accel",
    ),
)


@dataclass(frozen=True, kw_only=True)
class NpuSettings:
    """The NPU plugin's validated settings; construction raises :class:`ConfigError`."""

    shared_dev_num: int = 1
    scan_interval: float = 5.0

    def __post_init__(self) -> None:
        if self.shared_dev_num < 1:
            raise plugin_error(
                PLUGIN,
                "option shared-dev-num must be >= 1 (the number of containers sharing "
                f"one NPU), got {self.shared_dev_num}",
            )
        if not self.scan_interval > 0:
            raise plugin_error(
                PLUGIN, f"option scan-interval must be > 0 seconds, got {self.scan_interval}"
            )

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> NpuSettings:
        """Build settings from the host's parsed option values (missing ones take defaults)."""
        return cls(
            shared_dev_num=as_int(PLUGIN, "shared-dev-num", options.get("shared-dev-num", 1)),
            scan_interval=as_seconds(PLUGIN, "scan-interval", options.get("scan-interval", 5.0)),
        )
