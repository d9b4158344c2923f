"""The GPU scanner: Intel cards in ``<sysfs>/class/drm``, their nodes in ``<devfs>/dri``.

:func:`scan_once` is the whole discovery logic, synchronous and side-effect free, so
tests call it against fake trees; :class:`GpuScanner` runs it periodically (and on
demand) and answers kubelet's GetPreferredAllocation.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Protocol, runtime_checkable

from host.deviceplugin import (
    HEALTHY,
    UNHEALTHY,
    DeviceInfo,
    DeviceSpec,
    DeviceTree,
    Mount,
    pluginapi,
)
from hostplugins._scanloop import NoHardware, PeriodicScanner, Problems
from hostplugins._sysfs import dev_path, device_spec, natural_key, numa_topology, read_attr
from hostplugins.gpu._options import GpuSettings
from hostplugins.gpu._policies import POLICIES, preferred_allocation

__all__ = [
    "ALWAYS_HEALTHY",
    "CDI_KIND",
    "AlwaysHealthy",
    "GpuCard",
    "GpuScanner",
    "HealthSource",
    "scan_once",
]

log = logging.getLogger("hostplugins.gpu")

VENDOR_INTEL = "0x8086"
DEFAULT_DRIVER = "i915"
DRIVERS = ("i915", "xe")
"""The kernel drivers of Intel GPUs: each is a device type (a resource) of its own."""
CDI_VERSION = "0.5.0"
CDI_KIND = "intel.cdi.k8s.io/gpu"
MONITORING_ID = "all"

_CARD = re.compile(r"card[0-9]+")
_CONTROL = re.compile(r"controlD[0-9]+")
_PCI_ADDRESS = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-9a-f]")


@dataclass(frozen=True)
class GpuCard:
    """One Intel GPU as the scanner found it; what a :class:`HealthSource` is asked about."""

    name: str
    """The DRM card name, e.g. ``card0``."""
    sysfs_dir: Path
    """``<sysfs>/class/drm/<name>``."""
    driver: str
    """The kernel driver (``i915``, ``xe``); ``i915`` when the driver link is missing."""
    pci_address: str | None
    """The PCI address (``0000:00:02.0``), None when sysfs does not tell."""
    pci_device_id: str | None
    """The PCI device ID (``0x56a0``), None when unreadable."""


@runtime_checkable
class HealthSource(Protocol):
    """Tells the health of a card: ``HEALTHY`` or ``UNHEALTHY``.

    Called once per card and scan, from the scanning thread; it should answer from
    cached state rather than block. An exception counts as Healthy (logged), as a
    failing health service must not take working cards away from kubelet.
    """

    def health(self, card: GpuCard) -> str:
        """Return ``HEALTHY`` or ``UNHEALTHY`` for ``card``."""


class AlwaysHealthy:
    """The default health source: every card is Healthy."""

    def health(self, card: GpuCard) -> str:
        """Return ``HEALTHY``."""
        return HEALTHY


ALWAYS_HEALTHY = AlwaysHealthy()


def _driver(device_dir: Path) -> str:
    try:
        return PurePath(os.readlink(device_dir / "driver")).name or DEFAULT_DRIVER
    except OSError:
        return DEFAULT_DRIVER


def _pci_address(card_dir: Path, name: str) -> str | None:
    """Return the card's PCI address, or None.

    Taken from its sysfs link (``.../<address>/drm/<card>``), else from where its
    ``device`` link points.
    """
    with contextlib.suppress(OSError):
        parts = PurePath(os.readlink(card_dir)).parts
        if len(parts) >= 3 and parts[-2:] == ("drm", name) and _PCI_ADDRESS.fullmatch(parts[-3]):
            return parts[-3]
    candidate = Path(os.path.realpath(card_dir / "device")).name
    return candidate if _PCI_ADDRESS.fullmatch(candidate) else None


def _card_nodes(
    card: str, device_dir: Path, devfs_root: Path, problems: Problems
) -> list[DeviceSpec]:
    dri_dir = devfs_root / "dri"
    try:
        entries = sorted(os.listdir(device_dir / "drm"), key=natural_key)
    except OSError as err:
        problems.add(f"{card}: cannot list {device_dir / 'drm'}: {err.strerror}; card skipped")
        return []
    nodes: list[DeviceSpec] = []
    for entry in entries:
        if _CONTROL.fullmatch(entry):
            continue
        node = dri_dir / entry
        if not node.exists():
            problems.add(f"{card}: device node {node} does not exist; not exposed")
            continue
        nodes.append(device_spec(node, devfs_root))
    return nodes


def _bypath_mounts(settings: GpuSettings, pci_address: str | None, devfs_root: Path) -> list[Mount]:
    bypath_dir = devfs_root / "dri" / "by-path"
    if settings.bypath == "none" or not bypath_dir.is_dir():
        return []

    def mount(path: Path) -> Mount:
        node = dev_path(path, devfs_root)
        return Mount(host_path=node, container_path=node, read_only=True)

    if settings.bypath == "all":
        return [mount(bypath_dir)]
    if pci_address is None:
        return []
    prefix = f"pci-{pci_address}-"
    try:
        names = sorted(n for n in os.listdir(bypath_dir) if n.startswith(prefix))
    except OSError:  # vanished since the is_dir() check: no mounts this scan
        return []
    return [mount(bypath_dir / n) for n in names]


def _mei_nodes(device_dir: Path, devfs_root: Path) -> list[DeviceSpec]:
    """MEI nodes of the card's management engine (``<device>/*.mei-*/mei/meiN``)."""
    nodes: list[DeviceSpec] = []
    for mei_dir in sorted(device_dir.glob("*.mei-*/mei"), key=lambda p: natural_key(str(p))):
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir(mei_dir), key=natural_key):
                node = devfs_root / name
                if node.exists():
                    nodes.append(device_spec(node, devfs_root))
    return nodes


