"""Kubelet's plugin watcher: sockets in ``plugins_registry``, registered through handlers.

Reproduces ``pkg/kubelet/pluginmanager`` (pluginwatcher/plugin_watcher.go,
reconciler/reconciler.go, operationexecutor/operation_generator.go) for the fakes of
both sides that use it, device plugins and DRA drivers: every Unix socket in the
registry directory (any depth, names starting with ``.`` skipped) is dialled (10 s),
asked ``GetInfo`` (1 s), handed to the handler of its type (``ValidatePlugin``, then
``RegisterPlugin``) and told the outcome with ``NotifyRegistrationStatus`` (5 s); a
failed notify undoes the registration. A socket that goes away is deregistered
(``DeRegisterPlugin``); one re-created at the same path is deregistered and registered
again. Failures back off per socket from 500 ms, doubling up to 2 min.

Timing as kubelet's: the reconciler looks every ``interval`` seconds (kubelet: 1 s,
``wait.Until``, so the period starts after each pass); kubelet learns of files at once by
fsnotify into its desired state and acts on them at the next pass, this fake looks at
(device, inode, ctime) at each pass, which gives the same registrations and also tells
a re-created socket from the old one. Deregistrations come first in a pass, then one
registration operation per socket runs in its own task (kubelet's operation executor
runs each in a goroutine, one at a time per socket path), so a slow or dead socket
delays no other.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import stat
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from host._api import pluginregistration_pb2, pluginregistration_pb2_grpc
from host.testing._kubelet_endpoint import DIAL_TIMEOUT

__all__ = [
    "GET_INFO_TIMEOUT",
    "NOTIFY_TIMEOUT",
    "PluginHandler",
    "PluginWatcher",
    "RegistrationFailure",
    "Stage",
]

_LOG = logging.getLogger("host.testing.kubelet")

GET_INFO_TIMEOUT = 1.0
NOTIFY_TIMEOUT = 5.0
_BACKOFF_INITIAL = 0.5
_BACKOFF_CAP = 120.0

_Identity = tuple[int, int, int]


class PluginHandler(Protocol):
    """What kubelet's plugin watcher calls for one plugin type (``cache.PluginHandler``)."""

    def validate_plugin(self, name: str, endpoint: str, versions: Sequence[str]) -> str | None:
        """``ValidatePlugin``: the problem, or None when the plugin may register."""

    async def register_plugin(
        self, name: str, endpoint: str, versions: Sequence[str], socket_path: str
    ) -> str | None:
        """``RegisterPlugin``: connect to the plugin; the problem, or None."""

    async def deregister_plugin(self, name: str, endpoint: str) -> None:
        """``DeRegisterPlugin``: its socket went away (or notifying it failed)."""


class Stage(enum.Enum):
    """Where a registration through the plugin watcher failed."""

    DIAL = "dial"
    GET_INFO = "GetInfo"
    TYPE = "type"
    VALIDATE = "ValidatePlugin"
    REGISTER = "RegisterPlugin"
    NOTIFY = "NotifyRegistrationStatus"


@dataclass(frozen=True)
class RegistrationFailure:
    """A failed registration: kubelet's error text, as sent to the plugin when it got that far."""

    socket_path: str
    name: str
    """The plugin's name from GetInfo ('' when GetInfo was not answered)."""
    endpoint: str
    stage: Stage
    error: str


@dataclass
class _Socket:
    identity: _Identity
    plugin: tuple[PluginHandler, str, str] | None = None
    """(handler, name, endpoint) once registered."""
    operation: asyncio.Task[None] | None = None
    failures: int = 0
    next_attempt: float = 0.0


