"""The ``qat`` plugin: fake PF/VF trees, services, health, binding, policies, kubelet, CLI."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from click.testing import CliRunner

import hostplugins.qat as qat
from host import ConfigError, PluginConfig
from host.cli import main as cli
from host.deviceplugin import HEALTHY, UNHEALTHY, DeviceTree, pluginapi
from host.deviceplugin._names import validate_resource_name
from host.testing._sysfs import FakeSysfs, Symlink
from hostplugins.qat import QatScanner, QatSettings, renumber_envs, scan_once
from hostplugins.qat._options import OPTIONS
from hostplugins.qat._policies import balanced_policy, none_policy, packed_policy
from tests.hostplugins.harness import QueueNotifier, ids, plugin_stub, served

# --- fake trees ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeVf:
    """One VF: its driver (None: unbound), PCI ID, and DPDK details."""

    driver: str | None = "vfio-pci"
    device_id: str | None = None
    """Default: the PF's ``vf_device_id``."""
    iommu: bool = True
    uio: str | None = None
    """With a name (``uio3``): ``<vf>/uio/<name>`` exists (igb_uio)."""


@dataclass(frozen=True)
class FakePf:
    """One QAT PF with VFs, where its configuration and heartbeat live, where it sits."""

    address: str = "0000:6b:00.0"
    driver: str | None = "4xxx"
    vfs: tuple[FakeVf, ...] = (FakeVf(), FakeVf())
    vf_device_id: str = "0x4941"
    state: str | None = "up"
    cfg_services: str | None = "sym;asym"
    dev_cfg: str | None = None
    """Content of debugfs ``qat_<driver>_<address>/dev_cfg``."""
    heartbeat: str | None = None
    """Content of debugfs ``qat_<driver>_<address>/heartbeat/status``."""
    bridge: str | None = None
    """Put the PF behind this PCI bridge rather than directly under its root complex."""
    numa_node: int = 0


def vf_address(pf: str, index: int) -> str:
    """The BDF of VF ``index`` (0-based): functions 1..7 of the PF's device, then the next."""
    domain, bus, _ = pf.split(":")
    slot, function = divmod(index + 1, 8)
    return f"{domain}:{bus}:{slot:02x}.{function}"


def _link(sysfs: FakeSysfs, link: str, target: Path) -> None:
    rel = os.path.relpath(target, (sysfs.root / link).parent)
    sysfs.add({link: Symlink(rel)})


DRIVERS = ("vfio-pci", "igb_uio", "4xxxvf")


def make_qat(root: Path, *pfs: FakePf, loaded: tuple[str, ...] = DRIVERS) -> FakeSysfs:
    """Write ``pfs`` (one default PF when none) under ``root/sys``; return the tree.

    Drivers in ``loaded`` get empty ``bind``/``unbind`` files; every VF has an empty
    ``driver_override``, so tests can see what a rebind wrote.
    """
    sysfs = FakeSysfs(root / "sys")
    for driver in loaded:
        sysfs.add({f"bus/pci/drivers/{driver}/bind": "", f"bus/pci/drivers/{driver}/unbind": ""})
    group = 0
    for pf in pfs or (FakePf(),):
        domain_bus = pf.address.rsplit(":", 1)[0]
        parent = f"devices/pci{domain_bus}"
        if pf.bridge:
            parent = f"{parent}/{pf.bridge}"
        qat_dir = {"state": pf.state, "cfg_services": pf.cfg_services}
        pf_dir = sysfs.add_pci_device(
            pf.address,
            numa_node=pf.numa_node,
            driver=pf.driver,
            parent=parent,
            attrs={
                "device": "0x4940\n",
                "qat": {k: f"{v}\n" for k, v in qat_dir.items() if v is not None},
            },
        )
        if pf.driver:
            _link(sysfs, f"bus/pci/drivers/{pf.driver}/{pf.address}", pf_dir)
            debug = f"kernel/debug/qat_{pf.driver}_{pf.address}"
            if pf.dev_cfg is not None:
                sysfs.add({f"{debug}/dev_cfg": pf.dev_cfg})
            if pf.heartbeat is not None:
                sysfs.add({f"{debug}/heartbeat/status": pf.heartbeat})
        for index, vf in enumerate(pf.vfs):
            address = vf_address(pf.address, index)
            attrs: dict[str, Any] = {
                "device": f"{vf.device_id or pf.vf_device_id}\n",
                "driver_override": "",
            }
            if vf.uio:
                attrs[f"uio/{vf.uio}"] = None
            vf_dir = sysfs.add_pci_device(
                address, numa_node=pf.numa_node, driver=vf.driver, parent=parent, attrs=attrs
            )
            _link(sysfs, f"{pf_dir.relative_to(sysfs.root)}/virtfn{index}", vf_dir)
            _link(sysfs, f"{vf_dir.relative_to(sysfs.root)}/physfn", pf_dir)
            if vf.iommu:
                group += 1
                sysfs.add_iommu_group(group, [vf_dir])
    return sysfs


