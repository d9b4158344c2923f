"""NUMA topology from (fake) sysfs trees, with the real /dev nodes mapped into them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from host.deviceplugin import DeviceInfo, DeviceSpec
from host.deviceplugin._topology import find_sysfs_device, topology_for_nodes
from host.testing._sysfs import FakeSysfs, Symlink, build_tree


def _char_numbers(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        pytest.skip(f"{path} is missing on this machine")
    if not stat.S_ISCHR(st.st_mode):
        pytest.skip(f"{path} is not a character device on this machine")
    return os.major(st.st_rdev), os.minor(st.st_rdev)


@pytest.fixture
def intel_sysfs(tmp_path: Path) -> Path:
    """Intel's pkg/topology fixture (testdata/sys.ttar), rooted at a sysfs root."""
    for node, numbers in (("/dev/null", (1, 3)), ("/dev/random", (1, 8)), ("/dev/tty", (5, 0))):
        if _char_numbers(node) != numbers:
            pytest.skip(f"{node} is not {numbers[0]}:{numbers[1]} on this machine")
    return build_tree(
        tmp_path / "sys",
        {
            "devices": {
                "pci0000:00/0000:00:02.0": {
                    "class": "0x030000",
                    "device": "0x5912",
                    "vendor": "0x8086",
                    "local_cpulist": "0-7",
                    "local_cpus": "ff",
                    "numa_node": "-1",
                    "drm/card1/dev": "226:1",
                    "drm/renderD129/dev": "226:129",
                },
                "virtual/mem/null": {"local_cpulist": "0-7", "numa_node": "1,2,3"},
                "virtual/mem/random": {"local_cpulist": "0-7", "numa_node": "-1"},
                "virtual/tty/tty": {"local_cpulist": "0-7", "numa_node": "4,5,6"},
            },
            "kernel/iommu_groups/42/devices/0000:00:02.0": Symlink(
                "../../../../devices/pci0000:00/0000:00:02.0/"
            ),
            "dev/char": {
                "1:3": Symlink("../../devices/virtual/mem/null"),
                "1:8": Symlink("../../devices/virtual/mem/random"),
                "5:0": Symlink("../../devices/virtual/tty/tty"),
            },
        },
    )


@pytest.fixture
def sysfs(tmp_path: Path) -> FakeSysfs:
    _char_numbers("/dev/zero")
    return FakeSysfs(tmp_path / "sys")


def _ids(topology: object) -> list[int] | None:
    if topology is None:
        return None
    return [node.ID for node in topology.nodes]  # type: ignore[attr-defined]


class TestIntelFixture:
    def test_numa_nodes_of_one_device(self, intel_sysfs: Path) -> None:
        """The real /dev/null maps to the fake mem/null, which reports nodes 1,2,3."""
        assert _ids(topology_for_nodes(["/dev/null"], sysfs_root=intel_sysfs)) == [1, 2, 3]

    def test_union_of_nodes_sorted_and_unique(self, intel_sysfs: Path) -> None:
        """Several device nodes give the sorted union of their NUMA nodes."""
        paths = ["/dev/tty", "/dev/null", "/dev/null"]
        assert _ids(topology_for_nodes(paths, sysfs_root=intel_sysfs)) == [1, 2, 3, 4, 5, 6]

    def test_minus_one_means_no_numa_node(self, intel_sysfs: Path) -> None:
        """numa_node -1 contributes nothing; no node at all gives None, not an empty message."""
        assert topology_for_nodes(["/dev/random"], sysfs_root=intel_sysfs) is None
        assert _ids(topology_for_nodes(["/dev/random", "/dev/null"], sysfs_root=intel_sysfs)) == [
            1,
            2,
            3,
        ]

    def test_no_paths(self, intel_sysfs: Path) -> None:
        """No device nodes, no topology."""
        assert topology_for_nodes([], sysfs_root=intel_sysfs) is None

    def test_find_sysfs_device_resolves_under_the_fake_root(self, intel_sysfs: Path) -> None:
        """/dev/char/M:m is looked up under the given root, not the real /sys."""
        found = find_sysfs_device("/dev/null", sysfs_root=intel_sysfs)
        assert found == os.path.realpath(intel_sysfs / "devices/virtual/mem/null")

    def test_device_info_with_topology(self, intel_sysfs: Path) -> None:
        """DeviceInfo.with_topology reads the NUMA nodes of its device nodes."""
        info = DeviceInfo.with_topology(
            nodes=[DeviceSpec(host_path="/dev/null", container_path="/dev/null", permissions="rw")],
            sysfs_root=str(intel_sysfs),
        )
        assert info.numa_nodes == (1, 2, 3)

    def test_device_info_without_sysfs_entry(self, tmp_path: Path) -> None:
        """A node with no sysfs entry leaves the DeviceInfo without topology."""
        info = DeviceInfo.with_topology(
            nodes=[DeviceSpec(host_path="/dev/null", container_path="/dev/null", permissions="rw")],
            sysfs_root=str(tmp_path),
        )
        assert info.topology is None
        assert info.numa_nodes == ()


