"""NUMA topology of device nodes, read from sysfs: the counterpart of Intel's ``pkg/topology``.

``topology_for_nodes`` maps each device node to its sysfs device (``/sys/dev/char/M:m``),
then collects the NUMA nodes reported by that device or its nearest ancestor that
reports any, plus those of its dependents (``slaves/*`` of stacked block devices, and
the PCI functions in the IOMMU group behind a ``/dev/vfio/<group>`` node).

Everything here is synchronous and cheap (a handful of ``stat``/``readlink``/small
reads), so a scanner may call it from a worker thread or inline. Nothing raises: a
path that cannot be resolved contributes no topology and is logged at debug level,
because a device without topology is still a perfectly usable device.

Differences from the Go code, on purpose:

* ``/dev/<char|block>/M:m`` is looked up under ``sysfs_root`` too (Go always reads the
  real ``/sys/dev``), so a fake tree can map the real ``/dev/null`` to a fake device.
* A path that is not a device node has no sysfs device (Go used the block device of
  the filesystem holding the file, which says nothing about the device).
* A node without a sysfs device is skipped and the other nodes still count (Go fails
  the whole lookup, dropping the NUMA information the other nodes carry).
* No NUMA information gives ``None`` instead of an empty ``TopologyInfo``: kubelet
  treats an absent topology and one with no nodes alike, and ``None`` saves bytes on
  every ListAndWatch message.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from host.deviceplugin._types import NUMANode, TopologyInfo

__all__ = ["find_sysfs_device", "topology_for_nodes"]

log = logging.getLogger("host.deviceplugin.topology")


@dataclass(frozen=True)
class _Hint:
    """What one sysfs directory says about locality (strings as read, comma-joined)."""

    cpus: str = ""
    numas: str = ""
    sockets: str = ""

    def __bool__(self) -> bool:
        return bool(self.cpus or self.numas or self.sockets)


def find_sysfs_device(
    dev_path: str | os.PathLike[str], *, sysfs_root: str | os.PathLike[str] = "/sys"
) -> str | None:
    """Return the real path of the sysfs device behind device node ``dev_path``, or None.

    ``dev_path`` is stat'ed (following symlinks); a char or block device maps to
    ``<sysfs_root>/dev/{char,block}/<major>:<minor>``, resolved. None (logged at debug
    level) when the path does not exist or cannot be stat'ed, when it is not a device
    node (a regular file or a directory has no sysfs device of its own), when it is a
    virtual device (major 0), or when sysfs has no entry for its numbers.
    """
    try:
        st = os.stat(dev_path)
    except OSError as err:
        log.debug("no topology for %s: %s", dev_path, err)
        return None
    if stat.S_ISCHR(st.st_mode):
        kind = "char"
    elif stat.S_ISBLK(st.st_mode):
        kind = "block"
    else:
        log.debug("no topology for %s: not a device node", dev_path)
        return None
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    if major == 0:
        log.debug("no topology for %s: virtual device node (major 0)", dev_path)
        return None
    entry = os.path.join(sysfs_root, "dev", kind, f"{major}:{minor}")
    if not os.path.exists(entry):
        log.debug("no topology for %s: %s does not exist", dev_path, entry)
        return None
    return os.path.realpath(entry)


def topology_for_nodes(
    paths: Sequence[str], *, sysfs_root: str | os.PathLike[str] = "/sys"
) -> TopologyInfo | None:
    """Return the NUMA nodes of the devices behind device nodes ``paths``, or None.

    For each path: find its sysfs device (:func:`find_sysfs_device`), walk up from it
    while under ``<sysfs_root>/devices/`` and take the first level that reports a
    ``local_cpulist`` or a ``numa_node``; add the same for its ``slaves/*`` and, for a
    ``/dev/vfio/<group>`` node, for every device in ``kernel/iommu_groups/<group>``.
    ``numa_node`` ``-1`` means "no NUMA node". The union of all node IDs comes back
    sorted and unique; None when there is none (see the module docstring for why None
    rather than an empty TopologyInfo). Never raises.
    """
    root = os.path.realpath(sysfs_root)
    numa_ids: set[int] = set()
    for path in paths:
        sysfs_dev = find_sysfs_device(path, sysfs_root=root)
        if sysfs_dev is None:
            continue
        for provider, hint in _topology_hints(sysfs_dev, root, frozenset()).items():
            numa_ids.update(_parse_numa_ids(hint.numas, provider))
    if not numa_ids:
        return None
    return TopologyInfo(nodes=tuple(NUMANode(ID=i) for i in sorted(numa_ids)))


def _topology_hints(dev_dir: str, root: str, visiting: frozenset[str]) -> dict[str, _Hint]:
    """Port of Go's NewTopologyHints: hints of ``dev_dir``'s ancestry and its dependents.

    ``visiting`` holds the directories on the current recursion path, so a looping
    symlink in a broken (or fake) tree cannot recurse forever.
    """
    real = os.path.realpath(dev_dir)
    if real in visiting:
        return {}
    visiting = visiting | {real}
    devices_prefix = os.path.join(root, "devices") + os.sep
    hints: dict[str, _Hint] = {}
    level = real
    while level.startswith(devices_prefix):
        hint = _hint_at(level, root, visiting)
        if hint:
            hints[level] = hint
            break
        level = os.path.dirname(level)
    for dependent in (*_slaves(real), *_iommu_group_devices(real, root)):
        for provider, hint in _topology_hints(dependent, root, visiting).items():
            hints.setdefault(provider, hint)  # the first provider seen wins, as in Go
    return hints


def _hint_at(level: str, root: str, visiting: frozenset[str]) -> _Hint:
    """Port of Go's getTopologyHint: the locality ``level`` itself reports."""
    cpus = _read_attr(level, "local_cpulist")
    numas = _read_attr(level, "numa_node")
    if numas == "-1":  # a device (or system) without NUMA affinity
        numas = ""
    if not numas or cpus:
        return _Hint(cpus=cpus, numas=numas)
    # A NUMA node without CPUs: some BIOSes report the socket as the NUMA node.
    # Trust the parent device or bus instead, and keep the value as a socket if the
    # parent knows nothing either.
    parent_hints = _topology_hints(os.path.dirname(level), root, visiting).values()
    parent_cpus = _join_distinct(h.cpus for h in parent_hints)
    parent_numas = _join_distinct(h.numas for h in parent_hints)
    cpus = parent_cpus or cpus
    numas = parent_numas or numas
    if not cpus:
        return _Hint(sockets=numas)
    return _Hint(cpus=cpus, numas=numas)


def _read_attr(directory: str, name: str) -> str:
    """Read a sysfs attribute, stripped; empty when it is missing or unreadable."""
    try:
        with open(os.path.join(directory, name), encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""
    except OSError as err:
        log.debug("cannot read %s/%s: %s", directory, name, err)
        return ""


def _slaves(real: str) -> list[str]:
    """List the devices stacked under ``real`` (e.g. the disks of a dm or md device)."""
    try:
        names = sorted(os.listdir(os.path.join(real, "slaves")))
    except OSError:
        return []
    return [os.path.join(real, "slaves", name) for name in names]


def _iommu_group_devices(real: str, root: str) -> list[str]:
    """List the devices in the IOMMU group of ``<root>/devices/virtual/vfio/<group>``."""
    rel = os.path.relpath(real, os.path.join(root, "devices", "virtual"))
    group_dir, group = os.path.split(rel)
    if group_dir != "vfio" or not group:
        return []
    devices_dir = os.path.join(root, "kernel", "iommu_groups", group, "devices")
    try:
        names = sorted(os.listdir(devices_dir))
    except OSError as err:
        log.debug("no IOMMU group devices for %s: %s", real, err)
        return []
    return [os.path.realpath(os.path.join(devices_dir, name)) for name in names]


def _join_distinct(values: Iterable[str]) -> str:
    return ",".join(dict.fromkeys(v for v in values if v))


def _parse_numa_ids(numas: str, provider: str) -> list[int]:
    """Parse a comma-separated ``numa_node`` value; bad or negative entries are skipped."""
    ids = []
    for part in numas.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            log.debug("ignoring NUMA node %r from %s: not an integer", part, provider)
            continue
        if value < 0:
            log.debug("ignoring NUMA node %r from %s: negative", part, provider)
            continue
        ids.append(value)
    return ids
