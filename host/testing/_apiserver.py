"""A fake Kubernetes API server on 127.0.0.1 for the DRA side of the host.

It speaks the real wire protocol (HTTP/1.1, JSON, ``Status`` errors) for what a DRA
driver uses: ResourceSlices (list with field selectors, get, create with
generateName, update with resourceVersion conflicts, delete with preconditions,
delete-collection as kubelet's wipe), DeviceClasses (the same verbs), Nodes and
ResourceClaims (get). ResourceSlices and DeviceClasses are validated as the real server
does (422 Invalid with causes). Tests inject latency,
outages and one-shot failures, and wait on conditions instead of sleeping.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from host.testing._apiserver_http import HttpRequest, HttpServer, OutageMode
from host.testing._apiserver_store import (
    DEVICE_CLASSES,
    NODES,
    RESOURCE_CLAIMS,
    RESOURCE_SLICES,
    ApiFailure,
    Kind,
    ObjectStore,
)

__all__ = ["ApiRequest", "FakeApiServer", "OutageMode", "write_kubeconfig"]

_ROUTES: tuple[tuple[re.Pattern[str], Kind], ...] = (
    (re.compile(r"/api/v1/nodes(?:/(?P<name>[^/]+))?"), NODES),
    (
        re.compile(r"/apis/resource\.k8s\.io/v1/resourceslices(?:/(?P<name>[^/]+))?"),
        RESOURCE_SLICES,
    ),
    (
        re.compile(r"/apis/resource\.k8s\.io/v1/deviceclasses(?:/(?P<name>[^/]+))?"),
        DEVICE_CLASSES,
    ),
    (
        re.compile(
            r"/apis/resource\.k8s\.io/v1/namespaces/(?P<ns>[^/]+)/resourceclaims"
            r"(?:/(?P<name>[^/]+)(?P<status>/status)?)?"
        ),
        RESOURCE_CLAIMS,
    ),
)
_WRITABLE = {RESOURCE_SLICES, DEVICE_CLASSES}
_VERSION = {
    "major": "1",
    "minor": "36",
    "gitVersion": "v1.36.0-devplugin-fake",
    "platform": "linux/amd64",
}
_DISCOVERY: dict[str, Any] = {
    "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []},
    "/apis": {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [
            {
                "name": "resource.k8s.io",
                "versions": [{"groupVersion": "resource.k8s.io/v1", "version": "v1"}],
                "preferredVersion": {"groupVersion": "resource.k8s.io/v1", "version": "v1"},
            }
        ],
    },
}


def _resource_list(kinds: Iterable[Kind], group_version: str) -> dict[str, Any]:
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": [
            {
                "name": kind.plural,
                "namespaced": kind.namespaced,
                "kind": kind.kind,
                "verbs": ["create", "delete", "deletecollection", "get", "list", "update"]
                if kind in _WRITABLE
                else ["get", "list"],
            }
            for kind in kinds
        ],
    }


_DISCOVERY["/api/v1"] = _resource_list([NODES], "v1")
_DISCOVERY["/apis/resource.k8s.io/v1"] = _resource_list(
    [RESOURCE_SLICES, RESOURCE_CLAIMS, DEVICE_CLASSES], "resource.k8s.io/v1"
)


@dataclass(frozen=True)
class ApiRequest:
    """A request the server received: ``code`` is None when it was never answered."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    code: int | None


def write_kubeconfig(
    path: str | Path, server: str, *, token: str | None = None, namespace: str = "default"
) -> Path:
    """Write a kubeconfig (JSON is valid YAML) whose current context points at ``server``."""
    user: dict[str, Any] = {"token": token} if token else {}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "fake", "user": user}],
        "contexts": [
            {"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}
        ],
        "current-context": "fake",
    }
    target = Path(path)
    target.write_text(json.dumps(config, indent=2))
    return target