def scan(root: Path, problems: list[str] | None = None, **settings: Any) -> DeviceTree:
    return scan_once(
        QatSettings(**settings),
        sysfs_root=root / "sys",
        devfs_root=root / "dev",
        problems=problems,
    )


def driver_file(root: Path, driver: str, name: str) -> str:
    return (root / "sys/bus/pci/drivers" / driver / name).read_text()


# --- discovery and resources -----------------------------------------------------------------


class TestDiscovery:
    def test_vfs_of_a_pf_are_devices_of_its_services(self, tmp_path: Path) -> None:
        """A 4xxx PF configured sym;asym: its VFs are qat.intel.com/cy, with vfio nodes."""
        make_qat(tmp_path, FakePf(numa_node=1))
        tree = scan(tmp_path)
        assert ids(tree) == {"cy": ["0000:6b:00.1", "0000:6b:00.2"]}
        info = tree["cy"]["0000:6b:00.2"]
        assert [(n.host_path, n.container_path, n.permissions) for n in info.nodes] == [
            ("/dev/vfio/2", "/dev/vfio/2", "rw"),
            ("/dev/vfio/vfio", "/dev/vfio/vfio", "rw"),
        ]
        assert dict(info.envs) == {"QAT2": "0000:6b:00.2"}
        assert (info.state, info.mounts, info.numa_nodes) == (HEALTHY, (), (1,))

    @pytest.mark.parametrize(
        ("services", "resource"),
        [
            ("sym;asym", "cy"),
            ("asym;sym", "cy"),
            ("dc", "dc"),
            ("sym", "sym"),
            ("asym", "asym"),
            ("asym;dc", "asym-dc"),
            ("sym;dc", "sym-dc"),
            ("dc;sym", "dc-sym"),
            ("decomp", "decomp"),
            ("dcc", "dcc"),
            ("asym;sym;dc", "asym-sym-dc"),
        ],
    )
    def test_services_name_the_resource(self, tmp_path: Path, services: str, resource: str) -> None:
        """cy for sym+asym, else the first two ';' become '-'."""
        make_qat(tmp_path, FakePf(cfg_services=f"{services}\n"))
        assert list(scan(tmp_path)) == [resource]

    def test_services_that_make_no_resource_name_give_generic(self, tmp_path: Path) -> None:
        """A third ';' (or other junk) would be an invalid name: generic and a problem."""
        make_qat(tmp_path, FakePf(cfg_services="a;b;c;d"))
        problems: list[str] = []
        assert list(scan(tmp_path, problems)) == ["generic"]
        assert "give no valid resource name ('a-b-c;d')" in problems[0]

    @pytest.mark.parametrize("state", [None, "down"])
    def test_dev_cfg_in_debugfs_when_the_pf_is_not_up(
        self, tmp_path: Path, state: str | None
    ) -> None:
        """Without qat/state ``up``: ServicesEnabled of [GENERAL] in debugfs dev_cfg."""
        dev_cfg = "# comment\n[GENERAL]\nServicesEnabled = dc\nConfigVersion = 2\n[KERNEL]\nX=1\n"
        make_qat(tmp_path, FakePf(state=state, dev_cfg=dev_cfg))
        assert list(scan(tmp_path)) == ["dc"]

    def test_dev_cfg_value_keeps_its_semicolon(self, tmp_path: Path) -> None:
        """``sym;asym`` in dev_cfg is one value (no inline comments), so cy."""
        dev_cfg = "[GENERAL]\nServicesEnabled = sym;asym\n"
        make_qat(tmp_path, FakePf(cfg_services="", dev_cfg=dev_cfg))
        assert list(scan(tmp_path)) == ["cy"]

    def test_pf_behind_a_bridge_finds_its_dev_cfg(self, tmp_path: Path) -> None:
        """debugfs is <sysfs>/kernel/debug for any PF (Go's path arithmetic missed this one)."""
        dev_cfg = "[GENERAL]\nServicesEnabled = asym;dc\n"
        make_qat(tmp_path, FakePf(bridge="0000:6a:01.0", state=None, dev_cfg=dev_cfg))
        assert (tmp_path / "sys/devices/pci0000:6b/0000:6a:01.0/0000:6b:00.0").is_dir()
        assert ids(scan(tmp_path)) == {"asym-dc": ["0000:6b:00.1", "0000:6b:00.2"]}

    @pytest.mark.parametrize(
        "pf",
        [
            FakePf(state=None),
            FakePf(state="up", cfg_services=""),
            FakePf(state=None, dev_cfg="[GENERAL]\nOther = 1\n"),
            FakePf(state=None, dev_cfg="not an ini file\n"),
        ],
    )
    def test_unknown_services_give_generic(self, tmp_path: Path, pf: FakePf) -> None:
        """No cfg_services and no usable dev_cfg: generic."""
        make_qat(tmp_path, pf)
        assert list(scan(tmp_path)) == ["generic"]

    def test_unreadable_configuration_gives_generic_and_a_problem(self, tmp_path: Path) -> None:
        """A read error other than "missing" (here: a directory) is reported."""
        make_qat(tmp_path, FakePf(state=None))
        (tmp_path / "sys/kernel/debug/qat_4xxx_0000:6b:00.0/dev_cfg").mkdir(parents=True)
        problems: list[str] = []
        assert list(scan(tmp_path, problems)) == ["generic"]
        assert "QAT PF 0000:6b:00.0: cannot read its service configuration" in problems[0]

    def test_older_generations_are_generic(self, tmp_path: Path) -> None:
        """Only Gen4+ VF IDs have services; a c6xx VF is generic whatever its PF says."""
        make_qat(tmp_path, FakePf(driver="c6xx", vf_device_id="0x37c9"))
        tree = scan(tmp_path, kernel_vf_drivers=("c6xxvf",))
        assert ids(tree) == {"generic": ["0000:6b:00.1", "0000:6b:00.2"]}

    def test_only_pfs_of_the_configured_kernel_vf_drivers(self, tmp_path: Path) -> None:
        """kernel-vf-drivers picks the PF drivers looked at (4xxxvf -> 4xxx)."""
        make_qat(
            tmp_path,
            FakePf(address="0000:6b:00.0", driver="4xxx"),
            FakePf(address="0000:3d:00.0", driver="c6xx", vf_device_id="0x37c9"),
        )
        assert list(scan(tmp_path)) == ["cy"]
        tree = scan(tmp_path, kernel_vf_drivers=("c6xxvf",))
        assert ids(tree) == {"generic": ["0000:3d:00.1", "0000:3d:00.2"]}
        both = scan(tmp_path, kernel_vf_drivers=("c6xxvf", "4xxxvf"))
        assert [dict(d.envs) for d in both["generic"].values()] == [
            {"QAT1": "0000:3d:00.1"},
            {"QAT2": "0000:3d:00.2"},
        ]
        assert sorted(both["cy"]) == ["0000:6b:00.1", "0000:6b:00.2"]

    def test_max_num_devices_keeps_the_first_vfs_in_index_order(self, tmp_path: Path) -> None:
        """12 VFs, max 10: virtfn0..9 (virtfn10 does not sort before virtfn2)."""
        make_qat(tmp_path, FakePf(vfs=(FakeVf(),) * 12))
        tree = scan(tmp_path, max_num_devices=10)
        assert sorted(tree["cy"]) == [vf_address("0000:6b:00.0", i) for i in range(10)]

    def test_in_a_vm_vfs_are_found_by_device_id(self, tmp_path: Path) -> None:
        """No PF on a QAT driver: PCI devices whose ID maps to a configured VF driver."""
        sysfs = FakeSysfs(tmp_path / "sys")
        for address, device in (
            ("0000:00:05.0", "0x4941"),
            ("0000:00:06.0", "0x4947"),
            ("0000:00:07.0", "0x37c9"),
            ("0000:00:08.0", "0x1234"),
        ):
            vf = sysfs.add_pci_device(address, driver="vfio-pci", attrs={"device": device})
            sysfs.add_iommu_group(int(address[-3]), [vf])
        sysfs.add_pci_device("0000:00:09.0", attrs={"device": None})
        problems: list[str] = []
        tree = scan(tmp_path, problems)
        assert ids(tree) == {"generic": ["0000:00:05.0", "0000:00:06.0"]}
        assert problems == ["PCI device 0000:00:09.0: cannot read its device ID; skipped"]
        assert tree["generic"]["0000:00:06.0"].nodes[0].container_path == "/dev/vfio/6"

    def test_pf_without_driver_link_gives_generic(self, tmp_path: Path) -> None:
        """A VF whose PF has no driver has no debugfs entry to read: generic (Go #14, #17)."""
        sysfs = FakeSysfs(tmp_path / "sys")
        pf = sysfs.add_pci_device("0000:6b:00.0", attrs={"device": "0x4940"})
        vf = sysfs.add_pci_device("0000:6b:00.1", driver="vfio-pci", attrs={"device": "0x4941"})
        sysfs.add_iommu_group(1, [vf])
        _link(sysfs, "devices/pci0000:00/0000:6b:00.1/physfn", pf)
        assert ids(scan(tmp_path)) == {"generic": ["0000:6b:00.1"]}

    def test_pfs_without_vfs_give_nothing(self, tmp_path: Path) -> None:
        """PFs found but SR-IOV off: no devices, and no VM-style fallback."""
        make_qat(tmp_path, FakePf(vfs=()))
        assert len(scan(tmp_path)) == 0

    def test_no_qat_is_an_empty_tree(self, tmp_path: Path) -> None:
        """Nothing under sysfs: an empty tree, no problem, no exception."""
        problems: list[str] = []
        assert len(scan(tmp_path, problems)) == 0
        assert problems == []

    def test_igb_uio_nodes_and_mount(self, tmp_path: Path) -> None:
        """igb_uio: /dev/uioN and a writable /sys/class/uio/uioN/device mount."""
        vfs = (FakeVf(driver="igb_uio", uio="uio3"), FakeVf(driver="igb_uio"))
        make_qat(tmp_path, FakePf(vfs=vfs))
        problems: list[str] = []
        tree = scan(tmp_path, problems, dpdk_driver="igb_uio")
        info = tree["cy"]["0000:6b:00.1"]
        assert [(n.host_path, n.container_path) for n in info.nodes] == [("/dev/uio3", "/dev/uio3")]
        assert [(m.host_path, m.container_path, m.read_only) for m in info.mounts] == [
            ("/sys/class/uio/uio3/device", "/sys/class/uio/uio3/device", False)
        ]
        missing = tree["cy"]["0000:6b:00.2"]
        assert (missing.state, missing.nodes) == (UNHEALTHY, ())
        assert "QAT VF 0000:6b:00.2: cannot list" in problems[0]

    def test_noiommu_group_is_prefixed_and_no_group_is_not_ready(self, tmp_path: Path) -> None:
        """A vfio-noiommu group is /dev/vfio/noiommu-N; without a group the VF is Unhealthy."""
        make_qat(tmp_path, FakePf(vfs=(FakeVf(), FakeVf(iommu=False))))
        (tmp_path / "sys/kernel/iommu_groups/1/name").write_text("vfio-noiommu\n")
        problems: list[str] = []
        tree = scan(tmp_path, problems)
        assert tree["cy"]["0000:6b:00.1"].nodes[0].container_path == "/dev/vfio/noiommu-1"
        assert tree["cy"]["0000:6b:00.2"].state == UNHEALTHY
        assert "no IOMMU group" in problems[0]

    def test_resource_names_are_valid_for_kubelet(self, tmp_path: Path) -> None:
        """Every resource the services can give forms a valid qat.intel.com name."""
        make_qat(
            tmp_path,
            FakePf(address="0000:6b:00.0", cfg_services="asym;dc"),
            FakePf(address="0000:6c:00.0", cfg_services="sym;asym"),
            FakePf(address="0000:6d:00.0", state=None),
        )
        tree = scan(tmp_path)
        assert sorted(tree) == ["asym-dc", "cy", "generic"]
        for dev_type in tree:
            validate_resource_name(f"{qat.NAMESPACE}/{dev_type}")


