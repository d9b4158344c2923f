"""Device health to kubelet (KEP-4680): the ``DRAResourceHealth`` service on the DRA socket.

Kubelet (with the ``ResourceHealthStatus`` gate) opens one ``NodeWatchResources`` stream
per registered driver instance and copies what it receives into the
``allocatedResourcesStatus`` of every container holding a device of the driver
(kubernetes ``pkg/kubelet/cm/dra/manager.go``, ``HandleWatchResourcesStream``). Each
message is the driver's complete device list: pool, device name (as published in the
ResourceSlices), ``HEALTHY`` / ``UNHEALTHY`` / ``UNKNOWN``, a message for humans, the
time of the last change and ``health_check_timeout_seconds``.

What kubelet does with it decides what we send (``pkg/kubelet/cm/dra/healthinfo.go``):

* it stamps each device with the time the message *arrived* and reads a device as
  Unknown once no message has named it for its timeout (``DefaultHealthTimeout``, 30 s,
  when the field is <= 0). So the current list is sent again every
  :data:`RESEND_INTERVAL` seconds even when nothing changed; the bytes are the same;
* it forgets the driver's health when the stream ends, and opens a new stream 5 s later.

The service versions ``v1`` and ``v1alpha1`` have the very same messages, so one
encoded message serves every stream of both: encoded once per change (in a worker
thread when many devices changed), never per stream; each device's part is kept
encoded until that device changes, so one device changing among thousands costs one
device's encoding and a join. A slow reader gets only the newest list: nothing is
queued per stream.

Health of a device, in order: the scanner failed → UNHEALTHY with the failure; the
scanner promised to notify every N s (``check_interval``) and has been silent for
:data:`STALE_FACTOR` times N → UNKNOWN until it notifies again; otherwise the device's own
state and ``DeviceInfo.health_message``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import grpc

from host._api import dra_health_v1_pb2 as health_pb2
from host.deviceplugin._healthlog import HealthLog
from host.deviceplugin._types import HEALTHY, UNHEALTHY, DeviceInfo, cut_health_message

__all__ = [
    "HEALTH_CHECK_TIMEOUT",
    "HEALTH_SERVICES",
    "RESEND_INTERVAL",
    "STALE_FACTOR",
    "UNKNOWN",
    "DeviceHealth",
    "DeviceHealthService",
]

log = logging.getLogger("host.dra.health")

HEALTH_SERVICES = ("v1.DRAResourceHealth", "v1alpha1.DRAResourceHealth")
"""The health services in kubelet's short names, as ``supported_versions`` lists them.

Kubelet 1.37+ takes ``v1`` when listed, else ``v1alpha1``; 1.34-1.36 call ``v1alpha1``.
"""

UNKNOWN = "Unknown"
"""Health of a device whose state nobody vouches for (its scanner went silent)."""

HEALTH_CHECK_TIMEOUT = 30
"""``health_check_timeout_seconds`` sent: kubelet's own default, three resends long."""

RESEND_INTERVAL = 10.0
"""Seconds between two messages of one stream when nothing changed (see the module)."""

STALE_FACTOR = 1.5
"""A scanner silent for this many of its declared intervals makes its devices Unknown
(half an interval of slack for a slow scan or a busy machine)."""

MAX_HEALTH_STREAMS = 8
"""Streams served at once; kubelet keeps one per registered instance."""

_INLINE_ENCODE = 2_000
"""Changed devices encoded on the loop (about 10 us each); more are encoded in a worker
thread."""

_DEVICES_TAG = b"\x0a"
"""``NodeWatchResourcesResponse.devices``: field 1, length-delimited."""

_WIRE = {HEALTHY: health_pb2.HEALTHY, UNHEALTHY: health_pb2.UNHEALTHY, UNKNOWN: health_pb2.UNKNOWN}