class TestWalk:
    def test_parent_reports_the_node(self, sysfs: FakeSysfs) -> None:
        """A device without locality files takes them from its nearest ancestor."""
        gpu = sysfs.add_pci_device(
            "0000:00:03.0", numa_node=0, local_cpulist="0-3", attrs={"drm/card0/dev": "226:0"}
        )
        sysfs.link_device_node("/dev/zero", gpu / "drm/card0")
        assert _ids(topology_for_nodes(["/dev/zero"], sysfs_root=sysfs.root)) == [0]

    def test_nearest_level_with_information_wins(self, sysfs: FakeSysfs) -> None:
        """The walk stops at the first level that reports anything, even -1."""
        sysfs.add({"devices/pci0000:00": {"numa_node": "1", "local_cpulist": "0-7"}})
        dev = sysfs.add_pci_device("0000:00:03.0", numa_node=-1, local_cpulist="0-7")
        sysfs.link_device_node("/dev/zero", dev)
        assert topology_for_nodes(["/dev/zero"], sysfs_root=sysfs.root) is None

    def test_walk_stays_below_devices(self, sysfs: FakeSysfs) -> None:
        """Nothing at or above <root>/devices counts."""
        sysfs.add({"devices": {"numa_node": "5", "local_cpulist": "0-7"}, "numa_node": "6"})
        sysfs.add({"devices/virtual/mem/zero": None})
        sysfs.link_device_node("/dev/zero", "devices/virtual/mem/zero")
        assert topology_for_nodes(["/dev/zero"], sysfs_root=sysfs.root) is None

    def test_device_outside_devices_is_not_walked(self, sysfs: FakeSysfs) -> None:
        """A /dev/char link that leads outside <root>/devices yields nothing."""
        sysfs.add({"class/odd": {"numa_node": "1", "local_cpulist": "0-7"}})
        sysfs.link_device_node("/dev/zero", "class/odd")
        assert topology_for_nodes(["/dev/zero"], sysfs_root=sysfs.root) is None

    def test_numa_without_cpus_uses_the_parent(self, sysfs: FakeSysfs) -> None:
        """BIOS workaround: a NUMA node without CPUs is replaced by the parent's hint."""
        sysfs.add({"devices/pci0000:00": {"numa_node": "0", "local_cpulist": "0-3"}})
        dev = sysfs.add_pci_device("0000:00:03.0", numa_node=1)
        sysfs.link_device_node("/dev/zero", dev)
        assert _ids(topology_for_nodes(["/dev/zero"], sysfs_root=sysfs.root)) == [0]

    def test_numa_without_cpus_anywhere_is_a_socket(self, sysfs: FakeSysfs) -> None:
        """BIOS workaround: with no CPUs up the tree, the value is a socket, not a NUMA node."""
        dev = sysfs.add_pci_device("0000:00:03.0", numa_node=1)
        sysfs.link_device_node("/dev/zero", dev)
        assert topology_for_nodes(["/dev/zero"], sysfs_root=sysfs.root) is None

    def test_garbage_numa_entries_are_skipped(self, sysfs: FakeSysfs) -> None:
        """Unparsable or negative entries are ignored, the valid ones kept."""
        dev = sysfs.add_pci_device("0000:00:03.0", numa_node="x,2,-3, 1", local_cpulist="0-7")
        sysfs.link_device_node("/dev/zero", dev)
        assert _ids(topology_for_nodes(["/dev/zero"], sysfs_root=sysfs.root)) == [1, 2]


