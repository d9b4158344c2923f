"""What one request or stream may cost the host, and the error statuses it answers with.

Kubelet sends small requests and keeps one ListAndWatch stream per resource; anything
far beyond that is refused early (before it is decoded, where possible), so no client
can make the host do unbounded work or hold unbounded memory.
"""

from __future__ import annotations

import grpc

__all__ = [
    "INLINE_DECODE",
    "KUBELET_MAX_MESSAGE",
    "MAX_STATUS_MESSAGE",
    "MAX_STREAMS",
    "MIN_ID_CAP",
    "RpcError",
    "id_cap",
    "request_byte_cap",
]

KUBELET_MAX_MESSAGE = 4 * 1024 * 1024
"""Kubelet's gRPC receive limit: a larger ListAndWatch message fails its stream."""

MAX_STREAMS = 8
"""ListAndWatch streams one resource serves at once; more are refused (RESOURCE_EXHAUSTED).

Kubelet keeps exactly one (two for a moment around a re-registration). Each stream
can hold a full device list in gRPC's send buffers while its reader is slow, so the
cap bounds memory: 8 streams of a 4 MiB list stay far below the DaemonSet's limit.
"""

MIN_ID_CAP = 128
"""Device IDs a request may name however few devices the resource has."""

INLINE_DECODE = 64 * 1024
"""Request bytes decoded on the loop; larger requests are decoded in a worker thread."""


def request_byte_cap(list_bytes: int) -> int:
    """Return the largest request worth decoding: 20x the encoded device list, 64 KiB at least.

    A request names each device at most 10 times (:func:`id_cap`), in at most two lists
    (GetPreferredAllocation's available and must-include IDs), and the device list holds
    every ID once: a larger request cannot be valid, so it is refused before it is
    decoded (decoding a few hundred thousand IDs costs tens of MiB).
    """
    return max(INLINE_DECODE, 20 * list_bytes)


def id_cap(device_count: int) -> int:
    """Return the most device IDs one request may name: 10x the devices, 128 at least.

    Far above anything kubelet sends (it names each device once, and only devices it
    was told about), and low enough that no request can make the host do unbounded
    work or hold unbounded memory.
    """
    return max(MIN_ID_CAP, 10 * device_count)


MAX_STATUS_MESSAGE = 2048
"""UTF-8 bytes of a status message sent; the rest is cut.

The message travels percent-encoded (up to 3 bytes per byte) in the grpc-message
trailer, and gRPC C-core clients refuse trailers over 8 KiB (randomly) or 16 KiB
(always), turning the status into RESOURCE_EXHAUSTED. Messages echo request IDs and
plugin exceptions, neither of which is bounded.
"""


def _bounded(message: str) -> str:
    encoded = message.encode("utf-8", "backslashreplace")
    if len(encoded) <= MAX_STATUS_MESSAGE:
        return message
    kept = encoded[:MAX_STATUS_MESSAGE].decode("utf-8", "ignore")
    return f"{kept}... ({len(encoded) - len(kept.encode())} more bytes)"


class RpcError(Exception):
    """A request the service answers with a gRPC error status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        message = _bounded(message)
        super().__init__(message)
        self.code = code
        self.message = message
