"""What the ``npu``, ``dlb`` and ``sgx`` plugins share: sysfs reads, option checks, the scan loop.

Everything but ``device_spec`` is re-exported from the modules every built-in plugin
shares: ``hostplugins._sysfs``, ``hostplugins._options`` and ``hostplugins._scanloop``.
"""

from __future__ import annotations

from pathlib import Path

from host.deviceplugin import DeviceSpec
from hostplugins._options import as_bool, as_int, as_seconds, plugin_error
from hostplugins._scanloop import PeriodicScanner, add_problem, no_hardware
from hostplugins._sysfs import natural_key, numa_topology, read_attr

__all__ = [
    "PeriodicScanner",
    "add_problem",
    "as_bool",
    "as_int",
    "as_seconds",
    "device_spec",
    "natural_key",
    "no_hardware",
    "numa_topology",
    "plugin_error",
    "read_attr",
]


def device_spec(path: Path) -> DeviceSpec:
    """Return the Go plugins' ``S(path)``: the node at the same path in the container, ``rw``."""
    return DeviceSpec(host_path=str(path), container_path=str(path), permissions="rw")
