"""Fake sysfs and devfs trees for tests: real files under a temporary directory.

Scanners and :func:`host.deviceplugin.DeviceInfo.with_topology` take a root
directory (``sysfs_root``, a devfs root, ...), so a test builds the tree it needs
and points them at it; no mocking of ``os`` is needed. Character devices cannot be
created without root, but a fake ``dev/char/<major>:<minor>`` entry can map a real
node (``/dev/null`` is 1:3 everywhere) to a fake device, see
:meth:`FakeSysfs.link_device_node`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = ["FakeSysfs", "Symlink", "build_tree"]


@dataclass(frozen=True)
class Symlink:
    """A symbolic link in a :func:`build_tree` spec, pointing at ``target``.

    ``target`` is written as given: relative (to the link's directory, like sysfs's
    own ``../../devices/...`` links) or absolute. It need not exist.
    """

    target: str


def build_tree(root: Path, spec: Mapping[str, Any]) -> Path:
    """Create the files, directories and symlinks described by ``spec`` under ``root``.

    Each key is a name, or a relative path with ``/`` (missing parents are created);
    each value is:

    * ``str`` or ``bytes``: a regular file with that content (replacing an existing file);
    * a mapping: a directory, filled recursively (merged into an existing one);
    * :class:`Symlink`: a symbolic link (replacing an existing link);
    * ``None``: an empty directory.

    Example, a PCI GPU on NUMA node 1 and the sysfs entry of its DRM node::

        build_tree(tmp_path / "sys", {
            "devices/pci0000:00/0000:00:02.0": {
                "vendor": "0x8086",
                "numa_node": "1",
                "local_cpulist": "0-7",
                "drm": {"card0": {"dev": "226:0"}},
            },
            "dev/char/226:0": Symlink("../../devices/pci0000:00/0000:00:02.0/drm/card0"),
        })

    Calling it again on the same root adds to the tree. Returns ``root``. Raises
    ValueError for an absolute key, a ``..`` in a key, or a value of another type.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for key, value in spec.items():
        path = root.joinpath(*_relative_parts(key))
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(value, Symlink):
            if path.is_symlink():
                path.unlink()
            path.symlink_to(value.target)
        elif isinstance(value, str | bytes):
            data = value.encode() if isinstance(value, str) else value
            if path.is_symlink():
                path.unlink()
            path.write_bytes(data)
        elif value is None:
            path.mkdir(exist_ok=True)
        elif isinstance(value, Mapping):
            build_tree(path, value)
        else:
            raise ValueError(
                f"fake tree entry {key!r}: expected str, bytes, a mapping, Symlink or None, "
                f"got {type(value).__name__}: {value!r}"
            )
    return root


def _relative_parts(key: str) -> tuple[str, ...]:
    if not isinstance(key, str) or not key:
        raise ValueError(f"fake tree entry names must be non-empty strings, got {key!r}")
    path = PurePosixPath(key)
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"fake tree entry {key!r} must stay under the root (relative, no '..')")
    return path.parts


