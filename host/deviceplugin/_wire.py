"""Protobuf wire format, the little of it the host writes by hand (device lists)."""

from __future__ import annotations

__all__ = ["length_delimited", "varint"]


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
