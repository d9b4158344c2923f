"""The QAT scanner: QAT VFs for DPDK as ``qat.intel.com/<services>`` resources.

:func:`scan_once` is the whole discovery logic, synchronous, so tests call it against
fake trees; it writes to sysfs only when ``rebind-vfs`` is on. :class:`QatScanner`
runs it periodically and answers GetPreferredAllocation and PostAllocate.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from host.deviceplugin import (
    HEALTHY,
    UNHEALTHY,
    DeviceInfo,
    DeviceSpec,
    DeviceTree,
    Mount,
    pluginapi,
)
from hostplugins import _allocation
from hostplugins._scanloop import PeriodicScanner, Problems
from hostplugins._sysfs import device_spec, sys_path
from hostplugins.qat._options import QatSettings
from hostplugins.qat._policies import POLICIES, preferred_allocation
from hostplugins.qat._sysfs import (
    GENERIC,
    SERVICE_DEVICE_IDS,
    NotReadyError,
    bind_vf,
    current_driver,
    device_id,
    dpdk_device_name,
    find_vfs,
    numa_topology,
    pf_heartbeat_failed,
    pf_services,
    services_resource,
)

__all__ = ["ENV_PREFIX", "QatScanner", "renumber_envs", "scan_once"]

log = logging.getLogger("hostplugins.qat")

ENV_PREFIX = "QAT"


def _pf(vf: Path) -> Path | None:
    physfn = vf / "physfn"
    return Path(os.path.realpath(physfn)) if physfn.exists() else None


def _resource(vf: Path, debugfs_root: Path, problems: Problems) -> str:
    """Return the VF's device type: its PF's services for Gen4+ VFs, else ``generic``."""
    if device_id(vf) not in SERVICE_DEVICE_IDS:
        return GENERIC
    pf = _pf(vf)
    if pf is None:
        return GENERIC
    services = pf_services(pf, debugfs_root, problems.add)
    if services is None:
        return GENERIC
    try:
        return services_resource(services)
    except ValueError as err:
        problems.add(f"QAT PF {pf.name}: {err}; its VFs are {GENERIC!r}")
        return GENERIC


def _health(vf: Path, debugfs_root: Path, cache: dict[Path, str]) -> str:
    pf = _pf(vf)
    if pf is None:
        return HEALTHY
    if pf not in cache:
        cache[pf] = UNHEALTHY if pf_heartbeat_failed(pf, debugfs_root) else HEALTHY
    return cache[pf]


def _ready(vf: Path, settings: QatSettings, sysfs_root: Path, problems: Problems) -> str | None:
    """Return the VF's DPDK device name, binding it first if allowed; None when not ready."""
    bdf, target = vf.name, settings.dpdk_driver
    driver = current_driver(vf)
    try:
        if driver != target:
            if not settings.rebind_vfs:
                bound = f"bound to {driver}" if driver else "bound to no driver"
                raise NotReadyError(
                    f"{bound}, not {target} (bind it to {target}, or set "
                    "qat.rebind-vfs=true to let the plugin do it)"
                )
            bind_vf(vf, driver, target, sysfs_root=sysfs_root)
            log.info("QAT VF %s: bound to %s (was %s)", bdf, target, driver or "unbound")
        return dpdk_device_name(vf, target)
    except NotReadyError as err:
        problems.add(f"QAT VF {bdf}: {err}; reported Unhealthy")
        return None


def _nodes_and_mounts(
    name: str, settings: QatSettings, sysfs_root: Path, devfs_root: Path
) -> tuple[list[DeviceSpec], list[Mount]]:
    if settings.dpdk_driver == "igb_uio":
        device = sys_path(sysfs_root / "class/uio" / name / "device", sysfs_root)
        mount = Mount(host_path=device, container_path=device)
        return [device_spec(devfs_root / name, devfs_root)], [mount]
    vfio = devfs_root / "vfio"
    return [device_spec(vfio / name, devfs_root), device_spec(vfio / "vfio", devfs_root)], []