def cdi_spec(card: str, nodes: Iterable[DeviceSpec], mounts: Iterable[Mount]) -> dict[str, Any]:
    """Return the CDI spec describing ``card``: its device nodes and read-only by-path mounts."""
    edits: dict[str, Any] = {
        "deviceNodes": [
            {"path": n.container_path, "hostPath": n.host_path, "permissions": n.permissions}
            for n in nodes
        ]
    }
    mount_list = [
        {
            "hostPath": m.host_path,
            "containerPath": m.container_path,
            "type": "none",
            "options": ["bind", "ro"],
        }
        for m in mounts
    ]
    if mount_list:
        edits["mounts"] = mount_list
    return {
        "cdiVersion": CDI_VERSION,
        "kind": CDI_KIND,
        "devices": [{"name": card, "containerEdits": edits}],
    }


def _health(source: HealthSource, card: GpuCard, problems: Problems) -> str:
    try:
        state = source.health(card)
    except Exception as err:
        problems.add(f"{card.name}: health source failed ({err!r}); reported Healthy")
        return HEALTHY
    if state not in (HEALTHY, UNHEALTHY):
        problems.add(f"{card.name}: health source returned {state!r}; reported Healthy")
        return HEALTHY
    return state


def _wanted(settings: GpuSettings, card_dir: Path) -> bool:
    device_dir = card_dir / "device"
    if read_attr(device_dir / "vendor") != VENDOR_INTEL:
        return False
    if not (device_dir / "drm").exists():
        return False
    if settings.allow_ids or settings.deny_ids:
        text = read_attr(device_dir / "device") or ""
        device_id = text.splitlines()[0].strip() if text else ""
        if settings.allow_ids and device_id not in settings.allow_ids:
            return False
        if device_id in settings.deny_ids:
            return False
    return True


def _is_pf_with_vfs(device_dir: Path) -> bool:
    return read_attr(device_dir / "sriov_numvfs") not in (None, "", "0")


