"""FPGA kernel drivers as sysfs layouts: OPAE (``intel-fpga``) and DFL (upstream).

Both expose FPGA devices, each with one FME (FPGA management engine, which holds the
interface ID of the programmable region) and AFU ports (each holding the ID of the
accelerator function loaded behind it). :func:`read_regions` walks either layout and
groups ports by FME into :class:`Region` records; the scanner turns those into trees.

A port on an SR-IOV virtual function has no FME beside it: its FME is found through
the VF's ``physfn`` link, on the physical function.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from hostplugins._sysfs import natural_key, read_attr

__all__ = [
    "DFL",
    "OPAE",
    "Afu",
    "Backend",
    "FpgaDriverNotLoadedError",
    "Region",
    "detect_backend",
    "read_regions",
]

_PCI_ADDRESS = re.compile(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-9a-fA-F]")
_UUID_HEX = re.compile(r"[0-9a-fA-F]{32}")


class FpgaDriverNotLoadedError(RuntimeError):
    """Neither FPGA driver's sysfs class directory exists."""


@dataclass(frozen=True)
class Backend:
    """Where one FPGA driver puts its devices in sysfs."""

    name: str
    class_dir: str
    """Relative to the sysfs root, e.g. ``class/fpga_region``."""
    device_pattern: re.Pattern[str]
    fme_pattern: re.Pattern[str]
    port_pattern: re.Pattern[str]
    interface_id_glob: str
    """Relative to the FME directory; must match exactly one file."""
    pf_fme_glob: str
    """Relative to the PCI device directory: where a PF keeps its FME."""


OPAE = Backend(
    name="opae",
    class_dir="class/fpga",
    device_pattern=re.compile(r"intel-fpga-dev\.[0-9]+"),
    fme_pattern=re.compile(r"intel-fpga-fme\.[0-9]+"),
    port_pattern=re.compile(r"intel-fpga-port\.[0-9]+"),
    interface_id_glob="pr/interface_id",
    pf_fme_glob="fpga/intel-fpga-dev.*/intel-fpga-fme.*",
)
"""The out-of-tree OPAE driver (``intel-fpga-pci``)."""

DFL = Backend(
    name="dfl",
    class_dir="class/fpga_region",
    device_pattern=re.compile(r"region[0-9]+"),
    fme_pattern=re.compile(r"dfl-fme\.[0-9]+"),
    port_pattern=re.compile(r"dfl-port\.[0-9]+"),
    interface_id_glob="dfl-fme-region.*/fpga_region/region*/compat_id",
    pf_fme_glob="fpga_region/region*/dfl-fme.*",
)
"""The upstream Device Feature List driver (``dfl-pci``)."""


def detect_backend(sysfs_root: Path) -> Backend:
    """Return the backend whose class directory exists (OPAE first, then DFL).

    Raises :class:`FpgaDriverNotLoadedError` naming both directories when neither
    exists: no FPGA driver is loaded, or ``sysfs_root`` is wrong.
    """
    for backend in (OPAE, DFL):
        if (sysfs_root / backend.class_dir).is_dir():
            return backend
    raise FpgaDriverNotLoadedError(
        "no FPGA kernel driver is loaded: neither "
        f"{sysfs_root / OPAE.class_dir} (OPAE driver) nor {sysfs_root / DFL.class_dir} "
        "(DFL driver) exists"
    )


@dataclass(frozen=True)
class Afu:
    """One AFU port: ``id`` is the port name (``dfl-port.0``)."""

    id: str
    afu_id: str | None
    """The accelerator function's ID (32 hex digits); None when not read (region modes)."""
    dev_node: Path
    sysfs_dir: Path


@dataclass
class Region:
    """One FPGA's programmable region: its FME and the ports behind it."""

    id: str
    """The FME name (``dfl-fme.0``)."""
    interface_id: str
    dev_node: Path
    """The FME's device node (it may not exist; only ``regiondevel`` needs it)."""
    sysfs_dir: Path
    afus: list[Afu] = field(default_factory=list)


def _pf_fme(device_dir: Path, backend: Backend, sysfs_root: Path) -> Path | None:
    """Find the FME of a VF's device through the PCI ``physfn`` link, or None."""
    devices = os.path.join(os.path.realpath(sysfs_root), "devices") + os.sep
    level = os.path.realpath(device_dir)
    while level.startswith(devices) and not _PCI_ADDRESS.fullmatch(os.path.basename(level)):
        level = os.path.dirname(level)
    physfn = Path(level, "physfn")
    if not level.startswith(devices) or not physfn.exists():
        return None
    matches = sorted(Path(os.path.realpath(physfn)).glob(backend.pf_fme_glob))
    return matches[0] if len(matches) == 1 else None


