"""CDI (Container Device Interface) spec files: writing, checking, removing, and the ledger.

A device may carry a CDI spec describing one CDI device. Allocate reports it to
kubelet as ``CDIDevice{name="<kind>=<device name>"}`` and the container runtime then
looks the name up in the spec files of the CDI directory, at every container start:
kubelet re-uses its recorded Allocate answer when a container restarts, so a file
must outlive the host that wrote it as long as a container may still need it.

:class:`CdiSpecWriter` does the blocking file work; the event loop drives it through
:class:`~host.deviceplugin._cdi_store.CdiSpecStore`. Validation and names live in
:mod:`host.deviceplugin._cdi_spec`.

The ledger (``<cdi_dir>/.devplugin-host/<namespace>.json``; runtimes read only the
``*.json`` and ``*.yaml`` files of the directory itself) records every spec file this
software wrote for a namespace and the ``(resource, device ID)`` pairs that named
it. It is what lets a later host, of any instance, tell its own leftovers from other
vendors' files, and ask kubelet whether a running container still holds one of those
devices before collecting the file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import logging
import os
import stat
import tempfile
import threading
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from host.deviceplugin._cdi_spec import (
    minimum_cdi_version,
    qualified_name,
    spec_file_name,
    validate_cdi_spec,
)

__all__ = [
    "DEFAULT_CDI_DIR",
    "LEDGER_DIR",
    "CdiSpecWriter",
    "FileStamp",
    "LedgerEntry",
    "minimum_cdi_version",
    "qualified_name",
    "spec_file_bytes",
    "spec_file_name",
    "validate_cdi_spec",
]

log = logging.getLogger("host.deviceplugin.cdi")

_TMP_SERIAL = itertools.count()
"""Numbers the temporary files of this process (with its pid: a unique name)."""

DEFAULT_CDI_DIR = "/var/run/cdi"
"""Where container runtimes look for dynamically generated CDI specs."""

LEDGER_DIR = ".devplugin-host"
"""Subdirectory of the CDI directory holding the ledgers (runtimes skip directories)."""

FileStamp = tuple[int, int, int, int]
"""(device, inode, size, mtime in ns) of a spec file as written: a change means a rewrite."""

DeviceKey = tuple[str, str]
"""(resource name, device ID)."""


@dataclass(frozen=True)
class LedgerEntry:
    """One spec file of the ledger: its CDI name and every device that ever named it."""

    name: str
    devices: frozenset[DeviceKey]


def spec_file_bytes(spec: Mapping[str, Any]) -> bytes:
    """Return the bytes written for valid ``spec``: JSON with the lowest ``cdiVersion`` it needs.

    One line, keys sorted. The scanner's version is replaced by
    :func:`minimum_cdi_version` of the fields used, so runtimes built with an older
    CDI library still read the file (a version they do not know makes them refuse it).
    """
    data = dict(spec)
    data["cdiVersion"] = minimum_cdi_version(spec)
    # One line: json's C encoder writes it (with ``indent`` the pure-Python one runs,
    # some 60 µs a spec, paid on every DRA prepare).
    return (json.dumps(data, sort_keys=True) + "\n").encode()


class CdiSpecWriter:
    """Blocking file work on the spec files of ``cdi_dir`` and the ledger of ``namespace``.

    Files are written atomically (a temporary file in the same directory, fsync,
    rename) with mode 0644, and not rewritten when they already hold the same bytes:
    a starting host adopts the files it would write anyway. Only regular files are
    ever removed: through :meth:`collect` (files of the ledger) or, for reference-
    counted callers, with the last :meth:`release`. Errors
    raise OSError naming the path. Thread-safe; writes of one file are serialised.
    Without a ``namespace`` there is no ledger.
    """

    def __init__(
        self, cdi_dir: str | os.PathLike[str] = DEFAULT_CDI_DIR, namespace: str | None = None
    ) -> None:
        self.cdi_dir = Path(cdi_dir)
        self.namespace = namespace
        self._file_locks: dict[str, tuple[threading.Lock, int]] = {}
        self._locks_lock = threading.Lock()
        self._holders: dict[Path, set[Hashable]] = {}
        self._held: dict[Hashable, Path] = {}

    def path_for(self, spec: Mapping[str, Any]) -> Path:
        """Return where ``spec`` is (or would be) written."""
        return self.cdi_dir / spec_file_name(spec)

    @contextlib.contextmanager
    def file_lock(self, file_name: str) -> Iterator[None]:
        """Hold the lock serialising the work on one file (taken by :meth:`write`'s callers).

        A file's lock lives while some thread holds or waits for it and goes with the
        last of them, so the table is as large as the number of files being worked on
        at that moment: a DRA driver names a file per claim, and one lock kept per name
        would grow by one for every claim ever prepared. Reference counting rather than
        a fixed pool of striped locks: exclusion stays per file, so two files never wait
        for each other, and holding one file's lock while taking another's cannot
        deadlock on two names that happen to share a stripe.
        """
        with self._locks_lock:
            lock, users = self._file_locks.get(file_name) or (threading.Lock(), 0)
            self._file_locks[file_name] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._locks_lock:
                if users := self._file_locks[file_name][1] - 1:
                    self._file_locks[file_name] = (lock, users)
                else:
                    del self._file_locks[file_name]

    def write(
        self, spec: Mapping[str, Any], *, sync_dir: bool = True, durable: bool = True
    ) -> FileStamp:
        """Write valid ``spec`` to its file unless it holds these bytes; return its stamp.

        ``sync_dir=False`` leaves the directory's fsync to a later :meth:`sync_dir`
        (one for a batch of files); ``durable=False`` fsyncs neither the file nor the
        directory, for a caller that writes the file again after a machine crash (the
        DRA driver, before kubelet prepares its claims again). Still atomic: a crash of
        the process leaves the old file or the new one. Raises OSError naming the path.
        """
        stamp = self._write(spec, sync_dir=sync_dir, durable=durable, stamp=True)
        assert stamp is not None  # asked for
        return stamp

    def _write(
        self,
        spec: Mapping[str, Any],
        *,
        sync_dir: bool,
        durable: bool,
        stamp: bool,
        path: Path | None = None,
    ) -> FileStamp | None:
        """As :meth:`write`; the stamp of a file written anew only with ``stamp`` (an lstat).

        ``path``: :meth:`path_for` of ``spec``, when the caller has it already.
        """
        if path is None:
            path = self.path_for(spec)
        data = spec_file_bytes(spec)
        try:
            current = os.lstat(path)
        except FileNotFoundError:
            current = None
        except OSError as err:
            raise OSError(err.errno, f"cannot write CDI spec {path}: {err.strerror}") from err
        if current is not None:
            if not stat.S_ISREG(current.st_mode):
                raise OSError(
                    errno.EEXIST,
                    f"cannot write CDI spec {path}: it exists and is not a regular file",
                )
            if stat.S_IMODE(current.st_mode) == 0o644 and _read_bytes(path) == data:
                return _stamp(current)
        try:
            try:
                _write_atomically(path, data, fsync=durable)
            except FileNotFoundError:  # the directory is not there (yet, or any more)
                self._ensure_dir()
                _write_atomically(path, data, fsync=durable)
            if sync_dir and durable:
                _fsync_dir(path.parent)
            written = os.lstat(path) if stamp else None
        except OSError as err:
            raise OSError(
                err.errno, f"cannot write CDI spec {path}: {err.strerror or err}"
            ) from err
        log.debug("wrote CDI spec %s", path)
        return None if written is None else _stamp(written)

    def acquire(
        self,
        owner: Hashable,
        spec: Mapping[str, Any],
        *,
        durable: bool = True,
        validated: bool = False,
    ) -> Path:
        """Write ``spec`` (validated) and record ``owner`` as one of the file's holders.

        Reference counting for callers whose holders end for good (a DRA claim that
        kubelet unprepared): :meth:`release` of the last holder removes the file. An
        owner acquiring a spec of another name releases its previous one first.
        ``durable`` as for :meth:`write`; ``validated``: the caller checked ``spec``
        already (the JSON it encodes to is that of a valid spec), skip the check.
        """
        if not validated:
            spec = validate_cdi_spec(spec)
        path = self.path_for(spec)
        with self._locks_lock:
            previous = self._held.get(owner)
        if previous is not None and previous != path:
            self.release(owner)
        with self.file_lock(path.name):
            self._write(spec, sync_dir=True, durable=durable, stamp=False, path=path)
            with self._locks_lock:
                self._holders.setdefault(path, set()).add(owner)
                self._held[owner] = path
        return path

    def release(self, owner: Hashable) -> bool:
        """Forget ``owner``; remove its file if no holder is left. Return whether one was.

        Releasing an owner that holds nothing does nothing; only a regular file is
        ever removed.
        """
        with self._locks_lock:
            path = self._held.pop(owner, None)
            if path is None:
                return False
            holders = self._holders.get(path, set())
            holders.discard(owner)
            if holders:
                return False
            self._holders.pop(path, None)
        with self.file_lock(path.name):
            try:
                if not stat.S_ISREG(os.lstat(path).st_mode):
                    return False
                path.unlink()
            except FileNotFoundError:
                return False
        log.debug("removed CDI spec %s", path)
        return True

    def stamp(self, file_name: str) -> FileStamp | None:
        """Return the stamp of spec file ``file_name``, or None if it is not a regular file."""
        try:
            st = os.lstat(self.cdi_dir / file_name)
        except OSError:
            return None
        return _stamp(st) if stat.S_ISREG(st.st_mode) else None

    def sync_dir(self) -> None:
        """Persist the renames of earlier ``write(sync_dir=False)`` calls (best effort)."""
        if self.cdi_dir.is_dir():
            _fsync_dir(self.cdi_dir)

    # -- ledger -------------------------------------------------------------------------

    def ledger_path(self) -> Path | None:
        """Where this namespace's ledger lives (None without a namespace)."""
        if self.namespace is None:
            return None
        return self.cdi_dir / LEDGER_DIR / f"{self.namespace}.json"

    def ledger_read(self) -> dict[str, LedgerEntry]:
        """Return the ledger: spec file name -> entry (empty when there is none)."""
        path = self.ledger_path()
        if path is None:
            return {}
        with self._ledger_locked(path, create=False) as exists:
            return _parse_ledger(path) if exists else {}

    def ledger_add(self, entries: Mapping[str, LedgerEntry]) -> None:
        """Merge ``entries`` into the ledger (device sets are united), under a file lock."""
        path = self.ledger_path()
        if path is None or not entries:
            return
        with self._ledger_locked(path, create=True):
            ledger = _parse_ledger(path)
            for file_name, entry in entries.items():
                old = ledger.get(file_name)
                devices = entry.devices | old.devices if old is not None else entry.devices
                ledger[file_name] = LedgerEntry(entry.name, devices)
            _write_ledger(path, ledger)

    def collect(self, file_names: Iterable[str]) -> list[Path]:
        """Remove the ledger's spec files ``file_names`` and their entries; return removed paths.

        A name not in the ledger is left alone (not ours); a path that is no longer a
        regular file is dropped from the ledger but not touched.
        """
        path = self.ledger_path()
        if path is None:
            return []
        removed = []
        with self._ledger_locked(path, create=False) as exists:
            if not exists:
                return []
            ledger = _parse_ledger(path)
            for file_name in file_names:
                if ledger.pop(file_name, None) is None:
                    continue
                target = self.cdi_dir / file_name
                try:
                    if stat.S_ISREG(os.lstat(target).st_mode):
                        target.unlink()
                        removed.append(target)
                except FileNotFoundError:
                    pass
                except OSError as err:
                    log.warning("cannot remove stale CDI spec %s: %s", target, err)
            _write_ledger(path, ledger)
        return removed

    @contextlib.contextmanager
    def _ledger_locked(self, path: Path, *, create: bool) -> Any:
        lock_path = path.with_suffix(".lock")
        if create:
            self._ensure_dir()
            lock_path.parent.mkdir(mode=0o755, exist_ok=True)
        try:
            fd = os.open(lock_path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
        except FileNotFoundError:
            yield False
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # other instances sharing the directory
            yield True
        finally:
            os.close(fd)

    def _ensure_dir(self) -> None:
        if not self.cdi_dir.is_dir():
            self.cdi_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            os.chmod(self.cdi_dir, 0o755)  # mkdir's mode is filtered by the umask


def _stamp(st: os.stat_result) -> FileStamp:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _parse_ledger(path: Path) -> dict[str, LedgerEntry]:
    try:
        raw = json.loads(path.read_bytes())
        files = raw["files"]
        return {
            str(file_name): LedgerEntry(
                str(entry["name"]), frozenset((str(r), str(d)) for r, d in entry["devices"])
            )
            for file_name, entry in files.items()
        }
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        # A damaged ledger only costs garbage collection, never a served device.
        log.warning("ignoring unreadable CDI ledger %s: %s", path, err)
        return {}


def _write_ledger(path: Path, ledger: Mapping[str, LedgerEntry]) -> None:
    data = {
        "version": 1,
        "files": {
            file_name: {"name": entry.name, "devices": sorted(map(list, entry.devices))}
            for file_name, entry in sorted(ledger.items())
        },
    }
    _write_atomically(path, (json.dumps(data, indent=1) + "\n").encode())


def _write_atomically(path: Path, data: bytes, *, fsync: bool = True) -> None:
    # The temporary name ends in ".tmp", so a runtime scanning the directory for
    # *.json and *.yaml never reads a half-written spec. Named by pid and a serial
    # number (mkstemp's random names and buffered file object cost more than the write
    # itself, on every DRA prepare); O_EXCL still refuses a crashed process's leftover.
    tmp = f"{path.parent}/.{path.name}.{os.getpid()}-{next(_TMP_SERIAL)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, 0o644)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _fsync_dir(directory: Path) -> None:
    """Persist renames in ``directory``; best effort (some file systems refuse it)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None
