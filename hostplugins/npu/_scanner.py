"""The NPU scanner: Intel NPUs in ``<sysfs>/class/accel``, their nodes in ``<devfs>/accel``.

:func:`scan_once` is the whole discovery logic, synchronous and side-effect free, so
tests call it against fake trees; :class:`NpuScanner` runs it periodically.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from host.deviceplugin import HEALTHY, DeviceInfo, DeviceTree
from hostplugins._common import (
    PeriodicScanner,
    add_problem,
    device_spec,
    natural_key,
    no_hardware,
    numa_topology,
    read_attr,
)
from hostplugins.npu._options import NpuSettings

__all__ = ["DEVICE_TYPE", "NAMESPACE", "NPU_DEVICE_IDS", "NpuScanner", "scan_once"]

log = logging.getLogger("hostplugins.npu")

NAMESPACE = "npu.intel.com"
DEVICE_TYPE = "accel"
VENDOR_INTEL = "0x8086"
NPU_DEVICE_IDS = frozenset({"0x7e4c", "0x643e", "0xad1d", "0x7d1d", "0xb03e", "0xfd3e", "0xd71d"})
"""PCI device IDs of the Intel NPUs (VPUs) the plugin exposes; other accel devices are not NPUs."""

_ACCEL = re.compile(r"accel[0-9]+")


def _is_intel_npu(device_dir: Path) -> bool:
    if read_attr(device_dir / "vendor") != VENDOR_INTEL:
        return False
    text = read_attr(device_dir / "device")
    # Only the first line counts, as in Go; surrounding blanks do not matter here.
    device_id = text.splitlines()[0].strip() if text else ""
    return device_id in NPU_DEVICE_IDS


def scan_once(
    settings: NpuSettings,
    *,
    sysfs_root: Path,
    devfs_root: Path,
    problems: list[str] | None = None,
) -> DeviceTree:
    """Scan the NPUs once and return the device tree.

    Every ``accelN`` of ``<sysfs>/class/accel`` whose PCI device is an Intel NPU (vendor
    ``0x8086``, device ID in :data:`NPU_DEVICE_IDS`) and whose node ``<devfs>/accel/accelN``
    exists becomes ``shared-dev-num`` devices ``accelN-0`` ... of resource ``accel``.
    No ``class/accel`` directory (no accel driver loaded) gives an empty tree and a
    problem; what had to be skipped is appended to ``problems`` (logged when None).
    """
    class_dir = sysfs_root / "class" / "accel"
    accel_dir = devfs_root / "accel"
    tree = DeviceTree()
    try:
        names = sorted((n for n in os.listdir(class_dir) if _ACCEL.fullmatch(n)), key=natural_key)
    except FileNotFoundError:
        no_hardware(problems, f"no accel driver loaded ({class_dir} does not exist)", log)
        return tree
    except OSError as err:
        add_problem(problems, f"cannot list NPUs in {class_dir}: {err.strerror}", log)
        return tree
    for name in names:
        device_dir = class_dir / name / "device"
        if not _is_intel_npu(device_dir):
            continue
        node = accel_dir / name
        if not node.exists():
            add_problem(problems, f"{name}: device node {node} does not exist; not exposed", log)
            continue
        info = DeviceInfo(
            state=HEALTHY,
            nodes=(device_spec(node, devfs_root),),
            topology=numa_topology(device_dir, sysfs_root),
        )
        for share in range(settings.shared_dev_num):
            tree.add_device(DEVICE_TYPE, f"{name}-{share}", info)
    return tree


class NpuScanner(PeriodicScanner):
    """Scans Intel NPUs every ``settings.scan_interval`` seconds and on :meth:`rescan`.

    Implements the framework's Scanner protocol only: Allocate is the framework's
    default (the Go plugin's Allocate answers "use the default method").
    """

    def __init__(
        self,
        settings: NpuSettings | None = None,
        *,
        sysfs_root: Path | str = "/sys",
        devfs_root: Path | str = "/dev",
    ) -> None:
        self.settings = settings or NpuSettings()
        self.sysfs_root = Path(sysfs_root)
        self.devfs_root = Path(devfs_root)
        super().__init__(interval=self.settings.scan_interval, logger=log, namespace=NAMESPACE)

    def device_types(self) -> list[str]:
        """``accel``: the only device type."""
        return [DEVICE_TYPE]

    def scan_once(self, problems: list[str] | None = None) -> DeviceTree:
        """Scan once with this scanner's settings (see :func:`scan_once`)."""
        return scan_once(
            self.settings,
            sysfs_root=self.sysfs_root,
            devfs_root=self.devfs_root,
            problems=problems,
        )