DeviceEntries = Mapping[str, tuple[str, str, DeviceInfo]]
"""Published device name -> ``(device type, device id, DeviceInfo)``, as the driver keeps them."""


@dataclass(slots=True)
class _Serving:
    """Whether the server of one set of handlers still serves new streams."""

    open: bool = True


@dataclass(frozen=True, slots=True)
class DeviceHealth:
    """The health of one device as the driver reports it to kubelet."""

    device: str
    """The device's name in the ResourceSlices (and in claims)."""
    dev_type: str
    dev_id: str
    health: str
    """``Healthy``, ``Unhealthy`` or ``Unknown``."""
    message: str
    """Why, in words (the plugin's ``health_message``, or the host's reason); may be empty."""
    since: float
    """Unix time of the last change of ``health`` or ``message``."""


class DeviceHealthService:
    """Serves ``DRAResourceHealth`` (v1 and v1alpha1) for one driver from its device list.

    :meth:`update` takes each new device list on the loop; ``check_interval`` is the
    scanner's promise (see :class:`~host.deviceplugin.PeriodicScanner`), None for none.
    :attr:`health` is the current health of every device, for ``/status``.
    """

    def __init__(
        self,
        driver_name: str,
        pool: str,
        *,
        check_interval: float | None = None,
        timeout_seconds: int = HEALTH_CHECK_TIMEOUT,
        resend_interval: float = RESEND_INTERVAL,
        max_streams: int = MAX_HEALTH_STREAMS,
    ) -> None:
        self.driver_name = driver_name
        self.pool = pool
        self.check_interval = check_interval
        self.timeout_seconds = timeout_seconds
        self.resend_interval = resend_interval
        self.max_streams = max_streams
        self.messages_sent = 0
        """Messages handed to gRPC over every stream (resends included)."""
        self._devices: DeviceEntries = {}
        self._scan_failed = False
        self._scan_error: str | None = None
        self._stale = False
        self._heard = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._health: dict[str, DeviceHealth] = {}
        self._infos: Mapping[str, DeviceInfo] = {}
        self._mode = (False, False)
        self._log = HealthLog(f"DRA driver {driver_name}", log)
        self._encoded = b""
        self._parts: Mapping[str, tuple[DeviceHealth, bytes]] = {}
        self._ready = False
        self._version = 0
        self._generation = 0
        self._encoder: asyncio.Task[None] | None = None
        self._streams: dict[asyncio.Event, int] = {}
        self._epoch = 0
        self._servings: list[_Serving] = []
        """One per handler set that :meth:`close` has not closed yet."""

    def __repr__(self) -> str:
        return f"DeviceHealthService({self.driver_name!r}, devices={len(self._health)})"

    # -- state -----------------------------------------------------------------------

    @property
    def health(self) -> Mapping[str, DeviceHealth]:
        """Every device's health by published name (a read-only view)."""
        return MappingProxyType(self._health)

    @property
    def stale(self) -> bool:
        """Whether the scanner has broken its ``check_interval`` promise (devices Unknown)."""
        return self._stale

    @property
    def stream_count(self) -> int:
        """How many NodeWatchResources streams are open."""
        return len(self._streams)

    @property
    def encoded(self) -> bytes:
        """The message every stream sends next (a ``NodeWatchResourcesResponse``)."""
        return self._encoded

    def update(
        self, devices: DeviceEntries, scan_failed: bool = False, scan_error: str | None = None
    ) -> None:
        """Take the driver's devices; ``scan_failed`` false means the scanner just notified."""
        self._devices = devices
        self._scan_failed = scan_failed
        self._scan_error = scan_error if scan_failed else None
        if not scan_failed:
            self._heard_from_scanner()
        self._judge_all()

    def stop(self) -> None:
        """End every stream and the silence timer; the server goes on.

        The next :meth:`update` arms the timer again; new streams are served as before.
        """
        self._epoch += 1
        for wake in self._streams:
            wake.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # An encoding under way goes on: the service may serve again (a restarted socket).

    def close(self) -> None:
        """:meth:`stop`, for servers that are stopping: their handlers serve no more streams.

        A stream kubelet opened just before the server stopped may reach its handler
        only after this call: it ends at once instead of holding the server's stop for
        its whole grace period. Handlers made after this call (a restarted socket's)
        serve as before.
        """
        for serving in self._servings:
            serving.open = False
        self._servings.clear()
        self.stop()

    # -- health ----------------------------------------------------------------------

    def _heard_from_scanner(self) -> None:
        if self._stale:
            log.info(
                "DRA driver %s: the scanner notified again after %.3g s; device health is "
                "its own again",
                self.driver_name,
                _now_loop() - self._heard,
            )
        self._stale = False
        self._heard = _now_loop()
        if self.check_interval is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: no timer (a plain call in a test)
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(self.check_interval * STALE_FACTOR, self._went_silent)

    @property
    def _silence(self) -> str:
        interval = self.check_interval or 0.0
        return (
            f"no news from the plugin's scanner for over {interval * STALE_FACTOR:g} s "
            f"(it promises to notify every {interval:g} s)"
        )

    def _went_silent(self) -> None:
        self._timer = None
        self._stale = True
        log.warning(
            "DRA driver %s: the scanner has not notified for %.3g s although it promises to "
            "every %g s (check_interval): its devices are Unknown to kubelet until it does",
            self.driver_name,
            _now_loop() - self._heard,
            self.check_interval,
        )
        self._judge_all()

    def _judge(self, info: DeviceInfo) -> tuple[str, str]:
        if self._scan_failed:
            reason = self._scan_error or "the plugin's scanner failed"
            return UNHEALTHY, cut_health_message(f"{reason}; restarting it")
        if self._stale:
            return UNKNOWN, self._silence
        return info.state, info.health_message

    def _judge_all(self) -> None:
        now = time.time()
        old, old_infos = self._health, self._infos
        # The same DeviceInfo object in the same mode is the same verdict: no judging.
        mode = (self._scan_failed, self._stale)
        same_mode = mode == self._mode
        new: dict[str, DeviceHealth] = {}
        infos: dict[str, DeviceInfo] = {}
        changed: list[tuple[DeviceHealth | None, DeviceHealth]] = []
        for name, (dev_type, dev_id, info) in self._devices.items():
            infos[name] = info
            before = old.get(name)
            if before is not None and before.dev_id == dev_id and before.dev_type == dev_type:
                if same_mode and old_infos.get(name) is info:
                    new[name] = before
                    continue
                health, message = self._judge(info)
                if before.health == health and before.message == message:
                    new[name] = before
                    continue
            else:
                health, message = self._judge(info)
            entry = DeviceHealth(name, dev_type, dev_id, health, message, now)
            new[name] = entry
            changed.append((before, entry))
        self._infos, self._mode = infos, mode
        self._health = new
        self._log.changes(changed)
        # Without changes every device was there before: fewer means some went away.
        if changed or len(new) != len(old) or not self._ready:
            self._encode_soon(len(changed))

    # -- encoding --------------------------------------------------------------------

    def _encode_soon(self, changed: int) -> None:
        self._generation += 1
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or changed <= _INLINE_ENCODE:
            self._install(*self._encode())
        elif self._encoder is None or self._encoder.done():
            self._encoder = loop.create_task(
                self._encode_off_loop(), name=f"encode health {self.driver_name}"
            )

    def _encode(self) -> tuple[bytes, Mapping[str, tuple[DeviceHealth, bytes]]]:
        return encode_health(self._health.values(), self.pool, self.timeout_seconds, self._parts)

    async def _encode_off_loop(self) -> None:
        while True:
            generation, entries = self._generation, tuple(self._health.values())
            encoded = await asyncio.to_thread(
                encode_health, entries, self.pool, self.timeout_seconds, self._parts
            )
            if generation == self._generation:
                self._install(*encoded)
                return

    def _install(self, data: bytes, parts: Mapping[str, tuple[DeviceHealth, bytes]]) -> None:
        self._encoded = data
        self._parts = parts
        self._ready = True
        self._version += 1
        for wake in self._streams:
            wake.set()

    # -- the RPC ---------------------------------------------------------------------

    def rpc_handlers(self) -> tuple[grpc.GenericRpcHandler, ...]:
        """``v1.DRAResourceHealth`` and ``v1alpha1.DRAResourceHealth`` for a gRPC server.

        One set per server: :meth:`close` ends the streams of the sets made before it.
        """
        serving = _Serving()
        self._servings.append(serving)
        method = grpc.unary_stream_rpc_method_handler(
            # A partial of an async generator function is still one to grpc (inspect
            # unwraps partials), so it is served as a stream of yielded messages.
            functools.partial(self._watch, serving=serving),
            request_deserializer=_ignore,
            response_serializer=_pass_bytes,
        )
        return tuple(
            # The short names are the gRPC service names (proto packages v1, v1alpha1).
            grpc.method_handlers_generic_handler(service, {"NodeWatchResources": method})
            for service in HEALTH_SERVICES
        )

    async def _watch(
        self,
        request: bytes,
        context: grpc.aio.ServicerContext[Any, Any],
        *,
        serving: _Serving,
    ) -> AsyncIterator[bytes]:
        if not serving.open:
            return  # its server is stopping (see close)
        if len(self._streams) >= self.max_streams:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"DRA driver {self.driver_name}: {len(self._streams)} NodeWatchResources "
                "streams are open already, the most served at once (kubelet keeps one)",
            )
        wake = asyncio.Event()
        epoch = self._epoch
        self._streams[wake] = epoch
        try:
            sent = -1
            while epoch == self._epoch:
                if self._ready and sent != self._version:
                    # Only the newest list is sent: a reader that falls behind skips the
                    # lists superseded meanwhile.
                    sent = self._version
                    self.messages_sent += 1
                    yield self._encoded
                    continue
                try:
                    async with asyncio.timeout(self.resend_interval):
                        await wake.wait()
                except TimeoutError:
                    sent = -1  # kubelet forgets a device not re-reported within its timeout
                wake.clear()
        finally:
            del self._streams[wake]


