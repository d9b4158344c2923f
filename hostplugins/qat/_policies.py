"""GetPreferredAllocation for QAT VFs: the ``none``, ``packed`` and ``balanced`` policies.

Device IDs are VF PCI addresses (``0000:6b:00.1``). Every policy is a pure function
of the offered IDs, so the same request always gets the same answer.
"""

from __future__ import annotations

from collections.abc import Sequence

from host.deviceplugin import pluginapi
from hostplugins import _allocation

__all__ = [
    "POLICIES",
    "balanced_policy",
    "none_policy",
    "packed_policy",
    "preferred_allocation",
]

Policy = _allocation.Policy


def none_policy(available: Sequence[str], size: int) -> list[str]:
    """Take the first ``size`` IDs in the offered order."""
    return list(available[:size])


def packed_policy(available: Sequence[str], size: int) -> list[str]:
    """Take the lowest addresses: the VFs of one PF before the next PF's."""
    return sorted(available)[:size]


def _swapped(bdf: str) -> str:
    """``DDDD:BB:DD.F`` -> ``DD.F:BB:DDDD``: sorting on it interleaves the PFs."""
    parts = bdf.split(":")
    return ":".join(reversed(parts)) if len(parts) == 3 else bdf


def balanced_policy(available: Sequence[str], size: int) -> list[str]:
    """Spread over the PFs: sort by device.function first, then bus, then domain.

    VF ``00.1`` of every PF comes before any PF's ``00.2``, as in the Go plugin.
    """
    return sorted(available, key=lambda bdf: (_swapped(bdf), bdf))[:size]


POLICIES: dict[str, Policy] = {
    "none": none_policy,
    "balanced": balanced_policy,
    "packed": packed_policy,
}


def preferred_allocation(
    request: pluginapi.PreferredAllocationRequest, policy: Policy
) -> pluginapi.PreferredAllocationResponse:
    """Answer kubelet's GetPreferredAllocation with ``policy``, one answer per container.

    See :func:`hostplugins._allocation.preferred_allocation`; an ID offered twice counts once.
    """
    return _allocation.preferred_allocation(request, policy, dedupe_offered=True)