class TestDependents:
    def test_vfio_group_takes_the_nodes_of_its_devices(self, sysfs: FakeSysfs) -> None:
        """/dev/vfio/<group> reports the NUMA nodes of the PCI devices in the IOMMU group."""
        a = sysfs.add_pci_device("0000:00:04.0", numa_node=2, local_cpulist="8-15")
        b = sysfs.add_pci_device("0000:00:05.0", numa_node=3, local_cpulist="16-23")
        vfio = sysfs.add_iommu_group(42, [a, b])
        sysfs.link_device_node("/dev/zero", vfio)
        assert _ids(topology_for_nodes(["/dev/zero"], sysfs_root=sysfs.root)) == [2, 3]

    def test_vfio_group_without_devices(self, sysfs: FakeSysfs) -> None:
        """A vfio group with no iommu_groups entry has no topology."""
        sysfs.add({"devices/virtual/vfio/7": None})
        sysfs.link_device_node("/dev/zero", "devices/virtual/vfio/7")
        assert topology_for_nodes(["/dev/zero"], sysfs_root=sysfs.root) is None

    def test_intel_fixture_group_with_minus_one(self, intel_sysfs: Path) -> None:
        """Intel's group 42 holds a -1 device, so it yields nothing."""
        build_tree(
            intel_sysfs,
            {
                "devices/virtual/vfio/42": None,
                "dev/char/1:5": Symlink("../../devices/virtual/vfio/42"),
            },
        )
        _char_numbers("/dev/zero")
        assert topology_for_nodes(["/dev/zero"], sysfs_root=intel_sysfs) is None

    def test_slaves_count(self, sysfs: FakeSysfs) -> None:
        """A stacked device (dm, md) reports the NUMA nodes of its slaves."""
        nvme = sysfs.add_pci_device(
            "0000:00:06.0", numa_node=1, local_cpulist="4-7", attrs={"nvme/nvme0/nvme0n1": None}
        )
        sysfs.add(
            {
                "devices/virtual/block/dm-0/slaves/nvme0n1": Symlink(
                    os.path.relpath(
                        nvme / "nvme/nvme0/nvme0n1",
                        sysfs.root / "devices/virtual/block/dm-0/slaves",
                    )
                )
            }
        )
        sysfs.link_device_node("/dev/zero", "devices/virtual/block/dm-0")
        assert _ids(topology_for_nodes(["/dev/zero"], sysfs_root=sysfs.root)) == [1]

    def test_slave_loop_terminates(self, sysfs: FakeSysfs) -> None:
        """A slaves link back to the device itself cannot recurse forever."""
        sysfs.add({"devices/virtual/block/dm-1/slaves/dm-1": Symlink("../../dm-1")})
        sysfs.link_device_node("/dev/zero", "devices/virtual/block/dm-1")
        assert topology_for_nodes(["/dev/zero"], sysfs_root=sysfs.root) is None


class TestNoTopology:
    def test_missing_device_node(self, intel_sysfs: Path, tmp_path: Path) -> None:
        """A device node that does not exist has no topology, and no exception."""
        missing = str(tmp_path / "no-such-node")
        assert find_sysfs_device(missing, sysfs_root=intel_sysfs) is None
        assert topology_for_nodes([missing], sysfs_root=intel_sysfs) is None

    def test_missing_node_does_not_hide_the_others(self, intel_sysfs: Path, tmp_path: Path) -> None:
        """Nodes without a sysfs device are skipped; the other nodes still count."""
        paths = [str(tmp_path / "no-such-node"), "/dev/null"]
        assert _ids(topology_for_nodes(paths, sysfs_root=intel_sysfs)) == [1, 2, 3]

    def test_missing_sysfs_entry(self, tmp_path: Path) -> None:
        """A device node whose numbers have no /dev/char entry has no topology."""
        _char_numbers("/dev/null")
        root = build_tree(tmp_path / "sys", {"devices": None})
        assert find_sysfs_device("/dev/null", sysfs_root=root) is None
        assert topology_for_nodes(["/dev/null"], sysfs_root=root) is None

    def test_missing_sysfs_root(self, tmp_path: Path) -> None:
        """A sysfs root that does not exist gives no topology."""
        assert topology_for_nodes(["/dev/null"], sysfs_root=tmp_path / "nothing") is None

    def test_dangling_sysfs_link(self, sysfs: FakeSysfs) -> None:
        """A /dev/char link to a missing device gives no topology."""
        sysfs.add({"dev/char/1:5": Symlink("../../devices/virtual/mem/gone")})
        assert find_sysfs_device("/dev/zero", sysfs_root=sysfs.root) is None
        assert topology_for_nodes(["/dev/zero"], sysfs_root=sysfs.root) is None

    def test_regular_file(self, intel_sysfs: Path, tmp_path: Path) -> None:
        """A regular file is not a device node, so it has no sysfs device."""
        plain = tmp_path / "plain"
        plain.write_text("x")
        assert find_sysfs_device(plain, sysfs_root=intel_sysfs) is None
        assert topology_for_nodes([str(plain)], sysfs_root=intel_sysfs) is None

    def test_directory(self, intel_sysfs: Path, tmp_path: Path) -> None:
        """A directory has no sysfs device either."""
        assert topology_for_nodes([str(tmp_path)], sysfs_root=intel_sysfs) is None

    def test_symlink_to_node_is_followed(self, intel_sysfs: Path, tmp_path: Path) -> None:
        """A symlink to a device node (like /dev/dri/by-path/*) counts as the node."""
        link = tmp_path / "null-link"
        link.symlink_to("/dev/null")
        assert _ids(topology_for_nodes([str(link)], sysfs_root=intel_sysfs)) == [1, 2, 3]

    def test_real_sysfs_never_raises(self) -> None:
        """Against the machine's real /sys the lookup returns a value, whatever it is."""
        result = topology_for_nodes(["/dev/null", "/dev/does-not-exist"])
        assert result is None or all(node.ID >= 0 for node in result.nodes)
