"""Protobuf wire format, the little of it the host writes by hand (device lists)."""

from __future__ import annotations

from typing import Any

__all__ = ["HEALTH_FIELDS", "device_tail", "length_delimited", "varint"]


def varint(value: int) -> bytes:
    """Encode a non-negative int as a protobuf base-128 varint."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """Encode one length-delimited field (a string, bytes or message field)."""
    return varint(field_number << 3 | 2) + varint(len(payload)) + payload


HEALTH_FIELDS = {
    health: length_delimited(2, health.encode()) for health in ("Healthy", "Unhealthy")
}
"""``Device.health`` (field 2) encoded, by value."""


def device_tail(health: str, topology: Any | None) -> bytes:
    """Encode a ``Device``'s fields after its ID: health (2), then topology (3) if any.

    ``topology`` is a ``TopologyInfo`` message. Devices without one share the same two
    byte strings, so keeping this per device costs nothing for them.
    """
    if topology is None:
        return HEALTH_FIELDS[health]
    return HEALTH_FIELDS[health] + length_delimited(3, topology.SerializeToString())
