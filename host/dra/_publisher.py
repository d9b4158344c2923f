"""Keeps one DRA driver's ResourceSlices on one node in sync with the newest scanner snapshot.

Feed it with :meth:`ResourceSlicePublisher.update` (non-blocking; only the newest
snapshot matters). A background task lists the node's slices of the driver (field
selector ``spec.driver=<driver>,spec.nodeName=<node>``) and adopts them, so a restarted
host takes over its predecessor's slices; then it creates, updates and deletes only
the slices whose content changed, bumping ``spec.pool.generation`` whenever more than
one slice changes (the ``k8s.io/dynamic-resource-allocation/resourceslice``
controller's rule). Conflicts re-read and retry at once; other failures retry with
capped exponential backoff and jitter. A periodic re-list republishes slices someone
else deleted (kubelet wipes them when it restarts).

During a rolling update two instances run side by side: :attr:`~ResourceSlicePublisher.may_write`
(see :mod:`host.dra._handover`) is asked before every attempt; while it says no the
publisher stands by (writes nothing, deletes nothing at stop) and asks again every
``standby_recheck`` seconds; once it says yes again the publisher re-lists and adopts
what the other instance published.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import lightkube
from lightkube.resources.core_v1 import Node
from lightkube.resources.resource_v1 import ResourceSlice

from host._cancellation import cancel_and_wait
from host.dra._client import api_error_code, kube_client
from host.dra._slices import DEFAULT_DEVICES_PER_SLICE, BuildResult, Snapshot, build_slices

__all__ = ["PublisherStatus", "ResourceSlicePublisher"]

log = logging.getLogger("host.dra")

_LARGE_SNAPSHOT = 500
"""Snapshots with more devices are built in a worker thread."""
_QUICK_RETRIES = 5
"""Conflicts in a row retried at once (after a re-list) before backing off."""


class _Stale(Exception):
    """The cached view of the slices is out of date (409, 404): re-list and retry."""


@dataclass(frozen=True)
class PublisherStatus:
    """What the publisher has done so far (for logs, tests and health checks)."""

    synced: bool
    """The newest snapshot is what the API server holds."""
    slices: tuple[str, ...]
    """Names of the slices as last seen on the API server."""
    generation: int
    """The pool generation as last published."""
    failures: int
    """Failed attempts in a row (0 once an attempt succeeds)."""
    last_error: str | None
    """The most recent failure, kept until the next success."""
    standby: bool = False
    """Another instance of the driver publishes for now (rolling update)."""
    errors_total: int = 0
    """Failed attempts since the publisher started (never goes down)."""
    failing_since: float | None = None
    """Wall-clock time (``time.time()``) of the first failure in a row; None once one succeeds."""
    last_success: float | None = None
    """Wall-clock time of the last successful sync; None before the first."""


def _content(obj: dict[str, Any]) -> str:
    """Render what a slice says, minus what the server adds: comparable across writers."""
    spec = obj.get("spec") or {}
    pool = {k: v for k, v in (spec.get("pool") or {}).items() if k != "generation"}
    devices = [
        {
            **device,
            "taints": [{k: v for k, v in t.items() if k != "timeAdded"} for t in device["taints"]],
        }
        if device.get("taints")
        else device
        for device in spec.get("devices") or ()
    ]
    owners = (obj.get("metadata") or {}).get("ownerReferences") or []
    return json.dumps([{**spec, "pool": pool, "devices": devices}, owners], sort_keys=True)


def _build(**kwargs: Any) -> tuple[BuildResult, dict[str, str]]:
    """Build the slices and render each one's content for comparison."""
    result = build_slices(**kwargs)
    return result, {s["metadata"]["name"]: _content(s) for s in result.slices}


def _resource(obj: dict[str, Any]) -> ResourceSlice:
    return cast(ResourceSlice, ResourceSlice.from_dict(obj))


def _generation(obj: dict[str, Any]) -> int:
    return int(((obj.get("spec") or {}).get("pool") or {}).get("generation") or 0)


