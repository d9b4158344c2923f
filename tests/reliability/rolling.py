"""Rolling updates of the host under Allocate load, shared by the test and the benchmark.

One roll is what a DaemonSet with ``maxSurge: 1`` does: start the new host (its own
``--instance-id``, as the pod UID), wait until kubelet uses it, SIGTERM the old one
and wait until kubelet has settled on the new one. Meanwhile a load task admits and
releases containers as kubelet does, back to back. The fake kubelet records every
change of allocatable as it happens, so the capacity gaps are exact, not sampled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from host.deviceplugin._names import socket_name
from host.testing import FakeKubelet, KubeletError

HOOKS = Path(__file__).with_name("twin_hooks.py")
RESOURCE = "twin.example.com/dev"
DEVICES = 2


class HostProcess:
    """One ``devplugin-host run`` subprocess; stderr is kept line by line."""

    def __init__(self, process: asyncio.subprocess.Process, instance_id: str) -> None:
        self.process = process
        self.instance_id = instance_id
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.lines.append(line.decode(errors="replace").rstrip())

    async def stop(self) -> int:
        """SIGTERM and wait for the exit status (SIGKILL after 20 s: a failure for callers)."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 20)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        await self._reader
        assert self.process.returncode is not None
        return self.process.returncode


async def start_host(plugin_dir: Path, instance_id: str, *extra: str) -> HostProcess:
    """Start ``devplugin-host run`` serving ``twin.example.com/dev`` as instance ``instance_id``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVPLUGIN_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "host.cli", "run",
        "--plugin-dir", str(plugin_dir), "--cdi-dir", str(plugin_dir / f"cdi-{instance_id}"),
        "--enable", "twin_hooks", "--plugin-module", str(HOOKS), "--log-level", "info",
        "--instance-id", instance_id, *extra,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    return HostProcess(process, instance_id)


@dataclass
class AllocateLoad:
    """Admits one container at a time as kubelet does, releasing it at once, until stopped."""

    kubelet: FakeKubelet
    admitted: int = 0
    refused: list[str] = field(default_factory=list)
    """Admissions kubelet refused before calling the plugin (no healthy device, ...)."""
    failed: list[str] = field(default_factory=list)
    """Allocate calls that reached a plugin and failed."""
    slowest: float = 0.0
    """The longest admission (Allocate included), seconds."""

    async def run(self) -> None:
        """Run until cancelled."""
        while True:
            began = time.monotonic()
            try:
                allocation = await self.kubelet.allocate_like_kubelet(RESOURCE, 1)
            except KubeletError as err:
                if _rpc_error(err) is not None:
                    self.failed.append(str(err))
                else:
                    self.refused.append(str(err))
                # Pacing only: a refused admission returns at once, do not spin the loop.
                await asyncio.sleep(0.001)
                continue
            self.admitted += 1
            self.slowest = max(self.slowest, time.monotonic() - began)
            await self.kubelet.release(allocation)


def _rpc_error(err: BaseException) -> grpc.aio.AioRpcError | None:
    while err is not None:
        if isinstance(err, grpc.aio.AioRpcError):
            return err
        err = err.__cause__  # type: ignore[assignment]
    return None


@dataclass
class RollFigures:
    """What the rolls did to kubelet's view of the resource."""

    mode: str
    rolls: int
    gaps: list[float]
    """Length of every span with allocatable 0, in seconds."""
    admitted: int
    refused: list[str]
    failed: list[str]
    exit_codes: list[int]
    recovery: list[float]
    """Seconds from SIGTERM of the old host to kubelet settled on the new one."""
    slowest_admission: float

    @property
    def max_gap(self) -> float:
        """The longest span with allocatable 0 (0.0 when there was none)."""
        return max(self.gaps, default=0.0)


def _listing(kubelet: FakeKubelet, socket: Path) -> bool:
    state = kubelet.resources.get(RESOURCE)
    return (
        state is not None
        and state.socket_path == str(socket)
        and str(socket) in state.listing
        and state.allocatable == DEVICES
    )


def _settled(kubelet: FakeKubelet, socket: Path, registrations: int) -> bool:
    state = kubelet.resources.get(RESOURCE)
    mine = [r for r in kubelet.registrations if r.socket_path == str(socket)]
    return (
        state is not None
        and state.connected
        and state.socket_path == str(socket)
        and state.endpoints == (str(socket),)
        and state.listing == (str(socket),)
        and state.allocatable == DEVICES
        and len(mine) >= registrations
    )


async def roll_hosts(
    kubelet: FakeKubelet,
    plugin_dir: Path,
    rolls: int,
    *,
    timeout: float = 30.0,  # noqa: ASYNC109 - a bound per wait
) -> RollFigures:
    """Start a host, then replace it ``rolls`` times under load; return the figures.

    With a kubelet that runs its plugin watcher (``registry_dir``), the hosts register
    through it (``--registration plugins-registry``).
    """
    extra: tuple[str, ...] = ()
    socket_dir = plugin_dir
    if kubelet.registry_dir is not None:
        socket_dir = Path(kubelet.registry_dir)
        extra = ("--registration", "plugins-registry", "--plugins-registry-dir", str(socket_dir))
    hosts: list[HostProcess] = []
    load = AllocateLoad(kubelet)
    exit_codes: list[int] = []
    recovery: list[float] = []
    # Kubelet 1.25-1.35 disconnects the new instance when the old one's stream ends:
    # the new host registers a second time.
    registrations_after_roll = 2 if kubelet.mode == "1.25" else 1
    load_task: asyncio.Task[None] | None = None
    try:
        old = await start_host(plugin_dir, "pod-0", *extra)
        hosts.append(old)
        old_socket = socket_dir / socket_name(*RESOURCE.split("/"), old.instance_id)
        await kubelet.wait_for(
            lambda: _settled(kubelet, old_socket, 1), timeout, what="the first host"
        )
        start = time.monotonic()
        load_task = asyncio.create_task(load.run(), name="allocate load")
        for index in range(1, rolls + 1):
            new = await start_host(plugin_dir, f"pod-{index}", *extra)
            hosts.append(new)
            socket = socket_dir / socket_name(*RESOURCE.split("/"), new.instance_id)
            # The new pod is Ready (its readiness probe) once kubelet has its device list.
            await kubelet.wait_for(
                lambda s=socket: _listing(kubelet, s),  # type: ignore[misc]
                timeout,
                what=f"host pod-{index} in use",
            )
            stopped = time.monotonic()
            exit_codes.append(await old.stop())
            await kubelet.wait_for(
                lambda s=socket: _settled(kubelet, s, registrations_after_roll),  # type: ignore[misc]
                timeout,
                what=f"kubelet settled on host pod-{index}",
            )
            recovery.append(time.monotonic() - stopped)
            old = new
        gaps = [end - begin for begin, end in kubelet.zero_allocatable_spans(RESOURCE)
                if end >= start]  # fmt: skip
    finally:
        if load_task is not None:
            load_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load_task
        for host in hosts:
            with contextlib.suppress(ProcessLookupError):
                await host.stop()
    return RollFigures(
        mode=kubelet.mode,
        rolls=rolls,
        gaps=gaps,
        admitted=load.admitted,
        refused=load.refused,
        failed=load.failed,
        exit_codes=exit_codes,
        recovery=recovery,
        slowest_admission=load.slowest,
    )
