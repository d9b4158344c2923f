"""Built-in plugin ``fpga``: Intel FPGAs as ``fpga.intel.com`` resources.

The Python counterpart of Intel's ``fpga_plugin``, for the OPAE (``/sys/class/fpga``)
and DFL (``/sys/class/fpga_region``) drivers, in mode ``af`` (default), ``region`` or
``regiondevel`` (``--set fpga.mode=region``).
"""

from __future__ import annotations

from host import Option, PluginConfig, hookimpl
from hostplugins.fpga._backends import (
    DFL,
    OPAE,
    Backend,
    FpgaDriverNotLoadedError,
    detect_backend,
)
from hostplugins.fpga._options import OPTIONS, FpgaSettings
from hostplugins.fpga._scanner import (
    ANNOTATION_NAME,
    CDI_KIND,
    CRI_HOOK_PATH,
    NAMESPACE,
    FpgaScanner,
    afu_resource_name,
    scan_once,
)

__all__ = [
    "ANNOTATION_NAME",
    "CDI_KIND",
    "CRI_HOOK_PATH",
    "DFL",
    "NAMESPACE",
    "OPAE",
    "Backend",
    "FpgaDriverNotLoadedError",
    "FpgaScanner",
    "FpgaSettings",
    "afu_resource_name",
    "detect_backend",
    "devplugin_options",
    "devplugin_scanners",
    "scan_once",
]


@hookimpl
def devplugin_options() -> list[Option]:
    """Declare the FPGA plugin's options."""
    return list(OPTIONS)


@hookimpl
def devplugin_scanners(config: PluginConfig) -> list[tuple[str, FpgaScanner]]:
    """Register one FPGA scanner under ``fpga.intel.com``.

    Invalid options raise ConfigError. A node without an FPGA driver is no error: the
    scanner reports no devices until the driver's sysfs class directory appears.
    """
    settings = FpgaSettings.from_options(config.options)
    scanner = FpgaScanner(settings, sysfs_root=config.sysfs_root, devfs_root=config.devfs_root)
    return [(NAMESPACE, scanner)]
