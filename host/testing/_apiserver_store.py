"""The fake API server's object store: CRUD with resourceVersion, field selectors, Status errors.

Objects are plain JSON dicts. Errors are :class:`ApiFailure` carrying a ``Status``
shaped as the real API server shapes it (``k8s.io/apimachinery/pkg/api/errors``).
"""

from __future__ import annotations

import copy
import datetime
import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from host.testing._apiserver_validation import Cause

__all__ = [
    "DEVICE_CLASSES",
    "NODES",
    "RESOURCE_CLAIMS",
    "RESOURCE_SLICES",
    "ApiFailure",
    "Kind",
    "ObjectStore",
    "status",
]

Validator = Callable[[dict[str, Any], "dict[str, Any] | None"], list[Cause]]


@dataclass(frozen=True)
class Kind:
    """One resource type the fake serves."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    field_labels: tuple[str, ...] = ("metadata.name",)
    validate: Validator | None = field(default=None, compare=False)

    @property
    def api_version(self) -> str:
        """``group/version`` (``v1`` for the core group)."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``plural.group`` as error messages name it (``nodes`` for the core group)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


def _device_class_validator(obj: dict[str, Any], old: dict[str, Any] | None) -> list[Cause]:
    from host.dra._deviceclasses import device_class_problems

    return [
        Cause("FieldValueInvalid", field, message) for field, message in device_class_problems(obj)
    ]


def _slice_validator() -> Validator:
    from host.testing._apiserver_validation import validate_resource_slice

    return validate_resource_slice


NODES = Kind("", "v1", "nodes", "Node", namespaced=False)
RESOURCE_SLICES = Kind(
    "resource.k8s.io",
    "v1",
    "resourceslices",
    "ResourceSlice",
    namespaced=False,
    field_labels=("metadata.name", "spec.nodeName", "spec.driver"),
    validate=_slice_validator(),
)
DEVICE_CLASSES = Kind(
    "resource.k8s.io",
    "v1",
    "deviceclasses",
    "DeviceClass",
    namespaced=False,
    validate=_device_class_validator,
)
RESOURCE_CLAIMS = Kind(
    "resource.k8s.io",
    "v1",
    "resourceclaims",
    "ResourceClaim",
    namespaced=True,
    field_labels=("metadata.name", "metadata.namespace"),
)


def status(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Build a failure ``Status`` object as the API server sends it."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
    }
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


