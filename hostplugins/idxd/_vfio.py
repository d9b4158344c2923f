"""Whole PCI devices bound to ``vfio-pci`` as one ``vfio`` resource (Intel's ``pkg/vfio``).

The dsa plugin uses it with ``--set dsa.driver=vfio-pci``: DSA devices handed to
userspace (DPDK, VMs) as a whole, rather than their work queues.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from host.deviceplugin import HEALTHY, DeviceInfo, DeviceTree, pluginapi
from hostplugins.idxd._common import (
    PeriodicScanner,
    Problems,
    device_spec,
    numa_topology,
    read_attr,
    renumber_envs,
)

__all__ = ["DSA_VFIO_IDS", "ENV_PREFIX", "VFIO_DEVICE_TYPE", "VfioScanner", "scan_vfio_once"]

DSA_VFIO_IDS = frozenset({"0x0b25", "0x11fb", "0x1212"})
"""PCI device IDs of DSA devices (as in sysfs ``device`` files)."""
VFIO_DEVICE_TYPE = "vfio"
ENV_PREFIX = "VFIO_BDF"
VFIO_DRIVER = "vfio-pci"


def _driver(device_dir: Path) -> str:
    try:
        return os.path.basename(os.readlink(device_dir / "driver"))
    except OSError:
        return ""


def scan_vfio_once(
    device_ids: Iterable[str],
    *,
    sysfs_root: Path,
    devfs_root: Path,
    problems: list[str] | None = None,
    log: logging.Logger | None = None,
) -> DeviceTree:
    """Scan ``<sysfs>/bus/pci/devices`` once for ``device_ids`` bound to vfio-pci.

    Each such device is ``vfio/<BDF>`` with nodes ``<devfs>/vfio/<group>`` (``noiommu-``
    prefixed when the group is a no-IOMMU one) and ``<devfs>/vfio/vfio``, and env
    ``VFIO_BDF<n>=<BDF>`` (n from 1 in scan order; :meth:`VfioScanner.post_allocate`
    renumbers them per container). A matching device bound to another driver, or
    without an IOMMU group, is skipped with a problem. Never raises for sysfs contents.
    """
    found = Problems(problems, log or logging.getLogger("hostplugins.idxd"))
    wanted = frozenset(device_ids)
    tree = DeviceTree()
    vfio_dir = devfs_root / "vfio"
    number = 0
    for link in sorted((sysfs_root / "bus/pci/devices").glob("????:??:??.?")):
        bdf = link.name
        device_id = read_attr(link / "device")
        if device_id is None:
            found.add(f"PCI device {bdf}: cannot read {link / 'device'}; skipped")
            continue
        if device_id not in wanted:
            continue
        driver = _driver(link)
        if driver != VFIO_DRIVER:
            bound = f"bound to {driver}" if driver else "bound to no driver"
            found.add(f"PCI device {bdf} ({device_id}) is {bound}, not {VFIO_DRIVER}; not exposed")
            continue
        group_link = link / "iommu_group"
        if not group_link.exists():
            found.add(f"PCI device {bdf}: no IOMMU group ({group_link} missing); skipped")
            continue
        group = os.path.basename(os.path.realpath(group_link))
        if read_attr(group_link / "name") == "vfio-noiommu":
            group = f"noiommu-{group}"
        number += 1
        info = DeviceInfo(
            state=HEALTHY,
            nodes=(
                device_spec(vfio_dir / group, devfs_root),
                device_spec(vfio_dir / "vfio", devfs_root),
            ),
            envs={f"{ENV_PREFIX}{number}": bdf},
            topology=numa_topology(link, sysfs_root),
        )
        tree.add_device(VFIO_DEVICE_TYPE, bdf, info)
    return tree


class VfioScanner(PeriodicScanner):
    """Scans for ``device_ids`` bound to vfio-pci every ``scan_interval`` seconds.

    Implements Scanner and PostAllocator: Allocate is the framework's default, then
    the ``VFIO_BDF<n>`` envs of each container are renumbered from 0.
    """

    def __init__(
        self,
        device_ids: Iterable[str] = DSA_VFIO_IDS,
        *,
        sysfs_root: Path | str = "/sys",
        devfs_root: Path | str = "/dev",
        scan_interval: float = 5.0,
        log: logging.Logger | None = None,
    ) -> None:
        self.device_ids = frozenset(device_ids)
        self.sysfs_root = Path(sysfs_root)
        self.devfs_root = Path(devfs_root)
        super().__init__(scan_interval, log or logging.getLogger("hostplugins.idxd"))

    def __repr__(self) -> str:
        return f"VfioScanner({sorted(self.device_ids)}, sysfs_root={str(self.sysfs_root)!r})"

    def scan_once(self, problems: list[str] | None = None) -> DeviceTree:
        """Scan once (see :func:`scan_vfio_once`)."""
        return scan_vfio_once(
            self.device_ids,
            sysfs_root=self.sysfs_root,
            devfs_root=self.devfs_root,
            problems=problems,
            log=self.log,
        )

    def post_allocate(self, response: pluginapi.AllocateResponse) -> None:
        """Renumber each container's ``VFIO_BDF<n>`` envs to ``VFIO_BDF0`` .. in scan order."""
        renumber_envs(response, ENV_PREFIX)
