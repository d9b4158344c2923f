"""The DLB plugin's options: declarations for the host and their validated form."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from host import Option
from hostplugins._common import as_seconds, plugin_error

__all__ = ["OPTIONS", "DlbSettings"]

PLUGIN = "dlb"

OPTIONS = (
    Option(
        "scan-interval",
        default=5.0,
        help="seconds between two scans of /dev/dlb* and /sys/class/dlb2",
    ),
)


@dataclass(frozen=True, kw_only=True)
class DlbSettings:
    """The DLB plugin's validated settings; construction raises :class:`ConfigError`."""

    scan_interval: float = 5.0

    def __post_init__(self) -> None:
        if not self.scan_interval > 0:
            raise plugin_error(
                PLUGIN, f"option scan-interval must be > 0 seconds, got {self.scan_interval}"
            )

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> DlbSettings:
        """Build settings from the host's parsed option values (missing ones take defaults)."""
        return cls(
            scan_interval=as_seconds(PLUGIN, "scan-interval", options.get("scan-interval", 5.0))
        )
