"""Keeping the CDI spec files of a manager's devices on disk, off the event loop.

The rules, and why:

* **Files outlive the host.** Kubelet records each Allocate answer (CDI names
  included) and re-uses it at every container restart without asking the plugin
  again; the runtime then needs the file. So nothing is removed at shutdown or when
  a device goes: a file is collected only by :meth:`CdiSpecStore.collect_garbage`,
  when no device of this host holds it *and* kubelet says no running container holds
  a device that named it (the ``in_use`` callable; "unknown" collects nothing), in
  two passes at least one check interval apart. Any instance may collect a leftover
  of the ledger (a killed host's, an older version's); none deletes a file it or
  another instance still holds, and an instance whose file was removed anyway writes
  it again (next rule).
* **Written later if it could not be written now.** A failed write is retried with
  backoff. Meanwhile the devices naming that file are reported Unhealthy, so the
  scheduler stops sending pods that would fail, and an Allocate naming it answers
  FAILED_PRECONDITION naming the file (kubelet never retries Allocate, so naming
  the cause is all that helps the operator).
* **A file removed or changed from outside is written again**: checked with one
  ``lstat`` per named file when Allocate names it (microseconds; catches every cause,
  which an inotify watch would not after a queue overflow or a re-created
  directory), and for every held file at each check interval, since container
  restarts re-use the file without any call reaching the plugin.
* **Blocking work runs in one worker thread** (fsync costs milliseconds per file on
  a disk): writes are queued in order, a superseded write is skipped, and the loop
  only records what should be on disk. Allocate never names a file that is not on
  disk: it waits for that one file, written at once on a thread of its own if it
  is still queued behind others.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from host.deviceplugin._cdi import CdiSpecWriter, DeviceKey, FileStamp, LedgerEntry
from host.deviceplugin._cdi_spec import qualified_name, spec_file_name
from host.deviceplugin._endpoint import Backoff

__all__ = [
    "CdiSpecStore",
    "CdiSpecUnavailableError",
    "DevicesInUse",
    "InUse",
    "devices_in_use_now",
]

log = logging.getLogger("host.deviceplugin.cdi")


@dataclass(frozen=True)
class DevicesInUse:
    """What running containers hold, as kubelet's PodResources API reports it."""

    device_ids: frozenset[tuple[str, str]] = frozenset()
    """(resource name, device ID) pairs allocated to running containers."""
    cdi_names: frozenset[str] = frozenset()
    """Qualified CDI device names (``vendor/class=name``) held, e.g. by DRA claims."""


class InUse(Protocol):
    """Tells what running containers hold: ``await in_use()`` -> :class:`DevicesInUse`.

    Returns None when that is unknown (kubelet's PodResources socket absent, an
    error): the store then collects nothing. Any ``async def`` with no arguments fits.
    """

    def __call__(self) -> Awaitable[DevicesInUse | None]:
        """Return (an awaitable of) what running containers hold, or None."""
        ...


