"""Generate fake FPGA sysfs/devfs trees (DFL or OPAE layout) for the FPGA scanner.

The companion of :mod:`hostplugins.gpu.fakedev`: kernel-like layouts with symlinks,
regular files standing in for device nodes. From Python::

    write_fpga_tree(tmp_path, FakeFpgaTree(backend="dfl", devices=[
        FakeFpga(interface_id="ce48969398f05f33946d560708be108a",
                 afu_ids=["d8424dc4a4a3c413f89e433683f9040b"] * 2, numa_node=0),
    ]))

Per device ``d`` (PF at ``0000:<5e+d>:00.0``, VF ``j`` at function ``j+1``), relative
to the root, DFL layout:

* ``sys/devices/pci0000:00/<pf>/fpga_region/regionR/dfl-fme.F/`` with ``dev`` and
  ``dfl-fme-region.F/fpga_region/regionR2/compat_id`` (the interface ID; the PR
  region ``regionR2`` is listed in the class directory too, as the kernel does);
* ``.../regionR/dfl-port.P/`` with ``afu_id``, ``dev``, ``id`` for each PF port;
* per VF: ``sys/devices/pci0000:00/<vf>/`` with ``physfn`` and its own
  ``fpga_region/regionR3/dfl-port.P/`` (its FME stays on the PF);
* ``sys/class/fpga_region/region*`` links; ``dev/dfl-fme.F``, ``dev/dfl-port.P``.

OPAE layout: ``<pci>/fpga/intel-fpga-dev.D/intel-fpga-fme.F/pr/interface_id`` and
``intel-fpga-port.P/afu_id``, ``sys/class/fpga/intel-fpga-dev.D`` links,
``dev/intel-fpga-fme.F`` and ``dev/intel-fpga-port.P``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hostplugins.gpu.fakedev import prepare_root

__all__ = ["DEFAULT_AFU_ID", "DEFAULT_INTERFACE_ID", "FakeFpga", "FakeFpgaTree", "write_fpga_tree"]

DEFAULT_INTERFACE_ID = "ce48969398f05f33946d560708be108a"
DEFAULT_AFU_ID = "d8424dc4a4a3c413f89e433683f9040b"


@dataclass(frozen=True, kw_only=True)
class FakeFpga:
    """One FPGA card: a PF with an FME, ports on the PF, and optionally VFs with a port each."""

    interface_id: str = DEFAULT_INTERFACE_ID
    afu_ids: Sequence[str] = (DEFAULT_AFU_ID,)
    """One port on the PF per entry, with that AFU ID."""
    vf_afu_ids: Sequence[str] = ()
    """One SR-IOV VF per entry, each with one port holding that AFU ID."""
    numa_node: int = -1
    dev_nodes: bool = True
    """Create the ``/dev`` nodes of the FME and the ports."""


@dataclass(frozen=True, kw_only=True)
class FakeFpgaTree:
    """A whole generated tree: the driver layout (``dfl`` or ``opae``) and the cards."""

    backend: str = "dfl"
    devices: Sequence[FakeFpga] = field(default_factory=lambda: (FakeFpga(),))


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def _link(link: Path, target: str) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


class _Writer:
    """Writes one tree, numbering regions, FMEs and ports the way the kernel does."""

    def __init__(self, root: Path, backend: str) -> None:
        if backend not in ("dfl", "opae"):
            raise ValueError(f"backend must be 'dfl' or 'opae', got {backend!r}")
        self.sys = root / "sys"
        self.dev = root / "dev"
        self.backend = backend
        self.regions = 0  # DFL regionN and OPAE intel-fpga-dev.N share one counter each
        self.fmes = 0
        self.ports = 0
        self.class_dir = self.sys / "class" / ("fpga_region" if backend == "dfl" else "fpga")
        self.class_dir.mkdir(parents=True)
        self.dev.mkdir(parents=True)

    def pci_device(self, bdf: str, device: FakeFpga, device_id: str) -> Path:
        pci = self.sys / "devices" / "pci0000:00" / bdf
        _write(pci / "vendor", "0x8086")
        _write(pci / "device", device_id)
        _write(pci / "class", "0x120000")
        _write(pci / "numa_node", str(device.numa_node))
        return pci

    def container(self, pci: Path) -> Path:
        """Create the class device (DFL region / OPAE fpga dev) under ``pci`` and link it."""
        number = self.regions
        self.regions += 1
        if self.backend == "dfl":
            rel = Path("fpga_region") / f"region{number}"
        else:
            rel = Path("fpga") / f"intel-fpga-dev.{number}"
        directory = pci / rel
        directory.mkdir(parents=True)
        _link(self.class_dir / rel.name, f"../../devices/pci0000:00/{pci.name}/{rel}")
        return directory

    def fme(self, container: Path, device: FakeFpga) -> None:
        number = self.fmes
        self.fmes += 1
        if self.backend == "dfl":
            fme = container / f"dfl-fme.{number}"
            region = self.regions
            self.regions += 1
            pr_rel = Path(f"dfl-fme-region.{number}") / "fpga_region" / f"region{region}"
            _write(fme / pr_rel / "compat_id", device.interface_id)
            target = Path("../../devices") / fme.relative_to(self.sys / "devices") / pr_rel
            _link(self.class_dir / f"region{region}", str(target))
        else:
            fme = container / f"intel-fpga-fme.{number}"
            _write(fme / "pr" / "interface_id", device.interface_id)
        _write(fme / "dev", f"{510 if self.backend == 'dfl' else 245}:{number}")
        if device.dev_nodes:
            _write(self.dev / fme.name, "")

    def port(self, container: Path, device: FakeFpga, afu_id: str) -> None:
        number = self.ports
        self.ports += 1
        name = f"dfl-port.{number}" if self.backend == "dfl" else f"intel-fpga-port.{number}"
        port = container / name
        _write(port / "afu_id", afu_id)
        _write(port / "dev", f"{509 if self.backend == 'dfl' else 244}:{number}")
        _write(port / "id", "0")
        if device.dev_nodes:
            _write(self.dev / name, "")


def write_fpga_tree(root: Path, tree: FakeFpgaTree) -> None:
    """Write ``tree`` under ``root/sys`` and ``root/dev`` (see the module docstring)."""
    prepare_root(root)
    for device in tree.devices:
        if len(device.vf_afu_ids) > 7:
            raise ValueError(f"at most 7 VFs per device (PCI functions 1-7), got {device}")
    writer = _Writer(root, tree.backend)
    for index, device in enumerate(tree.devices):
        pf_bdf = f"0000:{0x5E + index:02x}:00.0"
        pf = writer.pci_device(pf_bdf, device, "0x0b30")
        container = writer.container(pf)
        writer.fme(container, device)
        for afu_id in device.afu_ids:
            writer.port(container, device, afu_id)
        if device.vf_afu_ids:
            _write(pf / "sriov_numvfs", str(len(device.vf_afu_ids)))
        for vf_index, afu_id in enumerate(device.vf_afu_ids):
            vf_bdf = f"0000:{0x5E + index:02x}:00.{vf_index + 1}"
            vf = writer.pci_device(vf_bdf, device, "0x0b31")
            _link(vf / "physfn", f"../{pf_bdf}")
            _link(pf / f"virtfn{vf_index}", f"../{vf_bdf}")
            writer.port(writer.container(vf), device, afu_id)
