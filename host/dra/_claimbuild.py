"""Turning a claim's allocated devices into prepared devices with CDI device IDs.

Two ways, depending on the scanner:

* **plain** (no ``allocate`` / ``post_allocate``): each device gets a per-claim CDI
  device ``<driver>/dra=claim-<uid>-<device>`` holding its nodes, mounts and envs, plus
  the scanner's own CDI device when its DeviceInfo carries a ``cdi_spec``;
* **through the plugin's Allocate methods**: the claim's devices are grouped by device
  type (a device-plugin resource) and by request names (the containers that get them),
  and each group becomes one ``AllocateRequest`` with one container request, answered
  by the scanner's ``allocate`` (or the default answer built from the DeviceInfos, as
  the device-plugin server does) and passed to ``post_allocate``. The container
  response's nodes, mounts and envs become one per-claim CDI device
  ``claim-<uid>-<type>`` shared by the group's devices, its ``cdi_devices`` are passed
  on as they are, and its annotations are dropped (DRA has no channel for them).

Plugin methods run only behind the plugin wall (a
:class:`~host.deviceplugin._guard.PluginCaller`, with its deadline); any failure of
theirs is a :class:`ClaimError` of that claim.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from host._api import api_pb2 as pluginapi
from host.deviceplugin._cdi import qualified_name
from host.deviceplugin._guard import PluginCaller, PluginError
from host.deviceplugin._types import UseDefaultMethodError
from host.dra._prepare import (
    AllocatedDevice,
    ClaimError,
    ClaimRef,
    PreparedDevice,
    claim_cdi_spec,
    container_edits,
    response_edits,
)

__all__ = ["ClaimBuilder", "ClaimParts"]

log = logging.getLogger("host.dra.prepare")

ClaimParts = tuple[list[PreparedDevice], list[Mapping[str, Any]]]
"""The prepared devices of a claim and the CDI specs they name (to be written)."""


class ClaimBuilder:
    """Builds the prepared devices and CDI specs of claims for driver ``driver``.

    ``caller`` runs the scanner's methods (pass the plugin's own, shared with its
    device-plugin servers, so one deadline and one thread pool govern the plugin).
    """

    def __init__(self, driver: str, scanner: object, caller: PluginCaller | None = None) -> None:
        self.driver = driver
        self._caller = caller or PluginCaller(driver)
        self._allocate = getattr(scanner, "allocate", None)
        self._post_allocate = getattr(scanner, "post_allocate", None)

    @property
    def uses_allocate(self) -> bool:
        """Whether claims go through the scanner's ``allocate`` / ``post_allocate``."""
        return callable(self._allocate) or callable(self._post_allocate)

    async def build(self, ref: ClaimRef, allocated: Sequence[AllocatedDevice]) -> ClaimParts:
        """Return the prepared devices and CDI specs of ``allocated`` for claim ``ref``.

        Raises :class:`ClaimError` when a plugin method fails or a CDI spec is invalid.
        """
        if self.uses_allocate:
            return await self._build_through_allocate(ref, allocated)
        return self._build_plain(ref, allocated)

    def _spec(self, name: str, edits: Mapping[str, Any]) -> Mapping[str, Any]:
        # Validated once, by the CDI writer when the driver writes it (a ValueError
        # there fails the claim).
        return claim_cdi_spec(self.driver, name, edits)

    def _build_plain(self, ref: ClaimRef, allocated: Sequence[AllocatedDevice]) -> ClaimParts:
        specs: dict[str, Mapping[str, Any]] = {}
        devices = []
        for dev in allocated:
            ids: list[str] = []
            own = dev.info.cdi_spec
            if own is not None:
                ids.append(qualified_name(own))
                specs.setdefault(ids[-1], own)
            edits = container_edits(dev.info.nodes, dev.info.mounts, dev.info.envs)
            if edits:
                spec = self._spec(f"claim-{ref.uid}-{dev.device}", edits)
                ids.append(qualified_name(spec))
                specs.setdefault(ids[-1], spec)
            devices.append(_prepared(dev, ids))
        return devices, list(specs.values())

    async def _build_through_allocate(
        self, ref: ClaimRef, allocated: Sequence[AllocatedDevice]
    ) -> ClaimParts:
        groups: dict[tuple[str, tuple[str, ...]], list[AllocatedDevice]] = {}
        for dev in allocated:
            groups.setdefault((dev.dev_type, dev.request_names), []).append(dev)
        per_type: dict[str, int] = {}
        for dev_type, _ in groups:
            per_type[dev_type] = per_type.get(dev_type, 0) + 1
        seen: dict[str, int] = {}
        specs: dict[str, Mapping[str, Any]] = {}
        ids_of: dict[int, list[str]] = {}
        for (dev_type, _), group in groups.items():
            cresp = await self._allocate_group(ref, dev_type, group)
            ids: list[str] = []
            edits = response_edits(cresp)
            if edits:
                seen[dev_type] = seen.get(dev_type, 0) + 1
                name = f"claim-{ref.uid}-{dev_type}"
                if per_type[dev_type] > 1:
                    name += f"-{seen[dev_type]}"
                spec = self._spec(name, edits)
                ids.append(qualified_name(spec))
                specs.setdefault(ids[-1], spec)
            if cresp.annotations:
                log.debug(
                    "driver %s, claim %s: dropping annotations %s (DRA passes only CDI IDs)",
                    self.driver,
                    ref,
                    dict(cresp.annotations),
                )
            own_specs = {
                qualified_name(d.info.cdi_spec): d.info.cdi_spec
                for d in group
                if d.info.cdi_spec is not None
            }
            for cdi in cresp.cdi_devices:
                if cdi.name and cdi.name not in ids:
                    ids.append(cdi.name)
                    if cdi.name in own_specs:
                        specs.setdefault(cdi.name, own_specs[cdi.name])
            for dev in group:
                ids_of[id(dev)] = ids
        devices = [_prepared(dev, ids_of[id(dev)]) for dev in allocated]
        return devices, list(specs.values())

    async def _allocate_group(
        self, ref: ClaimRef, dev_type: str, group: Sequence[AllocatedDevice]
    ) -> pluginapi.ContainerAllocateResponse:
        dev_ids = list(dict.fromkeys(dev.dev_id for dev in group))
        request = pluginapi.AllocateRequest()
        request.container_requests.add(devices_ids=dev_ids)
        where = f"claim {ref}: {self.driver}/{dev_type} devices {', '.join(dev_ids)}"
        response: pluginapi.AllocateResponse | None = None
        if callable(self._allocate):
            try:
                result = await self._caller.call("allocate", self._allocate, request)
            except PluginError as exc:
                if not isinstance(exc.__cause__, UseDefaultMethodError):
                    log.warning("%s: %s", where, exc)
                    raise ClaimError(f"{where}: {exc}") from exc
                result = None
            if isinstance(result, pluginapi.AllocateResponse):
                response = result
            elif result is not None and not isinstance(result, UseDefaultMethodError):
                raise ClaimError(
                    f"{where}: the plugin's allocate returned {type(result).__name__}, "
                    "expected an AllocateResponse"
                )
        if response is None:
            response = _default_response(group)
        if callable(self._post_allocate):
            try:
                await self._caller.call("post_allocate", self._post_allocate, response)
            except PluginError as exc:
                log.warning("%s: %s", where, exc)
                raise ClaimError(f"{where}: {exc}") from exc
        if len(response.container_responses) != 1:
            raise ClaimError(
                f"{where}: the plugin answered one container request with "
                f"{len(response.container_responses)} container responses"
            )
        return response.container_responses[0]


