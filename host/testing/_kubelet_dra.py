"""A fake kubelet DRA side: plugin-watcher registration and Prepare / Unprepare calls.

:class:`FakeDraKubelet` does what kubelet's plugin watcher and DRA manager do with a DRA
driver (kubernetes/kubernetes ``pkg/kubelet/pluginmanager`` and
``pkg/kubelet/cm/dra/plugin``): it finds registration sockets (``*.sock``, not hidden)
in its registry directory, calls ``GetInfo``, validates the answer as the DRA handler
does (type ``DRAPlugin``, a driver name, an absolute endpoint, a supported service,
chosen in the plugin's order among the kubelet's), reports the outcome with
``NotifyRegistrationStatus``, and deregisters a socket that goes away or registers it
again when it is re-created (a restarted driver). Calls go to the newest instance of a
driver with the service chosen at registration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import stat
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc

from host._api import (
    dra_v1_pb2,
    dra_v1_pb2_grpc,
    dra_v1beta1_pb2,
    dra_v1beta1_pb2_grpc,
    pluginregistration_pb2,
    pluginregistration_pb2_grpc,
)
from host.testing._kubelet_types import KubeletError

__all__ = ["DraClaimResult", "DraDevice", "DraPluginRegistration", "FakeDraKubelet"]

_LOG = logging.getLogger("host.testing.kubelet.dra")

KUBELET_DRA_SERVICES = ("v1.DRAPlugin", "v1beta1.DRAPlugin")
"""What kubelet 1.34-1.36 speaks, in its order."""
CALL_TIMEOUT = 45.0
"""kubelet's ``defaultClientCallTimeout`` for Prepare / Unprepare."""
_GET_INFO_TIMEOUT = 1.0
_NOTIFY_TIMEOUT = 5.0
_BACKOFF_INITIAL = 0.5
_BACKOFF_CAP = 120.0
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_SUN_PATH_MAX = 107

ClaimTriple = tuple[str, str, str]
"""A claim as the tests give it: ``(namespace, name, uid)``."""


@dataclass(frozen=True)
class DraPluginRegistration:
    """A DRA plugin instance kubelet accepted."""

    driver: str
    endpoint: str
    service: str
    """The chosen service, e.g. ``"v1.DRAPlugin"``."""
    supported_versions: tuple[str, ...]
    socket_path: str
    """The registration socket it was found through."""
    registered_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class DraDevice:
    """One device of a NodePrepareResources answer."""

    request_names: tuple[str, ...]
    pool: str
    device: str
    cdi_device_ids: tuple[str, ...]
    share_id: str | None = None


@dataclass(frozen=True)
class DraClaimResult:
    """One claim's entry of a NodePrepareResources answer: devices, or an error."""

    devices: tuple[DraDevice, ...] = ()
    error: str = ""


@dataclass
class _Watched:
    identity: tuple[int, int]
    registration: DraPluginRegistration | None = None
    failures: int = 0
    next_attempt: float = 0.0
    last_error: str = ""


