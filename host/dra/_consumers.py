"""Who a prepared claim is for: ``status.reservedFor`` as the driver read it from the API server.

The scheduler reserves an allocated ResourceClaim for the pods that use it
(``status.reservedFor``, at most 256 entries, usually one pod) before kubelet asks the
driver to prepare it, so the claim the driver fetches already names its pods.
:class:`ClaimConsumers` wraps the driver's :class:`~host.dra.ClaimSource` and keeps that
list per claim UID, for status pages only: a claim prepared before a restart (answered
from the checkpoint, never fetched) has no known consumers.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from typing import Any

from host.dra._claimsource import ClaimSource

__all__ = ["ClaimConsumer", "ClaimConsumers"]

KEEP = 4096
"""Claims remembered; past this, the oldest not prepared are forgotten first."""


@dataclass(frozen=True)
class ClaimConsumer:
    """One ``status.reservedFor`` entry: what uses the claim (a pod, almost always)."""

    resource: str
    name: str
    uid: str
    api_group: str = ""

    def __str__(self) -> str:
        if self.resource == "pods" and not self.api_group:
            return self.name
        group = f".{self.api_group}" if self.api_group else ""
        return f"{self.resource}{group}/{self.name}"

    def to_json(self) -> dict[str, str]:
        """Return the entry as status data."""
        data = {"resource": self.resource, "name": self.name, "uid": self.uid}
        if self.api_group:
            data["api_group"] = self.api_group
        return data


def reserved_for(claim: Mapping[str, Any]) -> tuple[ClaimConsumer, ...]:
    """Return the consumers a ResourceClaim's ``status.reservedFor`` names (malformed: left out)."""
    status = claim.get("status")
    entries = status.get("reservedFor") if isinstance(status, Mapping) else None
    if not isinstance(entries, list):
        return ()
    found = []
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        resource, name = entry.get("resource"), entry.get("name")
        if not isinstance(resource, str) or not isinstance(name, str):
            continue
        group = entry.get("apiGroup")
        uid = entry.get("uid")
        found.append(
            ClaimConsumer(
                resource, name, uid if isinstance(uid, str) else "", group if group else ""
            )
        )
    return tuple(found)


class ClaimConsumers:
    """A :class:`~host.dra.ClaimSource` that remembers each fetched claim's consumers.

    ``get_claim`` is the wrapped source's; every claim it returns is remembered by UID.
    ``prepared`` (set by the owner once the driver exists) tells which UIDs are still
    prepared: past :data:`KEEP` claims the oldest of the others are forgotten first.
    """

    def __init__(self, source: ClaimSource, *, keep: int = KEEP) -> None:
        self.source = source
        self.prepared: Callable[[], Container[str]] = lambda: ()
        self._keep = keep
        self._known: dict[str, tuple[ClaimConsumer, ...]] = {}

    async def get_claim(self, namespace: str, name: str) -> Mapping[str, Any]:
        """Return the claim from the wrapped source, remembering whom it is reserved for."""
        claim = await self.source.get_claim(namespace, name)
        metadata = claim.get("metadata")
        uid = metadata.get("uid") if isinstance(metadata, Mapping) else None
        if isinstance(uid, str) and uid:
            self._known.pop(uid, None)  # re-inserted: the newest last
            self._known[uid] = reserved_for(claim)
            if len(self._known) > self._keep:
                self._forget()
        return claim

    def _forget(self) -> None:
        # Oldest first: the newest may be a claim being prepared right now.
        prepared = self.prepared()
        excess = len(self._known) - self._keep
        for uid in [uid for uid in self._known if uid not in prepared][:excess]:
            del self._known[uid]
        while len(self._known) > self._keep:
            del self._known[next(iter(self._known))]

    def of(self, uid: str) -> tuple[ClaimConsumer, ...] | None:
        """Return claim ``uid``'s consumers as last fetched; None when it was never fetched."""
        return self._known.get(uid)
