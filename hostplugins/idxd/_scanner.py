"""The idxd scanner: enabled DSA/IAA work queues as ``wq-<type>-<mode>`` resources.

:func:`scan_once` is the whole discovery logic, synchronous and side-effect free, so
tests call it against fake trees; :class:`IdxdScanner` runs it periodically. How a
user work queue's device nodes are found and checked is a :class:`WqNodeLookup`, so
tests (and odd hosts) can replace the character-device check, which needs real nodes.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from host.deviceplugin import HEALTHY, DeviceInfo, DeviceTree
from hostplugins.idxd._common import (
    PeriodicScanner,
    Problems,
    device_spec,
    natural_key,
    numa_topology,
    read_attr,
)
from hostplugins.idxd._options import IdxdKind, IdxdSettings

__all__ = [
    "CHAR_DEVICE_NODES",
    "CharDeviceNodes",
    "IdxdScanner",
    "WqNodeError",
    "WqNodeLookup",
    "scan_once",
]

# What kubelet accepts after "<namespace>/": wq-<type>-<mode> must fit.
_DEVICE_TYPE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")


class WqNodeError(Exception):
    """A user work queue's device nodes are missing or not what they should be."""


@runtime_checkable
class WqNodeLookup(Protocol):
    """Finds the device nodes of user work queue ``wq_name`` (e.g. ``wq0.0``).

    Returns the host paths to hand to containers; raises :class:`WqNodeError` or
    OSError when the queue's nodes are not usable (the queue is then left out).
    """

    def nodes(self, dev_dir: Path, char_dir: Path, wq_name: str) -> Sequence[Path]:
        """Return the nodes of ``<dev_dir>/<wq_name>`` (``char_dir`` is ``<devfs>/char``)."""


class CharDeviceNodes:
    """The real check, as Intel's ``getDevNodes``: a character device and its /dev/char link.

    ``<dev_dir>/<wq>`` must be a character device (symlinks followed), and
    ``<char_dir>/<major>:<minor>`` a symlink resolving to the same file; both are
    returned. Needs real device nodes, so tests use a lookup of their own.
    """

    def nodes(self, dev_dir: Path, char_dir: Path, wq_name: str) -> Sequence[Path]:
        """Return ``(<dev_dir>/<wq>, <char_dir>/<major>:<minor>)`` or raise WqNodeError."""
        dev_path = dev_dir / wq_name
        try:
            st = os.stat(dev_path)
        except OSError as err:
            raise WqNodeError(f"cannot stat {dev_path}: {err.strerror}") from None
        if not stat.S_ISCHR(st.st_mode):
            raise WqNodeError(f"{dev_path} is not a character device")
        char_path = char_dir / f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        try:
            link = os.lstat(char_path)
        except OSError as err:
            raise WqNodeError(f"cannot stat {char_path}: {err.strerror}") from None
        if not stat.S_ISLNK(link.st_mode):
            raise WqNodeError(f"{char_path} is not a symbolic link")
        target = os.path.realpath(char_path)
        if target != os.path.realpath(dev_path):
            raise WqNodeError(f"{char_path} points to {target}, not to {dev_path}")
        return (dev_path, char_path)


CHAR_DEVICE_NODES = CharDeviceNodes()


