"""The driver's record of prepared claims, kept on disk across restarts.

``<dra plugin dir>/<driver>/checkpoint.json``: a snapshot line, then one line per change
since the snapshot::

    {"version":2,"epoch":"<random>","checksum":"<sha256 of data>","data":{"claims":…,"driver":…}}
    {"claim":{…},"op":"add","sum":"<sha256 of the line without sum>"}
    {"op":"remove","uid":"...","sum":"..."}

``checksum`` is the SHA-256 (hex) of ``data`` serialised canonically (sorted keys, no
whitespace), as kubelet's checkpoint manager guards its own files; ``sum`` guards each
change line the same way. A version-1 file (the snapshot line alone) reads as well.

Why changes are appended: a prepare or unprepare appends one line (one ``write`` on an
existing file, a few microseconds) instead of writing a new file and renaming it over
the old one (on ext4 the create and the rename cost some 0.4 ms, with tails of several
milliseconds: the rename over an existing file starts the new file's writeback). Once
the change lines outgrow the snapshot (and 256 KiB), the claims are written as a new
snapshot, atomically (a temporary file in the same directory, renamed over the old one),
and the epoch changes. A crash of the host leaves the old file or the new one, and at
worst a torn last change line: its sum does not match, it is dropped (it was never
answered: the answer waits for the ``write`` to return) and cut off before the next
append.

No fsync, on purpose: it would cost the disk's flush latency on every prepare (several
milliseconds), and it buys nothing a node needs. A host restart keeps the file (the page
cache survives a process). Only a machine crash can lose the last writes, and then
kubelet restarts too: it reloads its claims as not prepared (kubernetes
``pkg/kubelet/cm/dra/claiminfo.go``, ``newClaimInfoFromState``) and sends
NodePrepareResources again, which prepares a claim missing here from the API server; an
unprepare lost that way leaves a claim recorded that kubelet no longer knows, which
costs its CDI specs on disk, nothing a container sees. A snapshot line left unreadable
is moved aside and the driver starts empty.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from host.dra._prepare import PreparedClaim

__all__ = [
    "CHECKPOINT_NAME",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "ClaimChange",
    "ClaimCheckpoint",
]

log = logging.getLogger("host.dra.checkpoint")

CHECKPOINT_NAME = "checkpoint.json"
CHECKPOINT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
_COMPACT_AFTER = 256 * 1024
"""Change lines kept at least up to this many bytes before a new snapshot is written."""
_EPOCH_PREFIX = len('{"version":2,"epoch":"') + 32  # what identifies a snapshot


class CheckpointError(Exception):
    """The checkpoint file is unreadable, corrupt, or of an unknown version."""


@dataclass(frozen=True)
class ClaimChange:
    """One change line: ``claim`` prepared (``claim`` set) or ``uid`` unprepared."""

    uid: str
    claim: PreparedClaim | None


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _sealed(body: str) -> bytes:
    """Return the change line of canonical JSON object ``body``, its ``sum`` added."""
    digest = hashlib.sha256(body.encode()).hexdigest()
    return f'{body[:-1]},"sum":"{digest}"}}\n'.encode()


class ClaimCheckpoint:
    """Reads and writes the prepared claims of one driver (blocking file I/O).

    Call the methods through ``asyncio.to_thread`` from the event loop, one at a time
    (the store serialises them; across processes it holds a ``flock``). The object
    remembers which snapshot it read or wrote and how far: :meth:`read_changes` then
    reads only what another process appended since.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        driver: str,
        *,
        compact_after: int = _COMPACT_AFTER,
    ) -> None:
        self.path = Path(path)
        self.driver = driver
        self.compact_after = compact_after
        self._epoch: bytes | None = None  # the snapshot line's first bytes, None: no file
        self._offset = 0  # how far the file is known (valid content only)
        self._snapshot_bytes = 0
        self._change_bytes = 0

    @property
    def written(self) -> bool:
        """Whether the file exists as this object last read or wrote it (appends need it)."""
        return self._epoch is not None

    @property
    def wants_snapshot(self) -> bool:
        """Whether the change lines have outgrown the snapshot (write a new one)."""
        return self._change_bytes > max(self.compact_after, self._snapshot_bytes)

    def load(self) -> dict[str, PreparedClaim]:
        """Return the recorded claims by UID; an absent file means none.

        Raises :class:`CheckpointError` naming the file and what is wrong with its
        snapshot; a torn change line at the end is dropped (logged).
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            self._epoch, self._offset, self._snapshot_bytes, self._change_bytes = None, 0, 0, 0
            return {}
        except OSError as err:
            raise CheckpointError(f"cannot read DRA checkpoint {self.path}: {err}") from err
        end = raw.find(b"\n")
        snapshot = raw if end < 0 else raw[: end + 1]
        claims = self._parse_snapshot(snapshot)
        self._epoch = snapshot[:_EPOCH_PREFIX]
        self._snapshot_bytes = len(snapshot)
        self._offset = self._snapshot_bytes
        self._change_bytes = 0
        for change in self._apply_lines(raw, self._offset):
            if change.claim is None:
                claims.pop(change.uid, None)
            else:
                claims[change.uid] = change.claim
        return claims

    def read_changes(self) -> list[ClaimChange] | None:
        """Return the changes another process appended since this object last looked.

        ``[]`` when nothing changed (or the file is gone); None when the file was
        replaced by a new snapshot (call :meth:`load`).
        """
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if self._epoch is None or f.read(_EPOCH_PREFIX) != self._epoch:
                    return None
                if size == self._offset:
                    return []
                if size < self._offset:
                    return None
                f.seek(self._offset)
                tail = f.read()
        except FileNotFoundError:
            # Removed from outside, not by the other instance (which only replaces it):
            # nothing to take over; the next change writes a snapshot again.
            return []
        except OSError as err:
            raise CheckpointError(f"cannot read DRA checkpoint {self.path}: {err}") from err
        return self._apply_lines(tail, 0, base=self._offset)

    def append(self, uid: str, claim: PreparedClaim | None) -> None:
        """Record that ``claim`` was prepared (or ``uid`` unprepared, ``claim`` None).

        Needs the file (:meth:`save` first when :meth:`load` found none). OSError names
        the path.
        """
        if claim is None:
            line = _sealed(f'{{"op":"remove","uid":{json.dumps(uid)}}}')
        else:
            line = _sealed(f'{{"claim":{claim.canonical_json},"op":"add"}}')
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                if os.fstat(fd).st_size != self._offset:
                    os.ftruncate(fd, self._offset)  # a torn line of a crashed writer
                written = os.pwrite(fd, line, self._offset)
                if written != len(line):
                    os.ftruncate(fd, self._offset)
                    raise OSError(28, "short write (file system full?)")
            finally:
                os.close(fd)
        except OSError as err:
            raise OSError(
                err.errno, f"cannot write DRA checkpoint {self.path}: {err.strerror or err}"
            ) from err
        self._offset += len(line)
        self._change_bytes += len(line)

    def save(self, claims: Mapping[str, PreparedClaim]) -> None:
        """Replace the file with a snapshot of ``claims``, atomically; OSError names the path."""
        # Assembled from each claim's cached canonical JSON: the very bytes _canonical()
        # makes of the whole data (keys sorted, no whitespace), without re-encoding
        # every claim on every write.
        body = ",".join(f"{json.dumps(uid)}:{claims[uid].canonical_json}" for uid in sorted(claims))
        data = f'{{"claims":{{{body}}},"driver":{json.dumps(self.driver)}}}'
        checksum = hashlib.sha256(data.encode()).hexdigest()
        payload = (
            f'{{"version":{CHECKPOINT_VERSION},"epoch":"{os.urandom(16).hex()}",'
            f'"checksum":"{checksum}","data":{data}}}\n'
        ).encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            _write_atomically(self.path, payload)
        except OSError as err:
            raise OSError(
                err.errno, f"cannot write DRA checkpoint {self.path}: {err.strerror or err}"
            ) from err
        self._epoch = payload[:_EPOCH_PREFIX]
        self._offset = self._snapshot_bytes = len(payload)
        self._change_bytes = 0

    def remove_leftovers(self) -> None:
        """Remove temporary files of snapshots a crashed writer never renamed."""
        with contextlib.suppress(OSError):
            for tmp in self.path.parent.glob(f".{self.path.name}.*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()

    def set_aside(self) -> Path | None:
        """Rename an unreadable file to ``checkpoint.json.corrupt-<time>`` and return it.

        Kept for a person to inspect; the driver then starts with no prepared claims.
        """
        target = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        self._epoch, self._offset, self._snapshot_bytes, self._change_bytes = None, 0, 0, 0
        try:
            os.replace(self.path, target)
        except FileNotFoundError:
            return None
        return target

    # -- parsing --------------------------------------------------------------------------

    def _parse_snapshot(self, raw: bytes) -> dict[str, PreparedClaim]:
        try:
            document = json.loads(raw)
        except ValueError as err:
            raise CheckpointError(f"DRA checkpoint {self.path} is not JSON: {err}") from err
        if not isinstance(document, Mapping):
            raise CheckpointError(f"DRA checkpoint {self.path} is not a JSON object")
        version = document.get("version")
        if version not in _READABLE_VERSIONS:
            raise CheckpointError(
                f"DRA checkpoint {self.path} has version {version!r}; this host reads "
                f"versions {', '.join(map(str, _READABLE_VERSIONS))}"
            )
        data = document.get("data")
        checksum = hashlib.sha256(_canonical(data)).hexdigest()
        if document.get("checksum") != checksum:
            raise CheckpointError(f"DRA checkpoint {self.path} is corrupt: checksum mismatch")
        if not isinstance(data, Mapping) or data.get("driver") != self.driver:
            driver = data.get("driver") if isinstance(data, Mapping) else None
            raise CheckpointError(
                f"DRA checkpoint {self.path} belongs to driver {driver!r}, not {self.driver!r}"
            )
        try:
            claims = {uid: PreparedClaim.from_json(claim) for uid, claim in data["claims"].items()}
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise CheckpointError(f"DRA checkpoint {self.path} is malformed: {err!r}") from err
        for uid, claim in claims.items():
            if claim.ref.uid != uid:
                raise CheckpointError(
                    f"DRA checkpoint {self.path} is malformed: claim {claim.ref} is filed "
                    f"under UID {uid!r} but has UID {claim.ref.uid!r}"
                )
        return claims

    def _apply_lines(self, raw: bytes, start: int, *, base: int = 0) -> list[ClaimChange]:
        """Parse the change lines of ``raw`` from ``start``; advance the known offset.

        ``base`` is the file offset of ``raw[0]``. Parsing stops at the first line that
        is torn or fails its sum (logged); the next append cuts it off.
        """
        changes = []
        position = start
        while position < len(raw):
            end = raw.find(b"\n", position)
            line = raw[position:] if end < 0 else raw[position : end + 1]
            change = None if end < 0 else _parse_change(line)
            if change is None:
                log.warning(
                    "DRA checkpoint %s: dropping %d bytes of a torn or corrupt change at "
                    "offset %d (a crash while it was written; it was never answered)",
                    self.path,
                    len(raw) - position,
                    base + position,
                )
                break
            changes.append(change)
            position += len(line)
        self._offset = base + position
        self._change_bytes += position - start
        return changes


def _parse_change(line: bytes) -> ClaimChange | None:
    """Return the change of one line, or None when it is torn or fails its sum."""
    try:
        record = json.loads(line)
        digest = record.pop("sum")
        if hashlib.sha256(_canonical(record)).hexdigest() != digest:
            return None
        if record["op"] == "remove" and len(record) == 2:
            return ClaimChange(str(record["uid"]), None)
        if record["op"] == "add" and len(record) == 2:
            claim = PreparedClaim.from_json(record["claim"])
            return ClaimChange(claim.ref.uid, claim)
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
