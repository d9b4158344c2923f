"""DeviceInfo's optional DRA extras: typed attributes and capacities, checked and frozen.

The device-plugin path ignores both; a DRA driver publishes them in ResourceSlices
(``resource.k8s.io/v1`` ``Device.attributes`` and ``Device.capacity``).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TypeAlias

from host._apinames import qualified_name_error, quantity_error, semver_error

__all__ = [
    "ATTRIBUTE_STRING_MAX",
    "AttributeValue",
    "SemVer",
    "frozen_attributes",
    "frozen_capacity",
]

ATTRIBUTE_STRING_MAX = 64
"""``DeviceAttributeMaxValueLength``: longest string or version attribute value."""
_INT64 = range(-(2**63), 2**63)


class SemVer(str):
    """A version attribute value: a semantic version 2.0.0 string, e.g. ``SemVer("1.2.3")``.

    A plain ``str`` attribute is published as a string; a ``SemVer`` as a version, which
    CEL compares as a version (``isGreaterThan``) rather than as text.
    """

    __slots__ = ()

    def __new__(cls, value: str) -> SemVer:
        error = semver_error(value) if isinstance(value, str) else "must be a str"
        if error is not None:
            raise ValueError(f"version {value!r} {error}")
        if len(value) > ATTRIBUTE_STRING_MAX:
            raise ValueError(f"version {value!r} is longer than {ATTRIBUTE_STRING_MAX} characters")
        return super().__new__(cls, value)

    def __repr__(self) -> str:
        return f"SemVer({str(self)!r})"


AttributeValue: TypeAlias = str | int | bool | SemVer
"""What an attribute holds: str, int (int64), bool or :class:`SemVer`."""

_EMPTY: Mapping[str, object] = MappingProxyType({})


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{what} names must be str, got {name!r}")
    error = qualified_name_error(name)
    if error is not None:
        raise ValueError(f"{what} name {name!r}: {error}")
    return name


def frozen_attributes(values: Mapping[str, AttributeValue] | None) -> Mapping[str, AttributeValue]:
    """Check ``values`` (QualifiedName -> str/int/bool/SemVer) and return a read-only copy."""
    if not values:
        return _EMPTY  # type: ignore[return-value]
    result: dict[str, AttributeValue] = {}
    for name, value in dict(values).items():
        _check_name(name, "attribute")
        if isinstance(value, bool):
            pass
        elif isinstance(value, int):
            if value not in _INT64:
                raise ValueError(f"attribute {name!r}: {value} does not fit in int64")
        elif isinstance(value, str):
            if len(value) > ATTRIBUTE_STRING_MAX:
                raise ValueError(
                    f"attribute {name!r}: value is {len(value)} characters long, "
                    f"at most {ATTRIBUTE_STRING_MAX} are allowed"
                )
        else:
            raise TypeError(
                f"attribute {name!r} must be str, int, bool or SemVer, got {type(value).__name__}"
            )
        result[name] = value
    return MappingProxyType(result)


def frozen_capacity(values: Mapping[str, str] | None) -> Mapping[str, str]:
    """Check ``values`` (QualifiedName -> quantity string like ``16Gi``) and freeze them."""
    if not values:
        return _EMPTY  # type: ignore[return-value]
    result: dict[str, str] = {}
    for name, value in dict(values).items():
        _check_name(name, "capacity")
        if not isinstance(value, str):
            raise TypeError(f"capacity {name!r} must be a quantity string, got {value!r}")
        error = quantity_error(value)
        if error is None and value.startswith("-"):
            error = "must not be negative"
        if error is not None:
            raise ValueError(f"capacity {name!r}: {value!r}: {error}")
        result[name] = value
    return MappingProxyType(result)
