"""The plugin-watcher registration service, shared by device plugins and DRA drivers.

The kubelet watches ``{root-dir}/plugins_registry`` (by default
``/var/lib/kubelet/plugins_registry``, any depth, names starting with ``.``
ignored) for Unix sockets. On each new socket it calls
``/pluginregistration.Registration/GetInfo`` (1 s timeout), looks up the handler of
``PluginInfo.type``, validates and registers the plugin, then reports the outcome
with ``NotifyRegistrationStatus`` (``plugin_registered`` false with kubelet's reason
in ``error`` on a refusal). It does so again after every kubelet restart and for a
socket re-created at the same path. Upstream: k8s.io/kubelet
``pkg/apis/pluginregistration/v1``, kubernetes ``pkg/kubelet/pluginmanager``.

What ``GetInfo`` must carry, per type:

* ``DevicePlugin``: ``name`` the extended resource name (``vendor.example.com/gpu``),
  ``endpoint`` the absolute path of the ``v1beta1.DevicePlugin`` socket (used as
  given), ``supported_versions`` containing ``"v1beta1"``.
* ``DRAPlugin``: ``name`` the DRA driver name, ``endpoint`` the absolute path of the
  DRA socket, ``supported_versions`` short service names in order of preference,
  e.g. ``["v1.DRAPlugin", "v1beta1.DRAPlugin", "v1alpha1.DRAResourceHealth"]``.

An empty ``endpoint`` tells the kubelet to use the registration socket itself. The
services named in ``supported_versions`` must be served before the registration
socket exists: the kubelet may call them at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from host._api import pluginregistration_pb2, pluginregistration_pb2_grpc

__all__ = [
    "DEFAULT_REGISTRY_DIR",
    "DEVICE_PLUGIN_TYPE",
    "DRA_PLUGIN_TYPE",
    "PLUGIN_TYPES",
    "RegistrationServicer",
    "StatusCallback",
]

log = logging.getLogger("host.pluginwatcher")

DEVICE_PLUGIN_TYPE = "DevicePlugin"
"""``PluginInfo.type`` of a device plugin (``DevicePlugin`` in kubelet's constants.go)."""

DRA_PLUGIN_TYPE = "DRAPlugin"
"""``PluginInfo.type`` of a DRA driver (``DRAPlugin`` in kubelet's constants.go)."""

PLUGIN_TYPES = (DEVICE_PLUGIN_TYPE, DRA_PLUGIN_TYPE)
"""The plugin types this host registers (the kubelet also knows ``CSIPlugin``)."""

DEFAULT_REGISTRY_DIR = "/var/lib/kubelet/plugins_registry"
"""Directory the kubelet's plugin watcher watches, with the default ``--root-dir``."""

StatusCallback = Callable[[bool, str], None]
"""``on_status(registered, error)``: called for every ``NotifyRegistrationStatus``."""


class RegistrationServicer(pluginregistration_pb2_grpc.RegistrationServicer):
    """Serves ``pluginregistration.Registration`` for one plugin.

    Answers ``GetInfo`` with the fixed ``PluginInfo`` and records each
    ``NotifyRegistrationStatus``: ``registered`` is ``None`` until the kubelet has
    reported, then the last ``plugin_registered``; ``error`` is kubelet's last reason.
    Await :meth:`wait_for_status` for a report. A refusal is logged at ERROR with
    kubelet's reason. Add it to a ``grpc.aio`` server with :meth:`add_to_server`.

    Raises ``ValueError`` for an unknown ``plugin_type``, an empty ``name``, a
    relative ``endpoint``, or empty ``supported_versions``.
    """

    def __init__(
        self,
        *,
        plugin_type: str,
        name: str,
        endpoint: str,
        supported_versions: Sequence[str],
        on_status: StatusCallback | None = None,
    ) -> None:
        if plugin_type not in PLUGIN_TYPES:
            raise ValueError(
                f"plugin registration: plugin_type must be one of {list(PLUGIN_TYPES)},"
                f" got {plugin_type!r}"
            )
        if not name:
            raise ValueError(f"plugin registration ({plugin_type}): name must not be empty")
        if endpoint and not os.path.isabs(endpoint):
            raise ValueError(
                f"plugin registration {name!r}: endpoint must be an absolute socket path"
                f" (or empty for the registration socket), got {endpoint!r}"
            )
        # A bare string is a Sequence[str] too, and would advertise one version per letter.
        if isinstance(supported_versions, str | bytes) or not supported_versions:
            raise ValueError(
                f"plugin registration {name!r}: supported_versions must be a non-empty list"
                f" of version names, got {supported_versions!r}"
            )
        if not all(isinstance(v, str) and v for v in supported_versions):
            raise ValueError(
                f"plugin registration {name!r}: every supported version must be a non-empty"
                f" string, got {list(supported_versions)!r}"
            )
        self._info = pluginregistration_pb2.PluginInfo(
            type=plugin_type,
            name=name,
            endpoint=endpoint,
            supported_versions=list(supported_versions),
        )
        self._on_status = on_status
        self._registered: bool | None = None
        self._error = ""
        self._status_count = 0
        self._status_changed = asyncio.Condition()

    @property
    def plugin_type(self) -> str:
        """``PluginInfo.type``: ``"DevicePlugin"`` or ``"DRAPlugin"``."""
        return self._info.type

    @property
    def name(self) -> str:
        """``PluginInfo.name``: resource name or DRA driver name."""
        return self._info.name

    @property
    def endpoint(self) -> str:
        """``PluginInfo.endpoint``: the service socket's absolute path, or empty."""
        return self._info.endpoint

    @property
    def supported_versions(self) -> tuple[str, ...]:
        """``PluginInfo.supported_versions``, in the order given."""
        return tuple(self._info.supported_versions)

    @property
    def registered(self) -> bool | None:
        """The last ``plugin_registered`` kubelet sent; ``None`` before any report."""
        return self._registered

    @property
    def error(self) -> str:
        """Kubelet's reason with the last report; empty on success or before any report."""
        return self._error

    @property
    def status_count(self) -> int:
        """How many ``NotifyRegistrationStatus`` calls were received."""
        return self._status_count

    async def wait_for_status(self, *, after: int = 0) -> bool:
        """Wait until more than ``after`` reports have arrived; return ``registered``.

        ``after=servicer.status_count`` waits for the next report (for instance the
        re-registration after a kubelet restart). Wrap in ``asyncio.timeout`` to bound it.
        """
        async with self._status_changed:
            await self._status_changed.wait_for(lambda: self._status_count > after)
            return bool(self._registered)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Serve this servicer's ``pluginregistration.Registration`` on ``server``."""
        pluginregistration_pb2_grpc.add_RegistrationServicer_to_server(self, server)

    # -- RPCs -----------------------------------------------------------------------

    async def GetInfo(
        self,
        request: pluginregistration_pb2.InfoRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pluginregistration_pb2.PluginInfo:
        """Tell the kubelet the plugin's type, name, endpoint and supported versions."""
        log.debug("kubelet asked for the registration info of %s %r", self.plugin_type, self.name)
        return self._info

    async def NotifyRegistrationStatus(
        self,
        request: pluginregistration_pb2.RegistrationStatus,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pluginregistration_pb2.RegistrationStatusResponse:
        """Record kubelet's verdict, log it, call ``on_status`` and wake the waiters."""
        registered, error = request.plugin_registered, request.error
        if registered:
            log.info("kubelet registered %s %r", self.plugin_type, self.name)
        else:
            log.error(
                "kubelet refused to register %s %r: %s",
                self.plugin_type,
                self.name,
                error or "(no reason given)",
            )
        async with self._status_changed:
            self._registered = registered
            self._error = error
            self._status_count += 1
            self._status_changed.notify_all()
        if self._on_status is not None:
            # The kubelet's verdict stands whatever the callback does: an error returned
            # here would make the kubelet count the registration as failed.
            try:
                self._on_status(registered, error)
            except Exception:
                log.exception(
                    "on_status callback of %s %r failed; the registration status stands",
                    self.plugin_type,
                    self.name,
                )
        return pluginregistration_pb2.RegistrationStatusResponse()
