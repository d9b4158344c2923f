"""The device-plugin framework: the Python counterpart of Intel's ``pkg/deviceplugin``.

A plugin author writes a :class:`Scanner` that builds a :class:`DeviceTree` and calls
``notifier.notify(tree)``; a :class:`Manager` serves one gRPC server per device type,
registers each with kubelet and keeps them registered.
"""

from __future__ import annotations

from host._api import api_pb2 as pluginapi
from host.deviceplugin._attributes import SemVer
from host.deviceplugin._cdi_store import DevicesInUse, InUse
from host.deviceplugin._manager import DEFAULT_CDI_DIR, DEFAULT_PLUGIN_DIR, Manager, ResourceStatus
from host.deviceplugin._observer import Observer
from host.deviceplugin._podresources import (
    DEFAULT_POD_RESOURCES_SOCKET,
    DeviceHolder,
    HeldDevices,
    PodResourcesClient,
    configure_pod_resources,
    pod_resources,
)
from host.deviceplugin._types import (
    HEALTHY,
    UNHEALTHY,
    Allocator,
    ContainerPreStarter,
    DeviceInfo,
    DeviceSpec,
    DeviceTree,
    DeviceTypeDeclarer,
    Mount,
    Notifier,
    NUMANode,
    PeriodicScanner,
    PostAllocator,
    PreferredAllocator,
    Scanner,
    TopologyInfo,
    UseDefaultMethodError,
)
from host.deviceplugin._watcher import PluginDirWatcher

__all__ = [
    "DEFAULT_CDI_DIR",
    "DEFAULT_PLUGIN_DIR",
    "DEFAULT_POD_RESOURCES_SOCKET",
    "HEALTHY",
    "UNHEALTHY",
    "Allocator",
    "ContainerPreStarter",
    "DeviceHolder",
    "DeviceInfo",
    "DeviceSpec",
    "DeviceTree",
    "DeviceTypeDeclarer",
    "DevicesInUse",
    "HeldDevices",
    "InUse",
    "Manager",
    "Mount",
    "NUMANode",
    "Notifier",
    "Observer",
    "PeriodicScanner",
    "PluginDirWatcher",
    "PodResourcesClient",
    "PostAllocator",
    "PreferredAllocator",
    "ResourceStatus",
    "Scanner",
    "SemVer",
    "TopologyInfo",
    "UseDefaultMethodError",
    "configure_pod_resources",
    "pluginapi",
    "pod_resources",
]