class FakeApiServer:
    """A fake API server on ``127.0.0.1`` (a free port unless ``port`` is given).

    Use as ``async with FakeApiServer() as api:``; point a client at :attr:`url` or at
    :meth:`write_kubeconfig`. Nodes named in ``nodes`` exist from the start.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, nodes: Iterable[str] = ()):
        self._changed = asyncio.Event()
        self.store = ObjectStore(on_change=self._stored)
        self._http = HttpServer(self._handle, host, port)
        self._http.on_request = self._record
        self.requests: list[ApiRequest] = []
        """Every request received, in order (with the answer's code, None if unanswered)."""
        self._failures: list[tuple[str, re.Pattern[str], ApiFailure]] = []
        self._outage_timer: asyncio.TimerHandle | None = None
        self._outage_task: asyncio.Task[None] | None = None
        self.on_change: Callable[[], None] = lambda: None
        """Called after every change of a stored object (benchmarks time it)."""
        for node in nodes:
            self.add_node(node)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> FakeApiServer:
        """Start listening."""
        await self._http.start()
        return self

    async def stop(self) -> None:
        """Stop listening and cut every connection."""
        if self._outage_timer is not None:
            self._outage_timer.cancel()
        await self._http.stop()

    async def __aenter__(self) -> FakeApiServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self._http.host}:{self._http.port}"

    def write_kubeconfig(self, path: str | Path, *, token: str | None = None) -> Path:
        """Write a kubeconfig pointing at this server to ``path``; return the path."""
        return write_kubeconfig(path, self.url, token=token)

    # -- faults ----------------------------------------------------------------------

    @property
    def latency(self) -> float:
        """Seconds every answer is delayed by (0 by default)."""
        return self._http.latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        self._http.latency = seconds

    @property
    def outage(self) -> OutageMode | None:
        """The current outage mode, or None."""
        return self._http.outage

    def begin_outage(
        self, mode: OutageMode = "unavailable", *, duration: float | None = None
    ) -> None:
        """Misbehave as ``mode`` says (see :data:`OutageMode`), for ``duration`` seconds if given.

        Without ``duration`` the outage lasts until :meth:`end_outage`.
        """
        self._http.begin_outage(mode)
        self._notify()
        if duration is not None:
            loop = asyncio.get_running_loop()
            self._outage_timer = loop.call_later(duration, self._end_outage_soon)

    def _end_outage_soon(self) -> None:
        self._outage_task = asyncio.create_task(self.end_outage())

    async def end_outage(self) -> None:
        """Answer normally again."""
        if self._outage_timer is not None:
            self._outage_timer.cancel()
            self._outage_timer = None
        await self._http.end_outage()
        self._notify()

    def fail_next(
        self,
        method: str,
        path: str,
        code: int = 409,
        reason: str = "Conflict",
        message: str = "injected failure",
        *,
        times: int = 1,
    ) -> None:
        """Fail the next ``times`` requests of ``method`` whose path matches the regex ``path``.

        They get a failure Status (``code``, ``reason``, ``message``) and are not carried out.
        """
        failure = ApiFailure(code, reason, message)
        self._failures.extend([(method.upper(), re.compile(path), failure)] * times)

    # -- objects ---------------------------------------------------------------------

    def add_node(self, name: str, *, uid: str | None = None) -> dict[str, Any]:
        """Create Node ``name`` (uid random unless given); return it."""
        return self.store.put_raw(
            NODES, {"metadata": {"name": name, "uid": uid or str(uuid.uuid4())}}
        )

    def has_node(self, name: str) -> bool:
        """Whether Node ``name`` exists."""
        try:
            self.store.get(NODES, name)
        except ApiFailure:
            return False
        return True

    def add_claim(
        self,
        namespace: str,
        name: str,
        *,
        uid: str | None = None,
        allocation: dict[str, Any] | None = None,
        reserved_for: list[dict[str, Any]] | None = None,
        spec: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Create ResourceClaim ``namespace/name``, allocated if ``allocation`` is given."""
        claim: dict[str, Any] = {
            "metadata": {"name": name, "namespace": namespace, "uid": uid or str(uuid.uuid4())},
            "spec": spec or {"devices": {"requests": []}},
            "status": {},
        }
        if allocation is not None:
            claim["status"]["allocation"] = allocation
        if reserved_for is not None:
            claim["status"]["reservedFor"] = reserved_for
        return self.store.put_raw(RESOURCE_CLAIMS, claim)

    def set_claim_allocation(
        self, namespace: str, name: str, allocation: dict[str, Any] | None
    ) -> dict[str, Any]:
        """Write (or, with None, clear) ``status.allocation`` of a claim, as the scheduler does."""
        claim = copy.deepcopy(self.store.get(RESOURCE_CLAIMS, name, namespace))
        if allocation is None:
            claim["status"].pop("allocation", None)
        else:
            claim["status"]["allocation"] = copy.deepcopy(allocation)
        return self.store.put_raw(RESOURCE_CLAIMS, claim)

    def add_device_class(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create DeviceClass ``obj`` as an administrator does (validated: ApiFailure if not)."""
        return copy.deepcopy(self.store.create(DEVICE_CLASSES, copy.deepcopy(obj)))

    def device_classes(self) -> list[dict[str, Any]]:
        """Return the stored DeviceClasses (copies, name order)."""
        return [
            copy.deepcopy({"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", **item})
            for item in self.store.list(DEVICE_CLASSES)["items"]
        ]

    def delete_claim(self, namespace: str, name: str) -> None:
        """Delete a claim."""
        self.store.delete(RESOURCE_CLAIMS, name, namespace=namespace)

    def resource_slices(
        self, *, driver: str | None = None, node_name: str | None = None
    ) -> list[dict[str, Any]]:
        """Return the stored ResourceSlices (copies, name order), optionally of one driver/node."""
        terms = []
        if driver is not None:
            terms.append(f"spec.driver={driver}")
        if node_name is not None:
            terms.append(f"spec.nodeName={node_name}")
        listed = self.store.list(RESOURCE_SLICES, field_selector=",".join(terms))
        return [
            copy.deepcopy({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", **item})
            for item in listed["items"]
        ]

    def put_resource_slice(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store a slice as another writer would (validated, created or replaced)."""
        name = obj["metadata"]["name"]
        body = copy.deepcopy(obj)
        try:
            current = self.store.get(RESOURCE_SLICES, name)
        except ApiFailure:
            return copy.deepcopy(self.store.create(RESOURCE_SLICES, body))
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        return copy.deepcopy(self.store.update(RESOURCE_SLICES, name, body))

    def wipe_resource_slices(self, field_selector: str) -> int:
        """Delete the matching slices as kubelet's wipe does; return how many went."""
        return len(self.store.delete_collection(RESOURCE_SLICES, field_selector)["items"])

    # -- waiting ---------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _stored(self) -> None:
        self._notify()
        self.on_change()

    def _record(self, request: HttpRequest, code: int | None) -> None:
        self.requests.append(
            ApiRequest(request.method, request.path, request.query, request.body, code)
        )
        self._notify()

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 10.0,  # noqa: ASYNC109 - a timeout argument reads best in tests
        what: str = "condition",
    ) -> None:
        """Wait until ``predicate()`` holds, re-checked on every request and change."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"fake API server: {what} not met within {timeout:g} s") from None

    # -- dispatch --------------------------------------------------------------------

    def _handle(self, request: HttpRequest) -> tuple[int, Any]:
        try:
            return self._dispatch(request)
        except ApiFailure as failure:
            return failure.code, failure.body

    def _dispatch(self, request: HttpRequest) -> tuple[int, Any]:
        for index, (method, pattern, failure) in enumerate(self._failures):
            if method == request.method and pattern.search(request.path):
                del self._failures[index]
                raise failure
        if request.method == "GET" and request.path == "/version":
            return 200, _VERSION
        if request.method == "GET" and request.path in _DISCOVERY:
            return 200, _DISCOVERY[request.path]
        for pattern, kind in _ROUTES:
            match = pattern.fullmatch(request.path)
            if match is not None:
                groups = match.groupdict()
                return self._resource(request, kind, groups.get("ns") or "", groups.get("name"))
        return 404, "404 page not found\n"

    def _resource(
        self, request: HttpRequest, kind: Kind, namespace: str, name: str | None
    ) -> tuple[int, Any]:
        store, method, query = self.store, request.method, request.query
        if method == "GET" and query.get("watch") in ("true", "1"):
            raise ApiFailure.bad_request("watch is not supported by this fake API server")
        if method == "GET":
            if name is None:
                return 200, store.list(kind, namespace, query.get("fieldSelector", ""))
            return 200, store.get(kind, name, namespace)
        if kind in _WRITABLE:
            if method == "POST" and name is None:
                return 201, store.create(kind, request.body, namespace)
            if method == "PUT" and name is not None:
                return 200, store.update(kind, name, request.body, namespace)
            if method == "DELETE" and name is not None:
                return 200, store.delete(kind, name, request.body, namespace)
            if method == "DELETE":
                return 200, store.delete_collection(kind, query.get("fieldSelector", ""), namespace)
        raise ApiFailure(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