class TestHealth:
    def test_heartbeat_minus_one_makes_the_pfs_vfs_unhealthy(self, tmp_path: Path) -> None:
        """Heartbeat status -1 on one PF: its VFs Unhealthy, another PF's VFs Healthy."""
        make_qat(
            tmp_path,
            FakePf(address="0000:6b:00.0", heartbeat="-1\n"),
            FakePf(address="0000:6c:00.0", heartbeat="0\n"),
            FakePf(address="0000:6d:00.0"),
        )
        states = {bdf: info.state for bdf, info in scan(tmp_path)["cy"].items()}
        assert states == {
            "0000:6b:00.1": UNHEALTHY,
            "0000:6b:00.2": UNHEALTHY,
            "0000:6c:00.1": HEALTHY,
            "0000:6c:00.2": HEALTHY,
            "0000:6d:00.1": HEALTHY,
            "0000:6d:00.2": HEALTHY,
        }

    def test_heartbeat_of_a_pf_behind_a_bridge_is_read(self, tmp_path: Path) -> None:
        """The heartbeat lookup uses the same debugfs root: a bridged PF's -1 counts."""
        make_qat(tmp_path, FakePf(bridge="0000:6a:01.0", heartbeat="-1\nmore\n"))
        assert {info.state for info in scan(tmp_path)["cy"].values()} == {UNHEALTHY}


