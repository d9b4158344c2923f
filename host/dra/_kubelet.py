"""The DRA kubelet plugin service (``v1.DRAPlugin`` and ``v1beta1.DRAPlugin``) on a Unix socket.

Both versions carry the same messages with the same field numbers (v1 adds
``Device.share_id``), so one implementation behind two thin servicers answers both:
kubelet 1.34+ calls v1, 1.32-1.33 call v1beta1 (kubernetes/kubelet
``pkg/apis/dra/v1/api.proto``, ``pkg/apis/dra/v1beta1/api.proto``).

What fails a whole call and what fails one claim: the Go helper
(k8s.io/dynamic-resource-allocation ``kubeletplugin/draplugin.go``) fails the whole
NodePrepareResources with a gRPC error when a claim cannot be fetched, is not
allocated or has another UID. Here each of those is the ``error`` of that claim alone,
so one bad claim never holds back the pod's other claims, and kubelet retries just as
it does after a gRPC error. Only a request that cannot be answered per claim fails as a
whole: a claim without UID (the response is keyed by UID) is INVALID_ARGUMENT.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import grpc

from host._api import dra_v1_pb2, dra_v1_pb2_grpc, dra_v1beta1_pb2, dra_v1beta1_pb2_grpc
from host.deviceplugin._socketfile import UnixSocketServer
from host.dra._prepare import ClaimError, ClaimRef, PreparedClaim

__all__ = [
    "ClaimPreparer",
    "DraV1Servicer",
    "DraV1beta1Servicer",
    "UnixSocketServer",
]

log = logging.getLogger("host.dra.kubelet")

PrepareOutcome = PreparedClaim | ClaimError
UnprepareOutcome = ClaimError | None


class ClaimPreparer(Protocol):
    """What the servicers call: prepare and unprepare claims, one outcome per claim UID."""

    async def prepare(self, claims: Sequence[ClaimRef]) -> Mapping[str, PrepareOutcome]:
        """Prepare ``claims``; map each UID to the prepared claim or its error."""
        ...

    async def unprepare(self, claims: Sequence[ClaimRef]) -> Mapping[str, UnprepareOutcome]:
        """Unprepare ``claims``; map each UID to None (done) or its error."""
        ...


class _InvalidRequestError(Exception):
    pass


def _claim_refs(claims: Sequence[Any], method: str) -> list[ClaimRef]:
    refs = []
    for index, claim in enumerate(claims):
        if not claim.uid:
            raise _InvalidRequestError(
                f"{method}: claim {index} ({claim.namespace}/{claim.name}) has no UID; "
                "the response is keyed by claim UID"
            )
        refs.append(ClaimRef(claim.namespace, claim.name, claim.uid))
    return refs


async def _prepare(
    preparer: ClaimPreparer,
    request: Any,
    response: Any,
    context: grpc.aio.ServicerContext[Any, Any],
    *,
    with_share_id: bool,
) -> Any:
    try:
        refs = _claim_refs(request.claims, "NodePrepareResources")
    except _InvalidRequestError as err:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
    outcomes = await preparer.prepare(refs)
    for uid, outcome in outcomes.items():
        entry = response.claims[uid]
        if isinstance(outcome, ClaimError):
            entry.error = str(outcome)
            continue
        for device in outcome.devices:
            message = entry.devices.add(
                request_names=device.request_names,
                pool_name=device.pool,
                device_name=device.device,
                cdi_device_ids=device.cdi_device_ids,
            )
            if with_share_id and device.share_id is not None:
                message.share_id = device.share_id
    return response


async def _unprepare(
    preparer: ClaimPreparer,
    request: Any,
    response: Any,
    context: grpc.aio.ServicerContext[Any, Any],
) -> Any:
    try:
        refs = _claim_refs(request.claims, "NodeUnprepareResources")
    except _InvalidRequestError as err:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
    outcomes = await preparer.unprepare(refs)
    for uid, outcome in outcomes.items():
        entry = response.claims[uid]  # kubelet needs an entry for every claim, even empty
        if outcome is not None:
            entry.error = str(outcome)
    return response


class DraV1Servicer(dra_v1_pb2_grpc.DRAPluginServicer):
    """``k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin``, advertised as ``v1.DRAPlugin``."""

    def __init__(self, preparer: ClaimPreparer) -> None:
        self.preparer = preparer

    async def NodePrepareResources(
        self,
        request: dra_v1_pb2.NodePrepareResourcesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> dra_v1_pb2.NodePrepareResourcesResponse:
        """Prepare every claim of the request; a failed claim carries its ``error``."""
        response = dra_v1_pb2.NodePrepareResourcesResponse()
        await _prepare(self.preparer, request, response, context, with_share_id=True)
        return response

    async def NodeUnprepareResources(
        self,
        request: dra_v1_pb2.NodeUnprepareResourcesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> dra_v1_pb2.NodeUnprepareResourcesResponse:
        """Unprepare every claim of the request (an unknown claim is already done)."""
        response = dra_v1_pb2.NodeUnprepareResourcesResponse()
        await _unprepare(self.preparer, request, response, context)
        return response


class DraV1beta1Servicer(dra_v1beta1_pb2_grpc.DRAPluginServicer):
    """``k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin``, advertised as ``v1beta1.DRAPlugin``.

    The same answers as :class:`DraV1Servicer` without ``share_id`` (not in v1beta1).
    """

    def __init__(self, preparer: ClaimPreparer) -> None:
        self.preparer = preparer

    async def NodePrepareResources(
        self,
        request: dra_v1beta1_pb2.NodePrepareResourcesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> dra_v1beta1_pb2.NodePrepareResourcesResponse:
        """Prepare every claim of the request; a failed claim carries its ``error``."""
        response = dra_v1beta1_pb2.NodePrepareResourcesResponse()
        await _prepare(self.preparer, request, response, context, with_share_id=False)
        return response

    async def NodeUnprepareResources(
        self,
        request: dra_v1beta1_pb2.NodeUnprepareResourcesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> dra_v1beta1_pb2.NodeUnprepareResourcesResponse:
        """Unprepare every claim of the request (an unknown claim is already done)."""
        response = dra_v1beta1_pb2.NodeUnprepareResourcesResponse()
        await _unprepare(self.preparer, request, response, context)
        return response


def add_dra_servicers(preparer: ClaimPreparer, server: grpc.aio.Server) -> None:
    """Serve both DRA versions from ``preparer`` on ``server``."""
    dra_v1_pb2_grpc.add_DRAPluginServicer_to_server(DraV1Servicer(preparer), server)
    dra_v1beta1_pb2_grpc.add_DRAPluginServicer_to_server(DraV1beta1Servicer(preparer), server)
