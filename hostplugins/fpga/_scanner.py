"""The FPGA scanner: regions and AFU ports as ``fpga.intel.com`` resources, by mode.

* ``af``: resource ``af-<if[:3]>.<afu[:3]>.<base64url(interface id + AFU id)>`` per
  accelerator function, one device per port (ID = port name).
* ``region``: resource ``region-<interface id>``, one device per region (ID = FME
  name) holding its ports, a CDI spec running the FPGA CRI hook, and the
  ``com.intel.fpga.mode`` annotation added by :meth:`FpgaScanner.post_allocate`.
* ``regiondevel``: like ``region`` plus the FME node last; no hook, no annotation.

An all-f interface or AFU ID (what the driver reports after a firmware crash) makes
the device Unhealthy.
"""

from __future__ import annotations

import base64
import contextlib
import logging
from pathlib import Path
from typing import Any

from host.deviceplugin import (
    HEALTHY,
    UNHEALTHY,
    DeviceInfo,
    DeviceTree,
    pluginapi,
)
from hostplugins._scanloop import NoHardware, PeriodicScanner
from hostplugins._sysfs import device_spec, numa_ids, topology_of
from hostplugins.fpga._backends import (
    Backend,
    FpgaDriverNotLoadedError,
    Region,
    detect_backend,
    read_regions,
)
from hostplugins.fpga._options import FpgaSettings

__all__ = [
    "ANNOTATION_NAME",
    "CDI_KIND",
    "CRI_HOOK_PATH",
    "NAMESPACE",
    "FpgaScanner",
    "afu_resource_name",
    "scan_once",
]

log = logging.getLogger("hostplugins.fpga")

NAMESPACE = "fpga.intel.com"
ANNOTATION_NAME = "com.intel.fpga.mode"
CDI_VERSION = "0.5.0"
CDI_KIND = "intel.cdi.k8s.io/fpga"
CRI_HOOK_PATH = "/opt/intel/fpga-sw/intel-fpga-crihook"
_ALL_F = "f" * 32


def afu_resource_name(interface_id: str, afu_id: str) -> str:
    """Return the ``af`` mode device type of an accelerator function.

    ``af-`` + three digits of each ID + the URL-safe unpadded base64 of both IDs'
    bytes: 54 characters, within kubelet's 63-character limit, and unique per pair.
    """
    raw = bytes.fromhex(interface_id + afu_id)
    encoded = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return f"af-{interface_id[:3]}.{afu_id[:3]}.{encoded}"


def region_cdi_spec(region_id: str) -> dict[str, Any]:
    """Return the CDI spec that runs the FPGA CRI hook (it programs the region) at create."""
    return {
        "cdiVersion": CDI_VERSION,
        "kind": CDI_KIND,
        "devices": [
            {
                "name": region_id,
                "containerEdits": {"hooks": [{"hookName": "createRuntime", "path": CRI_HOOK_PATH}]},
            }
        ],
    }


def _afu_tree(regions: list[Region], sysfs_root: Path, devfs_root: Path) -> DeviceTree:
    tree = DeviceTree()
    for region in regions:
        for afu in region.afus:
            if afu.afu_id is None:  # only region modes skip reading it
                continue
            broken = _ALL_F in (afu.afu_id, region.interface_id)
            tree.add_device(
                afu_resource_name(region.interface_id, afu.afu_id),
                afu.id,
                DeviceInfo(
                    state=UNHEALTHY if broken else HEALTHY,
                    nodes=(device_spec(afu.dev_node, devfs_root),),
                    topology=topology_of(numa_ids(afu.sysfs_dir, sysfs_root)),
                ),
            )
    return tree