def _default_response(group: Sequence[AllocatedDevice]) -> pluginapi.AllocateResponse:
    """Build the device-plugin server's default Allocate answer for the group's devices."""
    response = pluginapi.AllocateResponse()
    cresp = response.container_responses.add()
    cdi_names: list[str] = []
    done: set[str] = set()
    for dev in group:
        if dev.dev_id in done:
            continue
        done.add(dev.dev_id)
        for node in dev.info.nodes:
            cresp.devices.add(
                container_path=node.container_path,
                host_path=node.host_path,
                permissions=node.permissions,
            )
        for mount in dev.info.mounts:
            cresp.mounts.add(
                container_path=mount.container_path,
                host_path=mount.host_path,
                read_only=mount.read_only,
            )
        cresp.envs.update(dev.info.envs)
        cresp.annotations.update(dev.info.annotations)
        if dev.info.cdi_spec is not None:
            name = qualified_name(dev.info.cdi_spec)
            if name not in cdi_names:
                cdi_names.append(name)
    for name in cdi_names:
        cresp.cdi_devices.add(name=name)
    return response


def _prepared(dev: AllocatedDevice, ids: Sequence[str]) -> PreparedDevice:
    return PreparedDevice(
        request_names=dev.request_names,
        pool=dev.pool,
        device=dev.device,
        cdi_device_ids=tuple(ids),
        share_id=dev.share_id,
    )
