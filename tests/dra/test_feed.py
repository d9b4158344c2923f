"""DraDriver fed by a ScannerFeed, as the host wires it: ``feed.subscribe(driver.update)``."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from host.deviceplugin import DeviceTree
from host.deviceplugin._feed import ScannerFeed
from host.testing import FakeClaims, FakeDraKubelet
from tests.dra.helpers import DRIVER, DriverRunner, add_claim, gpu, result
from tests.scanners import QueueScanner

pytestmark = pytest.mark.asyncio


def tree(*cards: int) -> DeviceTree:
    devices = DeviceTree()
    for index in cards:
        devices.add_device("i915", f"card{index}", gpu(index))
    return devices


class TestFedByScanner:
    async def test_snapshots_and_scan_failure_reach_the_driver(
        self, drivers: DriverRunner, dra_kubelet: FakeDraKubelet, claims: FakeClaims
    ) -> None:
        """New devices become preparable; a failed scan refuses new claims until it recovers."""
        scanner = QueueScanner(tree(0))
        feed = ScannerFeed("gpu", DRIVER, scanner, backoff=(0.05, 0.1))
        driver = await drivers.start(devices={})
        feed.subscribe(driver.update)
        feeding = asyncio.create_task(feed.run())
        try:
            await dra_kubelet.wait_for_driver(DRIVER)
            await dra_kubelet.wait_for(lambda: "i915-card0" in driver.devices, what="card0")
            c0 = add_claim(claims, "c0", "uid-0", result("i915-card0"))
            assert (await dra_kubelet.prepare(DRIVER, [c0]))["uid-0"].error == ""

            scanner.trees.put_nowait(tree(0, 1))
            await dra_kubelet.wait_for(lambda: "i915-card1" in driver.devices, what="card1")

            scanner.trees.put_nowait(RuntimeError("sysfs vanished"))
            await dra_kubelet.wait_for(lambda: feed.scan_failed, what="scan failure")
            c1 = add_claim(claims, "c1", "uid-1", result("i915-card1"))
            assert "the scanner failed" in (await dra_kubelet.prepare(DRIVER, [c1]))["uid-1"].error
            assert (await dra_kubelet.prepare(DRIVER, [c0]))["uid-0"].error == ""  # kept

            scanner.trees.put_nowait(tree(0, 1))  # the restarted scanner notifies again
            await dra_kubelet.wait_for(lambda: not feed.scan_failed, what="recovery")
            assert (await dra_kubelet.prepare(DRIVER, [c1]))["uid-1"].error == ""
        finally:
            feeding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeding

    async def test_no_device_list_yet(self, claims: FakeClaims, drivers: DriverRunner) -> None:
        """Before the first snapshot a claim is refused with a reason to retry."""
        from host.dra import ClaimRef, DraDriver

        driver = DraDriver(DRIVER, "node-a", None, claims, plugin_dir=drivers.dirs.plugins)
        ref = ClaimRef(*add_claim(claims, "c0", "uid-0", result("i915-card0")))
        outcome = (await driver.prepare([ref]))["uid-0"]
        assert "has no device list yet (retry)" in str(outcome)
