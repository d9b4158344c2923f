"""One watch on the device-plugin directory, shared by every resource server of a process.

Kubelet announces a restart in the directory itself: it unlinks every socket there and
creates a fresh ``kubelet.sock``. One inotify watch sees both, whatever the number of
resources served; a slow stat-based check is the safety net for missed events (an
overflowed queue, a directory re-created behind our back, inotify unavailable).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PluginDirWatcher", "SocketIdentity", "WatchEvent", "WatchEventKind", "socket_identity"]

log = logging.getLogger("host.deviceplugin.watcher")

SocketIdentity = tuple[int, int]
"""(device, inode) of a socket file.

Not proof of a new kubelet on its own (a re-created socket may reuse the inode, and
ctime moves with a chmod), which is why a closed ListAndWatch stream also triggers
registration: a kubelet that died took our stream with it.
"""


def socket_identity(path: str | os.PathLike[str]) -> SocketIdentity | None:
    """Return the identity of the Unix socket at ``path``, or None if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISSOCK(st.st_mode):
        return None
    return (st.st_dev, st.st_ino)


class WatchEventKind(enum.Enum):
    """What the watcher saw."""

    KUBELET_STARTED = "kubelet-started"
    """``kubelet.sock`` was (re-)created: every plugin must register again."""
    SOCKET_REMOVED = "socket-removed"
    """A file in the plugin directory was removed (``name`` says which)."""
    RESYNC = "resync"
    """Safety net: check your own socket; events may have been missed."""


@dataclass(frozen=True)
class WatchEvent:
    """One observation of the plugin directory."""

    kind: WatchEventKind
    name: str | None = None


Subscriber = Callable[[WatchEvent], None]