# --- binding ---------------------------------------------------------------------------------


class TestBinding:
    def test_vf_on_another_driver_is_not_ready_and_nothing_is_written(self, tmp_path: Path) -> None:
        """Default: a VF on 4xxxvf or on none is Unhealthy without nodes; sysfs untouched."""
        make_qat(tmp_path, FakePf(vfs=(FakeVf(driver="4xxxvf"), FakeVf(driver=None), FakeVf())))
        problems: list[str] = []
        tree = scan(tmp_path, problems)
        states = {bdf: (info.state, len(info.nodes)) for bdf, info in tree["cy"].items()}
        assert states == {
            "0000:6b:00.1": (UNHEALTHY, 0),
            "0000:6b:00.2": (UNHEALTHY, 0),
            "0000:6b:00.3": (HEALTHY, 2),
        }
        assert problems == [
            "QAT VF 0000:6b:00.1: bound to 4xxxvf, not vfio-pci (bind it to vfio-pci, or set "
            "qat.rebind-vfs=true to let the plugin do it); reported Unhealthy",
            "QAT VF 0000:6b:00.2: bound to no driver, not vfio-pci (bind it to vfio-pci, or set "
            "qat.rebind-vfs=true to let the plugin do it); reported Unhealthy",
        ]
        for driver in DRIVERS:
            assert driver_file(tmp_path, driver, "bind") == ""
            assert driver_file(tmp_path, driver, "unbind") == ""

    def test_rebind_vfs_binds_to_the_dpdk_driver(self, tmp_path: Path) -> None:
        """rebind-vfs: driver_override, old driver's unbind, new driver's bind; then Healthy."""
        make_qat(tmp_path, FakePf(vfs=(FakeVf(driver="4xxxvf"), FakeVf(driver=None))))
        tree = scan(tmp_path, rebind_vfs=True)
        assert {info.state for info in tree["cy"].values()} == {HEALTHY}
        assert driver_file(tmp_path, "4xxxvf", "unbind") == "0000:6b:00.1"
        # A fake bind file is a plain file: it holds the last write (same length).
        assert driver_file(tmp_path, "vfio-pci", "bind") == "0000:6b:00.2"
        override = tmp_path / "sys/bus/pci/devices/0000:6b:00.2/driver_override"
        assert override.read_text() == "vfio-pci"

    def test_rebind_writes_each_file_once_per_vf(self, tmp_path: Path) -> None:
        """One VF: exactly its address in unbind and bind (no create, no append)."""
        make_qat(tmp_path, FakePf(vfs=(FakeVf(driver="4xxxvf"),)))
        scan(tmp_path, rebind_vfs=True, dpdk_driver="igb_uio")
        assert driver_file(tmp_path, "4xxxvf", "unbind") == "0000:6b:00.1"
        assert driver_file(tmp_path, "igb_uio", "bind") == "0000:6b:00.1"
        assert driver_file(tmp_path, "vfio-pci", "bind") == ""

    def test_rebind_to_a_driver_that_is_not_loaded_fails_for_that_vf(self, tmp_path: Path) -> None:
        """No <drivers>/vfio-pci: a problem and an Unhealthy VF; nothing unbound."""
        make_qat(tmp_path, FakePf(vfs=(FakeVf(driver="4xxxvf"),)), loaded=("4xxxvf",))
        problems: list[str] = []
        tree = scan(tmp_path, problems, rebind_vfs=True)
        assert tree["cy"]["0000:6b:00.1"].state == UNHEALTHY
        assert "driver vfio-pci is not loaded" in problems[0]
        assert driver_file(tmp_path, "4xxxvf", "unbind") == ""

    def test_rebind_never_creates_files(self, tmp_path: Path) -> None:
        """A driver directory without ``bind`` is an error, not a new file."""
        make_qat(tmp_path, FakePf(vfs=(FakeVf(driver=None),)))
        bind = tmp_path / "sys/bus/pci/drivers/vfio-pci/bind"
        bind.unlink()
        problems: list[str] = []
        tree = scan(tmp_path, problems, rebind_vfs=True)
        assert not bind.exists()
        assert tree["cy"]["0000:6b:00.1"].state == UNHEALTHY
        assert "cannot write '0000:6b:00.1'" in problems[0]

    def test_rebind_never_writes_outside_the_sysfs_root(self, tmp_path: Path) -> None:
        """A sysfs file that resolves outside the root is refused and left untouched."""
        make_qat(tmp_path, FakePf(vfs=(FakeVf(driver="4xxxvf"),)))
        outside = tmp_path / "outside"
        outside.write_text("precious")
        unbind = tmp_path / "sys/bus/pci/drivers/4xxxvf/unbind"
        unbind.unlink()
        unbind.symlink_to(outside)
        problems: list[str] = []
        tree = scan(tmp_path, problems, rebind_vfs=True)
        assert outside.read_text() == "precious"
        assert tree["cy"]["0000:6b:00.1"].state == UNHEALTHY
        assert "refusing to write" in problems[0]
        assert driver_file(tmp_path, "vfio-pci", "bind") == ""