class ApiFailure(Exception):
    """A request the API server answers with a failure Status."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.body = status(code, reason, message, details)

    @classmethod
    def not_found(cls, kind: Kind, name: str) -> ApiFailure:
        """``<plural>.<group> "<name>" not found``."""
        return cls(
            404,
            "NotFound",
            f'{kind.qualified} "{name}" not found',
            {"name": name, "group": kind.group, "kind": kind.plural},
        )

    @classmethod
    def already_exists(cls, kind: Kind, name: str) -> ApiFailure:
        """``<plural>.<group> "<name>" already exists``."""
        return cls(
            409,
            "AlreadyExists",
            f'{kind.qualified} "{name}" already exists',
            {"name": name, "group": kind.group, "kind": kind.plural},
        )

    @classmethod
    def conflict(cls, kind: Kind, name: str, detail: str) -> ApiFailure:
        """``Operation cannot be fulfilled on <plural>.<group> "<name>": <detail>``."""
        return cls(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {kind.qualified} "{name}": {detail}',
            {"name": name, "group": kind.group, "kind": kind.plural},
        )

    @classmethod
    def invalid(cls, kind: Kind, name: str, causes: list[Cause]) -> ApiFailure:
        """``<Kind>.<group> "<name>" is invalid: <causes>`` (422), with every cause listed."""
        rendered = [str(c) for c in causes]
        listed = rendered[0] if len(rendered) == 1 else "[" + ", ".join(rendered) + "]"
        prefix = f"{kind.kind}.{kind.group}" if kind.group else kind.kind
        return cls(
            422,
            "Invalid",
            f'{prefix} "{name}" is invalid: {listed}',
            {
                "name": name,
                "group": kind.group,
                "kind": kind.kind,
                "causes": [c.to_json() for c in causes],
            },
        )

    @classmethod
    def bad_request(cls, message: str) -> ApiFailure:
        """400 BadRequest with ``message``."""
        return cls(400, "BadRequest", message)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # the API server's generateName alphabet


def parse_field_selector(kind: Kind, selector: str) -> list[tuple[str, bool, str]]:
    """``a=b,c!=d`` -> ``[(field, equal, value)]``; unsupported fields fail like the real server."""
    terms = []
    for term in filter(None, (t.strip() for t in selector.split(","))):
        op = next((op for op in ("!=", "==", "=") if op in term), None)
        if op is None:
            raise ApiFailure.bad_request(
                f"invalid selector: '{selector}'; can't understand '{term}'"
            )
        key, _, value = term.partition(op)
        equal = op != "!="
        key = key.strip()
        if key not in kind.field_labels:
            raise ApiFailure.bad_request(f"field label not supported: {key}")
        terms.append((key, equal, value.strip()))
    return terms


def _field(obj: dict[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


class ObjectStore:
    """Objects by (plural, namespace, name); one resourceVersion counter for all.

    Stored objects are replaced, never changed in place, so the methods return them
    without copying: callers must not modify what they get (copy it first).
    """

    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        self._objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._version = 0
        self._on_change = on_change

    @property
    def resource_version(self) -> str:
        """The newest resourceVersion handed out."""
        return str(self._version)

    def _bump(self, obj: dict[str, Any]) -> None:
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)

    def get(self, kind: Kind, name: str, namespace: str = "") -> dict[str, Any]:
        """Return one object, or raise NotFound."""
        obj = self._objects.get((kind.plural, namespace, name))
        if obj is None:
            raise ApiFailure.not_found(kind, name)
        return obj

    def list(self, kind: Kind, namespace: str = "", field_selector: str = "") -> dict[str, Any]:
        """Return a ``<Kind>List`` of the matching objects, in name order."""
        terms = parse_field_selector(kind, field_selector)
        items = []
        for (plural, ns, _name), obj in sorted(self._objects.items()):
            if plural != kind.plural or (kind.namespaced and namespace and ns != namespace):
                continue
            if all((_field(obj, key) == value) == equal for key, equal, value in terms):
                items.append({k: v for k, v in obj.items() if k not in ("kind", "apiVersion")})
        return {
            "kind": f"{kind.kind}List",
            "apiVersion": kind.api_version,
            "metadata": {"resourceVersion": self.resource_version},
            "items": items,
        }

    def create(self, kind: Kind, body: dict[str, Any], namespace: str = "") -> dict[str, Any]:
        """Store a new object: generateName, uid, resourceVersion, creationTimestamp."""
        obj = self._decode(kind, body)
        metadata = obj["metadata"]
        if not metadata.get("name"):
            prefix = metadata.get("generateName")
            if not prefix:
                raise ApiFailure.invalid(
                    kind,
                    "",
                    [
                        Cause(
                            "FieldValueRequired",
                            "metadata.name",
                            "Required value: name or generateName is required",
                        )
                    ],
                )
            metadata["name"] = prefix[:58] + "".join(random.choices(_NAME_CHARS, k=5))
        name = metadata["name"]
        if kind.namespaced:
            metadata["namespace"] = namespace
        self._validate(kind, obj, None)
        key = (kind.plural, namespace, name)
        if key in self._objects:
            raise ApiFailure.already_exists(kind, name)
        for stale in ("resourceVersion", "uid", "creationTimestamp", "deletionTimestamp"):
            metadata.pop(stale, None)
        metadata["uid"] = str(uuid.uuid4())
        metadata["creationTimestamp"] = _now()
        metadata["generation"] = 1
        self._fill_defaults(obj)
        self._bump(obj)
        self._objects[key] = obj
        self._on_change()
        return obj

    def update(
        self, kind: Kind, name: str, body: dict[str, Any], namespace: str = ""
    ) -> dict[str, Any]:
        """Replace an object (PUT): NotFound, Conflict on a stale resourceVersion, Invalid."""
        obj = self._decode(kind, body)
        metadata = obj["metadata"]
        if metadata.get("name") != name:
            raise ApiFailure.bad_request(
                f"the name of the object ({metadata.get('name')}) does not match the name on "
                f"the URL ({name})"
            )
        key = (kind.plural, namespace, name)
        current = self._objects.get(key)
        if current is None:
            raise ApiFailure.not_found(kind, name)
        version = metadata.get("resourceVersion")
        if version and version != current["metadata"]["resourceVersion"]:
            raise ApiFailure.conflict(
                kind,
                name,
                "the object has been modified; please apply your changes to the latest "
                "version and try again",
            )
        self._validate(kind, obj, current)
        for kept in ("uid", "creationTimestamp", "generation"):
            metadata[kept] = current["metadata"][kept]
        if kind.namespaced:
            metadata["namespace"] = namespace
        if obj.get("spec") != current.get("spec"):
            metadata["generation"] += 1
        self._fill_defaults(obj)
        self._bump(obj)
        self._objects[key] = obj
        self._on_change()
        return obj

    def delete(
        self, kind: Kind, name: str, options: dict[str, Any] | None = None, namespace: str = ""
    ) -> dict[str, Any]:
        """Delete an object, honouring ``preconditions`` (uid, resourceVersion)."""
        key = (kind.plural, namespace, name)
        current = self._objects.get(key)
        if current is None:
            raise ApiFailure.not_found(kind, name)
        preconditions = (options or {}).get("preconditions") or {}
        for field_name in ("uid", "resourceVersion"):
            wanted = preconditions.get(field_name)
            actual = current["metadata"][field_name]
            if wanted and wanted != actual:
                label = "UID" if field_name == "uid" else "ResourceVersion"
                raise ApiFailure.conflict(
                    kind,
                    name,
                    f"Precondition failed: {label} in precondition: {wanted}, "
                    f"{label} in object meta: {actual}",
                )
        del self._objects[key]
        self._version += 1
        self._on_change()
        return current

    def delete_collection(
        self, kind: Kind, field_selector: str = "", namespace: str = ""
    ) -> dict[str, Any]:
        """Delete every matching object; returns the list of what was deleted."""
        deleted = self.list(kind, namespace, field_selector)
        for item in deleted["items"]:
            self._objects.pop(
                (kind.plural, item["metadata"].get("namespace", ""), item["metadata"]["name"]), None
            )
        if deleted["items"]:
            self._version += 1
            self._on_change()
        return deleted

    def put_raw(self, kind: Kind, obj: dict[str, Any]) -> dict[str, Any]:
        """Store ``obj`` without validation, as another client would (tests set the stage)."""
        obj = copy.deepcopy(obj)
        obj.setdefault("kind", kind.kind)
        obj.setdefault("apiVersion", kind.api_version)
        metadata = obj.setdefault("metadata", {})
        metadata.setdefault("uid", str(uuid.uuid4()))
        metadata.setdefault("creationTimestamp", _now())
        metadata.setdefault("generation", 1)
        self._bump(obj)
        self._objects[(kind.plural, metadata.get("namespace", ""), metadata["name"])] = obj
        self._on_change()
        return copy.deepcopy(obj)

    def _decode(self, kind: Kind, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiFailure.bad_request(
                f"the body of the request was in an unknown format: {json.dumps(body)[:100]}"
            )
        if (
            body.get("kind", kind.kind) != kind.kind
            or body.get("apiVersion", kind.api_version) != kind.api_version
        ):
            raise ApiFailure.bad_request(
                f"the API version in the data ({body.get('apiVersion')}) does not match the "
                f"expected API version ({kind.api_version})"
                if body.get("apiVersion") != kind.api_version
                else f"kind {body.get('kind')!r} does not match {kind.kind!r}"
            )
        obj = dict(body)  # the caller's fresh JSON: only the top level is replaced here
        obj["kind"] = kind.kind
        obj["apiVersion"] = kind.api_version
        if not isinstance(obj.get("metadata"), dict):
            obj["metadata"] = {}
        return obj

    def _validate(self, kind: Kind, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        if kind.validate is None:
            return
        causes = kind.validate(obj, old)
        if causes:
            raise ApiFailure.invalid(kind, obj["metadata"].get("name", ""), causes)

    @staticmethod
    def _fill_defaults(obj: dict[str, Any]) -> None:
        # The server fills in timeAdded of device taints that lack it.
        devices = (obj.get("spec") or {}).get("devices")
        if not isinstance(devices, list):  # a claim's spec.devices is its requests
            return
        for device in devices:
            for taint in device.get("taints") or []:
                taint.setdefault("timeAdded", _now())
