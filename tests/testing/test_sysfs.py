"""The fake sysfs/devfs tree builder for tests."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from host.testing import _sysfs
from host.testing._sysfs import FakeSysfs, Symlink, build_tree


class TestExports:
    def test_all(self) -> None:
        """The public names are exactly these."""
        assert sorted(_sysfs.__all__) == ["FakeSysfs", "Symlink", "build_tree"]


class TestBuildTree:
    def test_files_directories_and_links(self, tmp_path: Path) -> None:
        """str and bytes make files, mappings and None make directories, Symlink makes links."""
        root = build_tree(
            tmp_path / "root",
            {
                "text": "hello\n",
                "binary": b"\x00\x01",
                "empty": None,
                "dir": {"nested": {"leaf": "x"}},
                "rel": Symlink("dir/nested"),
                "abs": Symlink("/dev/null"),
                "dangling": Symlink("nowhere"),
            },
        )
        assert root == tmp_path / "root"
        assert (root / "text").read_text() == "hello\n"
        assert (root / "binary").read_bytes() == b"\x00\x01"
        assert (root / "empty").is_dir()
        assert list((root / "empty").iterdir()) == []
        assert (root / "dir/nested/leaf").read_text() == "x"
        assert os.readlink(root / "rel") == "dir/nested"
        assert (root / "rel/leaf").read_text() == "x"
        assert os.readlink(root / "abs") == "/dev/null"
        assert (root / "dangling").is_symlink()
        assert not (root / "dangling").exists()

    def test_slash_keys_create_parents(self, tmp_path: Path) -> None:
        """A key with '/' creates the missing parent directories."""
        build_tree(tmp_path, {"devices/pci0000:00/0000:00:02.0/numa_node": "0"})
        assert (tmp_path / "devices/pci0000:00/0000:00:02.0/numa_node").read_text() == "0"

    def test_repeated_calls_merge(self, tmp_path: Path) -> None:
        """Building again adds to directories and replaces files and links."""
        build_tree(tmp_path, {"d": {"a": "1"}, "f": "old", "l": Symlink("a")})
        build_tree(tmp_path, {"d": {"b": "2"}, "f": "new", "l": Symlink("b"), "d/c": None})
        assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["a", "b", "c"]
        assert (tmp_path / "f").read_text() == "new"
        assert os.readlink(tmp_path / "l") == "b"

    def test_file_replaces_a_symlink_not_its_target(self, tmp_path: Path) -> None:
        """Writing a file where a link was replaces the link, never writes through it."""
        build_tree(tmp_path, {"target": "keep", "l": Symlink("target")})
        build_tree(tmp_path, {"l": "mine"})
        assert not (tmp_path / "l").is_symlink()
        assert (tmp_path / "target").read_text() == "keep"

    @pytest.mark.parametrize("key", ["/etc/x", "../x", "a/../../x", ""])
    def test_keys_stay_under_the_root(self, tmp_path: Path, key: str) -> None:
        """Absolute keys, '..' and empty names are refused."""
        with pytest.raises(ValueError, match="fake tree entry"):
            build_tree(tmp_path, {key: "x"})

    def test_bad_value(self, tmp_path: Path) -> None:
        """A value of another type is refused, naming the entry."""
        with pytest.raises(ValueError, match=r"entry 'n'.*got int: 1"):
            build_tree(tmp_path, {"n": 1})


class TestFakeSysfs:
    def test_pci_device(self, tmp_path: Path) -> None:
        """add_pci_device writes locality files, attrs and the bus and driver links."""
        sysfs = FakeSysfs(tmp_path / "sys")
        dev = sysfs.add_pci_device(
            "0000:00:02.0",
            numa_node=1,
            local_cpulist="0-7",
            driver="i915",
            attrs={"vendor": "0x8086", "drm/card0/dev": "226:0"},
        )
        assert dev == sysfs.root / "devices/pci0000:00/0000:00:02.0"
        assert (dev / "numa_node").read_text() == "1\n"
        assert (dev / "local_cpulist").read_text() == "0-7\n"
        assert (dev / "vendor").read_text() == "0x8086"
        assert (dev / "drm/card0/dev").read_text() == "226:0"
        assert (sysfs.root / "bus/pci/devices/0000:00:02.0").resolve() == dev.resolve()
        assert (dev / "driver").resolve() == (sysfs.root / "bus/pci/drivers/i915").resolve()
        assert os.path.basename(os.readlink(dev / "driver")) == "i915"

    def test_pci_device_without_locality(self, tmp_path: Path) -> None:
        """None leaves numa_node (or local_cpulist) out."""
        dev = FakeSysfs(tmp_path).add_pci_device("0000:01:00.0", numa_node=None)
        assert not (dev / "numa_node").exists()
        assert not (dev / "local_cpulist").exists()

    def test_device_number(self, tmp_path: Path) -> None:
        """add_device_number links dev/<kind>/M:m to a device, with a relative link."""
        sysfs = FakeSysfs(tmp_path)
        sysfs.add({"devices/virtual/mem/null": None})
        link = sysfs.add_device_number("char", 1, 3, "devices/virtual/mem/null")
        assert link == tmp_path / "dev/char/1:3"
        assert os.readlink(link) == "../../devices/virtual/mem/null"
        block = sysfs.add_device_number("block", 8, 0, tmp_path / "devices/virtual/mem/null")
        assert block.resolve() == (tmp_path / "devices/virtual/mem/null").resolve()
        with pytest.raises(ValueError, match="'char' or 'block'"):
            sysfs.add_device_number("pipe", 1, 1, "devices")

    def test_link_real_device_node(self, tmp_path: Path) -> None:
        """link_device_node maps a real node's numbers to a fake device."""
        st = os.stat("/dev/null")
        if not stat.S_ISCHR(st.st_mode):
            pytest.skip("/dev/null is not a character device here")
        sysfs = FakeSysfs(tmp_path)
        sysfs.add({"devices/virtual/mem/null": None})
        link = sysfs.link_device_node("/dev/null", "devices/virtual/mem/null")
        assert link.name == f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        assert link.parent.name == "char"

    def test_link_non_device(self, tmp_path: Path) -> None:
        """A path that is not a device node is refused."""
        with pytest.raises(ValueError, match="is not a device node"):
            FakeSysfs(tmp_path).link_device_node(tmp_path, "devices")

    def test_iommu_group(self, tmp_path: Path) -> None:
        """add_iommu_group links the group's devices both ways and adds the vfio device."""
        sysfs = FakeSysfs(tmp_path)
        a = sysfs.add_pci_device("0000:00:04.0")
        vfio = sysfs.add_iommu_group(42, [a])
        group = tmp_path / "kernel/iommu_groups/42"
        assert (group / "devices/0000:00:04.0").resolve() == a.resolve()
        assert (a / "iommu_group").resolve() == group.resolve()
        assert vfio == tmp_path / "devices/virtual/vfio/42"
        assert (vfio / "dev").read_text().endswith(":42\n")
