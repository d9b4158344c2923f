"""``run --dra`` restarted for real: the host process killed (SIGKILL) or stopped (SIGTERM).

The host runs as ``devplugin-host run --enable gpu --dra gpu`` in a subprocess over a
fake gpu tree, against the fake API server (HTTP) and the fake DRA kubelet (gRPC on
Unix sockets) of the test's loop. Claims are prepared, the process goes, a new one
starts on the same directories: it reads the checkpoint, answers kubelet's repeated
prepare identically (without reading the claims again), unprepares the claims of
its predecessor, and takes the slices over without a duplicate.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from host.testing import FakeApiServer, FakeDraKubelet, allocate_claim
from hostplugins.gpu.fakedev import FakeGpu, FakeGpuTree, write_gpu_tree
from tests.dra.test_run_dra import host_env, read_log
from tests.reliability.dra_checks import PoolHistory, assert_claims_kept

pytestmark = pytest.mark.asyncio

NODE = "node-a"
GPU = "gpu.intel.com"


@pytest_asyncio.fixture
async def apiserver() -> AsyncIterator[FakeApiServer]:
    async with FakeApiServer() as server:
        yield server


@pytest_asyncio.fixture
async def dra_kubelet(short_dir: Path, apiserver: FakeApiServer) -> AsyncIterator[FakeDraKubelet]:
    fake = FakeDraKubelet(short_dir / "reg", apiserver=apiserver, node_name=NODE)
    async with fake:
        yield fake


class HostProcess:
    """``devplugin-host run --dra gpu`` as a subprocess, its log in a file per start."""

    def __init__(self, api: FakeApiServer, short_dir: Path, tmp_path: Path) -> None:
        self.kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        self.short_dir = short_dir
        self.tmp_path = tmp_path
        self.root = tmp_path / "gpu"
        self.cdi_dir = short_dir / "cdi"
        self.starts = 0
        self.process: asyncio.subprocess.Process | None = None

    def write_tree(self, cards: int) -> None:
        write_gpu_tree(self.root, FakeGpuTree(cards=[FakeGpu(driver="i915", numa_node=0)] * cards))

    def log_path(self, start: int) -> Path:
        return self.tmp_path / f"host{start}.log"

    async def start(self) -> None:
        self.starts += 1
        (self.short_dir / "dp").mkdir(exist_ok=True)
        with self.log_path(self.starts).open("wb") as log_file:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "host.cli", "run", "--enable", "gpu", "--dra", "gpu",
                "--node-name", NODE, "--kubeconfig", str(self.kubeconfig),
                "--plugin-dir", str(self.short_dir / "dp"), "--cdi-dir", str(self.cdi_dir),
                "--dra-plugin-dir", str(self.short_dir / "plugins"),
                "--plugins-registry-dir", str(self.short_dir / "reg"),
                "--sysfs-root", str(self.root / "sys"), "--devfs-root", str(self.root / "dev"),
                "--log-format", "json",
                env=host_env(), stdout=log_file, stderr=log_file,
            )  # fmt: skip

    async def end(self, signum: int) -> int:
        assert self.process is not None
        self.process.send_signal(signum)
        return await asyncio.wait_for(self.process.wait(), 30)

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    def messages(self, start: int) -> list[str]:
        return [entry["message"] for entry in read_log(self.log_path(start))]

    def errors(self, start: int) -> list[str]:
        return [e["message"] for e in read_log(self.log_path(start)) if e["level"] == "error"]


@pytest_asyncio.fixture
async def host(
    apiserver: FakeApiServer, short_dir: Path, tmp_path: Path
) -> AsyncIterator[HostProcess]:
    process = HostProcess(apiserver, short_dir, tmp_path)
    try:
        yield process
    finally:
        await process.kill()


def slice_writes(api: FakeApiServer, since: int) -> list[str]:
    """The writes of ResourceSlices among the requests from index ``since`` on."""
    return [
        f"{r.method} {r.code}"
        for r in api.requests[since:]
        if r.method in ("POST", "PUT", "DELETE") and "/resourceslices" in r.path
    ]


class TestHostRestart:
    @pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
    async def test_claims_and_slices_survive(
        self,
        apiserver: FakeApiServer,
        dra_kubelet: FakeDraKubelet,
        host: HostProcess,
        signum: signal.Signals,
    ) -> None:
        """Claims prepared before a restart are answered and unprepared by the new host;
        it adopts the slices, updates them in place for the card added meanwhile, and
        never creates a second slice."""
        host.write_tree(cards=2)
        await host.start()
        await dra_kubelet.wait_for_driver(GPU, timeout=30)
        history = PoolHistory(apiserver, GPU, NODE)
        await apiserver.wait_for(lambda: len(history.devices()) == 2, 30, "slices of 2 cards")
        claims = [
            await allocate_claim(
                apiserver, dra_kubelet, f"{GPU}/i915", node_name=NODE, cdi_dir=host.cdi_dir
            )
            for _ in range(2)
        ]
        generation = history.generations()[-1]

        status = await host.end(signum)
        assert status == (0 if signum == signal.SIGTERM else -signal.SIGKILL)
        if signum == signal.SIGTERM:
            await dra_kubelet.wait_for_no_driver(GPU)  # its sockets went with it
            assert host.errors(1) == []
        assert len(history.devices()) == 2  # the slices stay for the next instance
        host.write_tree(cards=3)
        before, requests = time.monotonic(), len(apiserver.requests)
        await host.start()

        await dra_kubelet.wait_for_driver(GPU, after=before, timeout=30)
        await apiserver.wait_for(lambda: len(history.devices()) == 3, 30, "the third card")
        writes = slice_writes(apiserver, requests)
        assert writes == ["PUT 200"]  # the adopted slice, updated in place
        assert history.generations()[-1] == generation  # one slice changed: same generation
        await assert_claims_kept(apiserver, dra_kubelet, claims)
        history.assert_clean()
        assert f"DRA driver {GPU}: 2 prepared claim(s) restored from" in " ".join(host.messages(2))
        assert host.errors(2) == []
