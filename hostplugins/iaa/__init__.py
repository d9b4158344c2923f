"""Built-in plugin ``iaa``: Intel In-Memory Analytics Accelerator work queues as ``iaa.intel.com``.

The Python counterpart of Intel's ``iaa_plugin``: every enabled work queue
``<sysfs>/bus/dsa/devices/iax*/wq*`` is a device of resource
``iaa.intel.com/wq-<type>-<mode>`` (e.g. ``wq-user-shared``), ID
``wq-<type>-<mode>-<wq>-<i>``; a ``user`` queue brings ``/dev/iax/<wq>`` and its
``/dev/char/M:m`` link, and a ``shared`` queue is offered ``shared-dev-num`` times.

Options (``--set iaa.KEY=VALUE``): ``shared-dev-num`` (1), ``scan-interval`` (5
seconds). See :mod:`hostplugins.idxd` for how this differs from the Go plugin.
"""

from __future__ import annotations

from host import Option, PluginConfig, hookimpl
from hostplugins.idxd import IAA, IdxdScanner, IdxdSettings, idxd_options

__all__ = ["NAMESPACE", "devplugin_options", "devplugin_scanners"]

NAMESPACE = IAA.namespace


@hookimpl
def devplugin_options() -> list[Option]:
    """Declare ``shared-dev-num`` and ``scan-interval``."""
    return list(idxd_options(IAA))


@hookimpl
def devplugin_scanners(config: PluginConfig) -> list[tuple[str, IdxdScanner]]:
    """Register one scanner under ``iaa.intel.com``; invalid options raise ConfigError."""
    settings = IdxdSettings.from_options(IAA, config.options)
    scanner = IdxdScanner(IAA, settings, sysfs_root=config.sysfs_root, devfs_root=config.devfs_root)
    return [(NAMESPACE, scanner)]
