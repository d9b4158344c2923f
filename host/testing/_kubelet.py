"""A fake kubelet: the client side of Device Plugin API v1beta1, as kubelet's device manager.

:class:`FakeKubelet` serves ``v1beta1.Registration`` on ``<plugin_dir>/kubelet.sock``
and talks to registered plugins over real gRPC on their Unix sockets, the way kubelet's
device manager does: the checks and texts of Register, the dial and
GetDevicePluginOptions inside Register, ListAndWatch snapshots, stream end without retry,
the grace period, the restart sequence, and Allocate / GetPreferredAllocation /
PreStartContainer on demand. It runs in the caller's event loop, so a plugin under test
may serve from the same loop or from another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Self, get_args

import grpc

from host._api import api_pb2
from host._pluginwatcher import DEVICE_PLUGIN_TYPE
from host.testing._kubelet_checkpoint import CHECKPOINT_NAME
from host.testing._kubelet_client import KubeletCalls
from host.testing._kubelet_endpoint import DIAL_TIMEOUT
from host.testing._kubelet_manager import DeviceManager
from host.testing._kubelet_podresources import PodResourcesServer
from host.testing._kubelet_types import (
    Allocation,
    KubeletError,
    KubeletMode,
    Registration,
    Rejection,
    ResourceState,
)
from host.testing._kubelet_watcher import DevicePluginHandler
from host.testing._plugin_watcher import PluginWatcher

__all__ = ["FakeKubelet"]

_LOG = logging.getLogger("host.testing.kubelet")

KUBELET_SOCKET = "kubelet.sock"
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the NUL
_RECHECK_INTERVAL = 0.05


class FakeKubelet(KubeletCalls):
    """A kubelet device manager in-process, for testing device plugins over real gRPC.

    ``mode`` picks the kubelet generation (see :data:`KubeletMode`); ``grace_period`` is
    how long a stopped resource is kept before removal (kubelet: 5 minutes);
    ``authority`` is the ``:authority`` sent to plugins (None: the socket path, as
    kubelet < 1.26 did); ``dial_timeout`` bounds the blocking dial (kubelet: 10 s).

    Like kubelet, :meth:`start` unlinks every socket in ``plugin_dir``: start plugins
    after it (or have them re-create their socket, as they must after a restart).

    With ``registry_dir`` the kubelet also runs its plugin watcher there (kubelet:
    ``/var/lib/kubelet/plugins_registry``): plugins that put their socket in it serving
    ``pluginregistration.Registration`` are registered without calling ``Register``,
    looked at every ``reconcile_interval`` seconds (kubelet's reconciler: 1 s). With
    ``pod_resources_socket`` it serves the PodResources v1 API there (kubelet:
    ``/var/lib/kubelet/pod-resources/kubelet.sock``) from its allocations.

    Use it as an async context manager, or call :meth:`start` and :meth:`stop`::

        async with FakeKubelet(tmp_dir) as kubelet:
            ...  # start the plugin; it registers on kubelet.socket_path
            state = await kubelet.wait_for_resource("example.com/gpu", healthy=2)
            allocation = await kubelet.allocate_like_kubelet("example.com/gpu", 1)
    """

    def __init__(
        self,
        plugin_dir: str | os.PathLike[str],
        *,
        mode: KubeletMode = "1.25",
        grace_period: float = 300.0,
        authority: str | None = "localhost",
        dial_timeout: float = DIAL_TIMEOUT,
        seed: int | None = None,
        registry_dir: str | os.PathLike[str] | None = None,
        reconcile_interval: float = 1.0,
        pod_resources_socket: str | os.PathLike[str] | None = None,
    ) -> None:
        if mode not in get_args(KubeletMode):
            raise ValueError(
                f"FakeKubelet: mode must be one of {get_args(KubeletMode)}, got {mode!r}"
            )
        if grace_period < 0 or dial_timeout <= 0:
            raise ValueError(
                "FakeKubelet: grace_period must be >= 0 and dial_timeout > 0, "
                f"got {grace_period!r} and {dial_timeout!r}"
            )
        self._dir = os.path.abspath(os.fspath(plugin_dir))
        self._socket = os.path.join(self._dir, KUBELET_SOCKET)
        self._mode: KubeletMode = mode
        self._grace = grace_period
        self._authority = authority
        self._dial_timeout = dial_timeout
        # Kubelet hands over device IDs in Go map order: unspecified, so random here
        # (seed it to reproduce a run).
        self._random = random.Random(seed)
        self._server: grpc.aio.Server | None = None
        self._listen_dir: str | None = None
        self._dm = DeviceManager(
            self._dir,
            mode=mode,
            grace_period=grace_period,
            authority=authority,
            dial_timeout=dial_timeout,
            notify=self._notify,
        )
        self._condition = asyncio.Condition()
        self._registry_dir = (
            os.path.abspath(os.fspath(registry_dir)) if registry_dir is not None else None
        )
        if reconcile_interval <= 0:
            raise ValueError(
                f"FakeKubelet: reconcile_interval must be > 0, got {reconcile_interval!r}"
            )
        self._reconcile_interval = reconcile_interval
        self._watcher: PluginWatcher | None = None
        self._pod_resources_socket = (
            os.path.abspath(os.fspath(pod_resources_socket))
            if pod_resources_socket is not None
            else None
        )
        self._pod_resources: PodResourcesServer | None = None

    def __repr__(self) -> str:
        return f"FakeKubelet({self._dir!r}, mode={self._mode!r}): {self._describe()}"

    # ---------------------------------------------------------------- lifecycle

    @property
    def plugin_dir(self) -> str:
        """The device-plugin directory (kubelet: ``/var/lib/kubelet/device-plugins``)."""
        return self._dir

    @property
    def socket_path(self) -> str:
        """Where plugins register: ``<plugin_dir>/kubelet.sock``."""
        return self._socket

    @property
    def mode(self) -> KubeletMode:
        """The kubelet generation reproduced."""
        return self._mode

    @property
    def running(self) -> bool:
        """Whether the registration server is serving."""
        return self._server is not None

    async def start(self) -> None:
        """Run kubelet's start sequence and serve Registration.

        As ``ManagerImpl.Start`` (``pkg/kubelet/cm/devicemanager/manager.go``) and the
        registration server's ``Start`` (``pkg/kubelet/cm/devicemanager/plugin/v1beta1/server.go``)
        do it.

        Creates the plugin directory (0750), restores resources named in the checkpoint
        as stopped endpoints at 0/0, unlinks every Unix socket directly in the directory
        (plugin sockets included, as kubelet does; regular files, subdirectories and the
        checkpoint stay), then serves a fresh ``kubelet.sock``.
        """
        if self._server is not None:
            raise KubeletError(f"FakeKubelet at {self._socket} is already running")
        if len(os.fsencode(self._socket)) > _SUN_PATH_MAX:
            raise KubeletError(
                f"socket path {self._socket!r} is longer than {_SUN_PATH_MAX} bytes, the "
                "Unix socket limit: use a shorter plugin_dir"
            )
        os.makedirs(self._dir, mode=0o750, exist_ok=True)
        self._dm.plugins_stopping = False
        self._dm.restore()
        self._cleanup_plugin_dir()
        server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(
            self._dm.register,
            request_deserializer=api_pb2.RegisterRequest.FromString,
            response_serializer=api_pb2.Empty.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("v1beta1.Registration", {"Register": handler})]
        )
        try:
            server.add_insecure_port("unix:" + self._listen_path())
            await server.start()
            self._publish_socket()
        except BaseException:
            await server.stop(None)
            self._remove_listen_dir()
            raise
        self._server = server
        if self._registry_dir is not None:
            dp_handler = DevicePluginHandler(self._dm)
            self._watcher = PluginWatcher(
                self._registry_dir,
                {DEVICE_PLUGIN_TYPE: dp_handler},
                interval=self._reconcile_interval,
                notify=self._notify,
                on_failure=dp_handler.failed,
            )
            self._watcher.start()
        if self._pod_resources_socket is not None:
            self._pod_resources = PodResourcesServer(
                lambda: tuple(self._dm.allocations),
                lambda: {n: set(b.healthy) for n, b in self._dm.books.items() if b.healthy},
                lambda name: self._dm.books[name].devices if name in self._dm.books else {},
                get_enabled=self._mode == "1.36",
            )
            await self._pod_resources.start(self._pod_resources_socket)
        await self._notify()

    @property
    def pod_resources_socket(self) -> str | None:
        """Where the PodResources API is served, if it is."""
        return self._pod_resources_socket

    @property
    def registry_dir(self) -> str | None:
        """The plugin watcher's directory (kubelet: ``plugins_registry``), if it runs."""
        return self._registry_dir

    async def stop(self) -> None:
        """Die like the kubelet process: drop the server and every plugin connection.

        Plugins' ListAndWatch streams end; files stay in place (``kubelet.sock`` remains
        as a dead socket). The observation API keeps the last state. Idempotent.
        """
        server, self._server = self._server, None
        if server is None:
            return
        await server.stop(None)
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            await watcher.stop()
        pod_resources, self._pod_resources = self._pod_resources, None
        if pod_resources is not None:
            await pod_resources.stop()
        await self._dm.shutdown()
        self._remove_listen_dir()
        await self._notify()

    def expect_plugins_to_stop(self) -> None:
        """Say the plugins are about to stop on purpose (a test or a simulation ending).

        Kubelet itself logs every ListAndWatch end as unexpected; after this call the fake
        logs their ends at debug level, so a clean stop shows nothing that looks like an
        error. The kubelet's state changes exactly as without it.
        """
        self._dm.plugins_stopping = True

    async def restart(self) -> None:
        """Stop, then start a new kubelet process on the same directory (see :meth:`start`)."""
        await self.stop()
        await self.start()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _listen_path(self) -> str:
        # Serve on a private path hard-linked to kubelet.sock, so that gRPC's unlink at
        # stop() leaves kubelet.sock in place like a dying kubelet (no inotify event on
        # it). The link needs one filesystem: /tmp, else a subdirectory of plugin_dir
        # (kubelet's cleanup skips subdirectories), else serve kubelet.sock directly.
        same_fs = os.stat("/tmp").st_dev == os.stat(self._dir).st_dev
        self._listen_dir = tempfile.mkdtemp(prefix=".fk", dir="/tmp" if same_fs else self._dir)
        path = os.path.join(self._listen_dir, "k.sock")
        if len(os.fsencode(path)) > _SUN_PATH_MAX:
            self._remove_listen_dir()
            return self._socket
        return path

    def _publish_socket(self) -> None:
        if self._listen_dir is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._socket)
            os.link(os.path.join(self._listen_dir, "k.sock"), self._socket)
            # The listening socket lives on through kubelet.sock alone: nothing is left
            # behind in /tmp even if this process is killed.
            self._remove_listen_dir()

    def _remove_listen_dir(self) -> None:
        if self._listen_dir is not None:
            shutil.rmtree(self._listen_dir, ignore_errors=True)
            self._listen_dir = None

    def _cleanup_plugin_dir(self) -> None:
        """Unlink every Unix socket directly in the directory (``CleanupPluginDirectory``)."""
        for entry in os.scandir(self._dir):
            if entry.name == CHECKPOINT_NAME:
                continue
            try:
                mode = os.stat(entry.path).st_mode  # follows symlinks, like Go's os.Stat
            except OSError:
                continue
            if stat.S_ISSOCK(mode):
                try:
                    os.unlink(entry.path)
                except OSError as err:
                    _LOG.error("Failed to remove file %s: %s", entry.path, err)

    # -------------------------------------------------------------- observation

    @property
    def resources(self) -> Mapping[str, ResourceState]:
        """Resources in the node status, by name (absent until the first ListAndWatch message)."""
        return {
            name: book.snapshot(self._dm.registration_count(name))
            for name, book in sorted(self._dm.books.items())
            if book.present or book.removed
        }

    @property
    def registrations(self) -> Sequence[Registration]:
        """Accepted registrations, oldest first (kept across restarts)."""
        return tuple(self._dm.registrations)

    @property
    def rejected(self) -> Sequence[Rejection]:
        """Refused registrations with kubelet's reasons, oldest first."""
        return tuple(self._dm.rejected)

    @property
    def allocations(self) -> Sequence[Allocation]:
        """Allocations made by :meth:`allocate_like_kubelet` (or restored from the checkpoint)."""
        return tuple(self._dm.allocations)

    def allocatable_history(self, name: str) -> Sequence[tuple[float, int]]:
        """Every change of resource ``name``'s allocatable count: ``(monotonic time, count)``.

        Recorded as the change happens (a ListAndWatch message applied, a disconnection,
        a restart, a removal), so no transition is missed between two observations.
        Kept across restarts; empty for a resource kubelet never heard of.
        """
        book = self._dm.books.get(name)
        return tuple(book.history) if book is not None else ()

    def zero_allocatable_spans(
        self, name: str, *, now: float | None = None
    ) -> Sequence[tuple[float, float]]:
        """Return the intervals ``(start, end)`` during which ``name`` had allocatable 0.

        Only spans after the resource first had a healthy device count; a span still
        open ends at ``now`` (default: :func:`time.monotonic`).
        """
        spans: list[tuple[float, float]] = []
        started: float | None = None
        seen_healthy = False
        for when, allocatable in self.allocatable_history(name):
            if allocatable > 0:
                if started is not None:
                    spans.append((started, when))
                    started = None
                seen_healthy = True
            elif seen_healthy and started is None:
                started = when
        if started is not None:
            spans.append((started, time.monotonic() if now is None else now))
        return tuple(spans)

    def _snapshot(self, name: str) -> ResourceState | None:
        return self.resources.get(name)

    def _describe(self) -> str:
        parts = [
            f"{s.name} {s.allocatable}/{s.capacity}"
            f"{' removed' if s.removed else ' connected' if s.connected else ' stopped'}"
            for s in self.resources.values()
        ]
        return (
            f"{'running' if self.running else 'stopped'}; resources (allocatable/capacity): "
            f"{', '.join(parts) or 'none'}; {len(self._dm.registrations)} registrations, "
            f"{len(self._dm.rejected)} rejected"
            + (f" (last: {self._dm.rejected[-1].reason})" if self._dm.rejected else "")
        )

    async def _notify(self) -> None:
        async with self._condition:
            self._condition.notify_all()

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float | None = 5.0,  # noqa: ASYNC109 - a timeout argument reads best in tests
        *,
        what: str | None = None,
    ) -> None:
        """Wait until ``predicate()`` is true, re-checking it after every state change.

        It is re-checked whenever this kubelet's state changes (a resource, a
        registration, a rejection, an allocation, start or stop), and at least every
        50 ms for predicates that read other state (files, logs, the plugin).
        Raises :class:`TimeoutError` naming ``what`` (default: the predicate) and the
        current state when ``timeout`` seconds pass first (None: wait without bound).
        """
        try:
            async with asyncio.timeout(timeout), self._condition:
                while not predicate():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(_RECHECK_INTERVAL):
                            await self._condition.wait()
        except TimeoutError:
            awaited = what or getattr(predicate, "__qualname__", repr(predicate))
            raise TimeoutError(
                f"FakeKubelet: timed out after {timeout}s waiting for {awaited}; "
                f"state: {self._describe()}"
            ) from None

    async def wait_for_resource(
        self,
        name: str,
        *,
        count: int | None = None,
        healthy: int | None = None,
        timeout: float | None = 5.0,  # noqa: ASYNC109 - as wait_for
    ) -> ResourceState:
        """Wait until resource ``name`` is in the node status and return its state.

        The resource must not be removed and, when given, must have capacity ``count``
        and allocatable ``healthy``.
        """

        def ready() -> bool:
            state = self._snapshot(name)
            return (
                state is not None
                and not state.removed
                and (count is None or state.capacity == count)
                and (healthy is None or state.allocatable == healthy)
            )

        await self.wait_for(
            ready, timeout, what=f"resource {name!r} (capacity={count}, allocatable={healthy})"
        )
        state = self._snapshot(name)
        assert state is not None
        return state

    async def wait_for_registrations(
        self,
        n: int,
        resource: str | None = None,
        timeout: float | None = 5.0,  # noqa: ASYNC109 - as wait_for
    ) -> Sequence[Registration]:
        """Wait until at least ``n`` registrations (of ``resource``, if given) were accepted."""

        def matching() -> list[Registration]:
            return [
                r
                for r in self._dm.registrations
                if resource is None or r.request.resource_name == resource
            ]

        await self.wait_for(
            lambda: len(matching()) >= n,
            timeout,
            what=f"{n} registration(s)" + (f" of {resource!r}" if resource else ""),
        )
        return tuple(matching())
