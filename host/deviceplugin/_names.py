"""Kubelet's extended-resource-name rules, so a bad name fails here and not at Register."""

from __future__ import annotations

import hashlib
import re

__all__ = [
    "instance_id_error",
    "instance_tag",
    "resource_name_error",
    "socket_name",
    "validate_resource_name",
]

INSTANCE_ID_MAX = 253

_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


def resource_name_error(name: str) -> str | None:
    """Return why kubelet would reject ``name`` as an extended resource name, or None.

    Mirrors ``v1helper.IsExtendedResourceName``: not a native resource (has a ``/``
    and no ``kubernetes.io/``), not ``requests.``-prefixed, and ``requests.<name>``
    a qualified name (lower-case DNS-1123 prefix of at most 253 characters, name
    part of at most 63 characters).
    """
    if "/" not in name:
        return "it has no '/' separating a domain from the name (e.g. 'example.com/gpu')"
    if "kubernetes.io/" in name:
        return "names under kubernetes.io/ are reserved for Kubernetes"
    if name.startswith("requests."):
        return "it must not start with 'requests.'"
    parts = ("requests." + name).split("/")
    if len(parts) != 2:
        return "it must contain exactly one '/'"
    prefix, short = parts
    if len(prefix) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(prefix):
        return (
            "its domain must be a lower-case DNS subdomain "
            "(letters a-z, digits, '-' and '.', at most 244 characters)"
        )
    if not short:
        return "the part after '/' is empty"
    if len(short) > 63:
        return f"the part after '/' is {len(short)} characters long, at most 63 are allowed"
    if not _QUALIFIED_NAME.fullmatch(short):
        return (
            "the part after '/' must start and end with a letter or digit and contain "
            "only letters, digits, '-', '_' and '.'"
        )
    return None


def validate_resource_name(name: str) -> str:
    """Return ``name`` unchanged, or raise ValueError saying why kubelet would reject it."""
    reason = resource_name_error(name)
    if reason is not None:
        raise ValueError(f"invalid resource name {name!r}: {reason}")
    return name


def socket_name(namespace: str, dev_type: str, instance_id: str | None = None) -> str:
    """Return the socket file name of resource ``namespace/dev_type``: ``<ns>-<type>.sock``.

    Intel's convention (``gpu.intel.com-i915.sock``), made collision-free: every ``-``
    of the namespace is doubled, so the first single ``-`` always separates namespace
    and type. A namespace is a DNS subdomain (it never ends with ``-``) and a type
    starts with a letter or digit, so a name decodes one way only::

        socket_name("a.com", "x-y") == "a.com-x-y.sock"
        socket_name("a.com-x", "y") == "a.com--x-y.sock"

    Namespaces without ``-`` (every Intel one) keep the familiar name. With an
    ``instance_id`` (see :func:`instance_tag`) the name ends ``-<tag>.sock``, so two
    hosts of one node serve the same resource on two sockets.
    """
    base = f"{namespace.replace('-', '--')}-{dev_type}"
    return f"{base}.sock" if instance_id is None else f"{base}-{instance_tag(instance_id)}.sock"


def instance_id_error(instance_id: str) -> str | None:
    """Return why ``instance_id`` cannot tell this host's sockets apart, or None.

    Any printable text of 1 to 253 characters without whitespace works (a pod UID, a
    pod name, a hostname): only a hash of it appears in file names.
    """
    if not instance_id:
        return "it is empty"
    if len(instance_id) > INSTANCE_ID_MAX:
        return f"it is {len(instance_id)} characters long, at most {INSTANCE_ID_MAX} are allowed"
    if not instance_id.isprintable() or any(ch.isspace() for ch in instance_id):
        return "it must be printable text without whitespace (e.g. the pod UID)"
    return None


def instance_tag(instance_id: str) -> str:
    """Return the short form of an instance id for socket names: 8 hex digits of its SHA-256.

    Two hosts of one node (the old and the new pod of a rolling update) get different
    tags unless their ids collide in 32 bits.
    """
    return hashlib.sha256(instance_id.encode()).hexdigest()[:8]
