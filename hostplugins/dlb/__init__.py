"""Built-in plugin ``dlb``: Intel DLB 2.0 devices as ``dlb.intel.com/pf`` and ``dlb.intel.com/vf``.

The Python counterpart of Intel's ``dlb_plugin``. Options are set with
``--set dlb.KEY=VALUE``; ``devplugin-host plugins`` lists them.

What it reads
=============
Every ``<devfs>/dlb*`` entry, and for ``dlbN`` the file
``<sysfs>/class/dlb2/dlbN/device/sriov_numvfs``:

* ``0``: a PF without VFs, exposed as resource ``pf``;
* unreadable (VFs have no such file): a VF, exposed as resource ``vf``;
* anything else: a PF with VFs enabled, not exposed (its VFs are).

Device IDs are ``/dev/dlbN`` (the Go plugin's IDs are the node paths); each device is
its node ``rw``, Healthy, with the NUMA node of its PCI function.

Options
=======
``scan-interval`` (default 5 seconds)
    How often the nodes are scanned again (hot-plug). The Go plugin has no options.

Departures from the Go plugin
=============================
* IDs stay ``/dev/dlbN`` whatever the host's ``--devfs-root`` is, so they do not
  depend on where the host sees ``/dev``.
* A ``sriov_numvfs`` that reads ``-1`` is a PF with VFs (skipped), not a VF: only an
  unreadable file means a VF (Go used ``-1`` as its "unreadable" marker).
"""

from __future__ import annotations

from host import Option, PluginConfig, hookimpl
from hostplugins.dlb._options import OPTIONS, DlbSettings
from hostplugins.dlb._scanner import NAMESPACE, PF, VF, DlbScanner, device_kind, scan_once

__all__ = [
    "NAMESPACE",
    "PF",
    "VF",
    "DlbScanner",
    "DlbSettings",
    "device_kind",
    "devplugin_options",
    "devplugin_scanners",
    "scan_once",
]


@hookimpl
def devplugin_options() -> list[Option]:
    """Declare the DLB plugin's options."""
    return list(OPTIONS)


@hookimpl
def devplugin_scanners(config: PluginConfig) -> list[tuple[str, DlbScanner]]:
    """Register one DLB scanner under ``dlb.intel.com``; invalid options raise ConfigError."""
    settings = DlbSettings.from_options(config.options)
    scanner = DlbScanner(settings, sysfs_root=config.sysfs_root, devfs_root=config.devfs_root)
    return [(NAMESPACE, scanner)]
