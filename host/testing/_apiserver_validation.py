"""Server-side validation of ResourceSlices as the API server does it (``resource.k8s.io/v1``).

Rules from ``k8s.io/kubernetes/pkg/apis/resource/validation`` (1.36): names, exactly one
node selection field, device count limits (64 with taints), attribute and capacity
rules, taint effects, immutable fields. Each problem becomes a ``StatusCause`` the way
``field.ErrorList`` renders it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from host._apinames import (
    DRIVER_NAME_MAX,
    dns_label_error,
    dns_subdomain_error,
    label_name_error,
    label_value_error,
    qualified_name_error,
    quantity_error,
    semver_error,
)

__all__ = ["Cause", "validate_resource_slice"]

MAX_DEVICES = 128
MAX_DEVICES_WITH_TAINTS = 64
MAX_ATTRIBUTES_AND_CAPACITIES = 32
MAX_TAINTS = 16
MAX_VALUE_LENGTH = 64
TAINT_EFFECTS = ("NoExecute", "NoSchedule", "None")
_ATTRIBUTE_KEYS = ("bool", "int", "string", "version")
_SELECTION = ("nodeName", "nodeSelector", "allNodes", "perDeviceNodeSelection")


@dataclass(frozen=True)
class Cause:
    """One field error: ``reason`` (``FieldValueInvalid``, ...), ``field`` path, ``message``."""

    reason: str
    field: str
    message: str

    def to_json(self) -> dict[str, str]:
        """Return the ``StatusCause`` JSON object."""
        return {"reason": self.reason, "message": self.message, "field": self.field}

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def _quote(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value)


class _Errors(list[Cause]):
    def invalid(self, field: str, value: Any, detail: str) -> None:
        self.append(Cause("FieldValueInvalid", field, f"Invalid value: {_quote(value)}: {detail}"))

    def required(self, field: str, detail: str = "") -> None:
        message = "Required value" + (f": {detail}" if detail else "")
        self.append(Cause("FieldValueRequired", field, message))

    def too_many(self, field: str, count: int, limit: int, what: str = "items") -> None:
        message = f"Too many: {count}: must have at most {limit} {what}"
        self.append(Cause("FieldValueTooMany", field, message))

    def duplicate(self, field: str, value: Any) -> None:
        self.append(Cause("FieldValueDuplicate", field, f"Duplicate value: {_quote(value)}"))

    def not_supported(self, field: str, value: Any, supported: tuple[str, ...]) -> None:
        options = ", ".join(json.dumps(s) for s in supported)
        message = f"Unsupported value: {_quote(value)}: supported values: {options}"
        self.append(Cause("FieldValueNotSupported", field, message))

    def forbidden(self, field: str, detail: str) -> None:
        self.append(Cause("FieldValueForbidden", field, f"Forbidden: {detail}"))

    def check(self, field: str, value: Any, error: str | None) -> None:
        if error is not None:
            self.invalid(field, value, error)


def validate_resource_slice(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[Cause]:
    """Return every reason the API server would refuse ``obj`` (an update of ``old`` if given)."""
    errors = _Errors()
    metadata = obj.get("metadata") or {}
    name = metadata.get("name")
    if name:
        errors.check("metadata.name", name, dns_subdomain_error(name))
    _owner_references(errors, metadata.get("ownerReferences") or [])
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        errors.required("spec")
        return errors
    driver = spec.get("driver")
    if not driver:
        errors.required("spec.driver")
    else:
        errors.check("spec.driver", driver, dns_subdomain_error(driver, DRIVER_NAME_MAX))
    _pool(errors, spec.get("pool"))
    _node_selection(errors, spec)
    devices = spec.get("devices") or []
    if devices and spec.get("sharedCounters"):
        errors.invalid("spec", "{devices, sharedCounters}", "only one may be set")
    tainted = any(device.get("taints") for device in devices if isinstance(device, dict))
    limit = MAX_DEVICES_WITH_TAINTS if tainted else MAX_DEVICES
    if len(devices) > limit:
        errors.too_many("spec.devices", len(devices), limit)
    seen: set[str] = set()
    for index, device in enumerate(devices):
        _device(errors, f"spec.devices[{index}]", device, seen)
    if old is not None:
        _immutable(errors, spec, old.get("spec") or {})
    return errors


def _owner_references(errors: _Errors, refs: list[Any]) -> None:
    controllers = 0
    for ref in refs:
        for key in ("apiVersion", "kind", "name", "uid"):
            if not ref.get(key):
                errors.invalid(
                    f"metadata.ownerReferences.{key}", ref.get(key, ""), f"{key} must not be empty"
                )
        controllers += bool(ref.get("controller"))
    if controllers > 1:
        errors.invalid(
            "metadata.ownerReferences", refs, "Only one reference can have Controller set to true"
        )


def _pool(errors: _Errors, pool: Any) -> None:
    if not isinstance(pool, dict):
        errors.required("spec.pool")
        return
    name = pool.get("name")
    if not name:
        errors.required("spec.pool.name")
    elif len(name) > 253:
        errors.append(
            Cause("FieldValueTooLong", "spec.pool.name", "Too long: may not be more than 253 bytes")
        )
    else:
        for segment in name.split("/"):
            error = dns_subdomain_error(segment) if segment else "must not be empty"
            errors.check("spec.pool.name", name, error)
    generation = pool.get("generation", 0)
    if not isinstance(generation, int) or generation < 0:
        errors.invalid("spec.pool.generation", generation, "must be greater than or equal to 0")
    count = pool.get("resourceSliceCount", 0)
    if not isinstance(count, int) or count <= 0:
        errors.invalid("spec.pool.resourceSliceCount", count, "must be greater than zero")


def _node_selection(errors: _Errors, spec: dict[str, Any]) -> None:
    chosen = [
        key
        for key in _SELECTION
        if (
            spec.get(key) is True
            if key in ("allNodes", "perDeviceNodeSelection")
            else spec.get(key)
        )
    ]
    expected = "exactly one of `nodeName`, `nodeSelector`, `allNodes`, `perDeviceNodeSelection`"
    if not chosen:
        errors.required("spec", f"{expected} is required")
    elif len(chosen) > 1:
        errors.invalid(
            "spec",
            "{" + ", ".join(chosen) + "}",
            f"{expected} is required, but multiple fields are set",
        )
    node_name = spec.get("nodeName")
    if node_name:
        errors.check("spec.nodeName", node_name, dns_subdomain_error(node_name))


def _device(errors: _Errors, path: str, device: Any, seen: set[str]) -> None:
    if not isinstance(device, dict):
        errors.invalid(path, device, "must be an object")
        return
    name = device.get("name")
    if not name:
        errors.required(f"{path}.name")
    else:
        errors.check(f"{path}.name", name, dns_label_error(name))
        if name in seen:
            errors.duplicate(f"{path}.name", name)
        seen.add(name)
    attributes = device.get("attributes") or {}
    capacity = device.get("capacity") or {}
    for key, value in attributes.items():
        _attribute(errors, f"{path}.attributes[{key}]", key, value)
    for key, value in capacity.items():
        field = f"{path}.capacity[{key}]"
        errors.check(field, key, qualified_name_error(key))
        quantity = value.get("value") if isinstance(value, dict) else None
        if not isinstance(quantity, str):
            errors.required(f"{field}.value")
        else:
            errors.check(f"{field}.value", quantity, quantity_error(quantity))
    total = len(attributes) + len(capacity)
    if total > MAX_ATTRIBUTES_AND_CAPACITIES:
        errors.too_many(path, total, MAX_ATTRIBUTES_AND_CAPACITIES, "attributes and capacities")
    taints = device.get("taints") or []
    if len(taints) > MAX_TAINTS:
        errors.too_many(f"{path}.taints", len(taints), MAX_TAINTS)
    for index, taint in enumerate(taints):
        _taint(errors, f"{path}.taints[{index}]", taint)


def _attribute(errors: _Errors, field: str, key: str, value: Any) -> None:
    errors.check(field, key, qualified_name_error(key))
    if not isinstance(value, dict):
        errors.invalid(field, value, "must be an object")
        return
    set_keys = [k for k in value if value[k] is not None]
    if len(set_keys) != 1:
        errors.invalid(field, value, "exactly one value must be specified")
        return
    (kind,) = set_keys
    item = value[kind]
    if kind not in _ATTRIBUTE_KEYS:
        errors.not_supported(field, kind, _ATTRIBUTE_KEYS)
    elif kind == "bool" and not isinstance(item, bool):
        errors.invalid(f"{field}.bool", item, "must be a boolean")
    elif kind == "int" and (isinstance(item, bool) or not isinstance(item, int)):
        errors.invalid(f"{field}.int", item, "must be an integer")
    elif kind in ("string", "version"):
        if not isinstance(item, str):
            errors.invalid(f"{field}.{kind}", item, "must be a string")
        elif len(item) > MAX_VALUE_LENGTH:
            errors.append(
                Cause(
                    "FieldValueTooLong",
                    f"{field}.{kind}",
                    f"Too long: may not be more than {MAX_VALUE_LENGTH} bytes",
                )
            )
        elif kind == "version":
            errors.check(f"{field}.version", item, semver_error(item))


def _taint(errors: _Errors, path: str, taint: Any) -> None:
    if not isinstance(taint, dict):
        errors.invalid(path, taint, "must be an object")
        return
    key = taint.get("key")
    if not key:
        errors.required(f"{path}.key")
    else:
        errors.check(f"{path}.key", key, label_name_error(key))
    value = taint.get("value")
    if value:
        errors.check(f"{path}.value", value, label_value_error(value))
    effect = taint.get("effect")
    if not effect:
        errors.required(f"{path}.effect")
    elif effect not in TAINT_EFFECTS:
        errors.not_supported(f"{path}.effect", effect, TAINT_EFFECTS)


def _immutable(errors: _Errors, spec: dict[str, Any], old: dict[str, Any]) -> None:
    for field, new_value, old_value in (
        ("spec.driver", spec.get("driver"), old.get("driver")),
        (
            "spec.pool.name",
            (spec.get("pool") or {}).get("name"),
            (old.get("pool") or {}).get("name"),
        ),
        ("spec.nodeName", spec.get("nodeName"), old.get("nodeName")),
    ):
        if new_value != old_value:
            errors.invalid(field, new_value, "field is immutable")
