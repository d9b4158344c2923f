"""Shared implementation of the ``dsa`` and ``iaa`` plugins (Intel's ``pkg/idxd`` and ``pkg/vfio``).

Not a plugin itself: :mod:`hostplugins.dsa` and :mod:`hostplugins.iaa` are, each a thin
set of hooks over :class:`IdxdScanner` with its :class:`IdxdKind` (:data:`DSA`,
:data:`IAA`). DSA can also expose whole devices bound to ``vfio-pci``
(:class:`VfioScanner`).

Departures from the Go plugins, on purpose:

* A work queue that cannot be read, or whose device nodes fail the check, is left
  out with a warning; the other queues still serve (Go failed the whole scan and the
  process exited). The same for a vfio device without IOMMU group, and a device
  bound to no driver is simply not vfio-pci (Go failed the scan on it).
* The device-node check is a :class:`WqNodeLookup` the scanner is given, so it can be
  tested without ``mknod``; :class:`CharDeviceNodes` is the real one.
* NUMA topology is read from the work queue's (or PCI function's) sysfs directory,
  for every queue, rather than through the device nodes' ``/sys/dev/char`` entry.
* ``VFIO_BDF<n>`` envs are renumbered per container (Go shared one map across the
  containers of an Allocate, so later containers got earlier ones' devices too).
* A ``/dev/vfio/noiommu-<group>`` node is used for a no-IOMMU group, as QAT does.
* Containers see nodes under ``/dev`` whatever ``--devfs-root`` is.
"""

from __future__ import annotations

from hostplugins.idxd._common import renumber_envs
from hostplugins.idxd._options import DSA, DSA_DRIVERS, IAA, IdxdKind, IdxdSettings, idxd_options
from hostplugins.idxd._scanner import (
    CHAR_DEVICE_NODES,
    CharDeviceNodes,
    IdxdScanner,
    WqNodeError,
    WqNodeLookup,
    scan_once,
)
from hostplugins.idxd._vfio import (
    DSA_VFIO_IDS,
    VFIO_DEVICE_TYPE,
    VfioScanner,
    scan_vfio_once,
)

__all__ = [
    "CHAR_DEVICE_NODES",
    "DSA",
    "DSA_DRIVERS",
    "DSA_VFIO_IDS",
    "IAA",
    "VFIO_DEVICE_TYPE",
    "CharDeviceNodes",
    "IdxdKind",
    "IdxdScanner",
    "IdxdSettings",
    "VfioScanner",
    "WqNodeError",
    "WqNodeLookup",
    "idxd_options",
    "renumber_envs",
    "scan_once",
    "scan_vfio_once",
]
