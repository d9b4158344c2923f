"""Where the kubelet side of a DRA driver reads ResourceClaims from."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

__all__ = ["ClaimNotFoundError", "ClaimSource"]


class ClaimNotFoundError(LookupError):
    """The ResourceClaim does not exist (the API server answered 404)."""


@runtime_checkable
class ClaimSource(Protocol):
    """Reads one ResourceClaim (``resource.k8s.io/v1``) by namespace and name.

    ``get_claim`` returns the claim as JSON-like data (``metadata``, ``spec``,
    ``status``), raises :class:`ClaimNotFoundError` when it does not exist, and any
    other exception when the API server cannot be asked; the driver turns each into the
    error of that claim alone. Several calls run concurrently, one per claim.
    """

    async def get_claim(self, namespace: str, name: str) -> Mapping[str, Any]:
        """Return the ResourceClaim ``namespace/name``."""
        ...