def scan_once(
    kind: IdxdKind,
    settings: IdxdSettings,
    *,
    sysfs_root: Path,
    devfs_root: Path,
    node_lookup: WqNodeLookup = CHAR_DEVICE_NODES,
    problems: list[str] | None = None,
) -> DeviceTree:
    """Scan ``kind``'s work queues once and return the device tree.

    Every ``<sysfs>/bus/dsa/devices/<prefix>*/wq*`` whose ``state`` is ``enabled``
    becomes resource ``wq-<type>-<mode>`` with ``shared-dev-num`` devices when its mode
    is ``shared`` (one otherwise), IDs ``wq-<type>-<mode>-<wq>-<i>``. A ``user`` queue
    carries its nodes ``<devfs>/<prefix>/<wq>`` and ``<devfs>/char/M:m``; other types
    (``kernel``, ``mdev``) none. A queue that cannot be read or whose nodes fail the
    lookup is skipped and the reason appended to ``problems`` (logged when None);
    the other queues still count. Never raises for sysfs contents.
    """
    found = Problems(problems, logging.getLogger(f"hostplugins.{kind.plugin}"))
    tree = DeviceTree()
    dev_dir = devfs_root / kind.prefix
    char_dir = devfs_root / "char"
    pattern = f"bus/dsa/devices/{kind.prefix}*/wq*/state"
    states = sorted(sysfs_root.glob(pattern), key=lambda p: natural_key(str(p)))
    for state_file in states:
        wq_dir = state_file.parent
        label = f"{wq_dir.parent.name}/{wq_dir.name}"
        try:
            state = state_file.read_text(encoding="utf-8", errors="replace").strip()
        except OSError as err:
            found.add(f"work queue {label}: cannot read {state_file}: {err.strerror}; skipped")
            continue
        if state != "enabled":
            continue
        mode = read_attr(wq_dir / "mode")
        wq_type = read_attr(wq_dir / "type")
        if mode is None or wq_type is None:
            missing = "mode" if mode is None else "type"
            found.add(f"work queue {label}: cannot read {wq_dir / missing}; skipped")
            continue
        dev_type = f"wq-{wq_type}-{mode}"
        if not _DEVICE_TYPE.fullmatch(dev_type):
            found.add(f"work queue {label}: {dev_type!r} is no valid resource name; skipped")
            continue
        nodes: Sequence[Path] = ()
        if wq_type == "user":
            try:
                nodes = node_lookup.nodes(dev_dir, char_dir, wq_dir.name)
            except (WqNodeError, OSError) as err:
                found.add(f"work queue {label}: {err}; skipped")
                continue
        info = DeviceInfo(
            state=HEALTHY,
            nodes=tuple(device_spec(node, devfs_root) for node in nodes),
            topology=numa_topology(wq_dir, sysfs_root),
        )
        amount = settings.shared_dev_num if mode == "shared" else 1
        for share in range(amount):
            tree.add_device(dev_type, f"{dev_type}-{wq_dir.name}-{share}", info)
    return tree


class IdxdScanner(PeriodicScanner):
    """Scans ``kind``'s work queues every ``settings.scan_interval`` seconds and on rescan().

    Implements the framework's Scanner protocol; Allocate is the framework's default
    (the queue's nodes). ``node_lookup`` checks user queues' nodes (default: the real
    character-device check).
    """

    def __init__(
        self,
        kind: IdxdKind,
        settings: IdxdSettings | None = None,
        *,
        sysfs_root: Path | str = "/sys",
        devfs_root: Path | str = "/dev",
        node_lookup: WqNodeLookup = CHAR_DEVICE_NODES,
    ) -> None:
        self.kind = kind
        self.settings = settings or IdxdSettings(plugin=kind.plugin)
        self.sysfs_root = Path(sysfs_root)
        self.devfs_root = Path(devfs_root)
        self.node_lookup = node_lookup
        super().__init__(
            self.settings.scan_interval,
            logging.getLogger(f"hostplugins.{kind.plugin}"),
            namespace=kind.namespace,
        )

    def __repr__(self) -> str:
        return f"IdxdScanner({self.kind.plugin}, sysfs_root={str(self.sysfs_root)!r})"

    def scan_once(self, problems: list[str] | None = None) -> DeviceTree:
        """Scan once with this scanner's settings (see :func:`scan_once`)."""
        return scan_once(
            self.kind,
            self.settings,
            sysfs_root=self.sysfs_root,
            devfs_root=self.devfs_root,
            node_lookup=self.node_lookup,
            problems=problems,
        )
