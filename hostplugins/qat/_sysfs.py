"""What the QAT scanner reads from (and, when allowed, writes to) sysfs and debugfs.

VF discovery, the service configuration that names a VF's resource, the PF heartbeat
that sets its health, the DPDK device name, and rebinding a VF to the DPDK driver.
"""

from __future__ import annotations

import configparser
import errno
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from hostplugins._sysfs import natural_key, numa_topology, read_attr
from hostplugins.qat._options import VF_DRIVERS

__all__ = [
    "GENERIC",
    "SERVICE_DEVICE_IDS",
    "BindError",
    "NotReadyError",
    "bind_vf",
    "current_driver",
    "device_id",
    "dpdk_device_name",
    "find_vfs",
    "natural_key",
    "numa_topology",
    "pf_heartbeat_failed",
    "pf_services",
    "read_attr",
    "services_resource",
]

GENERIC = "generic"
"""The resource of a VF whose services are unknown."""
SERVICE_DEVICE_IDS = frozenset({"4941", "4943", "4945", "4947", "4949"})
"""Gen4+ VF IDs, whose PF tells its configured services (the resource name)."""

_BDF_GLOB = "????:??:??.?"
# What kubelet accepts after "qat.intel.com/".
_DEVICE_TYPE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")

Report = Callable[[str], None]


class NotReadyError(Exception):
    """A VF cannot be handed to containers now (no DPDK node yet, bound elsewhere, ...)."""


class BindError(NotReadyError):
    """Rebinding a VF to the DPDK driver failed or was refused."""


def device_id(device_dir: Path) -> str | None:
    """Return the PCI device ID without ``0x`` (``4941``), or None when unreadable."""
    text = read_attr(device_dir / "device")
    return None if text is None else text.removeprefix("0x")


def current_driver(device_dir: Path) -> str:
    """Return the name of the driver bound to ``device_dir``, "" when none."""
    try:
        return os.path.basename(os.readlink(device_dir / "driver"))
    except OSError:
        return ""


def _resolved(links: Iterable[Path]) -> list[Path]:
    return [Path(os.path.realpath(link)) for link in links if link.exists()]


def find_vfs(
    kernel_vf_drivers: Iterable[str], max_devices: int, *, sysfs_root: Path, report: Report
) -> list[Path]:
    """Return the real sysfs directories of the QAT VFs to use, at most ``max_devices``.

    The VFs (``virtfn*``) of every PF bound to the PF driver of a configured VF driver
    (``4xxxvf`` -> ``<sysfs>/bus/pci/drivers/4xxx``). With no such PF (in a VM), every
    PCI device whose ID maps to a configured VF driver. PCI order, VFs in index order.
    """
    drivers = tuple(kernel_vf_drivers)
    pfs: list[Path] = []
    for vf_driver in drivers:
        driver_dir = sysfs_root / "bus/pci/drivers" / vf_driver.removesuffix("vf")
        pfs += _resolved(sorted(driver_dir.glob(_BDF_GLOB)))
    if pfs:
        vfs: list[Path] = []
        for pf in pfs:
            vfs += _resolved(sorted(pf.glob("virtfn*"), key=lambda p: natural_key(p.name)))
        return vfs[:max_devices]
    found: list[Path] = []
    for device in _resolved(sorted((sysfs_root / "bus/pci/devices").glob(_BDF_GLOB))):
        dev_id = device_id(device)
        if dev_id is None:
            report(f"PCI device {device.name}: cannot read its device ID; skipped")
            continue
        if VF_DRIVERS.get(dev_id) in drivers:
            found.append(device)
    return found[:max_devices]


