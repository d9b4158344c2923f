"""Dynamic Resource Allocation (``resource.k8s.io/v1``): a scanner plugin served as a DRA driver.

The API-server side publishes the node's devices as ResourceSlices
(:class:`ResourceSlicePublisher`, fed the same frozen snapshots as the device-plugin
managers); :func:`build_slices` is the pure mapping from a snapshot to slices.
"""

from __future__ import annotations

from host.dra._client import kube_client
from host.dra._publisher import PublisherStatus, ResourceSlicePublisher
from host.dra._slices import (
    BuildResult,
    build_slices,
    device_name,
    device_names,
    slice_name,
    unhealthy_taint_key,
)

__all__ = [
    "BuildResult",
    "PublisherStatus",
    "ResourceSlicePublisher",
    "build_slices",
    "device_name",
    "device_names",
    "kube_client",
    "slice_name",
    "unhealthy_taint_key",
]
