"""The driver's record of prepared claims, kept on disk across restarts.

``<dra plugin dir>/<driver>/checkpoint.json``::

    {"version": 1, "checksum": "<sha256 of data>", "data": {"driver": ..., "claims": {...}}}

``checksum`` is the SHA-256 (hex) of ``data`` serialised canonically (sorted keys, no
whitespace), as kubelet's checkpoint manager guards its own files. Writes are atomic
(a temporary file in the same directory, renamed over the old one): a crash of the host
leaves the old file or the new one, never a torn one.

No fsync, on purpose: it would cost the disk's flush latency on every prepare (several
milliseconds), and it buys nothing a node needs. A host restart keeps the file (the page
cache survives a process). Only a power loss can lose the last writes, and then kubelet
restarts too: it reloads its claims as not prepared (kubernetes
``pkg/kubelet/cm/dra/claiminfo.go``, ``newClaimInfoFromState``) and sends
NodePrepareResources again, which prepares a claim missing here from the API server; a
file left unreadable is moved aside and the driver starts empty.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from host.dra._prepare import PreparedClaim

__all__ = ["CHECKPOINT_NAME", "CHECKPOINT_VERSION", "CheckpointError", "ClaimCheckpoint"]

CHECKPOINT_NAME = "checkpoint.json"
CHECKPOINT_VERSION = 1


class CheckpointError(Exception):
    """The checkpoint file is unreadable, corrupt, or of an unknown version."""


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


class ClaimCheckpoint:
    """Reads and writes the prepared claims of one driver (blocking file I/O).

    Call the methods through ``asyncio.to_thread`` from the event loop.
    """

    def __init__(self, path: str | os.PathLike[str], driver: str) -> None:
        self.path = Path(path)
        self.driver = driver

    def load(self) -> dict[str, PreparedClaim]:
        """Return the recorded claims by UID; an absent file means none.

        Raises :class:`CheckpointError` naming the file and what is wrong with it.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as err:
            raise CheckpointError(f"cannot read DRA checkpoint {self.path}: {err}") from err
        try:
            document = json.loads(raw)
        except ValueError as err:
            raise CheckpointError(f"DRA checkpoint {self.path} is not JSON: {err}") from err
        if not isinstance(document, Mapping):
            raise CheckpointError(f"DRA checkpoint {self.path} is not a JSON object")
        version = document.get("version")
        if version != CHECKPOINT_VERSION:
            raise CheckpointError(
                f"DRA checkpoint {self.path} has version {version!r}; this host reads "
                f"version {CHECKPOINT_VERSION}"
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

    def save(self, claims: Mapping[str, PreparedClaim]) -> None:
        """Replace the file with ``claims`` atomically; OSError names the path."""
        # Assembled from each claim's cached canonical JSON: the very bytes _canonical()
        # makes of the whole data (keys sorted, no whitespace), without re-encoding
        # every claim on every write.
        body = ",".join(f"{json.dumps(uid)}:{claims[uid].canonical_json}" for uid in sorted(claims))
        data = f'{{"claims":{{{body}}},"driver":{json.dumps(self.driver)}}}'
        checksum = hashlib.sha256(data.encode()).hexdigest()
        payload = (
            f'{{"checksum":"{checksum}","data":{data},"version":{CHECKPOINT_VERSION}}}\n'
        ).encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            _write_atomically(self.path, payload)
        except OSError as err:
            raise OSError(
                err.errno, f"cannot write DRA checkpoint {self.path}: {err.strerror or err}"
            ) from err

    def set_aside(self) -> Path | None:
        """Rename an unreadable file to ``checkpoint.json.corrupt-<time>`` and return it.

        Kept for a person to inspect; the driver then starts with no prepared claims.
        """
        target = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        try:
            os.replace(self.path, target)
        except FileNotFoundError:
            return None
        return target


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