# --- allocation ------------------------------------------------------------------------------


def preferred(
    available: list[str], size: int, policy: str, must: tuple[str, ...] = ()
) -> list[str]:
    request = pluginapi.PreferredAllocationRequest(
        container_requests=[
            pluginapi.ContainerPreferredAllocationRequest(
                available_deviceIDs=available, must_include_deviceIDs=must, allocation_size=size
            )
        ]
    )
    response = QatScanner(QatSettings(allocation_policy=policy)).get_preferred_allocation(request)
    return list(response.container_responses[0].deviceIDs)


class TestPreferredAllocation:
    OFFERED: ClassVar[list[str]] = [
        "0000:6c:00.2",
        "0000:6b:00.1",
        "0000:6c:00.1",
        "0000:6b:00.2",
    ]

    def test_none_takes_the_offered_order(self) -> None:
        """none: the first N as offered."""
        assert preferred(self.OFFERED, 2, "none") == ["0000:6c:00.2", "0000:6b:00.1"]

    def test_packed_fills_one_pf_first(self) -> None:
        """packed: lowest addresses first."""
        assert preferred(self.OFFERED, 3, "packed") == [
            "0000:6b:00.1",
            "0000:6b:00.2",
            "0000:6c:00.1",
        ]

    def test_balanced_spreads_over_the_pfs(self) -> None:
        """balanced: sort on device.function first, so each PF gives one VF in turn."""
        assert preferred(self.OFFERED, 2, "balanced") == ["0000:6b:00.1", "0000:6c:00.1"]
        assert preferred(self.OFFERED, 3, "balanced") == [
            "0000:6b:00.1",
            "0000:6c:00.1",
            "0000:6b:00.2",
        ]

    def test_must_include_ids_come_first(self) -> None:
        """kubelet's must-include IDs are always part of the answer."""
        assert preferred(self.OFFERED, 2, "packed", must=("0000:6c:00.2",)) == [
            "0000:6c:00.2",
            "0000:6b:00.1",
        ]

    def test_asking_for_more_than_available_is_an_error(self) -> None:
        """allocation_size > available: ValueError naming the counts."""
        with pytest.raises(ValueError, match="cannot choose 5 devices out of the 4 available"):
            preferred(self.OFFERED, 5, "none")

    @pytest.mark.parametrize("policy", [none_policy, balanced_policy, packed_policy])
    def test_policies_return_exactly_the_requested_number(
        self, policy: Callable[[list[str], int], list[str]]
    ) -> None:
        """Every policy returns ``size`` distinct offered IDs."""
        for size in range(len(self.OFFERED) + 1):
            chosen = policy(self.OFFERED, size)
            assert len(chosen) == len(set(chosen)) == size
            assert set(chosen) <= set(self.OFFERED)