class PluginDirWatcher:
    """Watches ``plugin_dir`` (and the directory of ``kubelet_socket``) for kubelet restarts.

    Share one instance between every :class:`~host.deviceplugin.Manager` of a process.
    It starts itself when the first subscriber arrives and stops after the last one
    leaves. Subscribers are plain callables run on the event loop; they must not block.
    """

    def __init__(
        self,
        plugin_dir: str | os.PathLike[str],
        kubelet_socket: str | os.PathLike[str] | None = None,
        *,
        safety_interval: float = 5.0,
    ) -> None:
        self.plugin_dir = Path(plugin_dir)
        self.kubelet_socket = (
            Path(kubelet_socket) if kubelet_socket is not None else self.plugin_dir / "kubelet.sock"
        )
        self.safety_interval = safety_interval
        self._subscribers: dict[int, Subscriber] = {}
        self._by_name: dict[str, dict[int, Subscriber]] = {}
        self._next_key = 0
        self._task: asyncio.Task[None] | None = None
        self._kubelet_identity: SocketIdentity | None = None

    def subscribe(self, callback: Subscriber, *, name: str | None = None) -> Callable[[], None]:
        """Call ``callback`` for every event from now on; returns the unsubscribe function.

        With ``name``, events about another file (``SOCKET_REMOVED`` of another name) are
        not delivered: after a kubelet restart unlinks every socket, each resource hears
        of its own socket only, not of every resource's (quadratic in resources).
        """
        key = self._next_key
        self._next_key += 1
        if name is None:
            self._subscribers[key] = callback
        else:
            self._by_name.setdefault(name, {})[key] = callback
        if self._task is None or self._task.done():
            self._kubelet_identity = socket_identity(self.kubelet_socket)
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"watch {self.plugin_dir}"
            )

        def unsubscribe() -> None:
            self._subscribers.pop(key, None)
            if name is not None:
                named = self._by_name.get(name, {})
                named.pop(key, None)
                if not named:
                    self._by_name.pop(name, None)
            if not self._subscribers and not self._by_name and self._task is not None:
                self._task.cancel()
                self._task = None

        return unsubscribe

    def kubelet_identity(self) -> SocketIdentity | None:
        """Return the identity of the kubelet socket as it is now (None while there is none)."""
        return socket_identity(self.kubelet_socket)

    def _emit(self, event: WatchEvent) -> None:
        if event.name is None:
            callbacks = [*self._subscribers.values()]
            for named in self._by_name.values():
                callbacks.extend(named.values())
        else:
            callbacks = [*self._subscribers.values(), *self._by_name.get(event.name, {}).values()]
        for callback in callbacks:
            try:
                callback(event)
            except Exception:  # one subscriber's bug must not starve the others
                log.exception("watch subscriber failed on %s", event)

    def _check_kubelet_identity(self) -> None:
        current = socket_identity(self.kubelet_socket)
        if current is not None and current != self._kubelet_identity:
            self._kubelet_identity = current
            self._emit(WatchEvent(WatchEventKind.KUBELET_STARTED))
        elif current is None:
            self._kubelet_identity = None

    async def _run(self) -> None:
        while True:
            try:
                await self._watch_with_inotify()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # inotify unavailable (not Linux, watch limit reached) or the directory
                # vanished: degrade to the safety-net check until the watch can be set.
                log.warning(
                    "cannot watch %s with inotify (%s); checking every %.1f s instead",
                    self.plugin_dir,
                    exc,
                    self.safety_interval,
                )
                await self._poll_until_watchable()

    async def _poll_until_watchable(self) -> None:
        while True:
            await asyncio.sleep(self.safety_interval)
            self._check_kubelet_identity()
            self._emit(WatchEvent(WatchEventKind.RESYNC))
            if self.plugin_dir.is_dir() and self.kubelet_socket.parent.is_dir():
                return

    async def _watch_with_inotify(self) -> None:
        from asyncinotify import Inotify, Mask

        kubelet_dir = self.kubelet_socket.parent
        kubelet_name = self.kubelet_socket.name
        dir_mask = (
            Mask.CREATE
            | Mask.DELETE
            | Mask.MOVED_FROM
            | Mask.MOVED_TO
            | Mask.DELETE_SELF
            | Mask.MOVE_SELF
            | Mask.ONLYDIR
        )
        with Inotify() as inotify:
            plugin_watch = inotify.add_watch(self.plugin_dir, dir_mask)
            kubelet_watch = (
                plugin_watch
                if kubelet_dir.resolve() == self.plugin_dir.resolve()
                else inotify.add_watch(kubelet_dir, dir_mask)
            )
            # Events between our last look and the watch being set would be lost.
            self._check_kubelet_identity()
            self._emit(WatchEvent(WatchEventKind.RESYNC))
            while True:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a
                # cancellation that arrives together with the result (bpo-42130), which
                # left this task running after every manager had gone.
                try:
                    async with asyncio.timeout(self.safety_interval):
                        event = await inotify.get()
                except TimeoutError:
                    self._check_kubelet_identity()
                    self._emit(WatchEvent(WatchEventKind.RESYNC))
                    continue
                mask = event.mask
                if mask & (Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.IGNORED | Mask.Q_OVERFLOW):
                    if mask & Mask.Q_OVERFLOW:
                        self._check_kubelet_identity()
                        self._emit(WatchEvent(WatchEventKind.RESYNC))
                        continue
                    raise FileNotFoundError(f"watched directory {event.path} went away")
                name = str(event.name) if event.name is not None else None
                in_kubelet_dir = event.watch is kubelet_watch or (
                    event.path is not None and event.path.parent == kubelet_dir
                )
                if mask & (Mask.CREATE | Mask.MOVED_TO):
                    if in_kubelet_dir and name == kubelet_name:
                        self._kubelet_identity = socket_identity(self.kubelet_socket)
                        self._emit(WatchEvent(WatchEventKind.KUBELET_STARTED))
                elif mask & (Mask.DELETE | Mask.MOVED_FROM):
                    if in_kubelet_dir and name == kubelet_name:
                        self._kubelet_identity = None
                    if event.watch is plugin_watch or (
                        event.path is not None and event.path.parent == self.plugin_dir
                    ):
                        self._emit(WatchEvent(WatchEventKind.SOCKET_REMOVED, name))
