"""The device list of one resource: encoded once per change, sent on every ListAndWatch.

A :class:`DeviceListServer` holds the newest devices, encodes their
``ListAndWatchResponse`` (inline for small lists, in a worker thread for large ones,
never more than a share of any second for one resource) and serves it to every open
stream; a stream that is behind sends only the newest list.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc

from host._api import api_pb2 as pluginapi
from host.deviceplugin._limits import KUBELET_MAX_MESSAGE, MAX_STREAMS
from host.deviceplugin._observer import NULL_OBSERVER, Observer, observed_stream
from host.deviceplugin._types import HEALTHY, UNHEALTHY, DeviceInfo
from host.deviceplugin._wire import HEALTH_FIELDS, varint

__all__ = ["ENCODE_SHARE", "DeviceListServer", "encode_device_list"]

log = logging.getLogger("host.deviceplugin.server")

_INLINE_DEVICES = 10_000
"""Device lists larger than this are encoded in a worker thread, off the loop (10,000
devices encode in about 5 ms: less than a thread hop costs in latency under the GIL)."""

_THROTTLED_BYTES = 1024 * 1024
"""Lists up to this size are encoded at every change (a few ms at most)."""

ENCODE_SHARE = 0.2
"""Seconds of any second that encoding one resource's (large) list may take, however
often it changes; a change now and then is encoded at once."""

_VARINTS = tuple(varint(n) for n in range(1 << 14))
"""Every varint of up to two bytes: an ID and its device entry are nearly always shorter."""

_HEALTHY = HEALTH_FIELDS[HEALTHY]
_UNHEALTHY = HEALTH_FIELDS[UNHEALTHY]


def encode_device_list(devices: Mapping[str, DeviceInfo], forced: bool) -> bytes:
    """Return the encoded ``ListAndWatchResponse`` of ``devices`` (all Unhealthy if ``forced``).

    Byte for byte what protobuf encodes (``devices`` = field 1 of the response, each a
    ``Device`` of ID = 1, health = 2, topology = 3, in field order), written here
    directly: building the message device by device costs about three times as much,
    and this runs on the shared loop for lists up to 10,000 devices. Each device's
    fields after its ID are encoded once, when its DeviceInfo is built.
    """
    parts: list[bytes] = []
    extend = parts.extend
    short = _VARINTS
    limit = len(short)
    for dev_id, info in devices.items():
        id_bytes = dev_id.encode()
        n = len(id_bytes)
        tail: bytes = info._wire_tail  # type: ignore[attr-defined]
        if forced and info.state == HEALTHY:
            tail = _UNHEALTHY + tail[len(_HEALTHY) :]
        if n < 128:
            size = 2 + n + len(tail)
            entry_len = short[size] if size < limit else varint(size)
            extend((b"\n", entry_len, b"\n", short[n], id_bytes, tail))
        else:
            id_len = varint(n)
            entry_len = varint(1 + len(id_len) + n + len(tail))
            extend((b"\n", entry_len, b"\n", id_len, id_bytes, tail))
    return b"".join(parts)


class DeviceListServer:
    """The ListAndWatch side of one resource: its devices, their encoded list, the streams.

    ``update`` replaces the devices and wakes every open ListAndWatch stream; a stream
    that is behind sends only the newest list (superseded ones are coalesced).
    """

    def __init__(
        self,
        resource_name: str,
        *,
        on_stream_closed: Callable[[int], None] | None = None,
        max_streams: int = MAX_STREAMS,
        observer: Observer | None = None,
    ) -> None:
        self.resource_name = resource_name
        self.observer = observer or NULL_OBSERVER
        self._max_streams = max_streams
        self.on_stream_closed = on_stream_closed
        self.oversize: int | None = None
        """Bytes of the newest device list when it is over :data:`KUBELET_MAX_MESSAGE`."""
        self.on_size_change: Callable[[], None] | None = None
        """Called when the first list is ready, and when the newest starts or stops fitting."""
        self.list_ready = False
        """Whether a device list has been encoded (streams never send an empty placeholder)."""
        self._devices: Mapping[str, DeviceInfo] = {}
        self._all_unhealthy = False
        self._snapshot: pluginapi.ListAndWatchResponse | None = None
        self._snapshot_bytes = b""
        self._version = 0
        self._generation = 0
        self._encoder: asyncio.Task[None] | None = None
        self._encode_spent: collections.deque[tuple[float, float]] = collections.deque()
        self._streams: dict[asyncio.Event, int] = {}
        self._no_streams = asyncio.Event()
        self._no_streams.set()
        self._stream_seq = 0
        self._closed = False

    # -- state ----------------------------------------------------------------------

    @property
    def devices(self) -> Mapping[str, DeviceInfo]:
        """The devices currently advertised."""
        return self._devices

    @property
    def stream_count(self) -> int:
        """How many ListAndWatch streams are open (kubelet keeps exactly one)."""
        return len(self._streams)

    @property
    def next_stream_seq(self) -> int:
        """The sequence number the next ListAndWatch stream will get."""
        return self._stream_seq

    def oldest_stream_seq(self) -> int:
        """Return the sequence number of the oldest open stream (the next one's if none)."""
        return min(self._streams.values(), default=self._stream_seq)

    async def streams_ended(self) -> None:
        """Return once no ListAndWatch stream is open (at once when none is)."""
        await self._no_streams.wait()

    def has_stream_since(self, seq: int) -> bool:
        """Whether a stream opened at or after sequence number ``seq`` is still open."""
        return any(opened >= seq for opened in self._streams.values())

    @property
    def snapshot(self) -> pluginapi.ListAndWatchResponse:
        """The ListAndWatch message every stream sends next (decoded when asked for)."""
        if self._snapshot is None:
            self._snapshot = pluginapi.ListAndWatchResponse.FromString(self._snapshot_bytes)
        return self._snapshot

    def update(
        self, devices: Mapping[str, DeviceInfo] | None = None, *, all_unhealthy: bool | None = None
    ) -> None:
        """Replace the devices (and/or force them all Unhealthy) and wake every stream.

        Allocate sees the new devices at once. The device list streams send is encoded
        here for small lists, and in a worker thread for large ones (the loop is shared
        by every resource); a list superseded while being encoded is never sent.
        """
        if devices is not None:
            self._devices = devices
        if all_unhealthy is not None:
            self._all_unhealthy = all_unhealthy
        self._generation += 1
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            inline = True  # no loop (a plain call): nothing to keep free
        else:
            inline = len(self._devices) <= _INLINE_DEVICES
        if inline:
            self._install(self._encode(self._devices, self._all_unhealthy))
        elif self._encoder is None or self._encoder.done():
            self._encoder = asyncio.get_running_loop().create_task(
                self._encode_off_loop(), name=f"encode {self.resource_name}"
            )

    async def _encode_off_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # A large list changing faster than it encodes would keep a core busy and
            # hold the GIL from the loop (every resource's Allocate waits): encoding
            # one resource's list takes at most ENCODE_SHARE of any second. Lists that
            # change meanwhile are coalesced; the newest is what gets sent.
            spent = self._encode_spent
            while spent and spent[0][0] < loop.time() - 1.0:
                spent.popleft()
            if len(self._snapshot_bytes) > _THROTTLED_BYTES and (
                sum(took for _, took in spent) > ENCODE_SHARE
            ):
                await asyncio.sleep(spent[0][0] + 1.0 - loop.time())
                continue
            generation, devices, forced = self._generation, self._devices, self._all_unhealthy
            started = loop.time()
            encoded = await asyncio.to_thread(self._encode, devices, forced)
            spent.append((loop.time(), loop.time() - started))
            if generation == self._generation and not self._closed:
                self._install(encoded)
                return
            if self._closed:
                return

    def _install(self, data: bytes) -> None:
        if self.list_ready and data == self._snapshot_bytes:
            # Nothing kubelet sees changed (say, only a device's health message did):
            # no stream sends the same list again.
            return
        self._snapshot = None
        self._snapshot_bytes = data
        self._version += 1
        oversize = len(data) if len(data) > KUBELET_MAX_MESSAGE else None
        was_over, first = self.oversize is not None, not self.list_ready
        self.list_ready = True
        self.oversize = oversize
        # Once per change, never per update: a list that stays too big is one line.
        if oversize is not None and not was_over:
            log.error(
                "resource %s: the device list is %d bytes (%d devices), over kubelet's "
                "%d-byte receive limit: kubelet would drop the stream. Not registering "
                "until it fits; split the devices over several device types",
                self.resource_name,
                oversize,
                len(self._devices),
                KUBELET_MAX_MESSAGE,
            )
        elif oversize is None and was_over:
            log.info(
                "resource %s: the device list fits kubelet's limit again (%d bytes)",
                self.resource_name,
                len(data),
            )
        for wake in self._streams:
            wake.set()
        if (first or was_over != (oversize is not None)) and self.on_size_change is not None:
            self.on_size_change()

    def close(self) -> None:
        """End every ListAndWatch stream (the server is going away)."""
        self._closed = True
        if self._encoder is not None:
            self._encoder.cancel()
        for wake in self._streams:
            wake.set()

    def _encode(self, devices: Mapping[str, DeviceInfo], forced: bool) -> bytes:
        """Encode the ListAndWatchResponse of ``devices``, once per change for every stream."""
        return encode_device_list(devices, forced)

    async def ListAndWatch(
        self, request: pluginapi.Empty, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pluginapi.ListAndWatchResponse]:
        """Send the full device list now and after every change, until the server stops."""
        async for data in self._list_and_watch_encoded(request, context):
            yield pluginapi.ListAndWatchResponse.FromString(data)

    @observed_stream
    async def _list_and_watch_encoded(
        self, request: pluginapi.Empty, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        if len(self._streams) >= self._max_streams:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"resource {self.resource_name}: {len(self._streams)} ListAndWatch streams "
                f"are open already, the most one resource serves (kubelet keeps one)",
            )
        wake = asyncio.Event()
        seq = self._stream_seq
        self._stream_seq += 1
        self._streams[wake] = seq
        self._no_streams.clear()
        try:
            sent = -1
            while not self._closed:
                if sent != self._version:
                    if self.oversize is not None:
                        # Kubelet would fail the stream on receipt and keep a stale list
                        # meanwhile; ending it makes kubelet mark the devices unhealthy
                        # at once. The endpoint registers again once the list fits.
                        return
                    # Only the newest list is ever sent: a slow reader that falls
                    # behind skips the lists superseded while it was not reading.
                    sent = self._version
                    yield self._snapshot_bytes
                else:
                    await wake.wait()
                    wake.clear()
        finally:
            del self._streams[wake]
            if not self._streams:
                self._no_streams.set()
            if self.on_stream_closed is not None and not self._closed:
                self.on_stream_closed(seq)
