"""DraPlugin: one scanner feeding both the ResourceSlices and the kubelet plugin."""

from __future__ import annotations

import asyncio

import lightkube
import pytest

from host.dra import DraOptions, build_dra_plugins
from host.testing import FakeApiServer, FakeDraKubelet
from tests.dra.helpers import (
    DRIVER,
    NODE,
    Dirs,
    PluginRunner,
    prepare_on_api,
    resolve_cdi,
)
from tests.dra.helpers import gpu_tree as tree
from tests.dra.helpers import published_devices as device_names
from tests.dra.schema import assert_schema_valid
from tests.scanners import QueueScanner

pytestmark = pytest.mark.asyncio


class TestDraPlugin:
    async def test_slices_and_prepare_from_one_scanner(
        self,
        apiserver: FakeApiServer,
        dra_plugins: PluginRunner,
        dirs: Dirs,
        dra_kubelet: FakeDraKubelet,
    ) -> None:
        """The scanner's devices become slices and preparable claims; stopping keeps the slices."""
        scanner = QueueScanner(tree(0, 1))
        plugin = dra_plugins.start(scanner)
        await apiserver.wait_for(
            lambda: device_names(apiserver) == ["i915-card0", "i915-card1"], what="slices"
        )
        for item in apiserver.resource_slices(driver=DRIVER):
            assert_schema_valid(item)
        await dra_kubelet.wait_for_driver(DRIVER)
        _, prepared = await prepare_on_api(apiserver, dra_kubelet, "i915-card1")
        (device,) = prepared.devices
        assert device.device == "i915-card1"
        for cdi_id in device.cdi_device_ids:
            resolve_cdi(dirs.cdi, cdi_id)

        scanner.trees.put_nowait(tree(0, 1, 2))  # one feed, both consumers
        await apiserver.wait_for(lambda: len(device_names(apiserver)) == 3, what="card2")
        await dra_kubelet.wait_for(lambda: "i915-card2" in plugin.driver.devices)
        await dra_plugins.stop(plugin)
        assert device_names(apiserver) == ["i915-card0", "i915-card1", "i915-card2"]
        assert not plugin.driver.socket_path.exists()
        await dra_kubelet.wait_for_no_driver(DRIVER)

    async def test_cleanup_on_exit_deletes_the_slices(
        self, apiserver: FakeApiServer, dra_plugins: PluginRunner
    ) -> None:
        """With cleanup_on_exit the node's slices of the driver go when it stops."""
        plugin = dra_plugins.start(QueueScanner(tree(0)), cleanup_on_exit=True)
        await apiserver.wait_for(lambda: device_names(apiserver) == ["i915-card0"])
        await dra_plugins.stop(plugin)
        assert apiserver.resource_slices(driver=DRIVER) == []

    async def test_a_record_that_cannot_be_served_is_left_out(
        self, client: lightkube.AsyncClient, dirs: Dirs, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A namespace that is no driver name is logged and skipped; the others are built."""
        from host._loader import ScannerRecord

        options = DraOptions(
            frozenset({"gpu"}),
            NODE,
            plugin_dir=dirs.plugins,
            registry_dir=dirs.registry,
            publish_grace=12.5,
        )
        records = [
            ScannerRecord("gpu", "Not_A.Driver", QueueScanner()),  # type: ignore[arg-type]
            ScannerRecord("gpu", DRIVER, QueueScanner()),  # type: ignore[arg-type]
        ]
        built = build_dra_plugins(records, client, options, cdi_dir=dirs.cdi)
        assert [label for label, _ in built] == [f"plugin 'gpu' DRA driver {DRIVER}"]
        assert built[0][1].publish_grace == 12.5
        assert "DRA driver Not_A.Driver cannot be served: invalid DRA driver name" in caplog.text


class TestReadiness:
    @pytest.mark.usefixtures("dra_kubelet")
    async def test_ready_once_registered_and_published(self, dra_plugins: PluginRunner) -> None:
        """/readyz counts a DRA driver: not ready until kubelet took it and slices are out."""
        from host._health import readiness
        from host._metrics import HostMetrics

        metrics = HostMetrics()
        plugin = dra_plugins.build(QueueScanner(tree(0)))
        metrics.add_dra_plugin(plugin)
        assert readiness(metrics) == [
            {"plugin": "gpu", "dra_driver": DRIVER, "reason": "DRA driver sockets not up yet"}
        ]
        dra_plugins.serve(plugin)
        async with asyncio.timeout(10):
            assert await plugin.driver.registration.wait_for_status() is True
            await plugin.publisher.wait_status(lambda status: status.synced)
        assert readiness(metrics) == []
        metrics.manager_ended(plugin, "crashed: OSError: boom")
        assert readiness(metrics)[0]["reason"] == "crashed: OSError: boom"

    async def test_refused_registration_is_the_reason(
        self, dra_plugins: PluginRunner, dirs: Dirs
    ) -> None:
        """A kubelet that speaks none of the driver's services: its refusal is the reason."""
        plugin = dra_plugins.build(QueueScanner(tree(0)))
        async with FakeDraKubelet(dirs.registry, services=("v9.DRAPlugin",)):
            dra_plugins.serve(plugin)
            async with asyncio.timeout(10):
                assert await plugin.driver.registration.wait_for_status() is False
            reason = plugin.not_ready_reason
            assert reason is not None
            assert reason.startswith("kubelet refused the registration: ")
            await dra_plugins.stop(plugin)