def encode_health(
    entries: Iterable[DeviceHealth],
    pool: str,
    timeout_seconds: int,
    parts: Mapping[str, tuple[DeviceHealth, bytes]] | None = None,
) -> tuple[bytes, dict[str, tuple[DeviceHealth, bytes]]]:
    """Encode a ``NodeWatchResourcesResponse`` (the same bytes in v1 and v1alpha1).

    ``parts`` holds each device's encoded entry from the previous call: an entry that
    is still the same object is reused, not encoded again. Returns the message and the
    parts for the next call. The message is the concatenation of its ``devices``
    fields, as protobuf itself would encode it.
    """
    known = parts or {}
    fresh: dict[str, tuple[DeviceHealth, bytes]] = {}
    for entry in entries:
        part = known.get(entry.device)
        if part is None or part[0] is not entry:
            body = health_pb2.DeviceHealth(
                device=health_pb2.DeviceIdentifier(pool_name=pool, device_name=entry.device),
                health=_WIRE[entry.health],
                last_updated_time=int(entry.since),
                health_check_timeout_seconds=timeout_seconds,
                message=entry.message,
            ).SerializeToString()
            part = (entry, _DEVICES_TAG + _varint(len(body)) + body)
        fresh[entry.device] = part
    return b"".join(part for _, part in fresh.values()), fresh


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _now_loop() -> float:
    return time.monotonic()


def _ignore(data: bytes) -> bytes:
    return data  # NodeWatchResourcesRequest is empty: nothing to decode


def _pass_bytes(data: bytes) -> bytes:
    return data
