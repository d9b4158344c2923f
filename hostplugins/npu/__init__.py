"""Built-in plugin ``npu``: Intel NPUs as the resource ``npu.intel.com/accel``.

The Python counterpart of Intel's ``npu_plugin``. Options are set with
``--set npu.KEY=VALUE``; ``devplugin-host plugins`` lists them.

What it reads
=============
``<sysfs>/class/accel/accelN`` (only names ``accel`` + digits), whose
``device/vendor`` must be ``0x8086`` and the first line of ``device/device`` one of
the NPU IDs in :data:`NPU_DEVICE_IDS`; the node ``<devfs>/accel/accelN`` must exist.
Each such NPU is ``shared-dev-num`` devices ``accelN-0`` ... ``accelN-<n-1>``, all
Healthy, with the node ``rw`` and the NUMA node of the PCI device.

Options
=======
``shared-dev-num`` (default 1)
    How many containers may share one NPU; must be >= 1.
``scan-interval`` (default 5 seconds)
    How often ``/sys/class/accel`` is scanned again (hot-plug).

Departures from the Go plugin
=============================
* ``-prefix`` is the host's ``--sysfs-root``/``--devfs-root``.
* No ``/sys/class/accel`` (no accel driver loaded) is an empty tree and one warning;
  Go's Scan returned the error, which ended the whole process.
* Blanks around the device ID are ignored (Go compares the raw first line).
* The device count it logs is the real one (Go's is always 0).
"""

from __future__ import annotations

from host import Option, PluginConfig, hookimpl
from hostplugins.npu._options import OPTIONS, NpuSettings
from hostplugins.npu._scanner import (
    DEVICE_TYPE,
    NAMESPACE,
    NPU_DEVICE_IDS,
    NpuScanner,
    scan_once,
)

__all__ = [
    "DEVICE_TYPE",
    "NAMESPACE",
    "NPU_DEVICE_IDS",
    "NpuScanner",
    "NpuSettings",
    "devplugin_options",
    "devplugin_scanners",
    "scan_once",
]


@hookimpl
def devplugin_options() -> list[Option]:
    """Declare the NPU plugin's options."""
    return list(OPTIONS)


@hookimpl
def devplugin_scanners(config: PluginConfig) -> list[tuple[str, NpuScanner]]:
    """Register one NPU scanner under ``npu.intel.com``; invalid options raise ConfigError."""
    settings = NpuSettings.from_options(config.options)
    scanner = NpuScanner(settings, sysfs_root=config.sysfs_root, devfs_root=config.devfs_root)
    return [(NAMESPACE, scanner)]