def _region_tree(
    regions: list[Region], mode: str, sysfs_root: Path, devfs_root: Path, problems: list[str]
) -> DeviceTree:
    tree = DeviceTree()
    for region in regions:
        if not region.afus:
            problems.append(f"region {region.id}: no usable AFU port; not exposed")
            continue
        nodes = [afu.dev_node for afu in region.afus]
        sysfs_dirs = [afu.sysfs_dir for afu in region.afus]
        if mode == "regiondevel":
            if not region.dev_node.exists():
                problems.append(
                    f"region {region.id}: FME device node {region.dev_node} does not exist; "
                    "not exposed"
                )
                continue
            nodes.append(region.dev_node)
            sysfs_dirs.append(region.sysfs_dir)
        tree.add_device(
            f"region-{region.interface_id}",
            region.id,
            DeviceInfo(
                state=UNHEALTHY if region.interface_id == _ALL_F else HEALTHY,
                nodes=tuple(device_spec(node, devfs_root) for node in nodes),
                topology=topology_of(i for d in sysfs_dirs for i in numa_ids(d, sysfs_root)),
                cdi_spec=region_cdi_spec(region.id) if mode == "region" else None,
            ),
        )
    return tree


def scan_once(
    settings: FpgaSettings,
    backend: Backend,
    *,
    sysfs_root: Path,
    devfs_root: Path,
    problems: list[str] | None = None,
) -> DeviceTree:
    """Scan the FPGAs of ``backend``'s layout once and return the tree for ``settings.mode``.

    Skipped devices and ports are described in ``problems`` (logged as warnings when
    no list is given). An unreadable class directory gives an empty tree.
    """
    found: list[str] = []
    regions = read_regions(
        backend,
        sysfs_root=sysfs_root,
        devfs_root=devfs_root,
        need_afu_ids=settings.mode == "af",
        problems=found,
    )
    if settings.mode == "af":
        tree = _afu_tree(regions, sysfs_root, devfs_root)
    else:
        tree = _region_tree(regions, settings.mode, sysfs_root, devfs_root, found)
    if problems is None:
        for message in found:
            log.warning("%s", message)
    else:
        problems.extend(found)
    return tree


class FpgaScanner(PeriodicScanner):
    """Scans FPGAs every ``settings.scan_interval`` seconds and on :meth:`rescan`.

    The backend is detected at construction unless given; while neither driver's
    class directory exists the node has no FPGAs: empty trees, noted once at INFO,
    and every scan looks again (the driver may be loaded later). Implements the
    framework's Scanner and PostAllocator protocols.
    """

    def __init__(
        self,
        settings: FpgaSettings | None = None,
        *,
        sysfs_root: Path | str = "/sys",
        devfs_root: Path | str = "/dev",
        backend: Backend | None = None,
    ) -> None:
        self.settings = settings or FpgaSettings()
        self.sysfs_root = Path(sysfs_root)
        self.devfs_root = Path(devfs_root)
        self.backend: Backend | None = backend
        if backend is None:
            with contextlib.suppress(FpgaDriverNotLoadedError):
                self.backend = detect_backend(self.sysfs_root)
        super().__init__(interval=self.settings.scan_interval, logger=log, namespace=NAMESPACE)

    def scan_once(self, problems: list[str] | None = None) -> DeviceTree:
        """Scan once with this scanner's settings (see :func:`scan_once`)."""
        if self.backend is None:
            try:
                self.backend = detect_backend(self.sysfs_root)
            except FpgaDriverNotLoadedError as err:
                if problems is None:
                    log.info("%s; no devices", err)
                else:
                    problems.append(NoHardware(str(err)))
                return DeviceTree()
        return scan_once(
            self.settings,
            self.backend,
            sysfs_root=self.sysfs_root,
            devfs_root=self.devfs_root,
            problems=problems,
        )

    def post_allocate(self, response: pluginapi.AllocateResponse) -> None:
        """In ``region`` mode, tell the CRI hook (by annotation) to program the region."""
        if self.settings.mode != "region":
            return
        for container in response.container_responses:
            container.annotations[ANNOTATION_NAME] = f"{NAMESPACE}/region"
