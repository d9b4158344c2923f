"""Built-in plugin ``gpu``: Intel GPUs as ``gpu.intel.com/<driver>`` resources.

The Python counterpart of Intel's ``gpu_plugin``: one resource per kernel driver
(``i915``, ``xe``), ``shared-dev-num`` shares per card, optional monitoring resources,
by-path mounts, a CDI spec per card and NUMA topology. Options are set with
``--set gpu.KEY=VALUE``; ``devplugin-host plugins`` lists them.
"""

from __future__ import annotations

from host import Option, PluginConfig, hookimpl
from hostplugins.gpu._options import OPTIONS, GpuSettings
from hostplugins.gpu._scanner import (
    ALWAYS_HEALTHY,
    CDI_KIND,
    AlwaysHealthy,
    GpuCard,
    GpuScanner,
    HealthSource,
    scan_once,
)

__all__ = [
    "ALWAYS_HEALTHY",
    "CDI_KIND",
    "NAMESPACE",
    "AlwaysHealthy",
    "GpuCard",
    "GpuScanner",
    "GpuSettings",
    "HealthSource",
    "devplugin_options",
    "devplugin_scanners",
    "scan_once",
]

NAMESPACE = "gpu.intel.com"


@hookimpl
def devplugin_options() -> list[Option]:
    """Declare the GPU plugin's options."""
    return list(OPTIONS)


@hookimpl
def devplugin_scanners(config: PluginConfig) -> list[tuple[str, GpuScanner]]:
    """Register one GPU scanner under ``gpu.intel.com``; invalid options raise ConfigError."""
    settings = GpuSettings.from_options(config.options)
    scanner = GpuScanner(settings, sysfs_root=config.sysfs_root, devfs_root=config.devfs_root)
    return [(NAMESPACE, scanner)]
