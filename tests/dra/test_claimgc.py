"""Collecting a DRA driver's CDI specs: stale per-claim specs at start, the plugin's own later."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import pytest_asyncio

from host.deviceplugin._cdi import LEDGER_DIR, CdiSpecWriter, LedgerEntry
from host.deviceplugin._cdi_store import DevicesInUse
from host.dra._checkpoint import ClaimCheckpoint
from host.testing import FakeClaims, FakeDraKubelet
from tests.dra.helpers import (
    DRIVER,
    PLUGIN_SPEC,
    PLUGIN_SPEC_FILE,
    Dirs,
    DriverRunner,
    add_claim,
    cdi_files,
    gpu,
    prepare_ok,
    result,
)

pytestmark = pytest.mark.asyncio

UID1 = "11111111-1111-4111-8111-111111111111"
UID2 = "22222222-2222-4222-8222-222222222222"


def _claim_file(uid: str, device: str) -> str:
    parts = (DRIVER, "dra", f"claim-{uid}-{device}")
    return "-".join(part.replace("-", "--") for part in parts) + ".json"


def _foreign_files(dirs: Dirs) -> list[str]:
    """Files that look alike but are not this driver's per-claim specs."""
    files = {  # file name: (kind, device name)
        "other.example.com-dra-claim--x--card0.json": ("other.example.com/dra", "claim-x-card0"),
        f"{DRIVER}-gpu-claim--x.json": (f"{DRIVER}/gpu", "claim-x"),
        f"{DRIVER}-dra-claim--y.json": ("x.example.com/dra", "claim-y"),  # renamed by hand
    }
    for name, (kind, device) in files.items():
        spec = {"cdiVersion": "0.5.0", "kind": kind, "devices": [{"name": device}]}
        (dirs.cdi / name).write_text(json.dumps(spec))
    return list(files)


class TestClaimSpecsAtStart:
    async def test_unrecorded_claim_spec_removed(
        self, drivers: DriverRunner, dra_kubelet: FakeDraKubelet, claims: FakeClaims, dirs: Dirs
    ) -> None:
        """A per-claim spec no recorded claim names (a host killed mid-prepare) goes at start."""
        old = await drivers.start(kubelet=dra_kubelet)
        c1 = add_claim(claims, "c1", UID1, result("i915-card0"))
        c2 = add_claim(claims, "c2", UID2, result("i915-card1"))
        await prepare_ok(dra_kubelet, c1, c2)
        await drivers.stop(old)
        # As if the host died after writing c2's spec, before recording c2.
        checkpoint = ClaimCheckpoint(dirs.checkpoint, DRIVER)
        recorded = checkpoint.load()
        del recorded[UID2]
        checkpoint.save(recorded)
        foreign = _foreign_files(dirs)
        assert _claim_file(UID2, "i915-card1") in cdi_files(dirs.cdi)

        await dra_kubelet.wait_for_no_driver(DRIVER)
        since = time.monotonic()
        await drivers.start()
        await dra_kubelet.wait_for_driver(DRIVER, after=since)
        assert cdi_files(dirs.cdi) == sorted([_claim_file(UID1, "i915-card0"), *foreign])
        # kubelet never got c2's answer: it asks again, and the spec is back
        await prepare_ok(dra_kubelet, c2)
        assert _claim_file(UID2, "i915-card1") in cdi_files(dirs.cdi)
        assert await dra_kubelet.unprepare(DRIVER, [c1, c2]) == {UID1: "", UID2: ""}
        assert cdi_files(dirs.cdi) == sorted(foreign)

    async def test_kept_when_checkpoint_unreadable(
        self, drivers: DriverRunner, dra_kubelet: FakeDraKubelet, claims: FakeClaims, dirs: Dirs
    ) -> None:
        """With the checkpoint moved aside nobody knows what kubelet holds: specs stay."""
        old = await drivers.start(kubelet=dra_kubelet)
        c1 = add_claim(claims, "c1", UID1, result("i915-card0"))
        await dra_kubelet.prepare(DRIVER, [c1])
        await drivers.stop(old)
        dirs.checkpoint.write_text("garbage\n")
        new = await drivers.start()
        assert new.prepared_claims == {}
        assert cdi_files(dirs.cdi) == [_claim_file(UID1, "i915-card0")]


