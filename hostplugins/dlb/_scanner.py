"""The DLB scanner: ``<devfs>/dlb*`` nodes, split into PFs and VFs by ``<sysfs>/class/dlb2``.

:func:`scan_once` is the whole discovery logic, synchronous and side-effect free, so
tests call it against fake trees; :class:`DlbScanner` runs it periodically.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from host.deviceplugin import HEALTHY, DeviceInfo, DeviceTree
from hostplugins._common import (
    PeriodicScanner,
    add_problem,
    device_spec,
    natural_key,
    numa_topology,
    read_attr,
)
from hostplugins.dlb._options import DlbSettings

__all__ = ["NAMESPACE", "PF", "VF", "DlbScanner", "device_kind", "scan_once"]

log = logging.getLogger("hostplugins.dlb")

NAMESPACE = "dlb.intel.com"
PF = "pf"
VF = "vf"


def device_kind(class_dir: Path, name: str) -> str | None:
    """Return ``pf``, ``vf``, or None for the DLB device ``name`` (e.g. ``dlb0``).

    Decided by ``<class_dir>/<name>/device/sriov_numvfs``: ``0`` is a PF without
    VFs, which containers use directly; an unreadable file is a VF (only PFs have
    it); any other value is a PF with VFs enabled, whose VFs are the devices to use.
    """
    numvfs = read_attr(class_dir / name / "device" / "sriov_numvfs")
    if numvfs is None:
        return VF
    if numvfs == "0":
        return PF
    return None


def scan_once(
    settings: DlbSettings,
    *,
    sysfs_root: Path,
    devfs_root: Path,
    problems: list[str] | None = None,
) -> DeviceTree:
    """Scan the DLB devices once and return the device tree.

    Each ``<devfs>/dlb*`` entry is one device of resource ``pf`` or ``vf`` (see
    :func:`device_kind`), with that node ``rw``. Its ID is ``/dev/<name>``: the Go
    plugin's ID (the node's path) on a host whose devfs is ``/dev``, and the same
    whatever ``--devfs-root`` is. ``settings`` has nothing that changes the scan; it is
    taken for symmetry with the other plugins. No ``dlb*`` node gives an empty tree.
    """
    del settings  # only the scan interval, which the loop uses
    class_dir = sysfs_root / "class" / "dlb2"
    tree = DeviceTree()
    try:
        names = sorted((n for n in os.listdir(devfs_root) if n.startswith("dlb")), key=natural_key)
    except OSError as err:
        add_problem(problems, f"cannot list DLB nodes in {devfs_root}: {err.strerror}", log)
        return tree
    for name in names:
        kind = device_kind(class_dir, name)
        if kind is None:
            log.debug("%s: a PF with VFs enabled; its VFs are exposed instead", name)
            continue
        info = DeviceInfo(
            state=HEALTHY,
            nodes=(device_spec(devfs_root / name, devfs_root),),
            topology=numa_topology(class_dir / name / "device", sysfs_root),
        )
        tree.add_device(kind, f"/dev/{name}", info)
    return tree


class DlbScanner(PeriodicScanner):
    """Scans DLB devices every ``settings.scan_interval`` seconds and on :meth:`rescan`.

    Implements the framework's Scanner protocol only; Allocate is the default.
    """

    def __init__(
        self,
        settings: DlbSettings | None = None,
        *,
        sysfs_root: Path | str = "/sys",
        devfs_root: Path | str = "/dev",
    ) -> None:
        self.settings = settings or DlbSettings()
        self.sysfs_root = Path(sysfs_root)
        self.devfs_root = Path(devfs_root)
        super().__init__(interval=self.settings.scan_interval, logger=log, namespace=NAMESPACE)

    def device_types(self) -> list[str]:
        """``pf`` and ``vf``."""
        return [PF, VF]

    def scan_once(self, problems: list[str] | None = None) -> DeviceTree:
        """Scan once with this scanner's settings (see :func:`scan_once`)."""
        return scan_once(
            self.settings,
            sysfs_root=self.sysfs_root,
            devfs_root=self.devfs_root,
            problems=problems,
        )
