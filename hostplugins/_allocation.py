"""Allocation helpers the built-in plugins share: GetPreferredAllocation, env renumbering."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from host.deviceplugin import pluginapi

__all__ = ["Policy", "preferred_allocation", "renumber_envs"]

Policy = Callable[[Sequence[str], int], list[str]]
"""Chooses ``size`` IDs out of the offered ones (never fewer when enough are offered)."""


def preferred_allocation(
    request: pluginapi.PreferredAllocationRequest, policy: Policy, *, dedupe_offered: bool
) -> pluginapi.PreferredAllocationResponse:
    """Answer kubelet's GetPreferredAllocation with ``policy``, one answer per container.

    The ``must_include`` IDs come first (kubelet requires them in the answer); the
    policy picks the rest from the other offered IDs. Raises ValueError when a
    container asks for more devices than are offered. With ``dedupe_offered``, an ID
    offered twice counts (and is offered to the policy) once.
    """
    response = pluginapi.PreferredAllocationResponse()
    for index, container in enumerate(request.container_requests):
        available = list(container.available_deviceIDs)
        if dedupe_offered:
            available = list(dict.fromkeys(available))
        size = container.allocation_size
        if size < 0 or size > len(available):
            offered = ", ".join(available) or "none"
            raise ValueError(
                f"container request {index}: cannot choose {size} devices out of the "
                f"{len(available)} available ({offered})"
            )
        chosen = list(dict.fromkeys(container.must_include_deviceIDs))
        rest = [device_id for device_id in available if device_id not in chosen]
        chosen += policy(rest, max(size - len(chosen), 0))
        response.container_responses.add(deviceIDs=chosen)
    return response


def renumber_envs(response: pluginapi.AllocateResponse, prefix: str) -> None:
    """Re-key the ``<prefix><n>`` envs of each container to ``<prefix>0`` .. ``<prefix>k-1``.

    Each container is numbered on its own, in the order of the scan's numbers; other
    envs are left alone. (The Go plugins shared one map across containers, so a
    second container also got the first one's devices.)
    """
    pattern = re.compile(re.escape(prefix) + r"(\d+)")
    for container in response.container_responses:
        numbered = sorted(
            (int(match.group(1)), key)
            for key in container.envs
            if (match := pattern.fullmatch(key)) is not None
        )
        values = [container.envs[key] for _, key in numbered]
        for _, key in numbered:
            del container.envs[key]
        for index, value in enumerate(values):
            container.envs[f"{prefix}{index}"] = value
