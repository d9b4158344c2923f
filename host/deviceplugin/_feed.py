"""Scanner supervision and frozen snapshots: what every API serving a plugin is fed from.

A :class:`ScannerFeed` runs one scanner behind the plugin wall (restarted with
backoff when it fails), takes each tree it notifies, freezes it and hands the newest
one to its consumers on the event loop: a device-plugin :class:`Manager` or a DRA
driver alike. The flow is one way::

    scanner --notify--> ScannerFeed --frozen snapshot--> consumers (on the loop)

A frozen snapshot maps each device type to a read-only view of its devices. A type
whose devices did not change keeps the very same mapping object as in the previous
snapshot, so consumers skip it with an ``is`` check: telling changed types from
unchanged ones costs one fingerprint comparison per type (see ``DeviceTree``), not one
comparison per device.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import NamedTuple

from host.deviceplugin._endpoint import Backoff
from host.deviceplugin._guard import PluginError
from host.deviceplugin._scanning import run_scan
from host.deviceplugin._types import DeviceInfo, DeviceTree, Scanner

__all__ = ["ScannerFeed", "Snapshot", "SnapshotConsumer"]

log = logging.getLogger("host.deviceplugin.feed")

Snapshot = Mapping[str, Mapping[str, DeviceInfo]]
"""Device type -> device ID -> DeviceInfo, frozen; unchanged types keep their mapping."""

SnapshotConsumer = Callable[[Snapshot, bool], None]
"""Called on the loop with ``(snapshot, scan_failed)`` after every change."""

_REJECTED_REMEMBERED = 10_000
"""Rejected device names logged once each; past this many the memory is cleared."""

_SCAN_STOP_GRACE = 2.0
"""Seconds a cancelled coroutine scan gets to end before the host stops waiting for it."""

_Frozen = dict[
    str, tuple[tuple[int, int], Mapping[str, DeviceInfo], frozenset[str], frozenset[str]]
]
"""Per device type: its fingerprint, its frozen devices, the IDs carrying a CDI spec, the
IDs not Healthy or with a health message."""


class _Pending(NamedTuple):
    """A snapshot frozen by the scanner's thread, waiting to be applied on the loop."""

    snapshot: Snapshot
    cdi_ids: Mapping[str, frozenset[str]]
    noted_ids: Mapping[str, frozenset[str]]
    rejected: list[tuple[str, str, str]]


class _FeedNotifier:
    """The Notifier handed to the scanner; ``notify`` is safe from any thread."""

    def __init__(self, feed: ScannerFeed) -> None:
        self._feed = feed

    def notify(self, tree: DeviceTree) -> None:
        """Publish ``tree`` as the complete current set of devices; never blocks for long."""
        if not isinstance(tree, DeviceTree):
            raise TypeError(f"notify() expects a DeviceTree, got {type(tree).__name__}")
        self._feed._freeze(tree)


