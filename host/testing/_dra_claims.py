"""An in-memory ResourceClaim store for testing DRA drivers without an API server."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterable, Mapping
from typing import Any

from host.dra import ClaimNotFoundError

__all__ = ["FakeClaims", "allocated_claim"]


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
    """

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self.failure: BaseException | None = None
        self.gets = 0
        self.in_flight_max = 0
        self._in_flight = 0
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