def scan_once(
    settings: QatSettings,
    *,
    sysfs_root: Path,
    devfs_root: Path,
    debugfs_root: Path | None = None,
    problems: list[str] | None = None,
) -> DeviceTree:
    """Scan the QAT VFs once and return the device tree.

    Each VF (see :func:`~hostplugins.qat._sysfs.find_vfs`) is device ``<VF BDF>`` of
    resource ``cy``/``dc``/``sym``/... (its PF's services, Gen4+ only) or ``generic``,
    with env ``QAT<n>=<BDF>`` (n from 1; renumbered per container on Allocate). Its
    nodes are ``/dev/vfio/<group>`` and ``/dev/vfio/vfio`` (vfio-pci) or ``/dev/uioN``
    plus a ``/sys/class/uio/uioN/device`` mount (igb_uio). Health is the PF heartbeat
    (``<debugfs>/qat_<drv>_<bdf>/heartbeat/status`` ``-1`` = Unhealthy). A VF not on
    the DPDK driver is rebound when ``rebind_vfs`` is set; otherwise, or when that or
    finding its DPDK node fails, it is Unhealthy without nodes and a problem says why.
    ``debugfs_root`` defaults to ``<sysfs_root>/kernel/debug``.
    """
    found = Problems(problems, log)
    debugfs = debugfs_root if debugfs_root is not None else sysfs_root / "kernel/debug"
    tree = DeviceTree()
    heartbeat: dict[Path, str] = {}
    vfs = find_vfs(
        settings.kernel_vf_drivers,
        settings.max_num_devices,
        sysfs_root=sysfs_root,
        report=found.add,
    )
    for number, vf in enumerate(vfs, start=1):
        bdf = vf.name
        resource = _resource(vf, debugfs, found)
        name = _ready(vf, settings, sysfs_root, found)
        nodes: list[DeviceSpec] = []
        mounts: list[Mount] = []
        if name is None:
            state = UNHEALTHY
        else:
            state = _health(vf, debugfs, heartbeat)
            nodes, mounts = _nodes_and_mounts(name, settings, sysfs_root, devfs_root)
        info = DeviceInfo(
            state=state,
            nodes=tuple(nodes),
            mounts=tuple(mounts),
            envs={f"{ENV_PREFIX}{number}": bdf},
            topology=numa_topology(vf, sysfs_root),
        )
        tree.add_device(resource, bdf, info)
    return tree


def renumber_envs(response: pluginapi.AllocateResponse, prefix: str = ENV_PREFIX) -> None:
    """Re-key the ``<prefix><n>`` envs of each container to ``<prefix>0`` .. ``<prefix>k-1``.

    Each container is numbered on its own, in scan order; other envs are left alone
    (see :func:`hostplugins._allocation.renumber_envs`).
    """
    _allocation.renumber_envs(response, prefix)


class QatScanner(PeriodicScanner):
    """Scans the QAT VFs every ``settings.scan_interval`` seconds and on :meth:`rescan`.

    Implements Scanner, PreferredAllocator and PostAllocator; Allocate is the
    framework's default (nodes, mounts, ``QAT<n>`` envs), then the envs of each
    container are renumbered from ``QAT0``.
    """

    def __init__(
        self,
        settings: QatSettings | None = None,
        *,
        sysfs_root: Path | str = "/sys",
        devfs_root: Path | str = "/dev",
        debugfs_root: Path | str | None = None,
    ) -> None:
        self.settings = settings or QatSettings()
        self.sysfs_root = Path(sysfs_root)
        self.devfs_root = Path(devfs_root)
        self.debugfs_root = Path(debugfs_root) if debugfs_root is not None else None
        self._policy = POLICIES[self.settings.allocation_policy]
        super().__init__(
            interval=self.settings.scan_interval, logger=log, namespace="qat.intel.com"
        )

    def __repr__(self) -> str:
        return f"QatScanner(sysfs_root={str(self.sysfs_root)!r})"

    def scan_once(self, problems: list[str] | None = None) -> DeviceTree:
        """Scan once with this scanner's settings (see :func:`scan_once`)."""
        return scan_once(
            self.settings,
            sysfs_root=self.sysfs_root,
            devfs_root=self.devfs_root,
            debugfs_root=self.debugfs_root,
            problems=problems,
        )

    def get_preferred_allocation(
        self, request: pluginapi.PreferredAllocationRequest
    ) -> pluginapi.PreferredAllocationResponse:
        """Choose VFs by the configured allocation policy (ValueError when too few)."""
        return preferred_allocation(request, self._policy)

    def post_allocate(self, response: pluginapi.AllocateResponse) -> None:
        """Renumber each container's ``QAT<n>`` envs to ``QAT0`` .. in scan order."""
        renumber_envs(response, ENV_PREFIX)
