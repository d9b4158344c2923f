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
from host.deviceplugin._types import (
    HEALTHY,
    UNHEALTHY,
    Allocator,
    ContainerPreStarter,
    DeviceInfo,
    DeviceSpec,
    DeviceTree,
    Mount,
    Notifier,
    NUMANode,
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
    "HEALTHY",
    "UNHEALTHY",
    "Allocator",
    "ContainerPreStarter",
    "DeviceInfo",
    "DeviceSpec",
    "DeviceTree",
    "DevicesInUse",
    "InUse",
    "Manager",
    "Mount",
    "NUMANode",
    "Notifier",
    "Observer",
    "PluginDirWatcher",
    "PostAllocator",
    "PreferredAllocator",
    "ResourceStatus",
    "Scanner",
    "SemVer",
    "TopologyInfo",
    "UseDefaultMethodError",
    "pluginapi",
]
