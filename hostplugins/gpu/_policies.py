"""GetPreferredAllocation for shared GPUs: the ``none``, ``balanced`` and ``packed`` policies.

Device IDs are ``<card>-<share>`` (``card0-1``); a policy decides which shares kubelet
should prefer when a container asks for several. Every policy is a pure function of
the offered IDs, so the same request always gets the same answer.
"""

from __future__ import annotations

from collections.abc import Sequence

from host.deviceplugin import pluginapi
from hostplugins import _allocation
from hostplugins._sysfs import natural_key

__all__ = [
    "POLICIES",
    "balanced_policy",
    "none_policy",
    "packed_policy",
    "preferred_allocation",
]

Policy = _allocation.Policy


def _card_of(device_id: str) -> str:
    return device_id.split("-", 1)[0]


def none_policy(available: Sequence[str], size: int) -> list[str]:
    """Take the first offered share of each distinct card, then the rest in offered order."""
    chosen: list[str] = []
    seen_cards: set[str] = set()
    for device_id in available:
        if len(chosen) == size:
            return chosen
        card = _card_of(device_id)
        if card not in seen_cards:
            seen_cards.add(card)
            chosen.append(device_id)
    for device_id in available:
        if len(chosen) == size:
            break
        if device_id not in chosen:
            chosen.append(device_id)
    return chosen


def balanced_policy(available: Sequence[str], size: int) -> list[str]:
    """Repeatedly take the lowest share of the card with the most free shares.

    Ties go to the lowest card (natural order: ``card2`` before ``card10``), so a
    request for two shares of two idle cards gets one share of each.
    """
    by_card: dict[str, list[str]] = {}
    for device_id in sorted(set(available), key=natural_key):
        by_card.setdefault(_card_of(device_id), []).append(device_id)
    cards = sorted(by_card, key=natural_key)
    chosen: list[str] = []
    while cards and len(chosen) < size:
        # max() returns the first maximal card in the sorted order: the tie-break.
        card = max(cards, key=lambda c: len(by_card[c]))
        if not by_card[card]:
            break
        chosen.append(by_card[card].pop(0))
    return chosen


def packed_policy(available: Sequence[str], size: int) -> list[str]:
    """Take the lowest shares in natural order: fill card0 before card1."""
    return sorted(set(available), key=natural_key)[:size]


POLICIES: dict[str, Policy] = {
    "none": none_policy,
    "balanced": balanced_policy,
    "packed": packed_policy,
}


def preferred_allocation(
    request: pluginapi.PreferredAllocationRequest, policy: Policy
) -> pluginapi.PreferredAllocationResponse:
    """Answer kubelet's GetPreferredAllocation with ``policy``, one answer per container.

    See :func:`hostplugins._allocation.preferred_allocation`; the offered IDs are taken
    as they come (not deduplicated), as before the helper was shared.
    """
    return _allocation.preferred_allocation(request, policy, dedupe_offered=False)