def _read_region(fme_dir: Path, backend: Backend, devfs_root: Path) -> Region | str:
    """Read the FME at ``fme_dir`` into an empty Region, or return why it cannot be used."""
    files = sorted(fme_dir.glob(backend.interface_id_glob))
    if len(files) != 1:
        found = ", ".join(map(str, files)) or "none"
        return (
            f"{fme_dir}: expected exactly one interface ID file "
            f"{backend.interface_id_glob}, found {found}"
        )
    interface_id = read_attr(files[0])
    if interface_id is None or not _UUID_HEX.fullmatch(interface_id):
        return f"{files[0]}: interface ID must be 32 hex digits, got {interface_id!r}"
    return Region(
        id=fme_dir.name,
        interface_id=interface_id.lower(),
        dev_node=devfs_root / fme_dir.name,
        sysfs_dir=fme_dir,
    )


def _read_afu(port_dir: Path, devfs_root: Path, need_afu_id: bool) -> Afu | str:
    """Read one port, or return why it cannot be used."""
    dev_node = devfs_root / port_dir.name
    if not dev_node.exists():
        return f"{port_dir.name}: device node {dev_node} does not exist"
    afu_id = None
    if need_afu_id:
        afu_id = read_attr(port_dir / "afu_id")
        if afu_id is None or not _UUID_HEX.fullmatch(afu_id):
            return f"{port_dir / 'afu_id'}: AFU ID must be 32 hex digits, got {afu_id!r}"
        afu_id = afu_id.lower()
    return Afu(id=port_dir.name, afu_id=afu_id, dev_node=dev_node, sysfs_dir=port_dir)


def read_regions(
    backend: Backend,
    *,
    sysfs_root: Path,
    devfs_root: Path,
    need_afu_ids: bool,
    problems: list[str],
) -> list[Region]:
    """Return the FPGA regions of ``backend``'s sysfs layout, ports grouped by FME.

    What cannot be used (a port without node or AFU ID, a device with two FMEs or
    none to be found) is skipped and described in ``problems``. An unreadable class
    directory gives no regions (the driver was unloaded), never an exception.
    """
    class_dir = sysfs_root / backend.class_dir
    try:
        names = sorted(
            (n for n in os.listdir(class_dir) if backend.device_pattern.fullmatch(n)),
            key=natural_key,
        )
    except OSError as err:
        problems.append(f"cannot read {class_dir}: {err.strerror} (FPGA driver unloaded?)")
        return []
    regions: dict[str, Region] = {}
    for name in names:
        device_dir = class_dir / name
        try:
            entries = sorted(os.listdir(device_dir), key=natural_key)
        except OSError as err:
            problems.append(f"cannot read {device_dir}: {err.strerror}; device skipped")
            continue
        fmes = [e for e in entries if backend.fme_pattern.fullmatch(e)]
        ports = [e for e in entries if backend.port_pattern.fullmatch(e)]
        if not fmes and not ports:
            continue  # e.g. DFL lists the FME's own PR region in the class too
        if len(fmes) > 1:
            problems.append(
                f"{device_dir}: more than one FME ({', '.join(fmes)}); only one region per "
                "FPGA device is supported; device skipped"
            )
            continue
        fme_dir = device_dir / fmes[0] if fmes else _pf_fme(device_dir, backend, sysfs_root)
        if fme_dir is None:
            problems.append(
                f"{device_dir}: AFU ports without a corresponding FME (none beside them, "
                "none on a PF through physfn); device skipped"
            )
            continue
        region = regions.get(fme_dir.name)
        if region is None:
            read = _read_region(fme_dir, backend, devfs_root)
            if isinstance(read, str):
                problems.append(f"{read}; device {name} skipped")
                continue
            region = regions[fme_dir.name] = read
        for port in ports:
            afu = _read_afu(device_dir / port, devfs_root, need_afu_ids)
            if isinstance(afu, str):
                problems.append(f"{afu}; port skipped")
            else:
                region.afus.append(afu)
    for region in regions.values():
        region.afus.sort(key=lambda afu: natural_key(afu.id))
    return list(regions.values())
