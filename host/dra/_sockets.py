"""Where a DRA driver's sockets live, following the kubeletplugin helper's conventions.

k8s.io/dynamic-resource-allocation ``kubeletplugin/draplugin.go``: the DRA service
listens on ``<plugins dir>/<driver>/dra.sock``; the registration socket kubelet's plugin
watcher finds is ``<registry dir>/<driver>-reg.sock``. With an instance id (the pod UID,
for rolling updates where two instances of a driver run side by side, kubelet 1.33+)
the DRA socket is ``dra-<id>.sock`` and the registration socket the first of these
whose full path fits a Unix socket address (at most 107 bytes):
``<driver>-<id>-reg.sock``, ``<driver>-<b64(sha256(id)[:8])>-reg.sock``,
``dra-<b64(sha256(driver + NUL + id)[:16])>-reg.sock`` (unpadded base64url; the last
one is also the fallback).

The helper takes a pod UID; ``--instance-id`` takes any printable text. An id that is
not a plain file-name part (letters, digits, ``.``, ``_``, ``-``: a ``/`` would make
a directory of it) skips the names that carry it verbatim, and so does a DRA socket
name too long for a Unix socket address: ``dra-<b64(sha256(id)[:8])>.sock`` instead
(kubelet reaches the DRA socket through the registration's ``endpoint``, whatever its
name).
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from host._pluginwatcher import DEFAULT_REGISTRY_DIR

__all__ = [
    "DEFAULT_DRA_PLUGIN_DIR",
    "DEFAULT_REGISTRY_DIR",
    "SOCKET_PATH_MAX",
    "dra_socket_path",
    "registration_socket_path",
    "validate_driver_name",
]

DEFAULT_DRA_PLUGIN_DIR = "/var/lib/kubelet/plugins"
"""Parent of each driver's data directory (``<dir>/<driver>/dra.sock``)."""
SOCKET_PATH_MAX = 107
"""Bytes of a Unix socket path: ``sockaddr_un.sun_path`` is 108 including the NUL."""

_FILE_NAME_PART = re.compile(r"[A-Za-z0-9._-]+")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DRIVER_NAME_MAX = 63


def validate_driver_name(name: str) -> str:
    """Return ``name``, or raise ValueError if it cannot be a DRA driver name.

    A driver name is ``ResourceSlice.spec.driver``: a lower-case DNS subdomain of at
    most 63 characters (``resource.k8s.io/v1`` validation).
    """
    if len(name) > _DRIVER_NAME_MAX or not _DNS_SUBDOMAIN.fullmatch(name):
        raise ValueError(
            f"invalid DRA driver name {name!r}: it must be a lower-case DNS subdomain "
            f"(letters a-z, digits, '-' and '.') of at most {_DRIVER_NAME_MAX} characters"
        )
    return name


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uid_hash(instance_id: str) -> str:
    return _b64(hashlib.sha256(instance_id.encode()).digest()[:8])


def _verbatim(instance_id: str) -> bool:
    """Whether ``instance_id`` can stand in a file name as it is."""
    return _FILE_NAME_PART.fullmatch(instance_id) is not None


def _check_length(path: Path, what: str) -> Path:
    if len(str(path).encode()) > SOCKET_PATH_MAX:
        raise ValueError(
            f"{what} {path} is {len(str(path).encode())} bytes long; a Unix socket path "
            f"holds at most {SOCKET_PATH_MAX} (use a shorter directory)"
        )
    return path


def dra_socket_path(plugin_dir: str | Path, driver: str, instance_id: str | None = None) -> Path:
    """Return the DRA service socket: ``<plugin_dir>/<driver>/dra[-<instance id>].sock``.

    An instance id that is no plain file-name part, or makes the path too long, is
    replaced by its hash. Raises ValueError when even that path is too long for a Unix
    socket.
    """
    directory = Path(plugin_dir) / driver
    if not instance_id:
        return _check_length(directory / "dra.sock", "DRA socket")
    path = directory / f"dra-{instance_id}.sock"
    if _verbatim(instance_id) and len(str(path).encode()) <= SOCKET_PATH_MAX:
        return path
    return _check_length(directory / f"dra-{_uid_hash(instance_id)}.sock", "DRA socket")


def registration_socket_path(
    registry_dir: str | Path, driver: str, instance_id: str | None = None
) -> Path:
    """Return the registration socket in ``registry_dir`` for ``driver`` (and instance).

    Raises ValueError when not even the shortest candidate fits a Unix socket path.
    """
    directory = Path(registry_dir)
    if not instance_id:
        return _check_length(directory / f"{driver}-reg.sock", "registration socket")
    candidates = [f"{driver}-{_uid_hash(instance_id)}-reg.sock"]
    if _verbatim(instance_id):
        candidates.insert(0, f"{driver}-{instance_id}-reg.sock")
    for name in candidates:
        path = directory / name
        if len(str(path).encode()) <= SOCKET_PATH_MAX:
            return path
    digest = hashlib.sha256(f"{driver}\x00{instance_id}".encode()).digest()[:16]
    return _check_length(directory / f"dra-{_b64(digest)}-reg.sock", "registration socket")
