"""The prepared claims of one driver: in memory, in CDI spec files, and in the checkpoint.

Every change is one step: write (or remove) the claim's CDI specs, update the
in-memory record, append the change to the checkpoint; on the event loop when nothing
in it can wait (the ``*_now`` methods), else in one worker-thread hop. A claim counts
as prepared only once the checkpoint holds it, so a restarted host answers kubelet's
repeats and unprepares what was prepared before.

What reaches the disk when (nothing is fsynced on the prepare path): a claim's CDI
specs are written (atomically, renamed into place) and then its checkpoint line
appended, both before the answer; both survive a crash of the host process (the page
cache outlives it). After a machine crash kubelet re-sends NodePrepareResources for
every claim it still needs (it reloads them as not prepared), and :meth:`restore`
has written every recorded claim's specs again before the driver serves, so a spec
lost from the page cache is back before kubelet asks; a claim whose line was lost is
prepared anew from the API server. That is the kubeletplugin helper's contract: a
prepare is answered once it is recorded, and a repeated prepare is cheap.

Shared mode (``lock_path`` given: rolling updates, where two instances of a driver
run side by side on one data directory and kubelet may send any call to either)
serialises every look-up and change across processes with ``flock`` on
``serialize.lock`` (as k8s.io/dynamic-resource-allocation's kubeletplugin helper
does) and first takes over what the other instance recorded in the checkpoint since
(reading only the lines it appended).
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from host.deviceplugin._cdi import (
    CdiSpecWriter,
    LedgerEntry,
    qualified_name,
    spec_file_name,
    validate_cdi_spec,
)
from host.deviceplugin._cdi_spec import is_cdi_device_name
from host.dra._checkpoint import CheckpointError, ClaimCheckpoint
from host.dra._claimgc import stale_claim_specs
from host.dra._prepare import CDI_CLASS, CDI_VERSION, PreparedClaim

__all__ = ["NOT_NOW", "ClaimStore", "NotNow"]

log = logging.getLogger("host.dra.store")


class NotNow(enum.Enum):
    """The answer of a ``*_now`` method that would have to wait."""

    NOT_NOW = "not now"


NOT_NOW: Final = NotNow.NOT_NOW
"""Run the blocking method in a worker thread instead."""

_VALID_EDITS_KEPT = 1024
"""At most this many validated ``containerEdits`` are remembered (then forgotten at once)."""


class ClaimStore:
    """Thread-safe record of prepared claims backed by CDI spec files and a checkpoint.

    The blocking methods (:meth:`add`, :meth:`remove`, :meth:`lookup`,
    :meth:`restore`) belong in a worker thread; try :meth:`add_now`,
    :meth:`remove_now` and :meth:`lookup_now` on the event loop first (they do the same
    unless they would wait). :meth:`get` and :attr:`claims` are cheap and safe on the
    event loop, but in shared mode only the lookups see what the other instance did.
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
        self._claims: dict[str, PreparedClaim] = {}
        self._state_lock = threading.Lock()
        # Reentrant: the *_now methods hold it (taken without waiting) around _record.
        self._save_lock = threading.RLock()
        self._snapshot_due = False  # a failed write left the file behind the record
        self._plugin_specs: dict[str, Mapping[str, Any]] = {}  # written: name -> spec
        # The JSON of per-claim containerEdits found valid: see _checked_before.
        self._valid_edits: set[str] = set()

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

    # -- without waiting ----------------------------------------------------------------
    #
    # The common prepare and unprepare are a few small writes to the page cache (a
    # per-claim CDI spec renamed into place, one checkpoint line appended; nothing is
    # fsynced): some 0.1 ms, less than the hop to a worker thread and back costs
    # (0.25 ms of CPU, and under load a wait of up to the interpreter's 5 ms switch
    # interval for the GIL). The *_now methods do that work on the calling thread (the
    # event loop) and answer NOT_NOW whenever it could wait instead: another
    # instance holding the shared lock, a worker thread of this process in the middle
    # of a change, a snapshot due (a new file and a rename), a plugin CDI spec not
    # written yet (fsynced). The caller then runs the blocking method in a thread.

    def lookup_now(self, uid: str) -> PreparedClaim | NotNow | None:
        """As :meth:`lookup` without waiting; :data:`NOT_NOW` when it would wait."""
        with self._without_waiting() as held:
            if not held:
                return NOT_NOW
            return self._claims.get(uid)

    def add_now(self, claim: PreparedClaim) -> PreparedClaim | NotNow:
        """As :meth:`add` without waiting; :data:`NOT_NOW` when it would wait."""
        if not self._quick() or any(
            not self._owns(claim, spec) and self._plugin_specs.get(spec_file_name(spec)) != spec
            for spec in claim.cdi_specs
        ):
            return NOT_NOW
        with self._without_waiting() as held:
            if not held or not self._quick():
                return NOT_NOW
            known = self._claims.get(claim.ref.uid)
            if known is not None:
                return known
            self._add(claim)
            return claim

    def remove_now(self, uid: str) -> PreparedClaim | NotNow | None:
        """As :meth:`remove` without waiting; :data:`NOT_NOW` when it would wait."""
        if not self._quick():
            return NOT_NOW
        with self._without_waiting() as held:
            if not held or not self._quick():
                return NOT_NOW
            return self._remove(uid)

    def _quick(self) -> bool:
        checkpoint = self.checkpoint
        return checkpoint.written and not checkpoint.wants_snapshot and not self._snapshot_due

    @contextlib.contextmanager
    def _without_waiting(self) -> Iterator[bool]:
        if not self._save_lock.acquire(blocking=False):
            yield False
            return
        try:
            if self.lock_path is None:
                yield True
                return
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                yield False  # the first change creates it, in a thread
                return
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    yield False
                    return
                self._sync()
                yield True
            finally:
                os.close(fd)
        finally:
            self._save_lock.release()

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        # The save lock first, as _without_waiting takes them: changes of this process
        # (in threads or on the loop) and garbage collection exclude each other.
        with self._save_lock:
            if self.lock_path is None:
                yield
                return
            self.lock_path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                # One open file description per call: threads of this process exclude
                # each other as well as the other instance's.
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._sync()
                yield
            finally:
                os.close(fd)

    def _sync(self) -> None:
        """Take over the claims the other instance prepared or unprepared since."""
        try:
            changes = self.checkpoint.read_changes()
            if changes == []:
                return
            if changes is None:
                disk = self.checkpoint.load()
            else:
                disk = dict(self._claims)
                for change in changes:
                    if change.claim is None:
                        disk.pop(change.uid, None)
                    else:
                        disk[change.uid] = change.claim
        except CheckpointError as err:
            log.warning("DRA driver %s: keeping its own record: %s", self.driver, err)
            return
        with self._state_lock:
            mine = self._claims
            gone = [claim for uid, claim in mine.items() if uid not in disk]
            new = [claim for uid, claim in disk.items() if uid not in mine]
            self._claims = disk
        for claim in gone:
            with contextlib.suppress(OSError):
                self._release_specs(claim)  # the other instance removed the files
        for claim in new:
            try:
                # Adopt the files, so unprepare removes them (the other instance put the
                # plugin's specs into the ledger: no ledger lock taken here, maybe on the loop).
                self._acquire_specs(claim, ledger=False)
            except (OSError, ValueError) as err:
                log.warning("DRA driver %s: claim %s: %s", self.driver, claim.ref, err)

    def _owner(self, claim: PreparedClaim, spec: Mapping[str, Any]) -> tuple[str, str, str]:
        return (self.driver, claim.ref.uid, qualified_name(spec))

    def _owns(self, claim: PreparedClaim, spec: Mapping[str, Any]) -> bool:
        # The claim's own CDI devices (claim-<uid>-...) live and die with the claim. A
        # plugin's CDI spec (DeviceInfo.cdi_spec) is not removed with a claim: the
        # device-plugin side may have handed the same file to containers. It goes into
        # the namespace's CDI ledger and is collected once nothing, DRA claims and
        # running containers included, holds it (host.dra._claimgc).
        return qualified_name(spec).startswith(f"{self.driver}/{CDI_CLASS}=claim-{claim.ref.uid}-")

    def _acquire_specs(self, claim: PreparedClaim, *, ledger: bool = True) -> None:
        done = []
        try:
            for spec in claim.cdi_specs:
                if self._owns(claim, spec):
                    edits = self._checked_before(spec)
                    self.writer.acquire(
                        self._owner(claim, spec), spec, durable=False, validated=edits is None
                    )
                    if edits:  # valid now (acquire raised ValueError otherwise)
                        if len(self._valid_edits) >= _VALID_EDITS_KEPT:
                            self._valid_edits.clear()
                        self._valid_edits.add(edits)
                    done.append(spec)
                else:
                    # Durable: the device-plugin side may hand out the same file.
                    spec = validate_cdi_spec(spec)
                    self.writer.write(spec)
                    file_name = spec_file_name(spec)
                    if ledger and file_name not in self._plugin_specs:
                        entry = LedgerEntry(qualified_name(spec), frozenset())
                        self.writer.ledger_add({file_name: entry})
                    self._plugin_specs[file_name] = spec
        except BaseException:
            for spec in done:
                self.writer.release(self._owner(claim, spec))
            raise

    def _checked_before(self, spec: Mapping[str, Any]) -> str | None:
        """None when ``spec`` needs no validation; else the key to remember it valid by.

        A claim's specs differ from one claim to the next only in the device name
        (``claim-<uid>-<device>``): the same few ``containerEdits`` (a device's nodes,
        mounts and envs) come back with every claim of that device. Validating a spec
        costs more than writing it, so the JSON of the edits found valid is remembered,
        and a spec of exactly the driver's shape (version, kind, one device with a
        valid name and remembered edits) is written without validating it again: it
        encodes to the JSON of a valid spec.
        """
        # Only edits validated in a spec of this very shape are remembered: the version
        # a spec needs depends on its edits, the name aside.
        try:
            (device,) = spec["devices"]
            if not (
                len(spec) == 3
                and spec["cdiVersion"] == CDI_VERSION
                and spec["kind"] == f"{self.driver}/{CDI_CLASS}"
                and len(device) == 2
                and "name" in device
            ):
                return ""  # never remembered
            edits = json.dumps(device["containerEdits"], sort_keys=True)
        except (KeyError, TypeError, ValueError):
            return ""
        if edits in self._valid_edits and is_cdi_device_name(device["name"]):
            return None
        return edits

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
        try:
            self._record(claim.ref.uid, claim)
        except BaseException:
            with self._state_lock:
                if self._claims.get(claim.ref.uid) is claim:
                    del self._claims[claim.ref.uid]
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
        self._record(uid, None)
        return claim

    def _record(self, uid: str, claim: PreparedClaim | None) -> None:
        """Append the change to the checkpoint, or write a snapshot when one is due."""
        with self._save_lock:
            checkpoint = self.checkpoint
            try:
                if checkpoint.written and not checkpoint.wants_snapshot and not self._snapshot_due:
                    try:
                        checkpoint.append(uid, claim)
                        return
                    except FileNotFoundError:
                        pass  # removed from outside: a snapshot writes it again
                with self._state_lock:
                    claims = dict(self._claims)
                checkpoint.save(claims)
                self._snapshot_due = False
            except BaseException:
                # The file may now lag the in-memory record (a removal that stays
                # done): the next write is a whole snapshot.
                self._snapshot_due = True
                raise

    def restore(self) -> int:
        """Read the checkpoint and write every recorded claim's CDI specs again.

        Returns how many claims were restored. A checkpoint that cannot be read is
        moved aside (logged) and the store starts empty; a spec that cannot be written
        is logged and its claim kept (kubelet will unprepare it).
        """
        with self._exclusive():
            return self._restore()

    def _restore(self) -> int:
        self.checkpoint.remove_leftovers()
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
        else:
            self._remove_stale_claim_specs(claims)
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
        return len(claims)

    def _remove_stale_claim_specs(self, claims: Mapping[str, PreparedClaim]) -> None:
        named = {
            qualified_name(spec)
            for claim in claims.values()
            for spec in claim.cdi_specs
            if self._owns(claim, spec)
        }
        for path in stale_claim_specs(self.writer, self.driver, named):
            log.info(
                "DRA driver %s: removed CDI spec %s: its claim is not prepared (left by a "
                "host that stopped before recording it)",
                self.driver,
                path,
            )

    # -- the plugin's own CDI specs ---------------------------------------------------

    def plugin_spec_files(self) -> set[str]:
        """Return the file names of the plugin CDI specs the recorded claims name."""
        with self._state_lock:
            claims = list(self._claims.values())
        return {
            spec_file_name(spec)
            for claim in claims
            for spec in claim.cdi_specs
            if not self._owns(claim, spec)
        }

    def collect_plugin_specs(self, file_names: Iterable[str]) -> list[Path]:
        """Remove ledger files ``file_names`` that no recorded claim names; return them.

        Under the shared lock, up to date with the other instance: a claim prepared
        meanwhile keeps its file.
        """
        with self._exclusive():
            doomed = set(file_names) - self.plugin_spec_files()
            for file_name in doomed:
                self._plugin_specs.pop(file_name, None)  # written again when named again
            return self.writer.collect(sorted(doomed))
