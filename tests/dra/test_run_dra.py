"""`devplugin-host run --dra`: DRA drivers and device plugins in one host, as a subprocess.

The host speaks real HTTP to a fake API server (ResourceSlices, ResourceClaims) and
real gRPC to a fake DRA kubelet and a fake device-plugin kubelet, all in the test's loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from host.testing import FakeApiServer, FakeDraKubelet, FakeKubelet
from host.testing._http import http_get
from hostplugins.gpu.fakedev import FakeGpu, FakeGpuTree, write_gpu_tree
from tests.dra.helpers import resolve_cdi
from tests.dra.schema import assert_schema_valid

pytestmark = pytest.mark.asyncio

NODE = "node-a"
GPU = "gpu.intel.com"
KVM = "devices.devplugin.io/kvm"


@pytest_asyncio.fixture
async def kubelet(short_dir: Path) -> AsyncIterator[FakeKubelet]:
    """The device-plugin kubelet, in a directory of its own (as kubelet's is)."""
    async with FakeKubelet(short_dir / "dp") as fake:
        yield fake


def host_env() -> dict[str, str]:
    drop = ("DEVPLUGIN_", "NODE_NAME", "KUBECONFIG")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def gpu_tree(root: Path, cards: int = 2) -> Path:
    """A fake gpu tree with ``cards`` i915 cards, and /dev/kvm for the generic plugin."""
    write_gpu_tree(root, FakeGpuTree(cards=[FakeGpu(driver="i915", numa_node=0)] * cards))
    (root / "dev" / "kvm").symlink_to("/dev/null")
    return root


def device_names(api: FakeApiServer) -> list[str]:
    return sorted(
        device["name"]
        for item in api.resource_slices(driver=GPU, node_name=NODE)
        for device in item["spec"]["devices"]
    )


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


async def readiness_becomes(log_path: Path, reasons: list[dict[str, str]]) -> None:
    """Ask the subprocess host's /readyz until its not-ready reasons are ``reasons``.

    The host lives in another process, so there is no event to wait on: polled, bounded.
    """
    seen = None
    try:
        async with asyncio.timeout(20):
            while True:
                found = re.search(
                    r"metrics, probes and status on http://([^\s\"]+)", log_path.read_text()
                )
                if found:
                    reply = await http_get(found.group(1), "/readyz")
                    seen = (reply.status, reply.json()["not_ready"])
                    if seen == (503 if reasons else 200, reasons):
                        return
                await asyncio.sleep(0.05)  # another process: nothing to wait on but time
    except TimeoutError:
        raise AssertionError(f"/readyz: wanted {reasons}, last saw {seen}") from None


class TestRunDra:
    async def test_dra_driver_beside_device_plugins(
        self,
        apiserver: FakeApiServer,
        apiserver_kubeconfig: Path,
        kubelet: FakeKubelet,
        short_dir: Path,
        tmp_path: Path,
    ) -> None:
        """gpu as DRA driver and generic as device plugin: slices, kvm registered with kubelet,
        not ready until kubelet's plugin watcher takes the driver, a prepared claim with
        resolvable CDI IDs; SIGTERM exits 0, the slices stay."""
        apiserver.add_node(NODE)
        root = gpu_tree(tmp_path)
        cdi_dir, registry = short_dir / "cdi", short_dir / "reg"
        log_path = tmp_path / "host.log"
        dra_kubelet = FakeDraKubelet(registry)
        try:
            with log_path.open("wb") as log_file:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "host.cli", "run",
                    "--enable", "gpu,generic", "--dra", "gpu",
                    "--node-name", NODE, "--kubeconfig", str(apiserver_kubeconfig),
                    "--plugin-dir", kubelet.plugin_dir, "--cdi-dir", str(cdi_dir),
                    "--dra-plugin-dir", str(short_dir / "plugins"),
                    "--plugins-registry-dir", str(registry),
                    "--sysfs-root", str(root / "sys"), "--devfs-root", str(root / "dev"),
                    "--log-format", "json", "--metrics-address", "127.0.0.1:0",
                    env=host_env(), stdout=log_file, stderr=log_file,
                )  # fmt: skip
                try:
                    await apiserver.wait_for(
                        lambda: len(device_names(apiserver)) == 2, timeout=30, what="gpu slices"
                    )
                    slices = apiserver.resource_slices(driver=GPU)
                    for item in slices:
                        assert_schema_valid(item)
                    assert {item["spec"]["nodeName"] for item in slices} == {NODE}
                    await kubelet.wait_for_resource(KVM, count=110, timeout=30)
                    # one API or the other, never both
                    assert not [name for name in kubelet.resources if name.startswith(GPU)]
                    waiting = {"plugin": "gpu", "dra_driver": GPU}
                    await readiness_becomes(
                        log_path, [waiting | {"reason": "not registered with kubelet yet"}]
                    )

                    await dra_kubelet.start()  # kubelet's plugin watcher finds the driver
                    await dra_kubelet.wait_for_driver(GPU, timeout=30)
                    await readiness_becomes(log_path, [])
                    device = device_names(apiserver)[0]
                    allocated = {"request": "gpu", "driver": GPU, "pool": NODE, "device": device}
                    claim = apiserver.add_claim(
                        "default", "gpu-claim", allocation={"devices": {"results": [allocated]}}
                    )
                    uid = claim["metadata"]["uid"]
                    outcome = (await dra_kubelet.prepare(GPU, [("default", "gpu-claim", uid)]))[uid]
                    assert outcome.error == ""
                    (prepared,) = outcome.devices
                    assert (prepared.pool, prepared.device) == (NODE, device)
                    assert prepared.cdi_device_ids
                    for cdi_id in prepared.cdi_device_ids:
                        resolve_cdi(cdi_dir, cdi_id)

                    process.send_signal(signal.SIGTERM)
                    assert await asyncio.wait_for(process.wait(), 30) == 0
                finally:
                    if process.returncode is None:
                        process.kill()
                        await process.wait()
            await dra_kubelet.wait_for_no_driver(GPU)
        finally:
            await dra_kubelet.stop()
        assert len(device_names(apiserver)) == 2  # kept for the next instance
        assert not list(registry.glob("*.sock"))
        entries = read_log(log_path)
        errors = [e["message"] for e in entries if e["level"] == "error"]
        assert errors == []
        messages = " ".join(e["message"] for e in entries)
        assert f"serving 1 DRA driver(s) on node {NODE}: {GPU}" in messages