class InUse:
    """What kubelet's PodResources API would answer; ``None``: unknown."""

    def __init__(self) -> None:
        self.answer: DevicesInUse | None = DevicesInUse()

    async def __call__(self) -> DevicesInUse | None:
        return self.answer


class TestPluginSpecs:
    @pytest_asyncio.fixture
    async def setup(
        self, drivers: DriverRunner, dra_kubelet: FakeDraKubelet, claims: FakeClaims
    ) -> Any:
        in_use = InUse()
        driver = await drivers.start(
            devices={"i915": {"card0": gpu(0, cdi_spec=PLUGIN_SPEC), "card1": gpu(1)}},
            cdi_in_use=in_use,
            cdi_check_interval=3600,
            kubelet=dra_kubelet,
        )
        return driver, in_use, add_claim(claims, "c1", UID1, result("i915-card0"))

    async def test_collected_once_nothing_holds_it(
        self, setup: Any, dra_kubelet: FakeDraKubelet, dirs: Dirs
    ) -> None:
        """Recorded in the ledger; kept while a claim or a container holds it; then removed."""
        driver, in_use, c1 = setup
        collect = driver.cdi_collector.collect
        await prepare_ok(dra_kubelet, c1)
        ledger = CdiSpecWriter(dirs.cdi, DRIVER).ledger_read()
        assert ledger[PLUGIN_SPEC_FILE].name == "example.com/gpu=card0"
        for _ in range(2):  # a prepared claim names it
            assert await collect() == []

        await dra_kubelet.unprepare(DRIVER, [c1])
        assert PLUGIN_SPEC_FILE in cdi_files(dirs.cdi)
        in_use.answer = DevicesInUse(cdi_names=frozenset({"example.com/gpu=card0"}))
        for _ in range(2):  # a container holds it
            assert await collect() == []
        in_use.answer = None
        for _ in range(2):  # unknown: nothing goes
            assert await collect() == []
        in_use.answer = DevicesInUse()
        assert await collect() == []  # first pass: a suspect
        assert [p.name for p in await collect()] == [PLUGIN_SPEC_FILE]
        assert cdi_files(dirs.cdi) == []
        assert PLUGIN_SPEC_FILE not in CdiSpecWriter(dirs.cdi, DRIVER).ledger_read()

        (device,) = (await prepare_ok(dra_kubelet, c1))[UID1].devices
        assert "example.com/gpu=card0" in device.cdi_device_ids
        assert PLUGIN_SPEC_FILE in cdi_files(dirs.cdi)  # named again: written again
        assert (dirs.cdi / LEDGER_DIR / f"{DRIVER}.json").exists()

    async def test_device_plugin_holder_keeps_it(
        self, setup: Any, dra_kubelet: FakeDraKubelet, dirs: Dirs
    ) -> None:
        """A device of the ledger entry held through the device-plugin API keeps the file."""
        driver, in_use, c1 = setup
        await dra_kubelet.prepare(DRIVER, [c1])
        await dra_kubelet.unprepare(DRIVER, [c1])
        writer = CdiSpecWriter(dirs.cdi, DRIVER)
        entry = writer.ledger_read()[PLUGIN_SPEC_FILE]
        holder = (f"{DRIVER}/i915", "card0")
        writer.ledger_add({PLUGIN_SPEC_FILE: LedgerEntry(entry.name, frozenset({holder}))})
        in_use.answer = DevicesInUse(device_ids=frozenset({holder}))
        for _ in range(3):
            assert await driver.cdi_collector.collect() == []
        assert PLUGIN_SPEC_FILE in cdi_files(dirs.cdi)
