"""ResourceClaims read from the API server through the host's Kubernetes client."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightkube
from lightkube.resources.resource_v1 import ResourceClaim

from host.dra._claimsource import ClaimNotFoundError
from host.dra._client import api_error_code

__all__ = ["KubeClaimSource"]


class KubeClaimSource:
    """A :class:`~host.dra.ClaimSource` over a lightkube ``AsyncClient``.

    GETs ``/apis/resource.k8s.io/v1/namespaces/<namespace>/resourceclaims/<name>``
    (``resource.k8s.io/v1``, GA since Kubernetes 1.34) and returns the claim as JSON
    data. A 404 is :class:`ClaimNotFoundError`; any other failure is raised as the
    client raised it (``lightkube.ApiError``, ``httpx`` errors). Calls may overlap: the
    client multiplexes them over its connection pool.
    """

    def __init__(self, client: lightkube.AsyncClient) -> None:
        self.client = client

    async def get_claim(self, namespace: str, name: str) -> Mapping[str, Any]:
        """Return ResourceClaim ``namespace/name``."""
        try:
            claim = await self.client.get(ResourceClaim, name, namespace=namespace)
        except Exception as exc:
            if api_error_code(exc) == 404:
                raise ClaimNotFoundError(
                    f"ResourceClaim {namespace}/{name} does not exist (deleted?)"
                ) from exc
            raise
        data: dict[str, Any] = claim.to_dict()
        return data
