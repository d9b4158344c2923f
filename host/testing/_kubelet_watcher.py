"""The device manager's plugin-watcher handler: device plugins found in ``plugins_registry``.

As devicemanager ``plugin/v1beta1/handler.go``: ``ValidatePlugin`` wants ``v1beta1``
among the supported versions and an extended resource name; ``RegisterPlugin``
connects as ``Register`` would (dial, GetDevicePluginOptions, ListAndWatch);
``DeRegisterPlugin`` disconnects the resource's client (up to 1.35 whichever client
holds the name, from 1.36 the one of that socket). The watching itself is the shared
:class:`~host.testing._plugin_watcher.PluginWatcher`.
"""

from __future__ import annotations

from collections.abc import Sequence

from host.deviceplugin._names import resource_name_error
from host.testing._kubelet_manager import API_VERSION, DeviceManager
from host.testing._plugin_watcher import RegistrationFailure, Stage

__all__ = ["DevicePluginHandler"]


class DevicePluginHandler:
    """Kubelet's ``DevicePlugin`` handler, feeding one process's :class:`DeviceManager`."""

    def __init__(self, manager: DeviceManager) -> None:
        self._dm = manager

    def validate_plugin(self, name: str, endpoint: str, versions: Sequence[str]) -> str | None:
        """``ValidatePlugin``: the version and the resource name."""
        if API_VERSION not in versions:
            return (
                f"manager version, {API_VERSION}, is not among plugin supported versions "
                f"[{' '.join(versions)}]"
            )
        if resource_name_error(name) is not None:
            return f'invalid name of device plugin socket: the ResourceName "{name}" is invalid'
        return None

    async def register_plugin(
        self, name: str, endpoint: str, versions: Sequence[str], socket_path: str
    ) -> str | None:
        """``RegisterPlugin``: connect as Register does (the device manager records a refusal)."""
        return await self._dm.register_plugin(name, endpoint)

    async def deregister_plugin(self, name: str, endpoint: str) -> None:
        """``DeRegisterPlugin``: disconnect the client (by name up to 1.35)."""
        await self._dm.deregister_plugin(name, endpoint)

    def failed(self, failure: RegistrationFailure) -> None:
        """Record a refusal the device manager did not record itself."""
        if failure.stage is not Stage.REGISTER:
            self._dm.reject_plugin(failure.name, failure.endpoint, failure.error)
