"""ResourceClaims for tests: an in-memory claim store, and claims allocated and prepared.

:class:`FakeClaims` stands in for the API server's claims when a test drives a
:class:`~host.dra.DraDriver` directly. :func:`allocate_claim` does what the scheduler
and kubelet do with a claim, against :class:`~host.testing.FakeApiServer` and
:class:`~host.testing.FakeDraKubelet`: picks devices from the published slices,
creates the claim allocated to them, has kubelet prepare it and resolves the CDI
device IDs returned to the CDI spec files a container runtime would read.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from host.dra import ClaimNotFoundError
from host.testing._container import cdi_definitions, resolve_cdi_device
from host.testing._kubelet_types import KubeletError

if TYPE_CHECKING:
    from host.testing._apiserver import FakeApiServer
    from host.testing._kubelet_dra import DraDevice, FakeDraKubelet

__all__ = [
    "DraClaim",
    "FakeClaims",
    "allocate_claim",
    "allocated_claim",
    "prepare_allocated_claim",
]

_names = itertools.count(1)


def allocated_claim(
    namespace: str,
    name: str,
    uid: str,
    results: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Return a ``resource.k8s.io/v1`` ResourceClaim as the scheduler leaves it.

    ``results`` are ``status.allocation.devices.results`` entries (``request``,
    ``driver``, ``pool``, ``device``, optionally ``shareID``); without any the claim is
    not allocated (no ``status.allocation``).
    """
    claim: dict[str, Any] = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"namespace": namespace, "name": name, "uid": uid},
        "spec": {"devices": {"requests": []}},
        "status": {},
    }
    result_list = [dict(result) for result in results]
    if result_list:
        claim["status"]["allocation"] = {"devices": {"results": result_list}}
    return claim


class FakeClaims:
    """A :class:`~host.dra.ClaimSource` over a dict, with injectable latency and failures.

    ``latency`` seconds pass before every answer (an API server round trip);
    ``failure``, when set, is raised by every ``get_claim``. ``gets`` counts the calls
    and ``in_flight_max`` records how many ran at once.

    ``together``, when set to N, holds every ``get_claim`` until N are in flight at once
    (a barrier): the proof that the callers fetch concurrently, whatever the machine's
    scheduling. Should fewer ever arrive, the barrier breaks after ``together_timeout``
    seconds and lets every fetch through (``in_flight_max`` then tells how many came).
    Once met, the barrier stays open: later fetches pass at once.
    """

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self.failure: BaseException | None = None
        self.gets = 0
        self.in_flight_max = 0
        self.together = 0
        self.together_timeout = 10.0
        self._in_flight = 0
        self._all_in = asyncio.Event()
        self._claims: dict[tuple[str, str], dict[str, Any]] = {}

    def put(self, claim: Mapping[str, Any]) -> None:
        """Store (or replace) ``claim``, keyed by its metadata namespace and name."""
        meta = claim["metadata"]
        self._claims[(meta["namespace"], meta["name"])] = copy.deepcopy(dict(claim))

    def delete(self, namespace: str, name: str) -> None:
        """Remove the claim ``namespace/name`` (if there is one)."""
        self._claims.pop((namespace, name), None)

    async def get_claim(self, namespace: str, name: str) -> Mapping[str, Any]:
        """Return a copy of the stored claim; ClaimNotFoundError when there is none."""
        self.gets += 1
        self._in_flight += 1
        self.in_flight_max = max(self.in_flight_max, self._in_flight)
        try:
            await self._barrier()
            if self.latency:
                await asyncio.sleep(self.latency)
            if self.failure is not None:
                raise self.failure
            claim = self._claims.get((namespace, name))
            if claim is None:
                raise ClaimNotFoundError(
                    f'resourceclaims.resource.k8s.io "{name}" not found in namespace {namespace}'
                )
            return copy.deepcopy(claim)
        finally:
            self._in_flight -= 1

    async def _barrier(self) -> None:
        if not self.together or self._all_in.is_set():
            return
        if self._in_flight >= self.together:
            self._all_in.set()
            return
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation
            # that arrives together with the result (bpo-42130).
            async with asyncio.timeout(self.together_timeout):
                await self._all_in.wait()
        except TimeoutError:
            self._all_in.set()  # broken: fewer came; let every fetch through


