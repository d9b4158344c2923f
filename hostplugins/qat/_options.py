"""The QAT plugin's options: declarations for the host and their validated form."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from host import ConfigError, Option
from hostplugins._options import as_bool, as_float, as_int, choice, plugin_error

_PLUGIN = "qat"

__all__ = [
    "ALLOCATION_POLICIES",
    "DEFAULT_KERNEL_VF_DRIVERS",
    "DPDK_DRIVERS",
    "OPTIONS",
    "VF_DRIVERS",
    "QatSettings",
    "parse_kernel_vf_drivers",
]

DPDK_DRIVERS = ("vfio-pci", "igb_uio")
ALLOCATION_POLICIES = ("none", "balanced", "packed")

VF_DRIVERS: Mapping[str, str] = MappingProxyType(
    {
        "0442": "dh895xccvf",
        "0443": "dh895xccvf",
        "18a1": "c4xxxvf",
        "19e3": "c3xxxvf",
        "4941": "4xxxvf",
        "4943": "4xxxvf",
        "4945": "4xxxvf",
        "4947": "420xxvf",
        "4949": "6xxxvf",
        "37c9": "c6xxvf",
        "6f55": "d15xxvf",
    }
)
"""QAT VF PCI device ID (sysfs ``device`` without ``0x``) -> its kernel VF driver."""

_KNOWN_VF_DRIVERS = tuple(sorted(set(VF_DRIVERS.values())))
DEFAULT_KERNEL_VF_DRIVERS = ("4xxxvf", "420xxvf")


def _error(message: str) -> ConfigError:
    return plugin_error(_PLUGIN, message)


def parse_kernel_vf_drivers(value: object) -> tuple[str, ...]:
    """Parse a comma-separated list (or a list) of kernel VF driver names.

    Each must be one of the QAT VF drivers (``4xxxvf``, ``c6xxvf``, ...); at least one.
    """
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list | tuple):
        items = [str(item) for item in value]
    else:
        raise _error(
            f"option kernel-vf-drivers must be a comma-separated list of drivers, got {value!r}"
        )
    drivers = tuple(dict.fromkeys(item.strip() for item in items))
    if not drivers or drivers == ("",):
        raise _error(
            "option kernel-vf-drivers must name at least one kernel VF driver; "
            f"known: {', '.join(_KNOWN_VF_DRIVERS)}"
        )
    for driver in drivers:
        if driver not in _KNOWN_VF_DRIVERS:
            raise _error(
                f"option kernel-vf-drivers: wrong kernel VF driver {driver!r}; "
                f"known: {', '.join(_KNOWN_VF_DRIVERS)}"
            )
    return drivers


OPTIONS = (
    Option(
        "dpdk-driver",
        default="vfio-pci",
        help="the driver VFs must be bound to for DPDK: 'vfio-pci' (nodes /dev/vfio/<group> "
        "and /dev/vfio/vfio) or 'igb_uio' (node /dev/uioN and a /sys/class/uio mount)",
        choices=DPDK_DRIVERS,
    ),
    Option(
        "kernel-vf-drivers",
        default=DEFAULT_KERNEL_VF_DRIVERS,
        type=parse_kernel_vf_drivers,
        help="comma-separated QAT kernel VF drivers whose devices to use: their PFs' VFs "
        f"(or, with no such PF, e.g. in a VM, VFs with a matching ID); "
        f"known: {', '.join(_KNOWN_VF_DRIVERS)}",
    ),
    Option(
        "max-num-devices",
        default=64,
        help="at most this many VFs are exposed (the first ones in PCI order)",
    ),
    Option(
        "allocation-policy",
        default="none",
        help="which VFs kubelet should prefer: 'none' (as offered), 'packed' (in PCI address "
        "order, filling one PF first), 'balanced' (spread over the PFs)",
        choices=ALLOCATION_POLICIES,
    ),
    Option(
        "rebind-vfs",
        default=False,
        help="bind VFs that are not on dpdk-driver to it by writing to sysfs (driver_override, "
        "unbind, bind); off: such VFs are reported Unhealthy until someone binds them",
    ),
    Option(
        "scan-interval",
        default=5.0,
        help="seconds between two scans of the QAT VFs",
    ),
)


@dataclass(frozen=True, kw_only=True)
class QatSettings:
    """The QAT plugin's validated settings (attribute names follow the option names).

    Construction validates every value, raising :class:`ConfigError` with the meaning
    of the Go plugin's messages (wrong DPDK driver, wrong kernel VF driver, wrong
    allocation policy).
    """

    dpdk_driver: str = "vfio-pci"
    kernel_vf_drivers: tuple[str, ...] = DEFAULT_KERNEL_VF_DRIVERS
    max_num_devices: int = 64
    allocation_policy: str = "none"
    rebind_vfs: bool = False
    scan_interval: float = 5.0

    def __post_init__(self) -> None:
        choice(_PLUGIN, "dpdk-driver", self.dpdk_driver, DPDK_DRIVERS)
        parse_kernel_vf_drivers(self.kernel_vf_drivers)
        if self.max_num_devices < 1:
            raise _error(f"option max-num-devices must be >= 1, got {self.max_num_devices}")
        choice(_PLUGIN, "allocation-policy", self.allocation_policy, ALLOCATION_POLICIES)
        if not (math.isfinite(self.scan_interval) and self.scan_interval > 0):
            raise _error(f"option scan-interval must be > 0 seconds, got {self.scan_interval}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> QatSettings:
        """Build settings from the host's parsed option values (missing ones take defaults).

        Raises :class:`ConfigError` for a value of the wrong type or an unknown choice.
        """
        defaults = {option.name: option.default for option in OPTIONS}

        def get(name: str) -> Any:
            return options.get(name, defaults[name])

        return cls(
            dpdk_driver=get("dpdk-driver"),
            kernel_vf_drivers=parse_kernel_vf_drivers(get("kernel-vf-drivers")),
            max_num_devices=as_int(_PLUGIN, "max-num-devices", get("max-num-devices")),
            allocation_policy=get("allocation-policy"),
            rebind_vfs=as_bool(_PLUGIN, "rebind-vfs", get("rebind-vfs"), empty_is_false=True),
            scan_interval=as_float(_PLUGIN, "scan-interval", get("scan-interval")),
        )