class CdiSpecUnavailableError(Exception):
    """A spec file Allocate would name is not on disk and cannot be written now."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"CDI spec file {path} is missing and cannot be written: {reason}")
        self.path = path
        self.reason = reason


@dataclass
class _File:
    spec: Mapping[str, Any]
    generation: int = 0
    written: int = -1  # the generation known to be on disk
    stamp: FileStamp | None = None
    error: str | None = None
    waiter: asyncio.Future[None] | None = None
    retry: asyncio.TimerHandle | None = None
    backoff: Backoff = field(default_factory=lambda: Backoff(1.0, 60.0))
    holders: set[DeviceKey] = field(default_factory=set)


async def devices_in_use_now(in_use: InUse | None) -> DevicesInUse | None:
    """Ask ``in_use`` which devices running containers hold; None when it cannot tell.

    A failure is logged and answers None: garbage collection then removes nothing.
    """
    if in_use is None:
        return None
    try:
        return await in_use()
    except Exception:
        log.exception("cannot tell which devices running containers hold; collecting nothing")
        return None


class CdiSpecStore:
    """Keeps the spec files of the devices a manager holds on disk (see the module docs).

    ``hold``/``release`` are called on the loop as devices come and go; ``ensure``
    on the Allocate path; ``failed`` tells which devices must be reported Unhealthy,
    and ``on_failed_change(resource_names)`` is called when that changes.
    """

    def __init__(
        self,
        cdi_dir: str | os.PathLike[str],
        namespace: str,
        *,
        in_use: InUse | None = None,
        on_failed_change: Callable[[set[str]], None] | None = None,
        check_interval: float = 60.0,
        retry_backoff: tuple[float, float] = (1.0, 60.0),
    ) -> None:
        self.writer = CdiSpecWriter(cdi_dir, namespace)
        self.in_use = in_use
        self.check_interval = check_interval
        self._on_failed_change = on_failed_change
        self._retry_backoff = retry_backoff
        self._files: dict[str, _File] = {}
        self._held: dict[DeviceKey, str] = {}
        self._by_name: dict[str, str] = {}  # qualified CDI name -> file name
        self._ledger_pending: dict[str, LedgerEntry] = {}
        self._ledger_lock = threading.Lock()
        self._flush_queued = False  # a flush job is queued for the pending entries
        self._suspects: set[str] = set()
        # One worker: writes reach the disk in the order they were asked for.
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cdi-writer")
        self._queued = 0
        self._queued_lock = threading.Lock()
        self._checker: asyncio.Task[None] | None = None
        self._closed = False

    # -- devices ----------------------------------------------------------------------

    def hold(self, resource_name: str, dev_id: str, spec: Mapping[str, Any]) -> None:
        """Record that device ``dev_id`` of ``resource_name`` names ``spec`` (valid)."""
        key = (resource_name, dev_id)
        file_name = spec_file_name(spec)
        if self._held.get(key) not in (None, file_name):
            self.release(resource_name, dev_id)
        entry = self._files.get(file_name)
        if entry is None:
            entry = self._files[file_name] = _File(spec, backoff=Backoff(*self._retry_backoff))
            self._by_name[qualified_name(spec)] = file_name
            self._schedule(file_name)
        elif entry.spec != spec:
            entry.spec = spec
            entry.generation += 1
            self._schedule(file_name)
        if key not in entry.holders:
            entry.holders.add(key)
            self._held[key] = file_name
            self._note_ledger(file_name, qualified_name(spec), key)

    def release(self, resource_name: str, dev_id: str) -> None:
        """Forget that the device names a spec; the file stays (see the module docs)."""
        file_name = self._held.pop((resource_name, dev_id), None)
        if file_name is None:
            return
        entry = self._files[file_name]
        entry.holders.discard((resource_name, dev_id))
        if entry.holders:
            return
        del self._files[file_name]
        self._by_name.pop(qualified_name(entry.spec), None)
        if entry.retry is not None:
            entry.retry.cancel()
        if entry.waiter is not None and not entry.waiter.done():
            entry.waiter.set_result(None)
        if entry.error is not None and self._on_failed_change is not None:
            self._on_failed_change({resource_name})

    def failed(self, resource_name: str) -> set[str]:
        """Return the device IDs of ``resource_name`` whose spec file could not be written."""
        return {
            dev_id
            for entry in self._files.values()
            if entry.error is not None
            for res, dev_id in entry.holders
            if res == resource_name
        }

    def failure(self, resource_name: str, dev_id: str) -> str | None:
        """Return why the spec file of a device is not on disk, or None if it is."""
        file_name = self._held.get((resource_name, dev_id))
        if file_name is None:
            return None
        entry = self._files.get(file_name)
        if entry is None or entry.error is None:
            return None
        return str(CdiSpecUnavailableError(self.writer.cdi_dir / file_name, entry.error))

    def path_of(self, cdi_name: str) -> Path | None:
        """Return the file of a held CDI device name, or None when no device holds it."""
        file_name = self._by_name.get(cdi_name)
        return None if file_name is None else self.writer.cdi_dir / file_name

    # -- Allocate path ----------------------------------------------------------------

    async def ensure(self, cdi_names: Iterable[str]) -> None:
        """Return once the held files among ``cdi_names`` are on disk as they should be.

        Names this store does not hold (another plugin's) are ignored. Raises
        :class:`CdiSpecUnavailableError` naming the first file that cannot be written.
        """
        for cdi_name in dict.fromkeys(cdi_names):
            file_name = self._by_name.get(cdi_name)
            entry = self._files.get(file_name) if file_name is not None else None
            if file_name is None or entry is None:
                continue
            if entry.written == entry.generation and entry.error is None:
                if self.writer.stamp(file_name) == entry.stamp:
                    continue
                log.warning(
                    "CDI spec %s was removed or changed from outside; writing it again",
                    self.writer.cdi_dir / file_name,
                )
                entry.generation += 1
            waiter = self._waiter(entry)
            await self._write_now(file_name)
            await asyncio.shield(waiter)
            if entry.error is not None:
                raise CdiSpecUnavailableError(self.writer.cdi_dir / file_name, entry.error)

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Start the periodic check and garbage collection (call on the loop)."""
        if self._closed:  # served again after a stop
            self._closed = False
            self._executor = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="cdi-writer"
            )
        if self._checker is None:
            self._checker = asyncio.get_running_loop().create_task(
                self._check_periodically(), name="cdi spec check"
            )

    async def close(self) -> None:
        """Finish the queued writes and stop the worker; every file stays on disk."""
        self._closed = True
        if self._checker is not None:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checker
        for entry in self._files.values():
            if entry.retry is not None:
                entry.retry.cancel()
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._flush)
        except OSError as err:
            log.warning("CDI ledger not updated at shutdown: %s", err)
        self._executor.shutdown(wait=False)
        self._checker = None

    async def check(self) -> None:
        """Write again every held file that was removed or changed from outside."""
        wanted = {
            name: entry.stamp
            for name, entry in self._files.items()
            if entry.written == entry.generation and entry.error is None
        }
        loop = asyncio.get_running_loop()
        stamps = await loop.run_in_executor(
            self._executor, lambda: {name: self.writer.stamp(name) for name in wanted}
        )
        for name, stamp in stamps.items():
            entry = self._files.get(name)
            if entry is None or stamp == wanted[name] or entry.written != entry.generation:
                continue
            log.warning("CDI spec %s was removed or changed from outside; writing it again", name)
            entry.generation += 1
            self._schedule(name)

    async def collect_garbage(self) -> list[Path]:
        """Remove ledger files nobody holds, seen unused in two passes; return them.

        Does nothing without ``in_use``, or when it answers None or fails.
        """
        used = await devices_in_use_now(self.in_use)
        if used is None:
            return []
        loop = asyncio.get_running_loop()
        ledger = await loop.run_in_executor(self._executor, self.writer.ledger_read)
        unused = {
            name
            for name, entry in ledger.items()
            if name not in self._files
            and name not in self._ledger_pending
            and not entry.devices & used.device_ids
            and entry.name not in used.cdi_names
        }
        doomed, self._suspects = unused & self._suspects, unused - self._suspects
        if not doomed:
            return []
        removed = await loop.run_in_executor(self._executor, self.writer.collect, sorted(doomed))
        for path in removed:
            log.info("removed CDI spec %s: no device and no running container holds it", path)
        return removed

    # -- internals --------------------------------------------------------------------

    def _waiter(self, entry: _File) -> asyncio.Future[None]:
        if entry.waiter is None or entry.waiter.done():
            entry.waiter = asyncio.get_running_loop().create_future()
        return entry.waiter

    def _note_ledger(self, file_name: str, cdi_name: str, key: DeviceKey) -> None:
        """Add a ledger entry and make sure a flush on the worker will persist it.

        A write already queued may have flushed before this entry was noted (the worker
        runs beside the loop), so the entry queues a flush of its own unless one is
        queued already: a noted entry never waits for some later write to reach disk.
        """
        with self._ledger_lock:  # the worker takes the pending entries in _flush
            old = self._ledger_pending.get(file_name)
            devices = frozenset({key}) | (old.devices if old is not None else frozenset())
            self._ledger_pending[file_name] = LedgerEntry(cdi_name, devices)
            if self._flush_queued or self._closed:
                return
            self._flush_queued = True
        with self._queued_lock:
            self._queued += 1
        self._executor.submit(self._flush_job)

    def _flush_job(self) -> None:
        """Worker: flush the ledger once the jobs queued before it are done."""
        if not self._job_done():
            # A job queued after this one flushes when it ends (the last one always does).
            with self._ledger_lock:
                self._flush_queued = False

    def _job_done(self) -> bool:
        """Worker: count a queued job as done; the last one flushes. Return whether it was."""
        with self._queued_lock:
            self._queued -= 1
            last = self._queued == 0
        if last:
            with contextlib.suppress(OSError):
                self._flush()
        return last

    def _schedule(self, file_name: str) -> None:
        """Queue a write of the file's current content on the worker."""
        entry = self._files[file_name]
        if entry.retry is not None:
            entry.retry.cancel()
            entry.retry = None
        self._waiter(entry)
        generation = entry.generation
        spec = entry.spec
        with self._queued_lock:
            self._queued += 1
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, self._write_job, file_name, generation, spec
        )
        future.add_done_callback(lambda f: self._written(file_name, generation, f))

    async def _write_now(self, file_name: str) -> None:
        """Write the file on a thread of its own (Allocate should not wait for the queue)."""
        entry = self._files[file_name]
        generation, spec = entry.generation, entry.spec
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, self._write_file, file_name, generation, spec, True)
        future.add_done_callback(lambda f: self._written(file_name, generation, f))
        with contextlib.suppress(Exception):
            await future

    def _write_job(
        self, file_name: str, generation: int, spec: Mapping[str, Any]
    ) -> FileStamp | None:
        """Worker: write one file; flush the ledger and the directory after the last queued."""
        try:
            return self._write_file(file_name, generation, spec, False)
        finally:
            self._job_done()

    def _write_file(
        self, file_name: str, generation: int, spec: Mapping[str, Any], sync_dir: bool
    ) -> FileStamp | None:
        with self.writer.file_lock(file_name):
            entry = self._files.get(file_name)
            if entry is None or entry.generation != generation:
                return None  # superseded or released meanwhile: a newer job decides
            return self.writer.write(spec, sync_dir=sync_dir)

    def _flush(self) -> None:
        """Worker: persist renames and the ledger additions noted so far."""
        with self._ledger_lock:
            pending, self._ledger_pending = self._ledger_pending, {}
            self._flush_queued = False
        self.writer.sync_dir()
        try:
            self.writer.ledger_add(pending)
        except OSError:
            with self._ledger_lock:
                for name, entry in pending.items():  # retried with the next flush
                    self._ledger_pending.setdefault(name, entry)
            raise

    def _written(self, file_name: str, generation: int, future: asyncio.Future[Any]) -> None:
        """Loop: record the outcome of a write of ``generation``."""
        entry = self._files.get(file_name)
        if entry is None or entry.generation != generation or future.cancelled():
            return
        exc = future.exception()
        stamp = None if exc is not None else future.result()
        if exc is None and stamp is None:
            return  # skipped: another write of this generation records the outcome
        was_failed = entry.error is not None
        if exc is None:
            entry.written, entry.stamp, entry.error = generation, stamp, None
            entry.backoff.reset()
        else:
            entry.error = str(exc)
            if not was_failed:
                log.error("%s; its devices are Unhealthy until it is written", exc)
            if not self._closed:
                delay = entry.backoff.next()
                entry.retry = asyncio.get_running_loop().call_later(
                    delay, self._retry, file_name, generation
                )
        if entry.waiter is not None and not entry.waiter.done():
            entry.waiter.set_result(None)
        if was_failed and exc is None:
            log.info("CDI spec %s written after all", self.writer.cdi_dir / file_name)
        if was_failed != (exc is not None) and self._on_failed_change is not None:
            self._on_failed_change({res for res, _ in entry.holders})

    def _retry(self, file_name: str, generation: int) -> None:
        entry = self._files.get(file_name)
        if entry is not None and entry.generation == generation and not self._closed:
            entry.retry = None
            self._schedule(file_name)

    async def _check_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                await self.check()
                await self.collect_garbage()
            except OSError as err:
                log.warning("CDI spec check failed: %s", err)