def _read_optional(path: Path) -> str | None:
    """Read ``path``; None when it does not exist, OSError for any other failure."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None


def _debugfs_dir(pf: Path, debugfs_root: Path) -> Path | None:
    driver = current_driver(pf)
    return debugfs_root / f"qat_{driver}_{pf.name}" if driver else None


def pf_services(pf: Path, debugfs_root: Path, report: Report) -> str | None:
    """Return the services PF ``pf`` is configured for (``sym;asym``), or None when unknown.

    From ``<pf>/qat/cfg_services`` when ``<pf>/qat/state`` is ``up``; otherwise from
    ``ServicesEnabled`` in ``[GENERAL]`` of ``<debugfs>/qat_<pfdriver>_<pfBDF>/dev_cfg``.
    The debugfs directory is found by name under ``debugfs_root`` (``<sysfs>/kernel/debug``),
    so a PF behind a PCI bridge is found too (the Go code derived the root from the
    PF's path, which only worked for a PF directly under its root complex). Read
    errors other than "missing" are reported; any failure means None.
    """
    try:
        state = _read_optional(pf / "qat/state")
        if state is not None and state.strip() == "up":
            services = _read_optional(pf / "qat/cfg_services")
            if services is not None and services.strip():
                return services.strip()
        directory = _debugfs_dir(pf, debugfs_root)
        if directory is None:
            return None  # no driver, so no debugfs entry
        text = _read_optional(directory / "dev_cfg")
    except OSError as err:
        report(f"QAT PF {pf.name}: cannot read its service configuration: {err}")
        return None
    if text is None:
        return None
    # Values keep their ';' and '#': dev_cfg has no inline comments (go-ini's
    # IgnoreInlineComment), and "sym;asym" is one value.
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(text, source=str(directory / "dev_cfg"))
    except configparser.Error as err:
        report(f"QAT PF {pf.name}: cannot parse {directory / 'dev_cfg'}: {err}")
        return None
    value = parser.get("GENERAL", "ServicesEnabled", fallback="").strip()
    return value or None


def services_resource(services: str) -> str:
    """Return the resource (device type) for a PF's services string.

    ``sym;asym`` and ``asym;sym`` are ``cy``; otherwise the first two ``;`` become ``-``
    (``dc``, ``sym``, ``asym;dc`` -> ``asym-dc``). Raises ValueError when the result is
    no valid resource name.
    """
    name = "cy" if services in ("sym;asym", "asym;sym") else services.replace(";", "-", 2)
    if not _DEVICE_TYPE.fullmatch(name):
        raise ValueError(f"services {services!r} give no valid resource name ({name!r})")
    return name


def pf_heartbeat_failed(pf: Path, debugfs_root: Path) -> bool:
    """Tell whether the PF's heartbeat status (first line of ``heartbeat/status``) is ``-1``.

    A missing or unreadable status (no driver, no debugfs) counts as not failed.
    """
    directory = _debugfs_dir(pf, debugfs_root)
    if directory is None:
        return False
    try:
        text = (directory / "heartbeat/status").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return text.split("\n", 1)[0].strip() == "-1"


def dpdk_device_name(vf: Path, dpdk_driver: str) -> str:
    """Return the VF's DPDK device: its ``uioN`` (igb_uio) or IOMMU group (vfio-pci).

    A vfio group in no-IOMMU mode is ``noiommu-<group>``, as its /dev/vfio node is
    named. Raises :class:`NotReadyError` when the VF has none (yet).
    """
    if dpdk_driver == "igb_uio":
        try:
            names = sorted(os.listdir(vf / "uio"), key=natural_key)
        except OSError as err:
            raise NotReadyError(f"cannot list {vf / 'uio'}: {err.strerror}") from None
        if not names:
            raise NotReadyError(f"no uio device in {vf / 'uio'}")
        return names[0]
    group_link = vf / "iommu_group"
    if not group_link.exists():
        raise NotReadyError(f"no IOMMU group ({group_link} missing)")
    group = os.path.basename(os.path.realpath(group_link))
    if read_attr(group_link / "name") == "vfio-noiommu":
        group = f"noiommu-{group}"
    return group


def _write(path: Path, value: str, sysfs_root: Path) -> None:
    """Write ``value`` to existing sysfs file ``path``, which must resolve under ``sysfs_root``."""
    root = os.path.realpath(sysfs_root)
    real = os.path.realpath(path)
    if os.path.commonpath([root, real]) != root:
        raise BindError(f"refusing to write {path}: it resolves to {real}, outside {root}")
    try:
        fd = os.open(real, os.O_WRONLY)  # no O_CREAT: a missing driver is an error
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as err:
        reason = err.strerror or errno.errorcode.get(err.errno or 0, str(err))
        raise BindError(f"cannot write {value!r} to {path}: {reason}") from None


def bind_vf(vf: Path, current: str, target: str, *, sysfs_root: Path) -> None:
    """Bind VF ``vf`` (bound to driver ``current``, "" for none) to driver ``target``.

    Sets ``driver_override`` (when the kernel has it) so that the bind succeeds for
    drivers without an ID table such as vfio-pci, unbinds from ``current``, then
    binds. Writes only existing files under ``sysfs_root``; raises :class:`BindError`.
    """
    bdf = vf.name
    device = sysfs_root / "bus/pci/devices" / bdf
    drivers = sysfs_root / "bus/pci/drivers"
    if not (drivers / target).is_dir():
        raise BindError(f"driver {target} is not loaded ({drivers / target} missing)")
    if (device / "driver_override").exists():
        _write(device / "driver_override", target, sysfs_root)
    if current:
        _write(drivers / current / "unbind", bdf, sysfs_root)
    _write(drivers / target / "bind", bdf, sysfs_root)
