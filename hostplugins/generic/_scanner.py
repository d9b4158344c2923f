"""The ``generic`` scanner: device groups' globs and USB matchers → a DeviceTree, rescanned."""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from host.deviceplugin import (
    HEALTHY,
    UNHEALTHY,
    DeviceInfo,
    DeviceSpec,
    DeviceTree,
    Mount,
    Notifier,
)
from host.deviceplugin._topology import topology_for_nodes
from hostplugins.generic._config import DEFAULT_RESCAN_INTERVAL, DeviceGroup, UsbMatch

__all__ = ["GenericScanner"]

log = logging.getLogger("hostplugins.generic")


@dataclass(frozen=True)
class _Node:
    """One device node a group matched: where this process finds it, where the node has it."""

    host_path: str
    """Under the devfs root: where this process stats it."""
    container_path: str
    """``/dev/...``: the node's path on the host and in the container."""
    node_id: str


@dataclass(frozen=True)
class _NodeStatus:
    """One matched node's health, with the reason when it is Unhealthy (for the log)."""

    group: str
    host_path: str
    reason: str = ""


class GenericScanner:
    """Expose the device nodes matched by ``groups``, re-evaluating them every interval.

    ``scan_once()`` is one synchronous, side-effect-free pass over ``devfs_root`` and
    ``sysfs_root`` (tests call it directly); ``scan()`` runs it in a worker thread every
    ``rescan_interval`` seconds and notifies whenever the tree changed. ``access`` is
    ``os.access`` unless a test injects a stand-in (a root test process passes every
    real permission check).
    """

    def __init__(
        self,
        groups: Iterable[DeviceGroup],
        *,
        devfs_root: str | os.PathLike[str] = "/dev",
        sysfs_root: str | os.PathLike[str] = "/sys",
        rescan_interval: float = DEFAULT_RESCAN_INTERVAL,
        access: Callable[[str, int], bool] = os.access,
    ) -> None:
        self.groups = tuple(groups)
        self.devfs_root = Path(devfs_root)
        self.sysfs_root = Path(sysfs_root)
        self.rescan_interval = rescan_interval
        self._access = access
        self._reported_clashes: set[str] = set()  # host paths whose ID clash was logged
        # The wait between scans; a test replaces it to step the loop without sleeping.
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def device_types(self) -> list[str]:
        """Each group's name: the device types this scanner may notify."""
        return [group.name for group in self.groups]

    def __repr__(self) -> str:
        names = ", ".join(g.resource_name for g in self.groups)
        return f"GenericScanner({names}; devfs_root={str(self.devfs_root)!r})"

    async def scan(self, notifier: Notifier) -> None:
        """Scan every ``rescan_interval`` seconds until cancelled; notify on each change.

        The first tree is always notified, even an empty one, so the host knows the
        scanner has looked.
        """
        previous: DeviceTree | None = None
        previous_status: dict[tuple[str, str], _NodeStatus] = {}
        while True:
            tree, status = await asyncio.to_thread(self._scan)
            _log_changes(previous_status, status)
            previous_status = status
            if previous is None and not tree:
                log.info(
                    "plugin 'generic': none of the configured device nodes exists under %s; "
                    "no devices",
                    self.devfs_root,
                )
            if previous is None or tree != previous:
                notifier.notify(tree)
                previous = tree
            await self._sleep(self.rescan_interval)

    def scan_once(self) -> DeviceTree:
        """Build the tree of every group's devices as they are now under the roots."""
        return self._scan()[0]

    def _scan(self) -> tuple[DeviceTree, dict[tuple[str, str], _NodeStatus]]:
        tree = DeviceTree()
        status: dict[tuple[str, str], _NodeStatus] = {}
        for group in self.groups:
            present: list[tuple[_Node, str]] = []
            for node in self._nodes(group):
                reason = self._unhealthy_reason(node.host_path, group.permissions)
                if reason is None:  # vanished since the glob, or a dangling symlink
                    continue
                present.append((node, reason))
                status[group.name, node.host_path] = _NodeStatus(group.name, node.host_path, reason)
            if group.bundle:
                if present:
                    self._add(tree, group, group.name, present)
            else:
                for node, reason in present:
                    self._add(tree, group, node.node_id, [(node, reason)])
        return tree, status

    def _add(
        self, tree: DeviceTree, group: DeviceGroup, device_id: str, nodes: list[tuple[_Node, str]]
    ) -> None:
        """Add one device made of ``nodes`` (with their Unhealthy reasons), ``count`` times.

        Kubelet gets each node's path on the node (``/dev/...``, as the container sees it
        too); its NUMA topology is read through the node as found under the devfs root.
        """
        info = DeviceInfo(
            state=UNHEALTHY if any(reason for _, reason in nodes) else HEALTHY,
            nodes=tuple(
                DeviceSpec(
                    host_path=node.container_path,
                    container_path=node.container_path,
                    permissions=group.permissions,
                )
                for node, _ in nodes
            ),
            mounts=tuple(
                Mount(host_path=m.host_path, container_path=m.container_path, read_only=m.read_only)
                for m in group.mounts
            ),
            topology=topology_for_nodes(
                [node.host_path for node, _ in nodes], sysfs_root=str(self.sysfs_root)
            ),
        )
        # Every share carries the same DeviceInfo: it is immutable.
        if group.count == 1:
            tree.add_device(group.name, device_id, info)
        else:
            for share in range(group.count):
                tree.add_device(group.name, f"{device_id}-{share}", info)

    def _nodes(self, group: DeviceGroup) -> list[_Node]:
        """Every node the group's globs and USB matchers find, once each, in a stable order."""
        found: dict[str, _Node] = {}
        ids: set[str] = set()
        relatives = [rel for pattern in group.paths for rel in self._glob(pattern)]
        relatives += list(self._usb_nodes(group.usb))
        for rel in relatives:
            node = _Node(
                host_path=str(self.devfs_root / rel),
                container_path=f"/dev/{rel}",
                node_id=rel.replace("/", "_"),
            )
            if node.host_path in found:
                continue
            if node.node_id in ids:
                # Only "a/b" beside "a_b" can collide; the first one keeps the ID.
                if node.host_path not in self._reported_clashes:
                    self._reported_clashes.add(node.host_path)
                    log.warning(
                        "plugin 'generic': resource %s: %s has the same device ID %r as another "
                        "node of the group; it is left out",
                        group.resource_name,
                        node.host_path,
                        node.node_id,
                    )
                continue
            found[node.host_path] = node
            ids.add(node.node_id)
        return list(found.values())

    def _glob(self, pattern: str) -> list[str]:
        """Paths relative to the devfs root that match ``pattern`` (itself relative)."""
        return sorted(glob.glob(pattern, root_dir=self.devfs_root))

    def _usb_nodes(self, matchers: tuple[UsbMatch, ...]) -> Iterator[str]:
        """``bus/usb/BBB/DDD`` (relative to the devfs root) of each matching USB device."""
        if not matchers:
            return
        devices = self.sysfs_root / "bus" / "usb" / "devices"
        try:
            entries = sorted(os.listdir(devices))
        except OSError as err:
            log.debug("no USB devices under %s: %s", devices, err)
            return
        for entry in entries:
            device = devices / entry
            # Interfaces ("1-1:1.0") have no idVendor; they are skipped here.
            vendor = _read_int(device / "idVendor", 16)
            product = _read_int(device / "idProduct", 16)
            if vendor is None or product is None:
                continue
            if not any(m.matches(vendor, product) for m in matchers):
                continue
            busnum = _read_int(device / "busnum", 10)
            devnum = _read_int(device / "devnum", 10)
            if busnum is None or devnum is None:
                log.debug("USB device %s has no busnum/devnum; skipped", device)
                continue
            yield f"bus/usb/{busnum:03d}/{devnum:03d}"

    def _unhealthy_reason(self, path: str, permissions: str) -> str | None:
        """Why ``path`` is Unhealthy ("" when Healthy), or None when it does not exist.

        Health is judged from ``stat`` and ``access(2)`` only, never by opening the
        node: opening has side effects on some devices (a tty may become the host's
        controlling terminal or toggle DTR and reset a microcontroller board,
        ``/dev/watchdog`` arms the watchdog, a tape rewinds, an exclusive-open device
        would be busy for the container that really needs it) and could block.
        """
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        except OSError as err:
            return f"cannot stat it: {err.strerror or err}"
        if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            return f"it is not a character or block device ({_file_kind(st.st_mode)})"
        mode = (os.R_OK if "r" in permissions else 0) | (os.W_OK if "w" in permissions else 0)
        if mode and not self._access(path, mode):
            wanted = " and ".join(w for c, w in (("r", "read"), ("w", "write")) if c in permissions)
            return f"this process may not open it for {wanted}"
        return ""


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a device node"


def _read_int(path: Path, base: int) -> int | None:
    try:
        return int(path.read_text(encoding="ascii").strip(), base)
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _log_changes(
    before: dict[tuple[str, str], _NodeStatus], after: dict[tuple[str, str], _NodeStatus]
) -> None:
    """Log nodes that appeared, vanished, turned Unhealthy (with why) or recovered."""
    for key, now in after.items():
        old = before.get(key)
        if now.reason and (old is None or old.reason != now.reason):
            log.warning(
                "plugin 'generic': %s (%s) is Unhealthy: %s", now.host_path, now.group, now.reason
            )
        elif old is None:
            log.info("plugin 'generic': %s (%s) found", now.host_path, now.group)
        elif old.reason and not now.reason:
            log.info("plugin 'generic': %s (%s) is Healthy again", now.host_path, now.group)
    for key, old in before.items():
        if key not in after:
            log.info("plugin 'generic': %s (%s) is gone", old.host_path, old.group)