def scan_once(
    settings: GpuSettings,
    *,
    sysfs_root: Path,
    devfs_root: Path,
    health_source: HealthSource = ALWAYS_HEALTHY,
    problems: list[str] | None = None,
) -> DeviceTree:
    """Scan the GPUs once and return the device tree.

    Resource (device type) per driver, IDs ``<card>-<share>``; with monitoring, one
    device ``all`` under ``monitoring`` or ``<driver>_monitoring``. What had to be
    skipped (a missing node, an unreadable directory) is appended to ``problems``, or
    logged as a warning when no list is given. Never raises for sysfs contents.
    """
    found = Problems(problems, log)
    drm_dir = sysfs_root / "class" / "drm"
    tree = DeviceTree()
    try:
        names = sorted((n for n in os.listdir(drm_dir) if _CARD.fullmatch(n)), key=natural_key)
    except FileNotFoundError:
        found.add(NoHardware(f"no DRM driver loaded ({drm_dir} does not exist)"))
        return tree
    except OSError as err:
        found.add(f"cannot list GPU cards in {drm_dir}: {err.strerror}")
        return tree

    monitoring: dict[str, list[DeviceSpec]] = {}
    for name in names:
        card_dir = drm_dir / name
        if not _wanted(settings, card_dir):
            continue
        device_dir = card_dir / "device"
        if _is_pf_with_vfs(device_dir):
            continue  # its VFs are the cards to use
        nodes = _card_nodes(name, device_dir, devfs_root, found)
        if not nodes:
            continue
        text = read_attr(device_dir / "device")
        card = GpuCard(
            name=name,
            sysfs_dir=card_dir,
            driver=_driver(device_dir),
            pci_address=_pci_address(card_dir, name),
            pci_device_id=text.splitlines()[0].strip() if text else None,
        )
        mounts = _bypath_mounts(settings, card.pci_address, devfs_root)
        info = DeviceInfo(
            state=_health(health_source, card, found),
            nodes=tuple(nodes),
            mounts=tuple(mounts),
            topology=numa_topology(device_dir, sysfs_root),
            cdi_spec=cdi_spec(name, nodes, mounts),
        )
        for share in range(settings.shared_dev_num):
            tree.add_device(card.driver, f"{name}-{share}", info)
        if settings.enable_monitoring:
            split = settings.monitoring_mode == "split"
            key = f"{card.driver}_monitoring" if split else "monitoring"
            monitoring.setdefault(key, []).extend(nodes + _mei_nodes(device_dir, devfs_root))

    for key, nodes in monitoring.items():
        tree.add_device(key, MONITORING_ID, DeviceInfo(state=HEALTHY, nodes=tuple(nodes)))
    return tree


class GpuScanner(PeriodicScanner):
    """Scans Intel GPUs every ``settings.scan_interval`` seconds and on :meth:`rescan`.

    Implements the framework's Scanner and PreferredAllocator protocols; Allocate is the
    framework's default (nodes, mounts, CDI name).
    ``health_source`` decides each card's health (default: always Healthy).
    """

    def __init__(
        self,
        settings: GpuSettings | None = None,
        *,
        sysfs_root: Path | str = "/sys",
        devfs_root: Path | str = "/dev",
        health_source: HealthSource = ALWAYS_HEALTHY,
    ) -> None:
        self.settings = settings or GpuSettings()
        self.sysfs_root = Path(sysfs_root)
        self.devfs_root = Path(devfs_root)
        self.health_source = health_source
        self._policy = POLICIES[self.settings.allocation_policy]
        super().__init__(
            interval=self.settings.scan_interval, logger=log, namespace="gpu.intel.com"
        )

    def scan_once(self, problems: list[str] | None = None) -> DeviceTree:
        """Scan once with this scanner's settings (see :func:`scan_once`)."""
        return scan_once(
            self.settings,
            sysfs_root=self.sysfs_root,
            devfs_root=self.devfs_root,
            health_source=self.health_source,
            problems=problems,
        )

    def device_types(self) -> list[str]:
        """One type per kernel driver (``i915``, ``xe``), and the monitoring type(s) if enabled."""
        types = list(DRIVERS)
        if self.settings.enable_monitoring:
            if self.settings.monitoring_mode == "split":
                types += [f"{driver}_monitoring" for driver in DRIVERS]
            else:
                types.append("monitoring")
        return types

    def get_preferred_allocation(
        self, request: pluginapi.PreferredAllocationRequest
    ) -> pluginapi.PreferredAllocationResponse:
        """Choose shares by the configured allocation policy (ValueError when too few)."""
        return preferred_allocation(request, self._policy)
