"""Dynamic Resource Allocation (``resource.k8s.io/v1``): a scanner plugin served as a DRA driver.

The API-server side publishes the node's devices as ResourceSlices
(:class:`ResourceSlicePublisher`, fed the same frozen snapshots as the device-plugin
managers); :func:`build_slices` is the pure mapping from a snapshot to slices.

The kubelet side: :class:`DraDriver` answers kubelet's NodePrepareResources and
NodeUnprepareResources (DRA kubelet plugin API v1 and v1beta1) for one plugin, with a
CDI spec per prepared device, a checkpoint across restarts, and registration through
kubelet's plugin watcher, and each device's health streamed to kubelet
(:class:`DeviceHealthService`, KEP-4680).

:class:`DraPlugin` wires both to one scanner (what ``devplugin-host run --dra PLUGIN``
serves for each of the plugin's namespaces); :func:`build_dra_plugins` makes them for
the host.
"""

from __future__ import annotations

from host.dra._claimclient import KubeClaimSource
from host.dra._claimsource import ClaimNotFoundError, ClaimSource
from host.dra._client import kube_client
from host.dra._consumers import ClaimConsumer, ClaimConsumers
from host.dra._driver import CallObserver, DeviceNamer, DraDriver
from host.dra._health import HEALTH_SERVICES, UNKNOWN, DeviceHealth, DeviceHealthService
from host.dra._prepare import ClaimError, ClaimRef, PreparedClaim, PreparedDevice
from host.dra._publisher import PublisherStatus, ResourceSlicePublisher
from host.dra._registration import SUPPORTED_VERSIONS
from host.dra._serving import DraOptions, DraPlugin, build_dra_plugins
from host.dra._slices import (
    BuildResult,
    build_slices,
    device_name,
    device_names,
    slice_name,
    unhealthy_taint_key,
)
from host.dra._sockets import DEFAULT_DRA_PLUGIN_DIR, DEFAULT_REGISTRY_DIR

__all__ = [
    "DEFAULT_DRA_PLUGIN_DIR",
    "DEFAULT_REGISTRY_DIR",
    "HEALTH_SERVICES",
    "SUPPORTED_VERSIONS",
    "UNKNOWN",
    "BuildResult",
    "CallObserver",
    "ClaimConsumer",
    "ClaimConsumers",
    "ClaimError",
    "ClaimNotFoundError",
    "ClaimRef",
    "ClaimSource",
    "DeviceHealth",
    "DeviceHealthService",
    "DeviceNamer",
    "DraDriver",
    "DraOptions",
    "DraPlugin",
    "KubeClaimSource",
    "PreparedClaim",
    "PreparedDevice",
    "PublisherStatus",
    "ResourceSlicePublisher",
    "build_dra_plugins",
    "build_slices",
    "device_name",
    "device_names",
    "kube_client",
    "slice_name",
    "unhealthy_taint_key",
]