class FakeDraKubelet:
    """Kubelet's DRA side in-process, speaking real gRPC to drivers over Unix sockets.

    ``registry_dir`` is the watched directory (kubelet: ``/var/lib/kubelet/plugins_registry``);
    ``services`` the DRA services this kubelet speaks in its order (pass
    ``("v1beta1.DRAPlugin",)`` for a 1.32-1.33 kubelet); ``rescan_interval`` how often
    the directory is looked at (kubelet's reconciler: every second).

    Use it as an async context manager, or call :meth:`start` and :meth:`stop`::

        async with FakeDraKubelet(registry_dir) as kubelet:
            reg = await kubelet.wait_for_driver("gpu.intel.com")
            results = await kubelet.prepare("gpu.intel.com", [("default", "claim", uid)])
    """

    def __init__(
        self,
        registry_dir: str | os.PathLike[str],
        *,
        services: Sequence[str] = KUBELET_DRA_SERVICES,
        rescan_interval: float = 0.02,
    ) -> None:
        self.registry_dir = Path(registry_dir)
        self.services = tuple(services)
        self.rescan_interval = rescan_interval
        self._watched: dict[str, _Watched] = {}
        self._instances: dict[str, list[DraPluginRegistration]] = {}
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {}
        self._rejections: list[tuple[str, str]] = []
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()

    def __repr__(self) -> str:
        return f"FakeDraKubelet({str(self.registry_dir)!r})"

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Create the registry directory and start watching it (a kubelet start)."""
        if self._task is not None:
            raise KubeletError("FakeDraKubelet is already running")
        self.registry_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        self._task = asyncio.create_task(self._watch(), name="fake-kubelet-dra-watch")

    async def stop(self) -> None:
        """Stop watching and forget every plugin (kubelet gone); sockets stay."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._watched.clear()
        self._instances.clear()
        await self._notify()

    async def restart(self) -> None:
        """Stop and start again: every socket present is registered anew."""
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

    # -- observation -----------------------------------------------------------------

    @property
    def drivers(self) -> Mapping[str, Sequence[DraPluginRegistration]]:
        """The registered instances of each driver, oldest first."""
        return {name: tuple(regs) for name, regs in self._instances.items() if regs}

    @property
    def rejections(self) -> Sequence[tuple[str, str]]:
        """Every failed registration so far: ``(socket path, error sent to the plugin)``."""
        return tuple(self._rejections)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(
        self,
        predicate: Any,
        timeout: float | None = 5.0,  # noqa: ASYNC109 - a timeout argument reads best in tests
        *,
        what: str = "condition",
    ) -> None:
        """Wait until ``predicate()`` is true; TimeoutError naming ``what`` otherwise."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                while not predicate():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.05):
                            await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(
                f"FakeDraKubelet: timed out after {timeout}s waiting for {what}; "
                f"drivers: {sorted(self.drivers)}, rejections: {self._rejections[-3:]}"
            ) from None

    async def wait_for_driver(
        self,
        driver: str,
        *,
        after: float | None = None,
        timeout: float | None = 5.0,  # noqa: ASYNC109 - as wait_for
    ) -> DraPluginRegistration:
        """Wait until ``driver`` is registered (newer than monotonic time ``after``)."""

        def newest() -> DraPluginRegistration | None:
            regs = self._instances.get(driver)
            if not regs:
                return None
            if after is not None and regs[-1].registered_at <= after:
                return None
            return regs[-1]

        await self.wait_for(lambda: newest() is not None, timeout, what=f"driver {driver!r}")
        found = newest()
        assert found is not None
        return found

    async def wait_for_no_driver(
        self,
        driver: str,
        timeout: float | None = 5.0,  # noqa: ASYNC109 - as wait_for
    ) -> None:
        """Wait until no instance of ``driver`` is registered."""
        await self.wait_for(
            lambda: not self._instances.get(driver), timeout, what=f"driver {driver!r} gone"
        )

    # -- plugin watcher --------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await self._scan_once()
            await asyncio.sleep(self.rescan_interval)

    def _sockets(self) -> dict[str, tuple[int, int]]:
        found = {}
        for root, dirs, files in os.walk(self.registry_dir):
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
                    found[path] = (st.st_dev, st.st_ino)
        return found

    async def _scan_once(self) -> None:
        present = self._sockets()
        for path in list(self._watched):
            if present.get(path) != self._watched[path].identity:
                await self._deregister(path)
        now = time.monotonic()
        for path, identity in present.items():
            watched = self._watched.setdefault(path, _Watched(identity))
            if watched.registration is None and now >= watched.next_attempt:
                await self._register(path, watched)

    async def _deregister(self, path: str) -> None:
        watched = self._watched.pop(path)
        if watched.registration is not None:
            await self._drop(watched.registration)
            _LOG.info(
                "deregistered DRA driver %s (socket %s gone)", watched.registration.driver, path
            )
            await self._notify()

    async def _drop(self, reg: DraPluginRegistration) -> None:
        regs = self._instances.get(reg.driver, [])
        if reg in regs:
            regs.remove(reg)
        channel = self._channels.pop((reg.driver, reg.endpoint), None)
        if channel is not None:
            await channel.close()

    async def _register(self, path: str, watched: _Watched) -> None:
        try:
            async with grpc.aio.insecure_channel(f"unix:{path}") as channel:
                stub = pluginregistration_pb2_grpc.RegistrationStub(channel)
                try:
                    info = await stub.GetInfo(
                        pluginregistration_pb2.InfoRequest(), timeout=_GET_INFO_TIMEOUT
                    )
                except grpc.aio.AioRpcError as err:
                    self._failed(path, watched, f"GetInfo failed: {err.details()}")
                    return
                error = self._validate(path, info)
                reg = None
                if error is None:
                    endpoint = info.endpoint or path
                    reg = DraPluginRegistration(
                        driver=info.name,
                        endpoint=endpoint,
                        service=self._choose(info.supported_versions) or "",
                        supported_versions=tuple(info.supported_versions),
                        socket_path=path,
                    )
                    self._instances.setdefault(reg.driver, []).append(reg)
                    self._channels[(reg.driver, endpoint)] = grpc.aio.insecure_channel(
                        f"unix:{endpoint}"
                    )
                status = pluginregistration_pb2.RegistrationStatus(
                    plugin_registered=error is None, error=error or ""
                )
                try:
                    await stub.NotifyRegistrationStatus(status, timeout=_NOTIFY_TIMEOUT)
                except grpc.aio.AioRpcError as err:
                    # 1.36+: a failed notify undoes the registration; retried later.
                    error = error or f"NotifyRegistrationStatus failed: {err.details()}"
                if error is not None:
                    if reg is not None:
                        await self._drop(reg)
                    self._failed(path, watched, error)
                    return
                watched.registration = reg
                watched.failures = 0
                _LOG.info("registered DRA driver %s at %s", info.name, info.endpoint)
        finally:
            await self._notify()

    def _failed(self, path: str, watched: _Watched, error: str) -> None:
        # Operation-executor backoff: 500 ms doubling up to 2 min, per socket path.
        watched.failures += 1
        delay = min(_BACKOFF_INITIAL * 2 ** (watched.failures - 1), _BACKOFF_CAP)
        watched.next_attempt = time.monotonic() + delay
        watched.last_error = error
        self._rejections.append((path, error))
        _LOG.info("registration through %s failed: %s", path, error)

    def _choose(self, versions: Iterable[str]) -> str | None:
        for version in versions:
            if version in self.services:
                return version
        return None

    def _validate(self, path: str, info: pluginregistration_pb2.PluginInfo) -> str | None:
        if info.type != "DRAPlugin":
            return (
                f"RegisterPlugin error -- no handler registered for plugin type: {info.type} "
                f"at socket {path}"
            )
        endpoint = info.endpoint or path
        problem = None
        if not info.supported_versions:
            problem = "empty list of supported gRPC services (aka supported versions)"
        elif self._choose(info.supported_versions) is None:
            problem = (
                f"none of services supported by the plugin ({list(info.supported_versions)!r}) "
                f"are supported by the kubelet ({list(self.services)!r})"
            )
        elif len(info.name) > 63 or not _DNS_SUBDOMAIN.fullmatch(info.name):
            problem = f"invalid driver name {info.name!r}: must be a DNS subdomain of <= 63"
        elif not os.path.isabs(endpoint):
            problem = f"endpoint {endpoint!r} is not an absolute path"
        elif len(endpoint.encode()) > _SUN_PATH_MAX:
            problem = f"endpoint {endpoint!r} is longer than {_SUN_PATH_MAX} bytes"
        elif any(reg.endpoint == endpoint for reg in self._instances.get(info.name, [])):
            problem = f"endpoint {endpoint} already registered for DRA driver plugin {info.name}"
        if problem is None:
            return None
        return f"RegisterPlugin error -- plugin validation failed with err: {problem}"

    # -- calls -----------------------------------------------------------------------

    def _client(self, driver: str) -> tuple[DraPluginRegistration, grpc.aio.Channel]:
        regs = self._instances.get(driver)
        if not regs:
            raise KubeletError(f"DRA driver {driver} is not registered")
        reg = regs[-1]
        return reg, self._channels[(driver, reg.endpoint)]

    async def prepare(
        self,
        driver: str,
        claims: Iterable[ClaimTriple],
        *,
        timeout: float = CALL_TIMEOUT,  # noqa: ASYNC109 - kubelet's per-call timeout
    ) -> dict[str, DraClaimResult]:
        """Call NodePrepareResources on the newest instance of ``driver``; results by UID.

        Raises :class:`KubeletError` where kubelet fails the call itself (driver not
        registered, a result for an unknown claim UID, skipped claims); gRPC errors of
        the driver come as :class:`grpc.aio.AioRpcError`.
        """
        reg, channel = self._client(driver)
        claim_list = list(claims)
        v1 = reg.service == "v1.DRAPlugin"
        pb2: Any = dra_v1_pb2 if v1 else dra_v1beta1_pb2
        stub: Any = (
            dra_v1_pb2_grpc.DRAPluginStub(channel)
            if v1
            else dra_v1beta1_pb2_grpc.DRAPluginStub(channel)
        )
        request = pb2.NodePrepareResourcesRequest(
            claims=[pb2.Claim(namespace=ns, name=name, uid=uid) for ns, name, uid in claim_list]
        )
        response = await stub.NodePrepareResources(request, timeout=timeout)
        wanted = {uid for _, _, uid in claim_list}
        results: dict[str, DraClaimResult] = {}
        for uid, entry in response.claims.items():
            if uid not in wanted:
                raise KubeletError(
                    f"NodePrepareResources returned result for unknown claim UID {uid}"
                )
            devices = tuple(
                DraDevice(
                    request_names=tuple(d.request_names),
                    pool=d.pool_name,
                    device=d.device_name,
                    cdi_device_ids=tuple(d.cdi_device_ids),
                    share_id=d.share_id if v1 and d.HasField("share_id") else None,
                )
                for d in entry.devices
            )
            results[uid] = DraClaimResult(
                devices=devices if not entry.error else (), error=entry.error
            )
        if len(results) < len(wanted):
            raise KubeletError(
                f"NodePrepareResources skipped {len(wanted) - len(results)} ResourceClaims"
            )
        return results

    async def unprepare(
        self,
        driver: str,
        claims: Iterable[ClaimTriple],
        *,
        timeout: float = CALL_TIMEOUT,  # noqa: ASYNC109 - kubelet's per-call timeout
    ) -> dict[str, str]:
        """Call NodeUnprepareResources; return each claim UID's error ('' = done)."""
        reg, channel = self._client(driver)
        claim_list = list(claims)
        v1 = reg.service == "v1.DRAPlugin"
        pb2: Any = dra_v1_pb2 if v1 else dra_v1beta1_pb2
        stub: Any = (
            dra_v1_pb2_grpc.DRAPluginStub(channel)
            if v1
            else dra_v1beta1_pb2_grpc.DRAPluginStub(channel)
        )
        request = pb2.NodeUnprepareResourcesRequest(
            claims=[pb2.Claim(namespace=ns, name=name, uid=uid) for ns, name, uid in claim_list]
        )
        response = await stub.NodeUnprepareResources(request, timeout=timeout)
        wanted = {uid for _, _, uid in claim_list}
        results = {}
        for uid, entry in response.claims.items():
            if uid not in wanted:
                raise KubeletError(
                    f"NodeUnprepareResources returned result for unknown claim UID {uid}"
                )
            results[uid] = entry.error
        if len(results) < len(wanted):
            raise KubeletError(
                f"NodeUnprepareResources skipped {len(wanted) - len(results)} ResourceClaims"
            )
        return results