class TestPostAllocate:
    def test_each_container_is_numbered_from_qat0(self) -> None:
        """Per container, in scan order; the Go plugin's shared map leaked across containers."""
        response = pluginapi.AllocateResponse(
            container_responses=[
                pluginapi.ContainerAllocateResponse(
                    envs={"QAT12": "0000:6c:00.1", "QAT2": "0000:6b:00.2", "OTHER": "kept"}
                ),
                pluginapi.ContainerAllocateResponse(envs={"QAT1": "0000:6b:00.1"}),
                pluginapi.ContainerAllocateResponse(),
            ]
        )
        QatScanner().post_allocate(response)
        assert [dict(c.envs) for c in response.container_responses] == [
            {"QAT0": "0000:6b:00.2", "QAT1": "0000:6c:00.1", "OTHER": "kept"},
            {"QAT0": "0000:6b:00.1"},
            {},
        ]

    def test_renumbering_twice_changes_nothing(self) -> None:
        """An already renumbered response stays as it is."""
        response = pluginapi.AllocateResponse(
            container_responses=[
                pluginapi.ContainerAllocateResponse(envs={"QAT0": "a", "QAT1": "b", "QATX": "c"})
            ]
        )
        renumber_envs(response)
        renumber_envs(response)
        assert dict(response.container_responses[0].envs) == {"QAT0": "a", "QAT1": "b", "QATX": "c"}


# --- options and hooks -----------------------------------------------------------------------


def activate(tmp_path: Path, **options: Any) -> list[tuple[str, Any]]:
    config = PluginConfig(
        name="qat", options=options, sysfs_root=tmp_path / "sys", devfs_root=tmp_path / "dev"
    )
    return list(qat.devplugin_scanners(config=config))


