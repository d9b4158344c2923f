"""CDI (Container Device Interface) specs: validation, names, and writing spec files.

A device may carry a CDI spec describing one CDI device. Allocate reports it to
kubelet as ``CDIDevice{name="<kind>=<device name>"}`` and the container runtime then
looks the name up in the spec files of the CDI directory; :class:`CdiSpecWriter`
keeps those files in place while devices hold them.

Validation follows the CDI specification and the rules of the reference Go library
(``tags.cncf.io/container-device-interface``, ``pkg/parser`` and the default
validator), so a spec a runtime would refuse is refused here, when the scanner builds
the :class:`~host.deviceplugin.DeviceInfo`, instead of at container start.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import re
import stat
import tempfile
import threading
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_CDI_DIR",
    "CdiSpecWriter",
    "qualified_name",
    "spec_file_name",
    "validate_cdi_spec",
]

log = logging.getLogger("host.deviceplugin.cdi")

DEFAULT_CDI_DIR = "/var/run/cdi"
"""Where container runtimes look for dynamically generated CDI specs."""

_SEMVER = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)")
# pkg/parser: vendor and class start with a letter, end with a letter or digit, and
# hold letters, digits, '_', '-' and '.' in between. A device name may also start with
# a digit and may hold ':'.
_VENDOR_OR_CLASS = re.compile(r"[A-Za-z]([A-Za-z0-9_.-]*[A-Za-z0-9])?")
_DEVICE_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?")
_MAX_VENDOR = 253  # the spec: the kind's prefix is a DNS subdomain
_MAX_CLASS = 63  # the spec: the kind's name segment
_HOOK_NAMES = frozenset(
    {"prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"}
)
_DEVICE_NODE_TYPES = frozenset({"", "b", "c", "u", "p"})
_MAX_FILE_NAME = 255


def validate_cdi_spec(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    """Return a validated deep copy of CDI spec ``spec`` (plain dicts and lists).

    The copy is read-only by convention: it is what the device carries and what is
    written to disk, so never mutate it. Requirements:

    * JSON-serialisable: dicts with ``str`` keys, lists, strings, finite numbers,
      booleans and None (tuples become lists);
    * ``cdiVersion``: a semantic version string such as ``"0.5.0"``;
    * ``kind``: ``<vendor>/<class>``; vendor (at most 253 characters) and class (at
      most 63) start with a letter, end with a letter or digit, and hold letters,
      digits, ``_``, ``-`` and ``.``;
    * ``devices``: exactly one entry (one spec describes one device), whose ``name``
      starts and ends with a letter or digit and holds letters, digits, ``_``,
      ``-``, ``.`` and ``:``, and whose ``containerEdits`` is a mapping with at least
      one edit: container runtimes reject a CDI device without edits;
    * edits (the device's and the optional top-level ``containerEdits``): ``env``
      entries ``NAME=value``; ``deviceNodes`` with a ``path``, a valid ``type`` and
      ``permissions`` made of ``r``, ``w``, ``m``; ``mounts`` with ``hostPath`` and
      ``containerPath``; ``hooks`` with a known ``hookName`` and a ``path``.

    Raises ValueError naming the field and the offending value.
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"CDI spec must be a mapping, got {type(spec).__name__}: {spec!r}")
    result: dict[str, Any] = _json_copy(spec, "CDI spec")

    version = result.get("cdiVersion")
    if not isinstance(version, str) or not _SEMVER.fullmatch(version):
        raise ValueError(
            f"CDI spec: cdiVersion must be a version string like '0.5.0', got {version!r}"
        )
    kind = result.get("kind")
    vendor, class_ = _split_kind(kind)
    _check_name(vendor, _VENDOR_OR_CLASS, _MAX_VENDOR, f"kind {kind!r}: vendor", "letter")
    _check_name(class_, _VENDOR_OR_CLASS, _MAX_CLASS, f"kind {kind!r}: class", "letter")

    devices = result.get("devices")
    if not isinstance(devices, list) or len(devices) != 1:
        count = len(devices) if isinstance(devices, list) else "no list"
        raise ValueError(
            f"CDI spec {kind!r}: devices must be a list with exactly one device, got {count}"
        )
    device = devices[0]
    if not isinstance(device, dict):
        raise ValueError(f"CDI spec {kind!r}: devices[0] must be a mapping, got {device!r}")
    name = device.get("name")
    _check_name(name, _DEVICE_NAME, None, f"CDI spec {kind!r}: device name", "letter or digit")
    where = f"CDI device '{kind}={name}'"
    edits = device.get("containerEdits")
    if not isinstance(edits, dict) or not any(edits.values()):
        raise ValueError(
            f"{where}: containerEdits must be a mapping with at least one edit "
            f"(env, deviceNodes, mounts, hooks, ...), got {edits!r}"
        )
    _check_edits(edits, f"{where}: containerEdits")
    if "containerEdits" in result:
        top = result["containerEdits"]
        if not isinstance(top, dict):
            raise ValueError(f"CDI spec {kind!r}: containerEdits must be a mapping, got {top!r}")
        _check_edits(top, f"CDI spec {kind!r}: containerEdits")
    return result