class FakeSysfs:
    """A fake sysfs tree rooted at ``root``, with helpers for the common shapes.

    Pass :attr:`root` wherever code takes a ``sysfs_root``::

        sysfs = FakeSysfs(tmp_path / "sys")
        gpu = sysfs.add_pci_device("0000:00:02.0", numa_node=1, attrs={"class": "0x030000"})
        sysfs.link_device_node("/dev/null", gpu)   # real 1:3 -> the fake GPU
        DeviceInfo.with_topology(nodes=[...host_path="/dev/null"...], sysfs_root=sysfs.root)
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def add(self, spec: Mapping[str, Any]) -> Path:
        """Add entries to the tree with :func:`build_tree`; return :attr:`root`."""
        return build_tree(self.root, spec)

    def add_pci_device(
        self,
        address: str,
        *,
        numa_node: int | str | None = -1,
        local_cpulist: str | None = None,
        driver: str | None = None,
        attrs: Mapping[str, Any] | None = None,
        parent: str = "devices/pci0000:00",
    ) -> Path:
        """Add PCI device ``address`` (e.g. ``"0000:00:02.0"``) and return its directory.

        Creates ``<parent>/<address>`` with ``numa_node`` and ``local_cpulist`` (a
        None value leaves the file out), the ``bus/pci/devices/<address>`` link and,
        with ``driver``, the ``driver`` link to ``bus/pci/drivers/<driver>``.
        ``attrs`` adds more entries to the device directory (a :func:`build_tree`
        spec: ``{"vendor": "0x8086", "drm": {"card0": {"dev": "226:0"}}}``).
        """
        rel = PurePosixPath(parent, address)
        content: dict[str, Any] = {}
        if numa_node is not None:
            content["numa_node"] = f"{numa_node}\n"
        if local_cpulist is not None:
            content["local_cpulist"] = f"{local_cpulist}\n"
        content.update(attrs or {})
        self.add({str(rel): content})
        self.add({f"bus/pci/devices/{address}": Symlink(_relative_link("bus/pci/devices", rel))})
        if driver is not None:
            self.add({f"bus/pci/drivers/{driver}": None})
            self.add({f"{rel}/driver": Symlink(_relative_link(rel, f"bus/pci/drivers/{driver}"))})
        return self.root / rel

    def add_device_number(self, kind: str, major: int, minor: int, device: Path | str) -> Path:
        """Add ``dev/<kind>/<major>:<minor>`` (kind ``char`` or ``block``) linking to ``device``.

        ``device`` is a directory of this tree, absolute or relative to :attr:`root`.
        Returns the link's path.
        """
        if kind not in ("char", "block"):
            raise ValueError(f"device kind must be 'char' or 'block', got {kind!r}")
        target = self._relative_to_root(device)
        link = PurePosixPath("dev", kind, f"{major}:{minor}")
        self.add({str(link): Symlink(_relative_link(link.parent, target))})
        return self.root / link

    def link_device_node(self, dev_path: str | os.PathLike[str], device: Path | str) -> Path:
        """Map the real device node ``dev_path`` (e.g. ``/dev/null``) to fake ``device``.

        Reads the node's major and minor numbers and adds the ``dev/char`` (or
        ``dev/block``) entry for them. Raises ValueError when ``dev_path`` is not a
        device node.
        """
        st = os.stat(dev_path)
        if stat.S_ISCHR(st.st_mode):
            kind = "char"
        elif stat.S_ISBLK(st.st_mode):
            kind = "block"
        else:
            raise ValueError(f"{os.fspath(dev_path)!r} is not a device node")
        return self.add_device_number(kind, os.major(st.st_rdev), os.minor(st.st_rdev), device)

    def add_iommu_group(self, group: int | str, devices: Iterable[Path | str]) -> Path:
        """Add IOMMU group ``group`` holding ``devices`` (directories of this tree).

        Creates ``kernel/iommu_groups/<group>/devices/<name>`` links, the
        ``iommu_group`` link of each device, and ``devices/virtual/vfio/<group>`` (the
        sysfs device of ``/dev/vfio/<group>``). Returns the vfio device's directory.
        """
        group_dir = PurePosixPath("kernel/iommu_groups", str(group))
        self.add({f"{group_dir}/devices": None})
        for device in devices:
            rel = self._relative_to_root(device)
            self.add(
                {
                    f"{group_dir}/devices/{rel.name}": Symlink(
                        _relative_link(group_dir / "devices", rel)
                    ),
                    f"{rel}/iommu_group": Symlink(_relative_link(rel, group_dir)),
                }
            )
        vfio = PurePosixPath("devices/virtual/vfio", str(group))
        self.add({str(vfio): {"dev": f"{_VFIO_MAJOR}:{group}\n"}})
        return self.root / vfio

    def _relative_to_root(self, device: Path | str) -> PurePosixPath:
        path = Path(device)
        if path.is_absolute():
            path = path.relative_to(self.root)
        return PurePosixPath(path.as_posix())


# Real kernels allocate the vfio major dynamically; any fixed value will do in a fake.
_VFIO_MAJOR = 511


def _relative_link(link_dir: PurePosixPath | str, target: PurePosixPath | str) -> str:
    """Return the relative link text that leads from directory ``link_dir`` to ``target``."""
    return os.path.relpath(PurePosixPath("/", target), PurePosixPath("/", link_dir))