def _edits(cdi_dir: str | Path, cdi_id: str) -> dict[str, list[Any]]:
    """Return the container edits of ``cdi_id``, the spec's then the device's, by kind."""
    edits: dict[str, list[Any]] = {}
    for source in resolve_cdi_device(cdi_dir, cdi_id):
        for key, values in source.items():
            edits.setdefault(key, []).extend(values or ())
    return edits


@dataclass(frozen=True)
class DraClaim:
    """A claim allocated and prepared by :func:`allocate_claim`: what a container gets."""

    namespace: str
    name: str
    uid: str
    driver: str
    devices: tuple[str, ...]
    """The devices prepared (ResourceSlice device names), in the allocation's order."""
    prepared: tuple[DraDevice, ...]
    """Kubelet's answer, device by device (pool, device, CDI IDs, request names)."""
    cdi_ids: tuple[str, ...]
    """The CDI device IDs of the devices, each once, as kubelet hands them to the runtime."""
    edits: Mapping[str, Mapping[str, list[Any]]] = field(default_factory=dict)
    """CDI ID → its container edits (the spec's, then the device's), as the runtime applies them."""
    spec_files: Mapping[str, Path] = field(default_factory=dict)
    """CDI ID → the spec file defining it."""

    @property
    def ref(self) -> tuple[str, str, str]:
        """``(namespace, name, uid)``: what :meth:`FakeDraKubelet.prepare` takes."""
        return (self.namespace, self.name, self.uid)

    @property
    def env(self) -> dict[str, str]:
        """The environment the container gets from every CDI ID (later IDs win)."""
        pairs = (
            entry.partition("=") for edits in self.edits.values() for entry in edits.get("env", ())
        )
        return {key: value for key, _, value in pairs}

    @property
    def device_nodes(self) -> list[str]:
        """The container paths of every device node, in CDI ID order."""
        return [
            node["path"] for edits in self.edits.values() for node in edits.get("deviceNodes", ())
        ]


def _published(api: FakeApiServer, driver: str, node_name: str) -> list[dict[str, Any]]:
    """Return the devices of the pool's newest generation, in slice and device order."""
    slices = api.resource_slices(driver=driver, node_name=node_name)
    newest = max((s["spec"]["pool"]["generation"] for s in slices), default=0)
    return [
        device
        for item in slices
        if item["spec"]["pool"]["generation"] == newest
        for device in item["spec"].get("devices") or ()
    ]


def _taken(api: FakeApiServer, driver: str, node_name: str) -> set[str]:
    """Return the devices of ``driver`` on ``node_name`` some claim is allocated already."""
    from host.testing._apiserver_store import RESOURCE_CLAIMS

    taken = set()
    for claim in api.store.list(RESOURCE_CLAIMS)["items"]:
        allocation = (claim.get("status") or {}).get("allocation") or {}
        for result in (allocation.get("devices") or {}).get("results") or ():
            if result.get("driver") == driver and result.get("pool") == node_name:
                taken.add(result["device"])
    return taken


