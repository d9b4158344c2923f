"""Built-in plugin ``dsa``: Intel Data Streaming Accelerator work queues as ``dsa.intel.com``.

The Python counterpart of Intel's ``dsa_plugin``. With ``driver = idxd`` (the default)
every enabled work queue ``<sysfs>/bus/dsa/devices/dsa*/wq*`` is a device of resource
``dsa.intel.com/wq-<type>-<mode>`` (e.g. ``wq-user-dedicated``), ID
``wq-<type>-<mode>-<wq>-<i>``; a ``user`` queue brings ``/dev/dsa/<wq>`` and its
``/dev/char/M:m`` link, and a ``shared`` queue is offered ``shared-dev-num`` times.
With ``driver = vfio-pci`` whole DSA devices bound to vfio-pci are
``dsa.intel.com/vfio`` (ID = PCI address, env ``VFIO_BDF0..`` per container).

Options (``--set dsa.KEY=VALUE``): ``shared-dev-num`` (1), ``driver`` (``idxd`` or
``vfio-pci``), ``scan-interval`` (5 seconds). See :mod:`hostplugins.idxd` for how
this differs from the Go plugin.
"""

from __future__ import annotations

import logging

from host import Option, PluginConfig, hookimpl
from hostplugins.idxd import (
    DSA,
    DSA_VFIO_IDS,
    IdxdScanner,
    IdxdSettings,
    VfioScanner,
    idxd_options,
)

__all__ = ["NAMESPACE", "devplugin_options", "devplugin_scanners"]

NAMESPACE = DSA.namespace

log = logging.getLogger("hostplugins.dsa")


@hookimpl
def devplugin_options() -> list[Option]:
    """Declare ``shared-dev-num``, ``driver`` and ``scan-interval``."""
    return list(idxd_options(DSA))


@hookimpl
def devplugin_scanners(config: PluginConfig) -> list[tuple[str, IdxdScanner | VfioScanner]]:
    """Register one scanner under ``dsa.intel.com``; invalid options raise ConfigError."""
    settings = IdxdSettings.from_options(DSA, config.options)
    if settings.driver == "vfio-pci":
        if settings.shared_dev_num != 1:
            log.warning(
                "plugin 'dsa': option shared-dev-num=%d is ignored with driver vfio-pci "
                "(a whole device goes to one container)",
                settings.shared_dev_num,
            )
        vfio = VfioScanner(
            DSA_VFIO_IDS,
            sysfs_root=config.sysfs_root,
            devfs_root=config.devfs_root,
            scan_interval=settings.scan_interval,
            log=log,
        )
        return [(NAMESPACE, vfio)]
    scanner = IdxdScanner(DSA, settings, sysfs_root=config.sysfs_root, devfs_root=config.devfs_root)
    return [(NAMESPACE, scanner)]