def qualified_name(spec: Mapping[str, Any]) -> str:
    """Return the fully-qualified CDI device name ``<vendor>/<class>=<device name>``.

    This is what Allocate reports as ``CDIDevice.name``. ``spec`` must be valid.
    """
    return f"{spec['kind']}={spec['devices'][0]['name']}"


def spec_file_name(spec: Mapping[str, Any]) -> str:
    """Return the file name of ``spec`` in the CDI directory: ``<vendor>-<class>-<name>.json``.

    Distinct qualified names give distinct file names: a ``-`` inside a part is
    doubled (``card0-0`` becomes ``card0--0``), and no part starts or ends with
    ``-``, so a single ``-`` is always a separator. A name too long for the file
    system is shortened and suffixed with ``@`` and a hash of the qualified name (``@``
    never occurs otherwise). ``spec`` must be valid.
    """
    vendor, class_ = spec["kind"].split("/", 1)
    parts = (vendor, class_, spec["devices"][0]["name"])
    name = "-".join(part.replace("-", "--") for part in parts) + ".json"
    if len(name.encode()) <= _MAX_FILE_NAME:
        return name
    digest = hashlib.sha256(qualified_name(spec).encode()).hexdigest()[:32]
    return f"{name[:200]}@{digest}.json"


class CdiSpecWriter:
    """Writes CDI spec files into ``cdi_dir`` and removes them when no device holds them.

    Several devices may carry the same spec (GPU shares ``card0-0`` and ``card0-1``
    both describe ``card0``), and one file serves them all. Each holder calls
    :meth:`acquire` with a key of its own (any hashable, e.g. ``(resource, dev_id)``)
    and :meth:`release` when it lets go; the file goes away with the last holder.
    :meth:`write` and :meth:`remove` work on a file directly, without counting;
    :meth:`remove_all` removes every file this writer wrote (at shutdown).

    Files are written atomically (a temporary file in the same directory, fsync,
    rename) with mode 0644, and not rewritten when they already hold the same bytes.
    Only regular files this writer wrote or confirmed are ever removed. The methods
    do blocking file I/O (run them through ``asyncio.to_thread`` from the event loop)
    and are thread-safe. Write errors raise OSError naming the path.
    """

    def __init__(self, cdi_dir: str | os.PathLike[str] = DEFAULT_CDI_DIR) -> None:
        self.cdi_dir = Path(cdi_dir)
        self._lock = threading.Lock()
        self._written: set[Path] = set()
        self._holders: dict[Path, set[Hashable]] = {}
        self._held: dict[Hashable, Path] = {}

    def path_for(self, spec: Mapping[str, Any]) -> Path:
        """Return where ``spec`` is (or would be) written."""
        return self.cdi_dir / spec_file_name(spec)

    def write(self, spec: Mapping[str, Any]) -> Path:
        """Write ``spec`` (validated first) to its file and return the file's path.

        Skips the write when the file already holds exactly these bytes. Raises
        ValueError for an invalid spec and OSError when the file cannot be written.
        """
        spec = validate_cdi_spec(spec)
        with self._lock:
            return self._write(spec)

    def remove(self, spec: Mapping[str, Any]) -> bool:
        """Remove ``spec``'s file if this writer wrote it; return whether a file was removed.

        Drops any holders of the file too. Never removes anything but a regular file.
        """
        path = self.path_for(validate_cdi_spec(spec))
        with self._lock:
            for owner in self._holders.pop(path, set()):
                del self._held[owner]
            return self._remove(path)

    def acquire(self, owner: Hashable, spec: Mapping[str, Any]) -> Path:
        """Make sure ``spec``'s file exists and record ``owner`` as one of its holders.

        Acquiring again with the same owner rewrites the file if the spec changed;
        with a spec of another name it releases the previous one first. The content
        of a file is that of the last acquire.
        """
        spec = validate_cdi_spec(spec)
        path = self.path_for(spec)
        with self._lock:
            previous = self._held.get(owner)
            if previous is not None and previous != path:
                self._release(owner)
            self._write(spec)
            self._holders.setdefault(path, set()).add(owner)
            self._held[owner] = path
            return path

    def release(self, owner: Hashable) -> bool:
        """Forget ``owner``; remove its file if no holder is left. Return whether one was.

        Releasing an owner that holds nothing does nothing.
        """
        with self._lock:
            return self._release(owner)

    def remove_all(self) -> list[Path]:
        """Remove every file this writer wrote and forget all holders; return the removed paths.

        Keeps going past files it cannot remove (logged as warnings): it runs at
        shutdown, where one stuck file must not keep the others around.
        """
        with self._lock:
            self._holders.clear()
            self._held.clear()
            removed = []
            for path in sorted(self._written):
                try:
                    if self._remove(path):
                        removed.append(path)
                except OSError as err:
                    log.warning("cannot remove CDI spec file %s: %s", path, err)
            return removed

    def _release(self, owner: Hashable) -> bool:
        path = self._held.pop(owner, None)
        if path is None:
            return False
        holders = self._holders.get(path, set())
        holders.discard(owner)
        if holders:
            return False
        self._holders.pop(path, None)
        return self._remove(path)

    def _write(self, spec: Mapping[str, Any]) -> Path:
        path = self.path_for(spec)
        data = (json.dumps(spec, indent=2, sort_keys=True) + "\n").encode()
        try:
            current = os.lstat(path)
        except FileNotFoundError:
            current = None
        except OSError as err:
            raise OSError(err.errno, f"cannot write CDI spec {path}: {err.strerror}") from err
        if current is not None:
            if not stat.S_ISREG(current.st_mode):
                raise OSError(
                    errno.EEXIST,
                    f"cannot write CDI spec {path}: it exists and is not a regular file",
                )
            if stat.S_IMODE(current.st_mode) == 0o644 and _read_bytes(path) == data:
                self._written.add(path)
                return path
        try:
            self._ensure_dir()
            _write_atomically(path, data)
        except OSError as err:
            raise OSError(
                err.errno, f"cannot write CDI spec {path}: {err.strerror or err}"
            ) from err
        self._written.add(path)
        log.debug("wrote CDI spec %s", path)
        return path

    def _remove(self, path: Path) -> bool:
        if path not in self._written:
            return False
        self._written.discard(path)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(st.st_mode):
            log.warning("not removing CDI spec %s: it is no longer a regular file", path)
            return False
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        log.debug("removed CDI spec %s", path)
        return True

    def _ensure_dir(self) -> None:
        if not self.cdi_dir.is_dir():
            self.cdi_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            os.chmod(self.cdi_dir, 0o755)  # mkdir's mode is filtered by the umask


