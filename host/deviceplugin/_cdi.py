"""CDI (Container Device Interface) spec files: writing and removing them.

A device may carry a CDI spec describing one CDI device. Allocate reports it to
kubelet as ``CDIDevice{name="<kind>=<device name>"}`` and the container runtime then
looks the name up in the spec files of the CDI directory; :class:`CdiSpecWriter`
keeps those files in place while devices hold them.

Validation and names live in :mod:`host.deviceplugin._cdi_spec`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
import tempfile
import threading
from collections.abc import Hashable, Mapping
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
    "CdiSpecWriter",
    "minimum_cdi_version",
    "qualified_name",
    "spec_file_bytes",
    "spec_file_name",
    "validate_cdi_spec",
]

log = logging.getLogger("host.deviceplugin.cdi")

DEFAULT_CDI_DIR = "/var/run/cdi"
"""Where container runtimes look for dynamically generated CDI specs."""


def spec_file_bytes(spec: Mapping[str, Any]) -> bytes:
    """Return the bytes written for valid ``spec``: JSON with the lowest ``cdiVersion`` it needs.

    The scanner's version is replaced by :func:`minimum_cdi_version` of the fields
    used, so runtimes built with an older CDI library still read the file (a version
    they do not know makes them refuse it).
    """
    data = dict(spec)
    data["cdiVersion"] = minimum_cdi_version(spec)
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


class CdiSpecWriter:
    """Writes CDI spec files into ``cdi_dir`` and removes them when no device holds them.

    Several devices may carry the same spec (GPU shares ``card0-0`` and ``card0-1``
    both describe ``card0``), and one file serves them all. Each holder calls
    :meth:`acquire` with a key of its own (any hashable, e.g. ``(resource, dev_id)``)
    and :meth:`release` when it lets go; the file goes away with the last holder.
    :meth:`write` and :meth:`remove` work on a file directly, without counting;
    :meth:`remove_all` removes every file this writer wrote (at shutdown).

    Files are written atomically (a temporary file in the same directory, fsync,
    rename) with mode 0644, and not rewritten when they already hold the same bytes.
    Only regular files this writer wrote or confirmed are ever removed. The methods
    do blocking file I/O (run them through ``asyncio.to_thread`` from the event loop)
    and are thread-safe. Write errors raise OSError naming the path.
    """

    def __init__(self, cdi_dir: str | os.PathLike[str] = DEFAULT_CDI_DIR) -> None:
        self.cdi_dir = Path(cdi_dir)
        self._lock = threading.Lock()
        self._written: set[Path] = set()
        self._holders: dict[Path, set[Hashable]] = {}
        self._held: dict[Hashable, Path] = {}

    def path_for(self, spec: Mapping[str, Any]) -> Path:
        """Return where ``spec`` is (or would be) written."""
        return self.cdi_dir / spec_file_name(spec)

    def write(self, spec: Mapping[str, Any]) -> Path:
        """Write ``spec`` (validated first) to its file and return the file's path.

        Skips the write when the file already holds exactly these bytes. Raises
        ValueError for an invalid spec and OSError when the file cannot be written.
        """
        spec = validate_cdi_spec(spec)
        with self._lock:
            return self._write(spec)

    def remove(self, spec: Mapping[str, Any]) -> bool:
        """Remove ``spec``'s file if this writer wrote it; return whether a file was removed.

        Drops any holders of the file too. Never removes anything but a regular file.
        """
        path = self.path_for(validate_cdi_spec(spec))
        with self._lock:
            for owner in self._holders.pop(path, set()):
                del self._held[owner]
            return self._remove(path)

    def acquire(self, owner: Hashable, spec: Mapping[str, Any]) -> Path:
        """Make sure ``spec``'s file exists and record ``owner`` as one of its holders.

        Acquiring again with the same owner rewrites the file if the spec changed;
        with a spec of another name it releases the previous one first. The content
        of a file is that of the last acquire.
        """
        spec = validate_cdi_spec(spec)
        path = self.path_for(spec)
        with self._lock:
            previous = self._held.get(owner)
            if previous is not None and previous != path:
                self._release(owner)
            self._write(spec)
            self._holders.setdefault(path, set()).add(owner)
            self._held[owner] = path
            return path

    def release(self, owner: Hashable) -> bool:
        """Forget ``owner``; remove its file if no holder is left. Return whether one was.

        Releasing an owner that holds nothing does nothing.
        """
        with self._lock:
            return self._release(owner)

    def remove_all(self) -> list[Path]:
        """Remove every file this writer wrote and forget all holders; return the removed paths.

        Keeps going past files it cannot remove (logged as warnings): it runs at
        shutdown, where one stuck file must not keep the others around.
        """
        with self._lock:
            self._holders.clear()
            self._held.clear()
            removed = []
            for path in sorted(self._written):
                try:
                    if self._remove(path):
                        removed.append(path)
                except OSError as err:
                    log.warning("cannot remove CDI spec file %s: %s", path, err)
            return removed

    def _release(self, owner: Hashable) -> bool:
        path = self._held.pop(owner, None)
        if path is None:
            return False
        holders = self._holders.get(path, set())
        holders.discard(owner)
        if holders:
            return False
        self._holders.pop(path, None)
        return self._remove(path)

    def _write(self, spec: Mapping[str, Any]) -> Path:
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
                self._written.add(path)
                return path
        try:
            self._ensure_dir()
            _write_atomically(path, data)
        except OSError as err:
            raise OSError(
                err.errno, f"cannot write CDI spec {path}: {err.strerror or err}"
            ) from err
        self._written.add(path)
        log.debug("wrote CDI spec %s", path)
        return path

    def _remove(self, path: Path) -> bool:
        if path not in self._written:
            return False
        self._written.discard(path)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(st.st_mode):
            log.warning("not removing CDI spec %s: it is no longer a regular file", path)
            return False
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        log.debug("removed CDI spec %s", path)
        return True

    def _ensure_dir(self) -> None:
        if not self.cdi_dir.is_dir():
            self.cdi_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            os.chmod(self.cdi_dir, 0o755)  # mkdir's mode is filtered by the umask


def _write_atomically(path: Path, data: bytes) -> None:
    # The temporary name ends in ".tmp", so a runtime scanning the directory for
    # *.json and *.yaml never reads a half-written spec.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself; best effort (some file systems refuse a directory fsync)."""
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