class TestOptions:
    def test_declared_options_and_defaults(self) -> None:
        """Go's flags and defaults, plus rebind-vfs (off) and scan-interval."""
        assert {o.name: o.default for o in qat.devplugin_options()} == {
            "dpdk-driver": "vfio-pci",
            "kernel-vf-drivers": ("4xxxvf", "420xxvf"),
            "max-num-devices": 64,
            "allocation-policy": "none",
            "rebind-vfs": False,
            "scan-interval": 5.0,
        }

    def test_hook_builds_one_scanner_on_the_configured_roots(self, tmp_path: Path) -> None:
        """devplugin_scanners registers qat.intel.com with the parsed settings."""
        [(namespace, scanner)] = activate(
            tmp_path,
            **{
                "dpdk-driver": "igb_uio",
                "kernel-vf-drivers": "c6xxvf, 4xxxvf",
                "max-num-devices": "8",
                "allocation-policy": "balanced",
                "rebind-vfs": "yes",
            },
        )
        assert namespace == "qat.intel.com"
        assert isinstance(scanner, QatScanner)
        assert (scanner.sysfs_root, scanner.devfs_root) == (tmp_path / "sys", tmp_path / "dev")
        assert scanner.settings == QatSettings(
            dpdk_driver="igb_uio",
            kernel_vf_drivers=("c6xxvf", "4xxxvf"),
            max_num_devices=8,
            allocation_policy="balanced",
            rebind_vfs=True,
        )

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"dpdk-driver": "uio_pci_generic"}, "invalid value for option dpdk-driver"),
            ({"kernel-vf-drivers": "4xxxvf,qatvf"}, "wrong kernel VF driver 'qatvf'"),
            ({"kernel-vf-drivers": "4xxx"}, "wrong kernel VF driver '4xxx'"),
            ({"kernel-vf-drivers": ""}, "must name at least one kernel VF driver"),
            ({"kernel-vf-drivers": 3}, "must be a comma-separated list"),
            ({"max-num-devices": 0}, "option max-num-devices must be >= 1"),
            ({"max-num-devices": "many"}, "option max-num-devices must be an integer"),
            ({"allocation-policy": ""}, "invalid value for option allocation-policy: ''"),
            ({"allocation-policy": "spread"}, "invalid value for option allocation-policy"),
            ({"rebind-vfs": "maybe"}, "option rebind-vfs must be true or false"),
            ({"scan-interval": 0}, "option scan-interval must be > 0 seconds"),
        ],
    )
    def test_invalid_values_are_config_errors(
        self, tmp_path: Path, options: dict[str, Any], message: str
    ) -> None:
        """Go's NewDevicePlugin errors fail before anything is served, naming the option."""
        with pytest.raises(ConfigError, match=r"^plugin 'qat': ") as err:
            activate(tmp_path, **options)
        assert message in str(err.value)

    def test_kernel_vf_drivers_parse_through_the_option_type(self) -> None:
        """--set qat.kernel-vf-drivers=... and a TOML list both give a tuple of drivers."""
        option = next(o for o in OPTIONS if o.name == "kernel-vf-drivers")
        assert option.convert("c6xxvf,d15xxvf") == ("c6xxvf", "d15xxvf")
        assert option.convert(["6xxxvf"]) == ("6xxxvf",)
        with pytest.raises(ConfigError, match="wrong kernel VF driver 'x'"):
            option.convert("x")


# --- the scan loop ---------------------------------------------------------------------------


