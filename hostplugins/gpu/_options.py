"""The GPU plugin's options: declarations for the host and their validated form."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from host import ConfigError, Option
from hostplugins._options import as_bool, as_float, as_int, choice, plugin_error

_PLUGIN = "gpu"

__all__ = [
    "ALLOCATION_POLICIES",
    "BYPATH_MODES",
    "MONITORING_MODES",
    "OPTIONS",
    "GpuSettings",
    "parse_pci_ids",
]

ALLOCATION_POLICIES = ("none", "balanced", "packed")
MONITORING_MODES = ("single", "split")
BYPATH_MODES = ("single", "none", "all")

_PCI_ID = re.compile(r"0x[0-9a-f]{4}")

OPTIONS = (
    Option(
        "shared-dev-num",
        default=1,
        help="number of containers that may share one GPU: each card gets IDs cardN-0..cardN-(n-1)",
    ),
    Option(
        "allocation-policy",
        default="none",
        help="which shares kubelet should prefer: 'none' (one share per card first, in the "
        "offered order), 'balanced' (spread over the cards with most free shares), "
        "'packed' (fill one card before the next)",
        choices=ALLOCATION_POLICIES,
    ),
    Option(
        "enable-monitoring",
        default=False,
        help="also expose a 'monitoring' resource (ID 'all') holding every card and MEI node",
    ),
    Option(
        "monitoring-mode",
        default="single",
        help="'single': one 'monitoring' resource; 'split': one '<driver>_monitoring' per driver",
        choices=MONITORING_MODES,
    ),
    Option(
        "bypath",
        default="single",
        help="mount /dev/dri/by-path entries into containers: 'single' (the card's own "
        "entries), 'none', or 'all' (the whole directory)",
        choices=BYPATH_MODES,
    ),
    Option(
        "allow-ids",
        default=(),
        type=lambda value: tuple(sorted(parse_pci_ids("allow-ids", value))),
        help="comma-separated PCI device IDs (e.g. 0x56a0,0x56a1); only these cards are used",
    ),
    Option(
        "deny-ids",
        default=(),
        type=lambda value: tuple(sorted(parse_pci_ids("deny-ids", value))),
        help="comma-separated PCI device IDs (e.g. 0x4905); these cards are ignored",
    ),
    Option(
        "scan-interval",
        default=5.0,
        help="seconds between two scans of /sys/class/drm",
    ),
)


def _error(message: str) -> ConfigError:
    return plugin_error(_PLUGIN, message)


def parse_pci_ids(option: str, value: object) -> frozenset[str]:
    """Parse a comma-separated PCI device ID list (or a list of IDs) into a set.

    Each ID is ``0x`` followed by four lower-case hex digits, as in sysfs
    ``device`` files. An empty value means "no list"; an empty item is an error.
    """
    if value is None or value == "":
        return frozenset()
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list | tuple | set | frozenset):
        items = [str(item) for item in value]
    else:
        raise _error(f"option {option} must be a comma-separated list of PCI IDs, got {value!r}")
    ids = set()
    for raw in items:
        item = raw.strip()
        if not item:
            raise _error(f"option {option}: empty PCI ID in {value!r}")
        if not _PCI_ID.fullmatch(item):
            raise _error(
                f"option {option}: invalid PCI ID: {item!r} "
                "(expected 0x and 4 lower-case hex digits, e.g. 0x56a0)"
            )
        ids.add(item)
    return frozenset(ids)


@dataclass(frozen=True, kw_only=True)
class GpuSettings:
    """The GPU plugin's validated settings (attribute names follow the option names).

    Construction validates every value and combination, raising :class:`ConfigError`
    with the meaning of the Go plugin's ``checkArgs`` messages.
    """

    shared_dev_num: int = 1
    allocation_policy: str = "none"
    enable_monitoring: bool = False
    monitoring_mode: str = "single"
    bypath: str = "single"
    allow_ids: frozenset[str] = frozenset()
    deny_ids: frozenset[str] = frozenset()
    scan_interval: float = 5.0

    def __post_init__(self) -> None:
        if self.shared_dev_num < 1:
            raise _error(
                "option shared-dev-num must be >= 1 (the number of containers sharing "
                f"one GPU), got {self.shared_dev_num}"
            )
        choice(_PLUGIN, "allocation-policy", self.allocation_policy, ALLOCATION_POLICIES)
        choice(_PLUGIN, "monitoring-mode", self.monitoring_mode, MONITORING_MODES)
        choice(_PLUGIN, "bypath", self.bypath, BYPATH_MODES)
        if self.allow_ids and self.deny_ids:
            raise _error("cannot use both allow-ids and deny-ids options at the same time")
        for option, ids in (("allow-ids", self.allow_ids), ("deny-ids", self.deny_ids)):
            parse_pci_ids(option, sorted(ids))
        if not (math.isfinite(self.scan_interval) and self.scan_interval > 0):
            raise _error(f"option scan-interval must be > 0 seconds, got {self.scan_interval}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> GpuSettings:
        """Build settings from the host's parsed option values (missing ones take defaults).

        Raises :class:`ConfigError` for a value of the wrong type, an unknown choice or
        an invalid combination.
        """
        defaults = {f.name.replace("_", "-"): f.default for f in fields(cls)}

        def get(name: str) -> Any:
            return options.get(name, defaults[name])

        return cls(
            shared_dev_num=as_int(_PLUGIN, "shared-dev-num", get("shared-dev-num")),
            allocation_policy=get("allocation-policy"),
            enable_monitoring=as_bool(
                _PLUGIN, "enable-monitoring", get("enable-monitoring"), empty_is_false=True
            ),
            monitoring_mode=get("monitoring-mode"),
            bypath=get("bypath"),
            allow_ids=parse_pci_ids("allow-ids", get("allow-ids")),
            deny_ids=parse_pci_ids("deny-ids", get("deny-ids")),
            scan_interval=as_float(_PLUGIN, "scan-interval", get("scan-interval")),
        )
