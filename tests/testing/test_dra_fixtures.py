"""The DRA mode of the host.testing fixtures: run_host(dra=...), dra_kubelet, dra_claim."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from host import ConfigError, PluginConfig, hookimpl
from host.deviceplugin import DeviceInfo, DeviceSpec, DeviceTree, Notifier
from host.testing import (
    DRA_NODE_NAME,
    ClaimMaker,
    FakeApiServer,
    FakeDraKubelet,
    KubeletError,
    RunHost,
)
from host.testing._apiserver_store import RESOURCE_CLAIMS

pytest_plugins = ["host.testing"]
pytestmark = pytest.mark.asyncio

DRIVER = "brush.example.com"


class BrushScanner:
    """``count`` brushes, each with a device node of its own and ``BRUSH=<id>``."""

    def __init__(self, count: int) -> None:
        self.count = count

    async def scan(self, notifier: Notifier) -> None:
        tree = DeviceTree()
        for index in range(self.count):
            node = DeviceSpec(host_path="/dev/null", container_path=f"/dev/brush{index}")
            info = DeviceInfo(nodes=(node,), envs={"BRUSH": f"b{index}"})
            tree.add_device("brush", f"b{index}", info)
        notifier.notify(tree)
        await asyncio.Event().wait()


class BrushHooks:
    @hookimpl
    def devplugin_scanners(self, config: PluginConfig) -> list[tuple[str, BrushScanner]]:
        return [(DRIVER, BrushScanner(3))]


class TestDraMode:
    async def test_claim_resolved_to_its_edits(
        self,
        run_host: RunHost,
        dra_claim: ClaimMaker,
        dra_kubelet: FakeDraKubelet,
        apiserver: FakeApiServer,
    ) -> None:
        """dra_claim: the devices allocated, one CDI ID each, resolved to node and env."""
        host = await run_host(plugins={"brush": BrushHooks()}, dra=["brush"])
        assert list(host.dra_plugins) == [DRIVER]
        assert host.managers == {}  # a DRA driver only: no device-plugin Manager
        claim = await dra_claim(f"{DRIVER}/brush", 2)
        assert claim.devices == ("brush-b0", "brush-b1")
        assert claim.cdi_ids == tuple(
            f"{DRIVER}/dra=claim-{claim.uid}-brush-b{i}" for i in range(2)
        )
        assert claim.device_nodes == ["/dev/brush0", "/dev/brush1"]
        assert claim.env == {"BRUSH": "b1"}  # later IDs win, as in a runtime
        assert all(path.parent == host.cdi_dir for path in claim.spec_files.values())
        stored = apiserver.store.get(RESOURCE_CLAIMS, claim.name, claim.namespace)
        assert stored["metadata"]["uid"] == claim.uid
        assert len(stored["status"]["allocation"]["devices"]["results"]) == 2
        assert dra_kubelet.node_name == DRA_NODE_NAME
        assert set(host.dra_plugins[DRIVER].driver.prepared_claims) == {claim.uid}

    async def test_devices_run_out(self, run_host: RunHost, dra_claim: ClaimMaker) -> None:
        """Devices held by a claim are not allocated again; asking for too many says so."""
        await run_host(plugins={"brush": BrushHooks()}, dra=["brush"])
        await dra_claim(f"{DRIVER}/brush", 2)
        with pytest.raises(KubeletError, match="only 1 untainted device"):
            await dra_claim(f"{DRIVER}/brush", 2)
        with pytest.raises(KubeletError, match=r"of type 'nib' free .*\(types published: brush\)"):
            await dra_claim(f"{DRIVER}/nib")

    async def test_dra_kubelet_fixture(
        self, run_host: RunHost, dra_kubelet: FakeDraKubelet, apiserver: FakeApiServer
    ) -> None:
        """dra_kubelet: the Node exists, its registry is short, and a restart wipes slices."""
        assert apiserver.has_node(DRA_NODE_NAME)
        assert len(str(dra_kubelet.registry_dir)) < 40
        await run_host(plugins={"brush": BrushHooks()}, dra=["brush"])
        await dra_kubelet.wait_for_driver(DRIVER)
        await apiserver.wait_for(lambda: bool(apiserver.resource_slices(driver=DRIVER)))
        await dra_kubelet.restart()
        assert dra_kubelet.wiped == 1
        await apiserver.wait_for(
            lambda: bool(apiserver.resource_slices(driver=DRIVER)), what="slices back"
        )


class TestDraModeMistakes:
    async def test_run_host_needs_the_dra_kubelet(self, run_host: RunHost) -> None:
        """run_host(dra=...) in a test without dra_kubelet says which fixture to add."""
        with pytest.raises(RuntimeError, match="add dra_kubelet"):
            await run_host(plugins={"brush": BrushHooks()}, dra=["brush"])

    @pytest.mark.parametrize(
        ("dra", "message"),
        [
            ("brush", "dra must be a list of plugin names"),
            (["other"], "dra names plugin 'other', which is not enabled"),
        ],
    )
    async def test_bad_dra(
        self,
        run_host: RunHost,
        dra_kubelet: FakeDraKubelet,
        dra: object,
        message: str,
    ) -> None:
        """A string, or a plugin that is not served, is a ConfigError as for --dra."""
        with pytest.raises(ConfigError, match=message):
            await run_host(plugins={"brush": BrushHooks()}, dra=dra)  # type: ignore[arg-type]

    async def test_claim_without_a_dra_host(self, run_host: RunHost, dra_claim: ClaimMaker) -> None:
        """dra_claim with no host serving the driver says how to start one."""
        await run_host(plugins={"brush": BrushHooks()})  # as device plugins
        with pytest.raises(RuntimeError, match=r"start one with run_host\(dra=\[PLUGIN\]\)"):
            await dra_claim(f"{DRIVER}/brush")


class TestDraKubeletOfYourOwn:
    @pytest_asyncio.fixture
    async def dra_kubelet(self, short_dir: Path) -> AsyncIterator[FakeDraKubelet]:
        """A test's own DRA kubelet, without an API server."""
        async with FakeDraKubelet(short_dir / "reg") as fake:
            yield fake

    async def test_without_api_server(self, run_host: RunHost, dra_kubelet: FakeDraKubelet) -> None:
        """An overriding dra_kubelet must name its API server and node: said, not asserted."""
        with pytest.raises(RuntimeError, match="with an API server and a node name"):
            await run_host(plugins={"brush": BrushHooks()}, dra=["brush"])