def _write_atomically(path: Path, data: bytes) -> None:
    # The temporary name ends in ".tmp", so a runtime scanning the directory for
    # *.json and *.yaml never reads a half-written spec.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself; best effort (some file systems refuse a directory fsync)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _split_kind(kind: object) -> tuple[str, str]:
    if not isinstance(kind, str) or kind.count("/") != 1:
        raise ValueError(
            f"CDI spec: kind must be '<vendor>/<class>' (e.g. 'example.com/gpu'), got {kind!r}"
        )
    vendor, class_ = kind.split("/")
    return vendor, class_


def _check_name(
    value: object, pattern: re.Pattern[str], max_len: int | None, what: str, first: str
) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    if max_len is not None and len(value) > max_len:
        raise ValueError(f"{what} {value!r} is {len(value)} characters long, at most {max_len}")
    if not pattern.fullmatch(value):
        allowed = "letters, digits, '_', '-', '.'" + (", ':'" if pattern is _DEVICE_NAME else "")
        raise ValueError(
            f"{what} {value!r} is invalid: it must start with a {first}, end with a letter "
            f"or digit, and contain only {allowed}"
        )


def _check_edits(edits: Mapping[str, Any], where: str) -> None:
    """Apply the default validator's checks on container edits (Go's validateEdits)."""
    for env in _list_field(edits, "env", where):
        if not isinstance(env, str) or env.find("=") <= 0:
            raise ValueError(f"{where}: env entry must be 'NAME=value', got {env!r}")
    for node in _list_field(edits, "deviceNodes", where, of_mappings=True):
        path = node.get("path")
        if not isinstance(path, str) or not path:
            raise ValueError(f"{where}: deviceNodes entry needs a non-empty path, got {node!r}")
        if node.get("type", "") not in _DEVICE_NODE_TYPES:
            raise ValueError(
                f"{where}: device node {path!r}: type must be one of b, c, u, p, "
                f"got {node['type']!r}"
            )
        permissions = node.get("permissions", "")
        if not isinstance(permissions, str) or set(permissions) - set("rwm"):
            raise ValueError(
                f"{where}: device node {path!r}: permissions must combine 'r', 'w' and 'm', "
                f"got {permissions!r}"
            )
    for mount in _list_field(edits, "mounts", where, of_mappings=True):
        for key in ("hostPath", "containerPath"):
            value = mount.get(key)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{where}: mounts entry needs a non-empty {key}, got {mount!r}")
    for hook in _list_field(edits, "hooks", where, of_mappings=True):
        hook_name = hook.get("hookName")
        if hook_name not in _HOOK_NAMES:
            raise ValueError(
                f"{where}: hookName must be one of {', '.join(sorted(_HOOK_NAMES))}, "
                f"got {hook_name!r}"
            )
        path = hook.get("path")
        if not isinstance(path, str) or not path:
            raise ValueError(f"{where}: hook {hook_name!r} needs a non-empty path, got {path!r}")


def _list_field(
    edits: Mapping[str, Any], key: str, where: str, *, of_mappings: bool = False
) -> list[Any]:
    value = edits.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{where}: {key} must be a list, got {value!r}")
    if of_mappings:
        for item in value:
            if not isinstance(item, dict):
                raise ValueError(f"{where}: {key} entries must be mappings, got {item!r}")
    return value


def _json_copy(value: Any, where: str) -> Any:
    """Deep-copy ``value`` into plain JSON data, rejecting what JSON cannot hold faithfully.

    Mappings become dicts (their keys must be strings: ``json.dumps`` would silently
    turn ``1`` into ``"1"``), tuples become lists, subclasses of str/int/float become
    the base type; NaN and infinities are refused.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is not JSON-serialisable: {value!r}")
        return float(value)
    if isinstance(value, Mapping):
        result = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} is not JSON-serialisable: key {key!r} is not a string")
            result[str(key)] = _json_copy(item, f"{where}.{key}")
        return result
    if isinstance(value, list | tuple):
        return [_json_copy(item, f"{where}[{index}]") for index, item in enumerate(value)]
    raise ValueError(f"{where} is not JSON-serialisable: {type(value).__name__} value {value!r}")
