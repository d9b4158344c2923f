"""DeviceClasses that let pods ask for a DRA driver's devices as extended resources.

KEP-5004 ("DRA extended resource", ``DRAExtendedResource``: alpha in Kubernetes 1.34,
beta in 1.36) adds ``spec.extendedResourceName`` to a ``resource.k8s.io/v1``
DeviceClass: a pod whose container asks for ``resources.limits: {gpu.intel.com/i915: 1}``
is then served from the ResourceSlices on a node where no device plugin advertises
``gpu.intel.com/i915``, and from the device plugin where one does. So a workload
written for the device plugin moves to DRA unchanged, one node at a time.

One class per resource ``<driver>/<type>`` the host can serve: its selector picks the
driver's devices whose ``type`` attribute (every published device carries it, see
:func:`host.dra.build_slices`) is that type, and its extended resource name is the
device plugin's resource name. Pure functions; the objects pass the API server's
validation (``pkg/apis/resource/validation``: a DNS subdomain name, a valid extended
resource name, at most 32 selectors).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

from host._apinames import DNS_LABEL_MAX, DNS_SUBDOMAIN_MAX, dns_subdomain_error
from host.deviceplugin._names import resource_name_error

__all__ = [
    "IMPLICIT_EXTENDED_RESOURCE_PREFIX",
    "device_class",
    "device_class_name",
    "device_class_problems",
    "device_class_selector",
    "device_classes",
]

API_VERSION = "resource.k8s.io/v1"
IMPLICIT_EXTENDED_RESOURCE_PREFIX = "deviceclass.resource.kubernetes.io/"
"""``ResourceDeviceClassPrefix``: every class is also the extended resource ``<prefix><name>``."""
SELECTORS_MAX = 32
"""``DeviceSelectorsMaxSize``."""
CEL_EXPRESSION_MAX = 10 * 1024
"""``CELSelectorExpressionMaxLength``."""

_HASH_LEN = 8
_NOT_LABEL_CHARS = re.compile(r"[^a-z0-9]+")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def device_class_name(driver: str, dev_type: str) -> str:
    """Return the class name of ``driver``'s type ``dev_type``: a DNS subdomain, stable.

    ``<type>.<driver>`` when the type is a DNS label (``i915.gpu.intel.com``): a label
    has no dot, so the pair is read back unambiguously. Otherwise the type is
    lower-cased, every run of other characters becomes ``-`` and 8 hex digits of the
    SHA-256 of the exact type follow (``af-AbC_1`` -> ``af-abc-1-<8 hex>.fpga.intel.com``),
    so two types differing only in case or punctuation get distinct classes.
    """
    if len(dev_type) <= DNS_LABEL_MAX and _DNS_LABEL.fullmatch(dev_type):
        label = dev_type
    else:
        digest = hashlib.sha256(dev_type.encode()).hexdigest()[:_HASH_LEN]
        prefix = _NOT_LABEL_CHARS.sub("-", dev_type.lower()).strip("-")
        prefix = prefix[: DNS_LABEL_MAX - 1 - _HASH_LEN].rstrip("-")
        label = f"{prefix}-{digest}" if prefix else f"type-{digest}"
    name = f"{label}.{driver}"
    if len(name) > DNS_SUBDOMAIN_MAX:  # a driver name has at most 63 characters: never
        raise ValueError(f"DeviceClass name {name!r} is longer than {DNS_SUBDOMAIN_MAX}")
    return name


def _cel_string(text: str) -> str:
    """``text`` as a CEL double-quoted string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def device_class_selector(driver: str, dev_type: str) -> str:
    """Return the CEL expression selecting ``driver``'s devices of type ``dev_type``."""
    quoted = _cel_string(driver)
    return (
        f"device.driver == {quoted} && device.attributes[{quoted}].type == {_cel_string(dev_type)}"
    )


def device_class(driver: str, dev_type: str) -> dict[str, Any]:
    """Return the DeviceClass serving resource ``<driver>/<dev_type>`` through DRA.

    ValueError when ``<driver>/<dev_type>`` is no valid extended resource name (then
    no device plugin could serve it either).
    """
    resource = f"{driver}/{dev_type}"
    problem = resource_name_error(resource)
    if problem is not None:
        raise ValueError(f"{resource!r} cannot be an extended resource name: {problem}")
    return {
        "apiVersion": API_VERSION,
        "kind": "DeviceClass",
        "metadata": {
            "name": device_class_name(driver, dev_type),
            "labels": {"app.kubernetes.io/managed-by": "devplugin-host"},
        },
        "spec": {
            "selectors": [{"cel": {"expression": device_class_selector(driver, dev_type)}}],
            "extendedResourceName": resource,
        },
    }


def device_class_problems(obj: dict[str, Any]) -> list[tuple[str, str]]:
    """Return what the API server would refuse in DeviceClass ``obj``, as (field, message).

    Beyond the OpenAPI schema, from ``ValidateDeviceClass`` (kubernetes
    ``pkg/apis/resource/validation``): the name is a DNS subdomain of at most 253
    characters, ``spec.extendedResourceName`` (when set) passes
    ``IsExtendedResourceName``, at most 32 selectors, each a CEL expression of at most
    10 KiB. Whether an expression compiles is not checked here.
    """
    problems = []
    name = (obj.get("metadata") or {}).get("name") or ""
    if not name:
        problems.append(("metadata.name", "Required value: name or generateName is required"))
    else:
        error = dns_subdomain_error(name)
        if error is not None:
            problems.append(("metadata.name", f"Invalid value: {name!r}: {error}"))
    spec = obj.get("spec") or {}
    extended = spec.get("extendedResourceName")
    if extended is not None and resource_name_error(extended) is not None:
        problems.append(
            (
                "spec.extendedResourceName",
                f"Invalid value: {extended!r}: must be a valid extended resource name",
            )
        )
    selectors = spec.get("selectors") or []
    if len(selectors) > SELECTORS_MAX:
        problems.append(
            (
                "spec.selectors",
                f"Too many: {len(selectors)}: must have at most {SELECTORS_MAX} items",
            )
        )
    for index, selector in enumerate(selectors):
        expression = ((selector or {}).get("cel") or {}).get("expression")
        where = f"spec.selectors[{index}].cel.expression"
        if not isinstance(expression, str) or not expression:
            problems.append((where, "Required value"))
        elif len(expression) > CEL_EXPRESSION_MAX:
            problems.append((where, f"Too long: may not be more than {CEL_EXPRESSION_MAX} bytes"))
    return problems


def device_classes(resources: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """One class per ``(driver, type)``, in driver then type order, each pair once."""
    return [device_class(driver, dev_type) for driver, dev_type in sorted(set(resources))]