class ScannerFeed:
    """Runs one plugin's scanner and feeds frozen snapshots of its devices to consumers."""

    def __init__(
        self,
        plugin: str,
        namespace: str,
        scanner: Scanner,
        *,
        backoff: tuple[float, float] = (1.0, 60.0),
    ) -> None:
        self.plugin = plugin
        self.namespace = namespace
        self.scanner = scanner
        self._backoff = backoff
        self._consumers: list[SnapshotConsumer] = []
        self._lock = threading.Lock()
        self._frozen: _Frozen = {}
        self._pending: _Pending | None = None
        self._snapshot: Snapshot = MappingProxyType({})
        self._cdi_ids: Mapping[str, frozenset[str]] = MappingProxyType({})
        self._noted_ids: Mapping[str, frozenset[str]] = MappingProxyType({})
        self._scan_failed = False
        self._scan_error: str | None = None
        self._rejected_seen: set[tuple[str, str]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._context = contextvars.copy_context()
        self.scanner_restarts = 0
        self.notifier = _FeedNotifier(self)

    @property
    def snapshot(self) -> Snapshot:
        """The newest snapshot applied on the loop."""
        return self._snapshot

    @property
    def cdi_ids(self) -> Mapping[str, frozenset[str]]:
        """Device type -> IDs of its devices in :attr:`snapshot` that carry a CDI spec.

        Types without any are absent. Set with the snapshot: a consumer reads it in its
        callback, to visit only the devices with spec files, not every device.
        """
        return self._cdi_ids

    @property
    def noted_ids(self) -> Mapping[str, frozenset[str]]:
        """Device type -> IDs of its devices that are not Healthy or carry a message.

        Types without any are absent; set with the snapshot, like :attr:`cdi_ids`.
        """
        return self._noted_ids

    @property
    def scan_failed(self) -> bool:
        """Whether the scanner has failed since its last notify (its devices are Unhealthy)."""
        return self._scan_failed

    @property
    def scan_error(self) -> str | None:
        """Why the scanner failed (``plugin 'x': scan raised ...``) while it is failed."""
        return self._scan_error if self._scan_failed else None

    def subscribe(self, consumer: SnapshotConsumer) -> Callable[[], None]:
        """Call ``consumer(snapshot, scan_failed)`` on the loop after every change."""
        self._consumers.append(consumer)
        return lambda: self._consumers.remove(consumer)

    async def run(self) -> None:
        """Run the scanner until cancelled, restarting it with backoff when it fails."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        # Applies scheduled from a scanner's thread log with this task's fields (plugin).
        self._context = contextvars.copy_context()
        scan = asyncio.create_task(self._supervise(), name=f"scan {self.namespace}")
        try:
            await asyncio.shield(scan)
        finally:
            self._loop_thread = None
            scan.cancel()
            # A scan that swallows its cancellation must not hold the host's stop.
            done, _ = await asyncio.wait({scan}, timeout=_SCAN_STOP_GRACE)
            if not done:
                log.error(
                    "plugin %r: its scanner ignored cancellation for %g s; abandoning it",
                    self.plugin,
                    _SCAN_STOP_GRACE,
                )

    async def _supervise(self) -> None:
        backoff = Backoff(*self._backoff)
        while True:
            try:
                await run_scan(self.scanner, self.notifier, plugin=self.plugin)
            except PluginError as exc:
                delay = backoff.next()
                self.scanner_restarts += 1
                log.error(
                    "%s; the scanner failed: its devices are Unhealthy until it notifies again; "
                    "restarting it in %.1f s",
                    exc,
                    delay,
                    exc_info=exc.__cause__,
                )
                self._scan_error = str(exc)
                self._set_scan_failed(True)
                await asyncio.sleep(delay)
                continue
            log.info(
                "plugin %r: scanner returned; serving the last devices it reported",
                self.plugin,
            )
            return

    # -- from the scanner (any thread) -------------------------------------------------

    def _freeze(self, tree: DeviceTree) -> None:
        with self._lock:
            previous = self._frozen
            frozen: _Frozen = {}
            for dev_type, devices in tree._types.items():
                fingerprint = tree._fingerprint(dev_type)
                before = previous.get(dev_type)
                if before is not None and before[0] == fingerprint:
                    frozen[dev_type] = before
                else:
                    frozen[dev_type] = (
                        fingerprint,
                        MappingProxyType(devices.copy()),
                        tree._cdi_ids(dev_type),
                        tree._noted_ids(dev_type),
                    )
            self._frozen = frozen
            snapshot = MappingProxyType({t: parts[1] for t, parts in frozen.items()})
            cdi_ids = MappingProxyType({t: parts[2] for t, parts in frozen.items() if parts[2]})
            noted = MappingProxyType({t: parts[3] for t, parts in frozen.items() if parts[3]})
            self._submit(_Pending(snapshot, cdi_ids, noted, list(tree._rejected)))

    def _submit(self, pending: _Pending) -> None:
        loop, loop_thread = self._loop, self._loop_thread
        if loop is None or loop_thread is None:
            return  # not running (yet, or any more): nobody to publish to
        first = self._pending is None
        if not first and self._pending is not None:
            pending.rejected[:0] = self._pending.rejected
        self._pending = pending
        if not first:
            return  # an apply is already scheduled; it takes the newest snapshot
        if threading.get_ident() == loop_thread:
            loop.call_soon(self._apply_pending)
        else:
            with contextlib.suppress(RuntimeError):  # loop closed: nobody listens
                loop.call_soon_threadsafe(self._apply_pending, context=self._context)

    # -- on the loop ---------------------------------------------------------------------

    def _apply_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None or self._loop_thread is None:
            return
        self._log_rejected(pending.rejected)
        self._snapshot = pending.snapshot
        self._cdi_ids = pending.cdi_ids
        self._noted_ids = pending.noted_ids
        self._scan_failed = False
        self._publish()

    def _set_scan_failed(self, failed: bool) -> None:
        if failed != self._scan_failed:
            self._scan_failed = failed
            self._publish()

    def _publish(self) -> None:
        for consumer in list(self._consumers):
            consumer(self._snapshot, self._scan_failed)

    def _log_rejected(self, rejected: list[tuple[str, str, str]]) -> None:
        for dev_type, dev_id, reason in rejected:
            key = (dev_type, dev_id)
            if key in self._rejected_seen:
                continue
            if len(self._rejected_seen) >= _REJECTED_REMEMBERED:
                self._rejected_seen.clear()
            self._rejected_seen.add(key)
            # repr: the name is data, never text for the log line.
            log.error(
                "plugin %r: device %r of type %r not served: %s (the rest are served)",
                self.plugin,
                dev_id,
                dev_type,
                reason,
            )
