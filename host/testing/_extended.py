"""KEP-5004 in the fakes: a pod's extended resources served by a DRA driver through DeviceClasses.

What kube-scheduler's DynamicResources plugin does for a pod asking for an extended
resource (``resources.limits: {gpu.intel.com/i915: 1}``) on a node where no device
plugin advertises it (kubernetes ``pkg/scheduler/framework/plugins/dynamicresources/
extendeddynamicresources.go``): it finds the DeviceClass whose
``spec.extendedResourceName`` is the resource (the newest class, ties to the name
sorted first; every class is also ``deviceclass.resource.kubernetes.io/<name>``),
creates one ResourceClaim for the pod (``generateName: <pod>-extended-resources-``,
annotation ``resource.kubernetes.io/extended-resource-claim: "true"``, owned by the
pod) with one request per container and resource, ``container-<i>-request-<j>`` (``i``
the container's index among init and regular containers, ``j`` the resource's index
among the container's sorted requests), allocates devices matching the class's CEL
selectors from the node's ResourceSlices, and writes
``pod.status.extendedResourceClaimStatus`` (request mappings and the claim's name).

What kubelet then does (``pkg/kubelet/cm/dra/manager.go``): prepares that claim with
the drivers like any other, and gives each container the CDI devices of the requests
mapped to its own extended resources; the device manager leaves those resources alone.

Init containers reuse the requests of the containers after them as the scheduler does
(:func:`requests_and_mappings`). Not modelled: scoring, preemption, quota. Selectors
are evaluated as :mod:`host.testing._selectors` says.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from host.deviceplugin._names import resource_name_error
from host.dra._deviceclasses import IMPLICIT_EXTENDED_RESOURCE_PREFIX, device_class
from host.testing._apiserver_store import RESOURCE_CLAIMS
from host.testing._dra_claims import DraClaim, prepare_allocated_claim
from host.testing._kubelet_types import KubeletError
from host.testing._selectors import SelectorError, Selectors

if TYPE_CHECKING:
    from pathlib import Path

    from host.testing._apiserver import FakeApiServer
    from host.testing._kubelet_dra import FakeDraKubelet

__all__ = [
    "EXTENDED_RESOURCE_CLAIM_ANNOTATION",
    "ExtendedResourceScheduler",
    "SchedulingError",
    "allocate_extended_resource",
    "container_requests",
    "is_dra_extended_resource_name",
    "prepare_extended_resources",
    "resolve_device_classes",
]

EXTENDED_RESOURCE_CLAIM_ANNOTATION = "resource.kubernetes.io/extended-resource-claim"
"""``resourceapi.ExtendedResourceClaimAnnotation``; its one valid value is ``"true"``."""
_BLOCKING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})


class SchedulingError(Exception):
    """The pod does not fit the node (the scheduler's Unschedulable), with the reason."""


def is_dra_extended_resource_name(name: str) -> bool:
    """Whether ``name`` may be backed by DRA: an extended resource or a class's implicit name."""
    return resource_name_error(name) is None or name.startswith(IMPLICIT_EXTENDED_RESOURCE_PREFIX)


def _count(value: Any, where: str) -> int:
    text = str(value)
    if not text.isdigit():
        raise ValueError(f"{where}: extended resources are whole numbers, got {value!r}")
    return int(text)


def container_requests(container: Mapping[str, Any]) -> dict[str, int]:
    """Return a container's extended resource requests (limits default them, as in the API).

    The API server copies ``limits`` to ``requests`` for a resource whose request is
    not set, so a pod written for the device plugin (limits only) requests them too.
    """
    resources = container.get("resources") or {}
    merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
    return {
        name: _count(value, f"container {container.get('name')!r} resource {name}")
        for name, value in merged.items()
        if is_dra_extended_resource_name(name)
    }


def resolve_device_classes(classes: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Map each extended resource name to the class serving it.

    Explicit names (``spec.extendedResourceName``): the newest class wins, ties go to
    the name sorted first; every class also serves its implicit name
    ``deviceclass.resource.kubernetes.io/<class name>``.
    """
    resolved: dict[str, str] = {}
    chosen: dict[str, tuple[str, str]] = {}
    for obj in classes:
        meta = obj["metadata"]
        name = meta["name"]
        resolved[IMPLICIT_EXTENDED_RESOURCE_PREFIX + name] = name
        extended = (obj.get("spec") or {}).get("extendedResourceName")
        if not extended:
            continue
        created = meta.get("creationTimestamp") or ""
        current = chosen.get(extended)
        # Newest first; among equally new classes the name sorted first.
        if current is None or (created, _inverted(name)) > (current[0], _inverted(current[1])):
            chosen[extended] = (created, name)
    resolved.update({resource: name for resource, (_, name) in chosen.items()})
    return resolved


def _inverted(name: str) -> tuple[int, ...]:
    return (*(-ord(char) for char in name), 0)


def _all_containers(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    spec = pod.get("spec") or {}
    return [*(spec.get("initContainers") or ()), *(spec.get("containers") or ())]


def _own_request(
    index: int,
    container: Mapping[str, Any],
    resource: str,
    class_name: str,
    reusable: Sequence[dict[str, Any] | None] = (),
) -> tuple[dict[str, Any] | None, list[dict[str, str]]]:
    """Return the request a container needs beyond ``reusable`` ones, and its mappings.

    As ``createResourceRequestAndMappings``: the reusable requests (of containers that
    start later and live longer) are mapped first, in order, until they cover the
    container's count; the rest, if any, is its own request.
    """
    count = container_requests(container).get(resource, 0)
    if not count:
        return None, []
    mappings = []
    covered = 0
    for request in reusable:
        if request is None:
            continue
        covered += request["exactly"]["count"]
        mappings.append(_mapping(container, resource, request["name"]))
        if covered >= count:
            return None, mappings
    resources = container.get("resources") or {}
    # The index among every request (cpu and memory too), sorted, as the scheduler does.
    names = sorted({*(resources.get("limits") or {}), *(resources.get("requests") or {})})
    name = f"container-{index}-request-{names.index(resource)}"
    request = {
        "name": name,
        "exactly": {
            "deviceClassName": class_name,
            "allocationMode": "ExactCount",
            "count": count - covered,
        },
    }
    return request, [*mappings, _mapping(container, resource, name)]


def _mapping(container: Mapping[str, Any], resource: str, request: str) -> dict[str, str]:
    return {"containerName": container["name"], "resourceName": resource, "requestName": request}


def requests_and_mappings(
    pod: Mapping[str, Any], resources: Iterable[str], classes: Mapping[str, str]
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Return the claim's device requests and the pod's request mappings for ``resources``.

    As ``createRequestsAndMappings``: regular containers and sidecars (init containers
    with ``restartPolicy: Always``) get a request each; a plain init container first
    reuses the requests of the long-lived containers after it, and the plain init
    containers' own requests collapse into the largest one (they run one at a time).
    """
    spec = pod.get("spec") or {}
    init_count = len(spec.get("initContainers") or ())
    containers = _all_containers(pod)
    short_lived = [
        i for i, c in enumerate(containers) if i < init_count and c.get("restartPolicy") != "Always"
    ]
    requests: list[dict[str, Any]] = []
    mappings: list[dict[str, str]] = []
    for resource in sorted(resources):
        class_name = classes[resource]
        long_requests: list[dict[str, Any] | None] = [None] * len(containers)
        long_mappings: list[dict[str, str]] = []
        for i, container in enumerate(containers):
            if i in short_lived:
                continue
            long_requests[i], found = _own_request(i, container, resource, class_name)
            long_mappings += found
        largest: dict[str, Any] | None = None
        short_names: set[str] = set()
        short_mappings: list[dict[str, str]] = []
        for i in short_lived:
            own, found = _own_request(i, containers[i], resource, class_name, long_requests[i:])
            if own is not None:
                short_names.add(own["name"])
                if largest is None or largest["exactly"]["count"] < own["exactly"]["count"]:
                    largest = own
            short_mappings += found
        if largest is not None:
            requests.append(largest)
            for mapping in short_mappings:
                if mapping["requestName"] in short_names:
                    mapping["requestName"] = largest["name"]
        requests += [request for request in long_requests if request is not None]
        mappings += long_mappings + short_mappings
    requests.sort(key=lambda item: item["name"])
    return requests, mappings


class ExtendedResourceScheduler:
    """kube-scheduler's part of KEP-5004 for one node of a :class:`FakeApiServer`.

    ``schedule(pod, node_allocatable=...)`` binds a pod to ``node``: the extended
    resources the node's device plugins advertise (``node_allocatable``, e.g. a
    :class:`FakeKubelet`'s allocatable counts) stay theirs; the others go through
    the DeviceClasses stored in ``api``, as described in this module.
    """

    def __init__(self, api: FakeApiServer, node: str) -> None:
        self.api = api
        self.node = node

    def schedule(
        self, pod: Mapping[str, Any], *, node_allocatable: Mapping[str, int] | None = None
    ) -> dict[str, Any]:
        """Return ``pod`` as bound (uid, namespace and, if DRA serves a resource, its status).

        :class:`SchedulingError` when a resource is neither advertised by the node nor
        backed by a class, or too few matching devices are free.
        """
        bound = copy.deepcopy(dict(pod))
        meta = bound.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        meta.setdefault("uid", str(uuid.uuid4()))
        allocatable = dict(node_allocatable or {})
        classes = resolve_device_classes(self.api.device_classes())
        wanted = {
            name for c in _all_containers(bound) for name, n in container_requests(c).items() if n
        }
        by_dra = set()
        for resource in sorted(wanted):
            if allocatable.get(resource, 0) > 0:
                continue  # the node's device plugin serves it
            if resource not in classes:
                raise SchedulingError(
                    f"0/1 nodes are available: 1 Insufficient {resource} (node {self.node} does "
                    "not advertise it and no DeviceClass has it as extendedResourceName)"
                )
            by_dra.add(resource)
        if not by_dra:
            return bound
        requests, mappings = requests_and_mappings(bound, by_dra, classes)
        results = self._allocate(requests)
        claim = self._create_claim(bound, requests, results)
        bound.setdefault("status", {})["extendedResourceClaimStatus"] = {
            "requestMappings": mappings,
            "resourceClaimName": claim["metadata"]["name"],
        }
        return bound

    def _allocate(self, requests: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
        classes = {obj["metadata"]["name"]: obj for obj in self.api.device_classes()}
        taken = self._allocated()
        candidates = self._devices()
        results = []
        for request in requests:
            exactly = request["exactly"]
            try:
                selectors = Selectors(classes[exactly["deviceClassName"]])
            except SelectorError as exc:
                raise SchedulingError(str(exc)) from exc
            picked: list[tuple[str, str, str]] = []
            for driver, pool, device in candidates:
                if len(picked) == exactly["count"]:
                    break
                if (driver, pool, device["name"]) in taken or _blocked(device):
                    continue
                try:
                    matched = selectors.match(driver, device)
                except SelectorError as exc:
                    raise SchedulingError(str(exc)) from exc
                if matched:
                    picked.append((driver, pool, device["name"]))
            if len(picked) < exactly["count"]:
                raise SchedulingError(
                    f"cannot allocate all claims: request {request['name']} wants "
                    f"{exactly['count']} device(s) of DeviceClass {selectors.name}, "
                    f"{len(picked)} free on node {self.node}"
                )
            taken.update(picked)
            results += [
                {"request": request["name"], "driver": d, "pool": p, "device": n}
                for d, p, n in picked
            ]
        return results

    def _devices(self) -> list[tuple[str, str, Mapping[str, Any]]]:
        """Return the node's devices, of each pool's newest generation only, in slice order."""
        slices = self.api.resource_slices(node_name=self.node)
        newest: dict[tuple[str, str], int] = {}
        for item in slices:
            spec = item["spec"]
            key = (spec["driver"], spec["pool"]["name"])
            newest[key] = max(newest.get(key, 0), spec["pool"]["generation"])
        devices = []
        for item in slices:
            spec = item["spec"]
            key = (spec["driver"], spec["pool"]["name"])
            if spec["pool"]["generation"] != newest[key]:
                continue
            devices += [(key[0], key[1], device) for device in spec.get("devices") or ()]
        return devices

    def _allocated(self) -> set[tuple[str, str, str]]:
        taken = set()
        for claim in self.api.store.list(RESOURCE_CLAIMS)["items"]:
            allocation = (claim.get("status") or {}).get("allocation") or {}
            for result in (allocation.get("devices") or {}).get("results") or ():
                taken.add((result["driver"], result["pool"], result["device"]))
        return taken

    def _create_claim(
        self,
        pod: Mapping[str, Any],
        requests: list[dict[str, Any]],
        results: list[dict[str, str]],
    ) -> dict[str, Any]:
        meta = pod["metadata"]
        body = {
            "metadata": {
                "generateName": f"{meta['name']}-extended-resources-",
                "annotations": {EXTENDED_RESOURCE_CLAIM_ANNOTATION: "true"},
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                    }
                ],
            },
            "spec": {"devices": {"requests": requests}},
        }
        created = self.api.store.create(RESOURCE_CLAIMS, body, meta["namespace"])
        created["status"] = {
            "allocation": {
                "devices": {"results": results},
                "nodeSelector": {
                    "nodeSelectorTerms": [
                        {
                            "matchFields": [
                                {"key": "metadata.name", "operator": "In", "values": [self.node]}
                            ]
                        }
                    ]
                },
            },
            "reservedFor": [{"resource": "pods", "name": meta["name"], "uid": meta["uid"]}],
        }
        return self.api.store.put_raw(RESOURCE_CLAIMS, created)


def _blocked(device: Mapping[str, Any]) -> bool:
    return any(taint.get("effect") in _BLOCKING_EFFECTS for taint in device.get("taints") or ())


async def prepare_extended_resources(
    kubelet: FakeDraKubelet, api: FakeApiServer, pod: Mapping[str, Any]
) -> dict[str, tuple[str, ...]]:
    """Prepare the pod's extended-resource claim as kubelet does; CDI device IDs per container.

    Every driver with a device in the claim gets NodePrepareResources for it; then each
    container (init and regular) gets the CDI devices of the requests mapped to its own
    extended resources. A pod without ``status.extendedResourceClaimStatus`` gets
    nothing. :class:`KubeletError` when the claim is missing or a driver fails it.
    """
    status = (pod.get("status") or {}).get("extendedResourceClaimStatus")
    if not status:
        return {}
    meta = pod["metadata"]
    namespace, name = meta["namespace"], status["resourceClaimName"]
    claim = next(
        (
            c
            for c in api.store.list(RESOURCE_CLAIMS, namespace)["items"]
            if c["metadata"]["name"] == name
        ),
        None,
    )
    if claim is None:
        raise KubeletError(f"unable to get claim info for claim {name} in namespace {namespace}")
    uid = claim["metadata"]["uid"]
    results = ((claim.get("status") or {}).get("allocation") or {}).get("devices", {}).get(
        "results"
    ) or ()
    by_request: dict[str, list[str]] = {}
    for driver in sorted({result["driver"] for result in results}):
        outcome = (await kubelet.prepare(driver, [(namespace, name, uid)]))[uid]
        if outcome.error:
            raise KubeletError(f"prepare claim {namespace}/{name} with {driver}: {outcome.error}")
        for device in outcome.devices:
            for request in device.request_names:
                by_request.setdefault(request, []).extend(device.cdi_device_ids)
    per_container: dict[str, tuple[str, ...]] = {}
    for container in _all_containers(pod):
        ids: list[str] = []
        for resource, count in container_requests(container).items():
            if not count:
                continue
            for mapping in status["requestMappings"]:
                if (
                    mapping["containerName"] == container["name"]
                    and mapping["resourceName"] == resource
                ):
                    ids += by_request.get(mapping["requestName"], [])
        per_container[container["name"]] = tuple(dict.fromkeys(ids))
    return per_container


async def allocate_extended_resource(
    api: FakeApiServer,
    kubelet: FakeDraKubelet,
    resource: str,
    count: int = 1,
    *,
    node_name: str,
    cdi_dir: str | Path,
    pod_name: str,
    namespace: str = "default",
    container: str = "main",
) -> tuple[dict[str, Any], DraClaim]:
    """Run a pod asking for ``count`` of ``resource`` (``DRIVER/TYPE``) as under KEP-5004.

    The resource's DeviceClass (:func:`host.dra._deviceclasses.device_class`, as
    ``devplugin-host dra deviceclasses`` prints it) is created unless a class of that
    name exists; pod ``namespace/pod_name``, one container asking for the resource in
    ``resources.limits`` (as written for the device plugin), is scheduled to
    ``node_name`` by :class:`ExtendedResourceScheduler`; kubelet prepares the pod's
    claim and its CDI IDs are resolved in ``cdi_dir``. Returns the bound pod (with
    ``status.extendedResourceClaimStatus``) and the prepared claim.
    :class:`~host.testing.KubeletError` saying what failed (no such class possible,
    too few devices, the driver's answer).
    """
    failure = f"cannot allocate {count} of {resource}"
    driver, _, dev_type = resource.partition("/")
    try:
        obj = device_class(driver, dev_type)
    except ValueError as exc:
        raise KubeletError(f"{failure}: {exc}") from None
    if obj["metadata"]["name"] not in {c["metadata"]["name"] for c in api.device_classes()}:
        api.add_device_class(obj)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod_name, "namespace": namespace},
        "spec": {
            "containers": [
                {"name": container, "image": "pause", "resources": {"limits": {resource: count}}}
            ]
        },
    }
    try:
        bound = ExtendedResourceScheduler(api, node_name).schedule(pod)
    except SchedulingError as exc:
        raise KubeletError(f"{failure}: {exc}") from None
    claim_name = bound["status"]["extendedResourceClaimStatus"]["resourceClaimName"]
    uid = api.store.get(RESOURCE_CLAIMS, claim_name, namespace)["metadata"]["uid"]
    claim = await prepare_allocated_claim(
        kubelet, driver, (namespace, claim_name, uid), cdi_dir=cdi_dir, failure=failure
    )
    return bound, claim
