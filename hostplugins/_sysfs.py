"""What every built-in plugin shares: sysfs readers, natural order, NUMA topology, host paths.

Host paths, one rule for every plugin: a scanner *reads* under its roots
(``--sysfs-root``, ``--devfs-root``: ``/host/sys``, ``/host/dev`` when the host runs in
a container with the node's trees mounted there), but every path it *reports* (to
kubelet in DeviceSpecs and Mounts, and in CDI specs) is the node's own: a node found at
``<devfs_root>/dri/card0`` is ``/dev/dri/card0`` on the host and in the container, an
entry at ``<sysfs_root>/devices/x`` is ``/sys/devices/x``. :func:`dev_path`,
:func:`sys_path` and :func:`device_spec` apply it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from host.deviceplugin import DeviceSpec, NUMANode, TopologyInfo

__all__ = [
    "dev_path",
    "device_spec",
    "natural_key",
    "numa_ids",
    "numa_topology",
    "read_attr",
    "sys_path",
    "topology_of",
]

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[str | int, ...]:
    """Sort key that orders ``card2`` before ``card10`` (plain sorting would not)."""
    return tuple(int(part) if part.isdigit() else part for part in _DIGITS.split(name))


def _reroot(path: Path, root: Path, node_root: str) -> str:
    try:
        relative = path.relative_to(root).as_posix()
    except ValueError:
        return str(path)  # not under the root: already a path of the node
    return node_root if relative == "." else f"{node_root}/{relative}"


def dev_path(path: Path, devfs_root: Path) -> str:
    """Return the node's path of device node ``path`` found under ``devfs_root``: ``/dev/...``."""
    return _reroot(path, devfs_root, "/dev")


def sys_path(path: Path, sysfs_root: Path) -> str:
    """Return the node's path of sysfs entry ``path`` found under ``sysfs_root``: ``/sys/...``."""
    return _reroot(path, sysfs_root, "/sys")


def device_spec(path: Path, devfs_root: Path, permissions: str = "rw") -> DeviceSpec:
    """Return the spec of device node ``path`` (found under ``devfs_root``).

    Host and container path are both the node's (``/dev/...``): the Go plugins'
    ``S(path)``, whatever the devfs root is.
    """
    node = dev_path(path, devfs_root)
    return DeviceSpec(host_path=node, container_path=node, permissions=permissions)


def read_attr(path: Path) -> str | None:
    """Return a sysfs attribute's content, stripped, or None when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def numa_ids(device_dir: Path, sysfs_root: Path) -> set[int]:
    """Return the NUMA nodes of the sysfs device ``device_dir`` (a PCI function, a port, ...).

    Walks up from the device's real path while under ``<sysfs_root>/devices`` and stops
    at the first level that reports ``local_cpulist`` or a ``numa_node`` (``-1`` means
    none), as the framework's topology lookup does from a device node. The scanner
    already knows the device's sysfs directory, so it starts there instead of going
    through ``/sys/dev/char/M:m``; that also works in fake trees, whose device nodes
    are regular files.
    """
    devices = os.path.join(os.path.realpath(sysfs_root), "devices") + os.sep
    level = os.path.realpath(device_dir)
    while level.startswith(devices):
        cpus = read_attr(Path(level, "local_cpulist")) or ""
        numas = read_attr(Path(level, "numa_node")) or ""
        if numas == "-1":
            numas = ""
        if cpus or numas:
            return {int(n) for n in numas.split(",") if n.strip().isdigit()}
        level = os.path.dirname(level)
    return set()


def topology_of(ids: Iterable[int]) -> TopologyInfo | None:
    """Return a TopologyInfo with NUMA nodes ``ids`` (sorted), or None when there are none."""
    nodes = sorted(set(ids))
    if not nodes:
        return None
    return TopologyInfo(nodes=tuple(NUMANode(ID=i) for i in nodes))


def numa_topology(device_dir: Path, sysfs_root: Path) -> TopologyInfo | None:
    """Return the NUMA nodes of the sysfs device ``device_dir`` as a TopologyInfo, or None."""
    return topology_of(numa_ids(device_dir, sysfs_root))
