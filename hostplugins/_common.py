"""What the ``npu``, ``dlb`` and ``sgx`` plugins share: sysfs reads, option checks, the scan loop.

Re-exported from the modules every built-in plugin shares: ``hostplugins._sysfs``
(with the host-path rule, :func:`~hostplugins._sysfs.device_spec`),
``hostplugins._options`` and ``hostplugins._scanloop``.
"""

from __future__ import annotations

from hostplugins._options import as_bool, as_int, as_seconds, plugin_error
from hostplugins._scanloop import PeriodicScanner, add_problem, no_hardware
from hostplugins._sysfs import device_spec, natural_key, numa_topology, read_attr

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
