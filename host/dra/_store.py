"""The prepared claims of one driver: in memory, in CDI spec files, and in the checkpoint.

Every change is one blocking step, run in a worker thread: write (or remove) the
claim's CDI specs, update the in-memory record, write the checkpoint. A claim counts as
prepared only once the checkpoint holds it, so a restarted host answers kubelet's
repeats and unprepares what was prepared before. Concurrent changes coalesce: a
checkpoint write always records the latest state, and a change already covered by a
later write does not write again.

Shared mode (``lock_path`` given: rolling updates, where two instances of a driver
run side by side on one data directory and kubelet may send any call to either)
serialises every look-up and change across processes with ``flock`` on
``serialize.lock`` (as k8s.io/dynamic-resource-allocation's kubeletplugin helper
does) and first takes over what the other instance recorded in the checkpoint since.
Each checkpoint write also writes a fresh random token into the lock file: a changed
token (or a changed file: inode, size, mtime) tells the other instance to re-read.
The file's stamp alone can miss a change: the inode number of a replaced file is
reused, and two writes of one size within one tick of the file system's clock look
alike.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from host.deviceplugin._cdi import CdiSpecWriter, qualified_name, validate_cdi_spec
from host.dra._checkpoint import CheckpointError, ClaimCheckpoint
from host.dra._prepare import CDI_CLASS, PreparedClaim

__all__ = ["ClaimStore"]

log = logging.getLogger("host.dra.store")

_TOKEN_SIZE = 16


class ClaimStore:
    """Thread-safe record of prepared claims backed by CDI spec files and a checkpoint.

    The blocking methods (:meth:`add`, :meth:`remove`, :meth:`lookup`,
    :meth:`restore`) belong in a worker thread; :meth:`get` and :attr:`claims` are
    cheap and safe on the event loop, but in shared mode only :meth:`lookup` sees what
    the other instance did.
    """

    def __init__(
        self,
        driver: str,
        checkpoint: ClaimCheckpoint,
        writer: CdiSpecWriter,
        *,
        lock_path: Path | None = None,
    ) -> None:
        self.driver = driver
        self.checkpoint = checkpoint
        self.writer = writer
        self.lock_path = lock_path
        self._disk_stamp: tuple[int, int, int] | None = None
        self._token = b""
        self._lock_fd: int | None = None
        self._claims: dict[str, PreparedClaim] = {}
        self._state_lock = threading.Lock()
        self._save_lock = threading.Lock()
        self._generation = 0
        self._saved_generation = 0

    @property
    def claims(self) -> Mapping[str, PreparedClaim]:
        """The prepared claims by UID (a read-only view)."""
        return MappingProxyType(self._claims)

    @property
    def shared(self) -> bool:
        """Whether another instance may change the checkpoint too (rolling update)."""
        return self.lock_path is not None

    def get(self, uid: str) -> PreparedClaim | None:
        """Return the prepared claim with ``uid`` as this process knows it."""
        return self._claims.get(uid)

    def lookup(self, uid: str) -> PreparedClaim | None:
        """Return the prepared claim with ``uid``, up to date with the other instance."""
        with self._exclusive():
            return self._claims.get(uid)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        if self.lock_path is None:
            yield
            return
        self.lock_path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            # One open file description per call: threads of this process exclude
            # each other as well as the other instance's.
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_fd = fd
            self._sync(os.pread(fd, _TOKEN_SIZE, 0))
            yield
        finally:
            self._lock_fd = None
            os.close(fd)

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.checkpoint.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _sync(self, token: bytes) -> None:
        """Take over the claims the other instance prepared or unprepared since."""
        stamp = self._stamp()
        if stamp is None or (stamp == self._disk_stamp and token == self._token):
            return
        try:
            disk = self.checkpoint.load()
        except CheckpointError as err:
            log.warning("DRA driver %s: keeping its own record: %s", self.driver, err)
            return
        with self._state_lock:
            mine = self._claims
            gone = [claim for uid, claim in mine.items() if uid not in disk]
            new = [claim for uid, claim in disk.items() if uid not in mine]
            self._claims = dict(disk)
            self._generation += 1
            self._saved_generation = self._generation
        for claim in gone:
            with contextlib.suppress(OSError):
                self._release_specs(claim)  # the other instance removed the files
        for claim in new:
            try:
                self._acquire_specs(claim)  # adopt the files, so unprepare removes them
            except (OSError, ValueError) as err:
                log.warning("DRA driver %s: claim %s: %s", self.driver, claim.ref, err)
        self._disk_stamp = stamp
        self._token = token

    def _owner(self, claim: PreparedClaim, spec: Mapping[str, Any]) -> tuple[str, str, str]:
        return (self.driver, claim.ref.uid, qualified_name(spec))

    def _owns(self, claim: PreparedClaim, spec: Mapping[str, Any]) -> bool:
        # The claim's own CDI devices (claim-<uid>-...) live and die with the claim. A
        # plugin's CDI spec (DeviceInfo.cdi_spec) is written but never removed here:
        # the device-plugin side may have handed the same file to containers, and its
        # CDI store collects it once nothing, DRA claims included, holds it.
        return qualified_name(spec).startswith(f"{self.driver}/{CDI_CLASS}=claim-{claim.ref.uid}-")

    def _acquire_specs(self, claim: PreparedClaim) -> None:
        done = []
        try:
            for spec in claim.cdi_specs:
                if self._owns(claim, spec):
                    self.writer.acquire(self._owner(claim, spec), spec)
                    done.append(spec)
                else:
                    self.writer.write(validate_cdi_spec(spec))
        except BaseException:
            for spec in done:
                self.writer.release(self._owner(claim, spec))
            raise

    def _release_specs(self, claim: PreparedClaim) -> None:
        for spec in claim.cdi_specs:
            if self._owns(claim, spec):
                self.writer.release(self._owner(claim, spec))

    def add(self, claim: PreparedClaim) -> PreparedClaim:
        """Write the claim's CDI specs, record it and write the checkpoint; return it.

        A claim already recorded (the other instance prepared it meanwhile) is returned
        as recorded instead. Raises ValueError (an invalid spec) or OSError (a file
        that cannot be written); then nothing of the claim is left behind.
        """
        with self._exclusive():
            known = self._claims.get(claim.ref.uid)
            if known is not None:
                return known
            self._add(claim)
            return claim

    def _add(self, claim: PreparedClaim) -> None:
        self._acquire_specs(claim)
        with self._state_lock:
            self._claims[claim.ref.uid] = claim
            self._generation += 1
            wanted = self._generation
        try:
            self._save(wanted)
        except BaseException:
            with self._state_lock:
                if self._claims.get(claim.ref.uid) is claim:
                    del self._claims[claim.ref.uid]
                    self._generation += 1
            self._release_specs(claim)
            raise

    def remove(self, uid: str) -> PreparedClaim | None:
        """Remove the claim's CDI specs and record, write the checkpoint; return the claim.

        An unknown UID is nothing to do (None). OSError when a spec file cannot be
        removed (the claim stays recorded) or the checkpoint cannot be written (the
        claim is gone; the next write records that).
        """
        with self._exclusive():
            return self._remove(uid)

    def _remove(self, uid: str) -> PreparedClaim | None:
        claim = self._claims.get(uid)
        if claim is None:
            return None
        self._release_specs(claim)
        with self._state_lock:
            if self._claims.get(uid) is claim:
                del self._claims[uid]
                self._generation += 1
            wanted = self._generation
        self._save(wanted)
        return claim

    def _save(self, wanted: int) -> None:
        with self._save_lock:
            if self._saved_generation >= wanted:
                return  # a write since this change already recorded it
            with self._state_lock:
                generation = self._generation
                claims = dict(self._claims)
            self.checkpoint.save(claims)
            self._saved_generation = generation
            self._disk_stamp = self._stamp()
            if self._lock_fd is not None:
                self._token = os.urandom(_TOKEN_SIZE)
                os.pwrite(self._lock_fd, self._token, 0)

    def restore(self) -> int:
        """Read the checkpoint and write every recorded claim's CDI specs again.

        Returns how many claims were restored. A checkpoint that cannot be read is
        moved aside (logged) and the store starts empty; a spec that cannot be written
        is logged and its claim kept (kubelet will unprepare it).
        """
        with self._exclusive():
            return self._restore()

    def _restore(self) -> int:
        try:
            claims = self.checkpoint.load()
        except CheckpointError as err:
            aside = self.checkpoint.set_aside()
            log.error(
                "DRA driver %s: %s; moved it to %s and starting with no prepared claims",
                self.driver,
                err,
                aside,
            )
            claims = {}
        for claim in claims.values():
            try:
                self._acquire_specs(claim)
            except (OSError, ValueError) as err:
                log.warning(
                    "DRA driver %s: claim %s: cannot restore its CDI specs: %s",
                    self.driver,
                    claim.ref,
                    err,
                )
        with self._state_lock:
            self._claims = dict(claims)
            self._generation += 1
            self._saved_generation = self._generation
        self._disk_stamp = self._stamp()
        return len(claims)