class ResourceSlicePublisher:
    """Publishes the devices of one driver on one node as ResourceSlices, kept in sync.

    ``ResourceSlicePublisher(driver, node_name, client=None, *, kubeconfig=None, ...)``:
    ``client`` is a lightkube ``AsyncClient`` the caller owns; without one the publisher
    makes its own from ``kubeconfig`` (or the detected configuration) and closes it on
    :meth:`stop`. ``node_uid`` skips the Node lookup for the owner reference.
    ``resync_interval`` is how often the slices are re-listed when nothing changes;
    ``retry_initial``/``retry_max`` bound the backoff between failed attempts;
    ``request_timeout`` bounds each API request of an owned client;
    ``max_devices_per_slice`` (1..128, default 64) is passed to :func:`build_slices`;
    ``standby_recheck`` is how often a publisher standing by asks :attr:`may_write`
    again.
    """

    def __init__(
        self,
        driver: str,
        node_name: str,
        client: lightkube.AsyncClient | None = None,
        *,
        kubeconfig: str | Path | None = None,
        node_uid: str | None = None,
        resync_interval: float = 30.0,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        request_timeout: float = 10.0,
        max_devices_per_slice: int = DEFAULT_DEVICES_PER_SLICE,
        standby_recheck: float = 2.0,
    ) -> None:
        self.driver = driver
        self.node_name = node_name
        self._own_client = client is None
        self._client = client or kube_client(kubeconfig, timeout=request_timeout)
        self._node_uid = node_uid
        self._lookup_node = node_uid is None
        self._resync_interval = resync_interval
        self._max_devices = max_devices_per_slice
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._latest: tuple[Snapshot, bool] | None = None
        self._version = 0
        self._published = 0
        self._stale = True
        self._existing: dict[str, dict[str, Any]] = {}
        self._written: dict[str, tuple[str, str]] = {}
        self._problems: frozenset[str] = frozenset()
        self._failures = 0
        self._last_error: str | None = None
        self._errors_total = 0
        self._failing_since: float | None = None
        self._last_success: float | None = None
        self._generation = 0
        self._wake = asyncio.Event()
        self._synced = asyncio.Event()
        self._attempted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.on_published: Callable[[], None] = lambda: None
        """Called after each successful sync (tests and benchmarks observe it)."""
        self.may_write: Callable[[], Awaitable[bool]] | None = None
        """Asked before every attempt: False while another instance publishes."""
        self._standby_recheck = standby_recheck
        self._standby = False

    # -- public --------------------------------------------------------------------

    def update(self, snapshot: Snapshot, scan_failed: bool = False) -> None:
        """Publish ``snapshot`` (device type -> id -> DeviceInfo) as soon as possible.

        Call it on the event loop; it never blocks, and a snapshot superseded before it
        was published is skipped.
        ``scan_failed`` taints every device (the scanner failed; its devices are unknown).
        """
        self._latest = (snapshot, scan_failed)
        self._version += 1
        self._synced.clear()
        self._wake.set()

    def request_resync(self) -> None:
        """Re-list the slices and repair any difference now, not at the next interval."""
        self._stale = True
        self._wake.set()

    async def start(self) -> None:
        """Start the background task (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"dra publisher {self.driver}")

    async def stop(self, *, cleanup: bool = False) -> None:
        """Stop publishing; the slices stay unless ``cleanup`` (then they are deleted).

        A cancellation of the caller while the task ends propagates (no clean-up then);
        an owned client is closed either way.
        """
        try:
            if self._task is not None:
                await cancel_and_wait(self._task)
                self._task = None
            if cleanup:
                await self._clean_up()
        finally:
            if self._own_client:
                await self._client.close()

    async def _clean_up(self) -> None:
        """Delete the slices unless another instance publishes; log a failure, never raise."""
        try:
            if await self._allowed():
                await self._delete_all()
            else:
                log.info(
                    "DRA driver %s on node %s: another instance publishes the "
                    "ResourceSlices; leaving them in place",
                    self.driver,
                    self.node_name,
                )
        except Exception as exc:
            log.warning(
                "DRA driver %s on node %s: could not delete the ResourceSlices (%s: %s); "
                "kubelet removes them once the driver is gone",
                self.driver,
                self.node_name,
                type(exc).__name__,
                exc,
            )

    async def __aenter__(self) -> ResourceSlicePublisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_synced(self) -> None:
        """Wait until the newest snapshot is published (wrap in ``asyncio.timeout``)."""
        await self._synced.wait()

    async def wait_status(self, predicate: Callable[[PublisherStatus], bool]) -> PublisherStatus:
        """Wait until ``predicate(status)`` holds, re-checked after every attempt; return it.

        Wrap in ``asyncio.timeout``; e.g. ``await p.wait_status(lambda s: s.failures > 0)``.
        """
        while not predicate(status := self.status):
            await self._attempted.wait()
        return status

    def _attempt_done(self) -> None:
        self._attempted.set()
        self._attempted = asyncio.Event()

    @property
    def status(self) -> PublisherStatus:
        """A snapshot of the publisher's state."""
        return PublisherStatus(
            synced=self._synced.is_set(),
            slices=tuple(sorted(self._existing)),
            generation=self._generation,
            failures=self._failures,
            last_error=self._last_error,
            standby=self._standby,
            errors_total=self._errors_total,
            failing_since=self._failing_since,
            last_success=self._last_success,
        )

    # -- the loop ------------------------------------------------------------------

    async def _run(self) -> None:
        quick = 0
        while True:
            self._wake.clear()
            pending = self._latest is not None and (self._published != self._version or self._stale)
            if not pending:
                try:
                    async with asyncio.timeout(self._resync_interval):
                        await self._wake.wait()
                except TimeoutError:
                    self._stale = True
                continue
            if not await self._allowed():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._standby_recheck):
                        await self._wake.wait()
                continue
            version = self._version
            try:
                await self._sync()
            except _Stale as exc:
                self._stale = True
                quick += 1
                if quick <= _QUICK_RETRIES:
                    log.debug("DRA driver %s: %s; re-reading the slices", self.driver, exc)
                    continue
                await self._failed(exc)
                continue
            except Exception as exc:
                self._stale = True
                await self._failed(exc)
                continue
            quick = 0
            if self._failures:
                log.info(
                    "DRA driver %s: ResourceSlices published again after %d failed attempts",
                    self.driver,
                    self._failures,
                )
            self._failures, self._last_error = 0, None
            self._failing_since, self._last_success = None, time.time()
            self._published = version
            if version == self._version:
                self._synced.set()
            self._attempt_done()
            self.on_published()

    async def _allowed(self) -> bool:
        """Ask :attr:`may_write`; note and log every change between writing and standing by."""
        if self.may_write is None:
            return True
        try:
            allowed = await self.may_write()
        except Exception as exc:  # the node's devices stay published: the safe side
            log.warning("DRA driver %s: who publishes? %s; publishing", self.driver, exc)
            allowed = True
        if allowed == (not self._standby):
            return allowed
        self._standby = not allowed
        if allowed:
            self._stale = True  # the other instance wrote meanwhile: adopt its slices
            log.info("DRA driver %s: publishing the ResourceSlices again", self.driver)
        else:
            log.info(
                "DRA driver %s on node %s: a newer instance publishes the ResourceSlices; "
                "standing by",
                self.driver,
                self.node_name,
            )
            self._attempt_done()
        return allowed

    async def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        self._errors_total += 1
        if self._failing_since is None:
            self._failing_since = time.time()
        self._last_error = f"{type(exc).__name__}: {exc}"
        self._attempt_done()
        capped = min(self._retry_max, self._retry_initial * 2 ** (self._failures - 1))
        delay = capped * random.uniform(0.5, 1.0)
        # The first failure, then every tenfold count, so a lasting one stays visible.
        loud = self._failures == 1 or str(self._failures).rstrip("0") == "1"
        level = logging.WARNING if loud else logging.DEBUG
        log.log(
            level,
            "DRA driver %s on node %s: publishing ResourceSlices failed (%s; failure %d in a "
            "row); retrying in %.1f s",
            self.driver,
            self.node_name,
            self._last_error,
            self._failures,
            delay,
        )
        await asyncio.sleep(delay)

    # -- one sync ------------------------------------------------------------------

    async def _sync(self) -> None:
        assert self._latest is not None
        snapshot, scan_failed = self._latest
        if self._stale or self._node_uid is None:
            # Looked up again at every re-list: a Node deleted and re-created under the
            # same name has a new uid, and slices owned by the old one would be collected.
            if self._lookup_node:
                node = await self._client.get(Node, self.node_name)
                uid = node.metadata.uid if node.metadata is not None else None
                if not uid:
                    raise RuntimeError(f"node {self.node_name!r} has no uid")
                self._node_uid = uid
            await self._list()
        assert self._node_uid is not None
        build = functools.partial(
            _build,
            driver=self.driver,
            node_name=self.node_name,
            node_uid=self._node_uid,
            snapshot=snapshot,
            scan_failed=scan_failed,
            max_devices=self._max_devices,
        )
        # Building and rendering a large pool takes milliseconds per 1,000 devices: off
        # the event loop then (the snapshot and its DeviceInfos are immutable).
        large = sum(len(ids) for ids in snapshot.values()) > _LARGE_SNAPSHOT
        result, contents = await asyncio.to_thread(build) if large else build()
        self._report(result.problems)
        desired = {s["metadata"]["name"]: s for s in result.slices}
        existing = self._existing
        current = max((_generation(s) for s in existing.values()), default=0)
        changed = [n for n in desired if not self._unchanged(n, contents[n], current)]
        obsolete = [n for n in existing if n not in desired]
        if not changed and not obsolete:
            self._generation = current
            return
        if len(changed) == 1 and not obsolete and changed[0] in existing:
            generation, writes = current, changed  # one object: updated atomically in place
        else:
            generation, writes = current + 1, list(desired)
        times = self._taint_times()
        for name in writes:
            desired[name]["spec"]["pool"]["generation"] = generation
            await self._write(desired[name], contents[name], times)
        for name in obsolete:
            await self._delete(name)
        self._generation = generation

    def _unchanged(self, name: str, content: str, generation: int) -> bool:
        have = self._existing.get(name)
        if have is None or _generation(have) != generation:
            return False
        # After our own write the server's copy may differ in fields it dropped (a
        # disabled feature gate): what we wrote is what counts while the object is ours.
        if self._written.get(name) == (have["metadata"].get("resourceVersion"), content):
            return True
        return _content(have) == content

    async def _list(self) -> None:
        fields: dict[str, Any] = {"spec.driver": self.driver, "spec.nodeName": self.node_name}
        found: dict[str, dict[str, Any]] = {}
        async for item in self._client.list(ResourceSlice, fields=fields):
            obj = item.to_dict()
            found[obj["metadata"]["name"]] = obj
        adopted = set(found) - set(self._existing)
        if adopted and not self._existing:
            log.info(
                "DRA driver %s on node %s: adopting %d existing ResourceSlices",
                self.driver,
                self.node_name,
                len(adopted),
            )
        self._existing = found
        self._stale = False

    def _taint_times(self) -> dict[tuple[str, str, str], str]:
        """``timeAdded`` of the taints on the server, by (device, key, effect)."""
        return {
            (device["name"], taint.get("key", ""), taint.get("effect", "")): taint["timeAdded"]
            for have in self._existing.values()
            for device in (have.get("spec") or {}).get("devices") or ()
            for taint in device.get("taints") or ()
            if taint.get("timeAdded")
        }

    async def _write(
        self, want: dict[str, Any], content: str, times: dict[tuple[str, str, str], str]
    ) -> None:
        name = want["metadata"]["name"]
        # A taint keeps the timeAdded the server gave it (it sets one when missing).
        for device in want["spec"].get("devices") or ():
            for taint in device.get("taints") or ():
                known = times.get((device["name"], taint["key"], taint["effect"]))
                if known is not None:
                    taint["timeAdded"] = known
        have = self._existing.get(name)
        try:
            if have is None:
                result = await self._client.create(_resource(want))
            else:
                version = have["metadata"]["resourceVersion"]
                body = {**want, "metadata": {**want["metadata"], "resourceVersion": version}}
                result = await self._client.replace(_resource(body))
        except Exception as exc:
            code = api_error_code(exc)
            if code in (404, 409):
                raise _Stale(f"slice {name}: HTTP {code}") from exc
            raise
        obj = result.to_dict()
        self._existing[name] = obj
        self._written[name] = (obj["metadata"].get("resourceVersion", ""), content)

    async def _delete(self, name: str) -> None:
        try:
            await self._client.delete(ResourceSlice, name)
        except Exception as exc:
            if api_error_code(exc) != 404:
                raise
        self._existing.pop(name, None)
        self._written.pop(name, None)

    async def _delete_all(self) -> None:
        await self._list()
        for name in list(self._existing):
            await self._delete(name)
        log.info("DRA driver %s on node %s: ResourceSlices deleted", self.driver, self.node_name)

    def _report(self, problems: list[str]) -> None:
        current = frozenset(problems)
        for problem in sorted(current - self._problems):
            log.warning("DRA driver %s: %s", self.driver, problem)
        self._problems = current
