"""Built-in plugin ``qat``: Intel QuickAssist VFs for DPDK as ``qat.intel.com`` resources.

The Python counterpart of Intel's ``qat_plugin`` (its ``dpdkdrv`` backend). Each QAT
VF is a device ``<VF PCI address>`` of resource ``qat.intel.com/<services>``: for
Gen4+ VFs the services the PF is configured for (``cy`` for ``sym;asym``, ``dc``,
``sym``, ``asym``, ``asym-dc``, ...), from ``<pf>/qat/cfg_services`` or debugfs
``dev_cfg``; ``generic`` otherwise. A container gets the VF's DPDK nodes
(``/dev/vfio/<group>`` and ``/dev/vfio/vfio``, or ``/dev/uioN`` and its
``/sys/class/uio`` mount) and envs ``QAT0``, ``QAT1``, ... holding the addresses.
A PF whose debugfs heartbeat reads ``-1`` makes its VFs Unhealthy.

Options (``--set qat.KEY=VALUE``)
=================================
``dpdk-driver`` (``vfio-pci``), ``kernel-vf-drivers`` (``4xxxvf,420xxvf``),
``max-num-devices`` (64), ``allocation-policy`` (``none``, ``packed``, ``balanced``),
``rebind-vfs`` (false), ``scan-interval`` (5 seconds).

Departures from the Go plugin, on purpose
=========================================
* VFs are rebound to the DPDK driver only with ``rebind-vfs = true`` (writing
  ``driver_override``, the old driver's ``unbind`` and the new one's ``bind``, only
  existing files under ``--sysfs-root``). By default a VF on another driver, or on
  none, is reported Unhealthy without nodes and a warning says what to do; a host
  that rebinds devices unasked is dangerous. A failed rebind or a missing DPDK node
  is the same kind of per-VF problem, never a failed scan (Go exited the process).
* ``QAT<n>`` envs are renumbered per container (Go shared one map across the
  containers of an Allocate, so later containers got earlier ones' VFs too).
* debugfs is ``<sysfs-root>/kernel/debug`` for every PF, so ``dev_cfg`` and the
  heartbeat of a PF behind a PCI bridge are found (Go derived the root from the PF's
  path and found only PFs directly under a root complex).
* ``allocation-policy`` ``none`` is the default value rather than "flag not given";
  kubelet's must-include IDs always come first in a preferred allocation.
* VFs are taken in index order (``virtfn2`` before ``virtfn10``) before
  ``max-num-devices`` truncates; containers see nodes under ``/dev`` and ``/sys``
  whatever the roots are.
"""

from __future__ import annotations

from host import Option, PluginConfig, hookimpl
from hostplugins.qat._options import OPTIONS, VF_DRIVERS, QatSettings
from hostplugins.qat._scanner import QatScanner, renumber_envs, scan_once

__all__ = [
    "NAMESPACE",
    "VF_DRIVERS",
    "QatScanner",
    "QatSettings",
    "devplugin_options",
    "devplugin_scanners",
    "renumber_envs",
    "scan_once",
]

NAMESPACE = "qat.intel.com"


@hookimpl
def devplugin_options() -> list[Option]:
    """Declare the QAT plugin's options."""
    return list(OPTIONS)


@hookimpl
def devplugin_scanners(config: PluginConfig) -> list[tuple[str, QatScanner]]:
    """Register one QAT scanner under ``qat.intel.com``; invalid options raise ConfigError."""
    settings = QatSettings.from_options(config.options)
    scanner = QatScanner(settings, sysfs_root=config.sysfs_root, devfs_root=config.devfs_root)
    return [(NAMESPACE, scanner)]