async def allocate_claim(
    api: FakeApiServer,
    kubelet: FakeDraKubelet,
    resource: str,
    count: int = 1,
    *,
    node_name: str,
    cdi_dir: str | Path,
    namespace: str = "default",
    name: str | None = None,
    pod: str | None = None,
) -> DraClaim:
    """Allocate ``count`` devices of ``resource`` (``DRIVER/TYPE``) and prepare them.

    What the scheduler and kubelet do: the devices are the first ``count`` of the
    newest published slices of ``DRIVER`` on ``node_name`` whose ``type`` attribute is
    ``TYPE``, untainted and allocated to no other claim; ResourceClaim
    ``namespace/name`` (``claim-N`` unless given) is created allocated to them, with
    one request ``devices``, and reserved for pod ``pod`` (default: named as the
    claim), as the scheduler reserves a claim for its pod before kubelet prepares it;
    kubelet prepares it (NodePrepareResources); each CDI ID returned is resolved in
    ``cdi_dir``. Raises :class:`~host.testing.KubeletError`
    saying what is missing (devices, a registered driver, a spec file) or what the
    driver answered.
    """
    driver, _, dev_type = resource.partition("/")
    if not driver or not dev_type or count < 1:
        raise ValueError(
            f"allocate_claim: want DRIVER/TYPE and count >= 1, got {resource!r}, {count}"
        )
    published = _published(api, driver, node_name)
    taken = _taken(api, driver, node_name)
    usable = [
        device["name"]
        for device in published
        if (device.get("attributes") or {}).get("type", {}).get("string") == dev_type
        and not device.get("taints")
        and device["name"] not in taken
    ]
    if len(usable) < count:
        types = sorted(
            {
                str(t)
                for d in published
                if (t := (d.get("attributes") or {}).get("type", {}).get("string"))
            }
        )
        raise KubeletError(
            f"cannot allocate {count} of {resource}: only {len(usable)} untainted device(s) "
            f"of type {dev_type!r} free on node {node_name} (types published: "
            f"{', '.join(types) or 'none'})"
        )
    results = [
        {"request": "devices", "driver": driver, "pool": node_name, "device": device}
        for device in usable[:count]
    ]
    request = {"name": "devices", "exactly": {"deviceClassName": driver, "count": count}}
    claim_name = name or f"claim-{next(_names)}"
    consumer = {"resource": "pods", "name": pod or claim_name, "uid": str(uuid.uuid4())}
    claim = api.add_claim(
        namespace,
        claim_name,
        allocation={"devices": {"results": results}},
        reserved_for=[consumer],
        spec={"devices": {"requests": [request]}},
    )
    return await prepare_allocated_claim(
        kubelet,
        driver,
        (namespace, claim_name, claim["metadata"]["uid"]),
        cdi_dir=cdi_dir,
        failure=f"cannot allocate {count} of {resource}",
    )


async def prepare_allocated_claim(
    kubelet: FakeDraKubelet,
    driver: str,
    ref: tuple[str, str, str],
    *,
    cdi_dir: str | Path,
    failure: str,
) -> DraClaim:
    """Have kubelet prepare the allocated claim ``ref`` with ``driver``; resolve its CDI IDs.

    :class:`~host.testing.KubeletError` starting with ``failure`` when the driver is not
    registered, fails the claim, or names a CDI ID no spec file in ``cdi_dir`` defines.
    """
    namespace, claim_name, uid = ref
    try:
        outcome = (await kubelet.prepare(driver, [ref]))[uid]
    except KubeletError as exc:
        raise KubeletError(f"{failure}: {exc}") from None
    if outcome.error:
        raise KubeletError(
            f"{failure}: NodePrepareResources failed for ResourceClaim {claim_name}: "
            f"{outcome.error}"
        )
    # Devices of one type may share one CDI device: each ID once, as the runtime gets it.
    cdi_ids = tuple(dict.fromkeys(i for device in outcome.devices for i in device.cdi_device_ids))
    edits, files = {}, {}
    for cdi_id in cdi_ids:
        try:
            edits[cdi_id] = _edits(cdi_dir, cdi_id)
        except KubeletError as exc:
            raise KubeletError(f"{failure}: claim {claim_name} prepared, but {exc}") from None
        files[cdi_id] = cdi_definitions(cdi_dir, cdi_id)[0][0]
    return DraClaim(
        namespace,
        claim_name,
        uid,
        driver,
        tuple(device.device for device in outcome.devices),
        outcome.devices,
        cdi_ids,
        edits,
        files,
    )