class PluginWatcher:
    """One kubelet process's plugin watcher over ``registry_dir``.

    ``handlers`` maps ``PluginInfo.type`` to its handler; ``on_failure`` hears of every
    failed registration; ``notify`` is awaited after every registration attempt and
    deregistration (the owner's state-change signal).
    """

    def __init__(
        self,
        registry_dir: str | os.PathLike[str],
        handlers: Mapping[str, PluginHandler],
        *,
        interval: float,
        notify: Callable[[], Coroutine[Any, Any, None]],
        on_failure: Callable[[RegistrationFailure], None],
    ) -> None:
        self._dir = os.fspath(registry_dir)
        self._handlers = dict(handlers)
        self._interval = interval
        self._notify = notify
        self._on_failure = on_failure
        self._sockets: dict[str, _Socket] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """Whether the watcher is watching."""
        return self._task is not None

    def start(self) -> None:
        """Create the directory (0755, as kubelet) and watch it in a background task."""
        os.makedirs(self._dir, mode=0o755, exist_ok=True)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="plugin watcher")

    async def stop(self) -> None:
        """Stop watching (the kubelet process dies; connections go with their handlers)."""
        task, self._task = self._task, None
        tasks = [task] if task is not None else []
        tasks += [s.operation for s in self._sockets.values() if s.operation is not None]
        for pending in tasks:
            pending.cancel()
        for pending in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await pending
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
        # Unregister first: sockets gone, or re-created (a new UUID in kubelet). A socket
        # with an operation under way waits for the next pass, as kubelet's executor
        # refuses a second operation on one socket path.
        for path, watched in list(self._sockets.items()):
            if present.get(path) == watched.identity or watched.operation is not None:
                continue
            del self._sockets[path]
            if watched.plugin is not None:
                handler, name, endpoint = watched.plugin
                _LOG.info("DeRegisterPlugin %s (socket %s gone)", name, path)
                await handler.deregister_plugin(name, endpoint)
                await self._notify()
        now = time.monotonic()
        for path, identity in present.items():
            watched = self._sockets.setdefault(path, _Socket(identity))
            if (
                watched.identity == identity
                and watched.plugin is None
                and watched.operation is None
                and now >= watched.next_attempt
            ):
                watched.operation = asyncio.get_running_loop().create_task(
                    self._register(path, watched), name=f"RegisterPlugin {path}"
                )

    async def _register(self, path: str, watched: _Socket) -> None:
        try:
            await self._register_once(path, watched)
        finally:
            watched.operation = None
            await self._notify()

    async def _register_once(self, path: str, watched: _Socket) -> None:
        channel = grpc.aio.insecure_channel(f"unix:{path}")
        try:
            try:
                async with asyncio.timeout(DIAL_TIMEOUT):
                    await channel.channel_ready()
            except TimeoutError:
                error = (
                    f"RegisterPlugin error -- dial failed at socket {path}, "
                    "err: context deadline exceeded"
                )
                self._failed(watched, RegistrationFailure(path, "", path, Stage.DIAL, error))
                return
            stub = pluginregistration_pb2_grpc.RegistrationStub(channel)
            try:
                info = await stub.GetInfo(
                    pluginregistration_pb2.InfoRequest(), timeout=GET_INFO_TIMEOUT
                )
            except grpc.aio.AioRpcError as err:
                error = (
                    f"RegisterPlugin error -- failed to get plugin info using RPC GetInfo at "
                    f"socket {path}, err: {err.details()}"
                )
                self._failed(watched, RegistrationFailure(path, "", path, Stage.GET_INFO, error))
                return
            await self._register_plugin(path, watched, stub, info)
        finally:
            await channel.close()

    async def _register_plugin(
        self,
        path: str,
        watched: _Socket,
        stub: pluginregistration_pb2_grpc.RegistrationAsyncStub,
        info: pluginregistration_pb2.PluginInfo,
    ) -> None:
        endpoint = info.endpoint or path
        versions = tuple(info.supported_versions)
        handler = self._handlers.get(info.type)
        stage: Stage | None = None
        error: str | None = None
        if handler is None:
            stage = Stage.TYPE
            error = (
                f"RegisterPlugin error -- no handler registered for plugin type: {info.type} "
                f"at socket {path}"
            )
        elif (problem := handler.validate_plugin(info.name, endpoint, versions)) is not None:
            stage = Stage.VALIDATE
            error = f"RegisterPlugin error -- plugin validation failed with err: {problem}"
        elif (
            problem := await handler.register_plugin(info.name, endpoint, versions, path)
        ) is not None:
            stage = Stage.REGISTER
            error = f"RegisterPlugin error -- plugin registration failed with err: {problem}"
        if error is not None:  # recorded before the plugin hears of it, as kubelet logs it
            assert stage is not None
            self._failed(watched, RegistrationFailure(path, info.name, endpoint, stage, error))
        status = pluginregistration_pb2.RegistrationStatus(
            plugin_registered=error is None, error=error or ""
        )
        try:
            await stub.NotifyRegistrationStatus(status, timeout=NOTIFY_TIMEOUT)
        except grpc.aio.AioRpcError as err:
            if error is None:  # a failed notify undoes the registration
                assert handler is not None
                await handler.deregister_plugin(info.name, endpoint)
                error = f"RegisterPlugin error -- failed to notify: {err.details()}"
                failure = RegistrationFailure(path, info.name, endpoint, Stage.NOTIFY, error)
                self._failed(watched, failure)
        if error is not None:
            return
        assert handler is not None
        watched.plugin = (handler, info.name, endpoint)
        watched.failures = 0
        _LOG.info("registered %s %s through %s (endpoint %s)", info.type, info.name, path, endpoint)

    def _failed(self, watched: _Socket, failure: RegistrationFailure) -> None:
        # Operation-executor backoff: 500 ms doubling up to 2 min, per socket path.
        watched.failures += 1
        delay = min(_BACKOFF_INITIAL * 2 ** (watched.failures - 1), _BACKOFF_CAP)
        watched.next_attempt = time.monotonic() + delay
        self._on_failure(failure)
        _LOG.info("registration through %s failed: %s", failure.socket_path, failure.error)