class TestScanLoop:
    @pytest.mark.asyncio
    async def test_rescan_reflects_a_vf_bound_meanwhile(self, tmp_path: Path) -> None:
        """rescan() scans now: a VF an operator bound to vfio-pci turns Healthy at once."""
        make_qat(tmp_path, FakePf(vfs=(FakeVf(driver="4xxxvf"),)))
        scanner = QatScanner(
            QatSettings(scan_interval=3600),
            sysfs_root=tmp_path / "sys",
            devfs_root=tmp_path / "dev",
        )
        notifier = QueueNotifier()
        task = asyncio.create_task(scanner.scan(notifier))
        try:
            first = await notifier.next_matching(lambda tree: True)
            assert first["cy"]["0000:6b:00.1"].state == UNHEALTHY
            link = tmp_path / "sys/devices/pci0000:6b/0000:6b:00.1/driver"
            link.unlink()
            link.symlink_to("../../../bus/pci/drivers/vfio-pci")
            scanner.rescan()
            second = await notifier.next_matching(lambda tree: True)
            assert second["cy"]["0000:6b:00.1"].state == HEALTHY
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    @pytest.mark.asyncio
    async def test_problems_are_logged_once(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A VF that stays on the wrong driver is warned about once, not every interval."""
        make_qat(tmp_path, FakePf(vfs=(FakeVf(driver="4xxxvf"),)))
        scanner = QatScanner(
            QatSettings(scan_interval=0.01),
            sysfs_root=tmp_path / "sys",
            devfs_root=tmp_path / "dev",
        )
        notifier = QueueNotifier()
        task = asyncio.create_task(scanner.scan(notifier))
        try:
            for _ in range(3):
                await notifier.next_matching(lambda tree: True)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        warnings = [r for r in caplog.records if "QAT VF 0000:6b:00.1" in r.getMessage()]
        assert len(warnings) == 1

    def test_rescan_before_scanning_is_harmless(self) -> None:
        """rescan() on a scanner that is not running does nothing."""
        QatScanner().rescan()


# --- through the framework and the command line ----------------------------------------------


THREE_PFS = (
    FakePf(address="0000:6b:00.0", vfs=(FakeVf(),) * 3),
    FakePf(address="0000:6c:00.0", vfs=(FakeVf(),) * 3, heartbeat="-1\n"),
    FakePf(address="0000:6d:00.0", vfs=(FakeVf(),) * 2),
)


class TestEndToEnd:
    @pytest.mark.asyncio
    async def test_kubelet_allocates_balanced_and_envs_are_per_container(
        self, tmp_path: Path, short_dir: Path
    ) -> None:
        """Balanced policy over healthy PFs; one Allocate of two containers numbers each from 0."""
        make_qat(tmp_path, *THREE_PFS)
        scanner = QatScanner(
            QatSettings(allocation_policy="balanced"),
            sysfs_root=tmp_path / "sys",
            devfs_root=tmp_path / "dev",
        )
        request = pluginapi.AllocateRequest(
            container_requests=[
                pluginapi.ContainerAllocateRequest(devices_ids=["0000:6d:00.2", "0000:6b:00.3"]),
                pluginapi.ContainerAllocateRequest(devices_ids=["0000:6d:00.1"]),
            ]
        )
        async with served(short_dir, qat.NAMESPACE, scanner) as kubelet:
            state = await kubelet.wait_for_resource("qat.intel.com/cy", count=8, healthy=5)
            assert kubelet.options("qat.intel.com/cy").get_preferred_allocation_available
            allocation = await kubelet.allocate_like_kubelet("qat.intel.com/cy", 2)
            async with plugin_stub(kubelet, "qat.intel.com/cy") as stub:
                response = await stub.Allocate(request)
        assert state.unhealthy == {"0000:6c:00.1", "0000:6c:00.2", "0000:6c:00.3"}
        assert sorted(allocation.device_ids) == ["0000:6b:00.1", "0000:6d:00.1"]
        assert sorted(allocation.response.envs.values()) == ["0000:6b:00.1", "0000:6d:00.1"]
        assert sorted(allocation.response.envs) == ["QAT0", "QAT1"]
        assert [dict(c.envs) for c in response.container_responses] == [
            {"QAT0": "0000:6b:00.3", "QAT1": "0000:6d:00.2"},
            {"QAT0": "0000:6d:00.1"},
        ]
        assert [d.container_path for d in response.container_responses[1].devices] == [
            "/dev/vfio/7",
            "/dev/vfio/vfio",
        ]


class TestCommandLine:
    def test_scan_json_lists_the_vfs(self, tmp_path: Path) -> None:
        """``devplugin-host scan --enable qat --sysfs-root T/sys --devfs-root T/dev --json``."""
        make_qat(
            tmp_path,
            FakePf(address="0000:6b:00.0", numa_node=1),
            FakePf(address="0000:6c:00.0", state=None, vfs=(FakeVf(driver="4xxxvf"),)),
        )
        result = CliRunner().invoke(
            cli,
            [
                "scan",
                "--enable",
                "qat",
                "--sysfs-root",
                str(tmp_path / "sys"),
                "--devfs-root",
                str(tmp_path / "dev"),
                "--json",
            ],
        )
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert sorted(report) == ["qat.intel.com/cy", "qat.intel.com/generic"]
        cy = report["qat.intel.com/cy"]
        assert [d["id"] for d in cy] == ["0000:6b:00.1", "0000:6b:00.2"]
        assert cy[0] == {
            "id": "0000:6b:00.1",
            "health": HEALTHY,
            "nodes": ["/dev/vfio/1", "/dev/vfio/vfio"],
            "topology": [1],
            "envs": {"QAT1": "0000:6b:00.1"},
        }
        [generic] = report["qat.intel.com/generic"]
        assert (generic["health"], generic["nodes"]) == (UNHEALTHY, [])
        assert driver_file(tmp_path, "4xxxvf", "unbind") == ""

    def test_invalid_option_exits_2_with_the_plugins_message(self, tmp_path: Path) -> None:
        """A wrong kernel VF driver is a configuration error: exit 2, nothing scanned."""
        result = CliRunner().invoke(
            cli,
            [
                "scan",
                "--enable",
                "qat",
                "--set",
                "qat.kernel-vf-drivers=4xxxvf,bogusvf",
                "--sysfs-root",
                str(tmp_path),
            ],
        )
        assert result.exit_code == 2
        assert "plugin 'qat': option kernel-vf-drivers: wrong kernel VF driver 'bogusvf'" in (
            result.output
        )
