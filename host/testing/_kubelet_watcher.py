"""Kubelet's plugin watcher, for device plugins: sockets in ``plugins_registry``.

Reproduces ``pkg/kubelet/pluginmanager`` (plugin_watcher.go, reconciler.go,
operation_generator.go) with the device manager's handler (devicemanager
``plugin/v1beta1/handler.go``): every Unix socket in the registry directory (any
depth, names starting with ``.`` skipped) is dialled (10 s), asked ``GetInfo`` (1 s),
validated (type ``DevicePlugin``, ``v1beta1`` among the supported versions, an
extended resource name), connected as ``Register`` would (dial, GetDevicePluginOptions,
ListAndWatch) and told the outcome with ``NotifyRegistrationStatus`` (5 s). A socket
that goes away is deregistered; one re-created at the same path is deregistered and
registered again. Failures back off per socket from 500 ms, doubling up to 2 min. The
reconciler looks every ``interval`` seconds (kubelet: 1 s); kubelet learns of files by
fsnotify, this fake by looking at (inode, ctime) on each pass, which also tells a
re-created socket from the old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import grpc

from host._api import pluginregistration_pb2, pluginregistration_pb2_grpc
from host.deviceplugin._names import resource_name_error
from host.testing._kubelet_endpoint import DIAL_TIMEOUT
from host.testing._kubelet_manager import API_VERSION, DeviceManager

__all__ = ["PluginWatcher"]

_LOG = logging.getLogger("host.testing.kubelet")

GET_INFO_TIMEOUT = 1.0
NOTIFY_TIMEOUT = 5.0
_BACKOFF_INITIAL = 0.5
_BACKOFF_CAP = 120.0

_Identity = tuple[int, int, int]


@dataclass
class _Socket:
    identity: _Identity
    plugin: tuple[str, str] | None = None
    """(resource name, endpoint) once registered."""
    failures: int = 0
    next_attempt: float = 0.0


class PluginWatcher:
    """One kubelet process's plugin watcher over ``registry_dir``, feeding ``manager``."""

    def __init__(
        self,
        registry_dir: str,
        manager: DeviceManager,
        *,
        interval: float,
        notify: Callable[[], Coroutine[Any, Any, None]],
    ) -> None:
        self._dir = registry_dir
        self._dm = manager
        self._interval = interval
        self._notify = notify
        self._sockets: dict[str, _Socket] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Create the directory (0755, as kubelet) and watch it in a background task."""
        os.makedirs(self._dir, mode=0o755, exist_ok=True)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="plugin watcher")

    async def stop(self) -> None:
        """Stop watching (the kubelet process dies; connections go with the device manager)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._sockets.clear()

    async def _run(self) -> None:
        while True:
            try:
                await self._reconcile()
            except Exception:  # one bad pass must not end the watcher
                _LOG.exception("plugin watcher pass failed")
            await asyncio.sleep(self._interval)

    def _present(self) -> dict[str, _Identity]:
        found: dict[str, _Identity] = {}
        for root, dirs, files in os.walk(self._dir):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if name.startswith("."):
                    continue
                path = os.path.join(root, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                if stat.S_ISSOCK(st.st_mode):
                    found[path] = (st.st_dev, st.st_ino, st.st_ctime_ns)
        return found

    async def _reconcile(self) -> None:
        present = self._present()
        # Unregister first: sockets gone, or re-created (a new timestamp in kubelet).
        for path, watched in list(self._sockets.items()):
            if present.get(path) != watched.identity:
                del self._sockets[path]
                if watched.plugin is not None:
                    name, endpoint = watched.plugin
                    _LOG.info("DeRegisterPlugin %s (socket %s gone)", name, path)
                    await self._dm.deregister_plugin(name, endpoint)
        now = time.monotonic()
        for path, identity in present.items():
            watched = self._sockets.setdefault(path, _Socket(identity))
            if watched.plugin is None and now >= watched.next_attempt:
                await self._register(path, watched)

    async def _register(self, path: str, watched: _Socket) -> None:
        channel = grpc.aio.insecure_channel(f"unix:{path}")
        try:
            try:
                async with asyncio.timeout(DIAL_TIMEOUT):
                    await channel.channel_ready()
            except TimeoutError:
                self._failed(
                    path,
                    watched,
                    "",
                    path,
                    f"RegisterPlugin error -- dial failed at socket {path}, "
                    "err: context deadline exceeded",
                )
                return
            stub = pluginregistration_pb2_grpc.RegistrationStub(channel)
            try:
                info = await stub.GetInfo(
                    pluginregistration_pb2.InfoRequest(), timeout=GET_INFO_TIMEOUT
                )
            except grpc.aio.AioRpcError as err:
                self._failed(
                    path,
                    watched,
                    "",
                    path,
                    f"RegisterPlugin error -- failed to get plugin info using RPC GetInfo at "
                    f"socket {path}, err: {err.details()}",
                )
                return
            endpoint = info.endpoint or path
            error = self._validate(path, info)
            recorded = error is not None
            if error is None:
                problem = await self._dm.register_plugin(info.name, endpoint)
                if problem is not None:  # recorded by the device manager
                    error = (
                        f"RegisterPlugin error -- plugin registration failed with err: {problem}"
                    )
            else:
                self._dm.reject_plugin(info.name, endpoint, error)
            status = pluginregistration_pb2.RegistrationStatus(
                plugin_registered=error is None, error=error or ""
            )
            try:
                await stub.NotifyRegistrationStatus(status, timeout=NOTIFY_TIMEOUT)
            except grpc.aio.AioRpcError as err:
                if error is None:  # 1.36+: a failed notify undoes the registration
                    await self._dm.deregister_plugin(info.name, endpoint)
                    error = f"RegisterPlugin error -- failed to notify: {err.details()}"
                    recorded = False
            if error is not None:
                self._failed(path, watched, info.name, endpoint, error, recorded=True)
                if not recorded and "failed to notify" in error:
                    self._dm.reject_plugin(info.name, endpoint, error)
                return
            watched.plugin = (info.name, endpoint)
            watched.failures = 0
            _LOG.info(
                "registered device plugin %s through %s (endpoint %s)", info.name, path, endpoint
            )
        finally:
            await channel.close()
            await self._notify()

    def _failed(
        self,
        path: str,
        watched: _Socket,
        name: str,
        endpoint: str,
        error: str,
        *,
        recorded: bool = False,
    ) -> None:
        watched.failures += 1
        delay = min(_BACKOFF_INITIAL * 2 ** (watched.failures - 1), _BACKOFF_CAP)
        watched.next_attempt = time.monotonic() + delay
        if not recorded:
            self._dm.reject_plugin(name, endpoint, error)
        _LOG.info("registration through %s failed: %s", path, error)

    @staticmethod
    def _validate(path: str, info: pluginregistration_pb2.PluginInfo) -> str | None:
        if info.type != "DevicePlugin":
            return (
                f"RegisterPlugin error -- no handler registered for plugin type: {info.type} "
                f"at socket {path}"
            )
        if API_VERSION not in info.supported_versions:
            versions = " ".join(info.supported_versions)
            problem = (
                f"manager version, {API_VERSION}, is not among plugin supported versions "
                f"[{versions}]"
            )
        elif resource_name_error(info.name) is not None:
            problem = (
                f'invalid name of device plugin socket: the ResourceName "{info.name}" is invalid'
            )
        else:
            return None
        return f"RegisterPlugin error -- plugin validation failed with err: {problem}"
