"""One view of both APIs: /status, `devplugin-host status`, /metrics and /readyz show a
device-plugin resource and a DRA driver side by side.

The host runs in-process against the fake device-plugin kubelet, with a DRA driver served
to a fake API server and a fake DRA kubelet; everything is read over real HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightkube
import pytest
import pytest_asyncio

from host._dra_status import dra_part, dra_text
from host._status_client import fetch_status, status_text
from host.deviceplugin import DeviceTree
from host.dra import UNKNOWN, DraPlugin
from host.testing import (
    ClaimMaker,
    FakeApiServer,
    FakeDraKubelet,
    FakeKubelet,
    HostHandle,
    RunHost,
)
from host.testing._apiserver_fixtures import apiserver, apiserver_kubeconfig
from tests.dra.helpers import Dirs, PluginRunner, client, gpu
from tests.observe.helpers import (
    HEALTHY,
    RESOURCE,
    UNHEALTHY,
    ControlledPlugin,
    ControlledScanner,
    samples,
    value,
)
from tests.observe.test_cli import cli
from tests.scanners import QueueScanner

pytest_plugins = ["host.testing"]
pytestmark = pytest.mark.asyncio

DRIVER = "gpu.example.com"
NODE = "node-a"
GPU = {"plugin": "gpu", "driver": DRIVER}
POOL = GPU | {"pool": NODE}
POD = {"resource": "pods", "name": "train", "uid": "pod-0001"}

__all__ = ["apiserver", "apiserver_kubeconfig", "client"]


ECC = "ECC errors: 12 uncorrectable"


def cards(*states: str) -> DeviceTree:
    """i915 cards in these states; an unhealthy one says why."""
    tree = DeviceTree()
    for index, state in enumerate(states):
        message = ECC if state == UNHEALTHY else ""
        tree.add_device("i915", f"card{index}", gpu(index, state=state, health_message=message))
    return tree


@dataclass
class Both:
    """The host (a device plugin), its DRA driver, and the fakes they talk to."""

    host: HostHandle
    plugin: DraPlugin
    scanner: QueueScanner
    api: FakeApiServer
    dra_kubelet: FakeDraKubelet
    task: asyncio.Task[None]

    async def status(self, devices: str = "all") -> dict[str, Any]:
        reply = await self.host.http_get(f"/status?devices={devices}")
        assert reply.status == 200
        document: dict[str, Any] = reply.json()
        return document

    async def metrics(self) -> str:
        reply = await self.host.http_get("/metrics")
        assert reply.status == 200
        return reply.text

    def device_names(self) -> list[str]:
        return sorted(
            device["name"]
            for item in self.api.resource_slices(driver=DRIVER, node_name=NODE)
            for device in item["spec"]["devices"]
        )

    async def registered(self) -> None:
        """Kubelet took the driver, and the driver heard kubelet's verdict."""
        await self.dra_kubelet.wait_for_driver(DRIVER, timeout=10)
        async with asyncio.timeout(10):
            assert await self.plugin.driver.registration.wait_for_status() is True

    async def published(self, predicate: Any = None) -> None:
        # Bounded by the publisher's backoff (0.5 s doubling) after a few failed attempts.
        async with asyncio.timeout(30):
            await self.plugin.publisher.wait_status(predicate or (lambda status: status.synced))

    async def prepare(self, name: str, device: str, **claim: Any) -> str:
        allocated = {"request": "gpu", "driver": DRIVER, "pool": NODE, "device": device}
        created = self.api.add_claim(
            "ml", name, allocation={"devices": {"results": [allocated]}}, **claim
        )
        uid: str = created["metadata"]["uid"]
        outcome = (await self.dra_kubelet.prepare(DRIVER, [("ml", name, uid)]))[uid]
        assert outcome.error == ""
        return uid


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@dataclass
class Fakes:
    """What a host serving both APIs talks to, and where its DRA driver keeps its files."""

    run_host: RunHost
    kubelet: FakeKubelet
    api: FakeApiServer
    client: lightkube.AsyncClient
    root: Path

    def dra_plugin(self, scanner: QueueScanner, *, publish_grace: float = 60.0) -> DraPlugin:
        """A DRA plugin on this host's directories (kubelet's registry: ``<root>/reg``)."""
        runner = PluginRunner(Dirs(self.root), self.client)
        return runner.build(scanner, publish_grace=publish_grace)


@pytest.fixture
def fakes(
    run_host: RunHost,
    kubelet: FakeKubelet,
    apiserver: FakeApiServer,
    client: lightkube.AsyncClient,
    short_dir: Path,
) -> Fakes:
    return Fakes(run_host, kubelet, apiserver, client, short_dir)


async def serve_both(
    fakes: Fakes,
    dra_kubelet: FakeDraKubelet,
    *states: str,
    publish_grace: float = 60.0,
    check_interval: float | None = None,
) -> AsyncIterator[Both]:
    host = await fakes.run_host(
        plugins={"obs": ControlledPlugin(ControlledScanner())}, metrics_address="127.0.0.1:0"
    )
    await fakes.kubelet.wait_for_resource(RESOURCE, count=2)
    await fakes.kubelet.wait_for(lambda: host.resources[RESOURCE].ready, what="the stream open")
    scanner = QueueScanner(cards(*(states or (HEALTHY, HEALTHY))), check_interval=check_interval)
    assert dra_kubelet.registry_dir == Dirs(fakes.root).registry
    plugin = fakes.dra_plugin(scanner, publish_grace=publish_grace)
    assert host.metrics is not None
    host.metrics.add_dra_plugin(plugin)
    task = asyncio.create_task(plugin.serve())
    both = Both(host, plugin, scanner, fakes.api, dra_kubelet, task)
    try:
        await both.published()
        yield both
    finally:
        await stop(both.task)


@pytest_asyncio.fixture
async def driver_kubelet(short_dir: Path) -> AsyncIterator[FakeDraKubelet]:
    """A fake DRA kubelet of its own (not host.testing's, which comes with run_host's)."""
    async with FakeDraKubelet(short_dir / "reg") as fake:
        yield fake


@pytest_asyncio.fixture
async def both(fakes: Fakes, driver_kubelet: FakeDraKubelet) -> AsyncIterator[Both]:
    async for served in serve_both(fakes, driver_kubelet, HEALTHY, UNHEALTHY):
        await served.registered()
        yield served


class TestStatus:
    async def test_resources_and_drivers_side_by_side(self, both: Both) -> None:
        """/status: the device-plugin resource beside the DRA driver with its registration,
        pool, slices, devices with health and taint, and a prepared claim with its pod."""
        healthy, unhealthy = both.device_names()
        uid = await both.prepare("train-gpu", healthy, reserved_for=[POD])
        document = await both.status()

        assert document["resources"][RESOURCE]["capacity"] == 2
        driver = document["dra"][DRIVER]
        assert (driver["plugin"], driver["node"], driver["state"]) == ("gpu", NODE, "serving")
        assert driver["registration"]["state"] == "registered"
        assert driver["registration"]["versions"] == [
            "v1.DRAPlugin",
            "v1beta1.DRAPlugin",
            "v1.DRAResourceHealth",
            "v1alpha1.DRAResourceHealth",
        ]
        slices = [item["metadata"]["name"] for item in both.api.resource_slices(driver=DRIVER)]
        assert driver["slices"] == slices
        generation = both.api.resource_slices(driver=DRIVER)[0]["spec"]["pool"]["generation"]
        assert driver["pool"] == {"name": NODE, "generation": generation}
        assert (driver["device_count"], driver["healthy"], driver["unhealthy"]) == (2, 1, 1)
        by_name = {device["name"]: device for device in driver["devices"]}
        assert by_name[healthy]["health"] == HEALTHY
        assert by_name[healthy]["taints"] == []
        assert by_name[unhealthy]["health"] == UNHEALTHY
        assert by_name[unhealthy]["taints"] == [f"{DRIVER}/unhealthy:NoSchedule"]
        assert by_name[unhealthy]["type"] == "i915"
        assert by_name[unhealthy]["health_message"] == ECC
        assert by_name[unhealthy]["reported_health"] == UNHEALTHY  # kubelet's health stream
        assert by_name[unhealthy]["health_since"] is not None
        assert by_name[healthy]["health_message"] is None
        publisher = driver["publisher"]
        assert publisher["synced"] is True
        assert (publisher["failures"], publisher["errors_total"]) == (0, 0)
        assert publisher["last_success"] is not None
        assert driver["prepared_claims"] == 1
        [claim] = driver["claims"]
        assert (claim["namespace"], claim["name"], claim["uid"]) == ("ml", "train-gpu", uid)
        assert claim["reserved_for"] == [POD]
        [device] = claim["devices"]
        prepared = both.plugin.driver.prepared_claims[uid].devices[0]
        assert device["device"] == healthy
        assert device["cdi_device_ids"] == list(prepared.cdi_device_ids)
        assert driver["ready"] is True
        assert document["ready"] is True

    async def test_devices_cut_short_as_resources_are(self, both: Both) -> None:
        """?devices=1 lists one DRA device and counts the other, as for resources."""
        driver = (await both.status("1"))["dra"][DRIVER]
        assert len(driver["devices"]) == 1
        assert driver["more_devices"] == 1
        assert driver["device_count"] == 2

    async def test_a_claim_fetched_without_reservation(self, both: Both) -> None:
        """A claim reserved for nobody shows an empty list; one never fetched shows None."""
        healthy, _ = both.device_names()
        uid = await both.prepare("idle", healthy)
        [claim] = (await both.status())["dra"][DRIVER]["claims"]
        assert (claim["uid"], claim["reserved_for"]) == (uid, [])

    async def test_a_claim_prepared_before_a_restart(self, both: Both, fakes: Fakes) -> None:
        """A claim restored from the checkpoint was never fetched: whom it is for is unknown."""
        healthy, _ = both.device_names()
        uid = await both.prepare("train-gpu", healthy, reserved_for=[POD])
        await stop(both.task)
        again = fakes.dra_plugin(QueueScanner(cards(HEALTHY)))
        both.task = asyncio.create_task(again.serve())
        async with asyncio.timeout(10):
            await again.driver.wait_serving()
        entry = dra_part(again).to_json()
        [claim] = entry["claims"]
        assert (claim["uid"], claim["reserved_for"]) == (uid, None)
        [row] = [line.split() for line in dra_text({DRIVER: entry}).splitlines() if uid in line]
        assert row[:4] == ["ml/train-gpu", uid, "unknown", healthy]

    async def test_the_cli_renders_both(self, both: Both) -> None:
        """`devplugin-host status` prints the resource table, then the DRA driver with its
        pool, publisher, devices and claim (its pod, devices and CDI IDs)."""
        healthy, unhealthy = both.device_names()
        uid = await both.prepare("train-gpu", healthy, reserved_for=[POD])
        address = both.host.metrics_address
        assert address is not None
        code, out, err = await cli("status", "--address", address)
        assert code == 0, err
        assert f"{RESOURCE}  capacity 2  allocatable 2" in out
        assert f"DRA driver {DRIVER}  plugin gpu  registered" in out
        pool = f"pool {NODE}  generation 1  ResourceSlices 1  devices 2 (1 healthy, 1 unhealthy)"
        assert pool in out
        assert "prepared claims 1" in out
        assert "publisher: last publish ok at " in out
        rows = [line.split() for line in out.splitlines()]
        assert [healthy, "i915", "card0", HEALTHY, "-", "-"] in rows
        taint = f"{DRIVER}/unhealthy:NoSchedule"
        assert [unhealthy, "i915", "card1", UNHEALTHY, taint, *ECC.split()] in rows
        cdi = both.plugin.driver.prepared_claims[uid].devices[0].cdi_device_ids
        assert ["ml/train-gpu", uid, "train", healthy, *cdi] in rows
        assert out.index(RESOURCE) < out.index(f"DRA driver {DRIVER}") < out.index("ready:")
        assert "every DRA driver registered and its slices published" in out

    async def test_json_document_round_trips(self, both: Both) -> None:
        """The status client's fetch gets the same DRA entry the host serves."""
        address = both.host.metrics_address
        assert address is not None
        document = await asyncio.to_thread(fetch_status, address, 5.0, 10)
        assert set(document["dra"]) == {DRIVER}
        assert DRIVER in status_text(document)


class TestMetrics:
    async def test_gauges_per_driver_and_pool(self, both: Both) -> None:
        """Devices by health, slices, generation, prepared claims, registered and ready."""
        healthy, _ = both.device_names()
        await both.prepare("train-gpu", healthy, reserved_for=[POD])
        text = await both.metrics()
        assert value(text, "devplugin_dra_devices", **POOL, health=HEALTHY) == 1
        assert value(text, "devplugin_dra_devices", **POOL, health=UNHEALTHY) == 1
        assert value(text, "devplugin_dra_devices", **POOL, health=UNKNOWN) == 0
        assert value(text, "devplugin_dra_resource_slices", **POOL) == 1
        assert value(text, "devplugin_dra_pool_generation", **POOL) == 1
        assert value(text, "devplugin_dra_prepared_claims", **GPU) == 1
        assert value(text, "devplugin_dra_driver_registered", **GPU) == 1
        assert value(text, "devplugin_dra_driver_ready", **GPU) == 1
        assert value(text, "devplugin_dra_publish_errors_total", **GPU) == 0
        assert value(text, "devplugin_dra_publish_failing_seconds", **GPU) == 0
        assert value(text, "devplugin_scanner_restarts_total", plugin="gpu", namespace=DRIVER) == 0
        # the device plugin beside it
        obs = {"plugin": "obs", "resource": RESOURCE}
        assert value(text, "devplugin_devices", **obs, health=HEALTHY) == 2

    async def test_devices_of_a_silent_scanner_are_unknown(
        self, fakes: Fakes, driver_kubelet: FakeDraKubelet
    ) -> None:
        """A scanner silent past its check_interval: every device counts as Unknown."""
        async for both in serve_both(
            fakes, driver_kubelet, HEALTHY, UNHEALTHY, check_interval=0.05
        ):
            await both.registered()
            health = both.plugin.driver.health
            await both.dra_kubelet.wait_for(
                lambda health=health: health.stale,
                what="the scanner silent",
            )
            text = await both.metrics()
            assert value(text, "devplugin_dra_devices", **POOL, health=UNKNOWN) == 2
            assert value(text, "devplugin_dra_devices", **POOL, health=HEALTHY) == 0
            assert value(text, "devplugin_dra_devices", **POOL, health=UNHEALTHY) == 0

    async def test_prepare_and_unprepare_latency_and_errors(self, both: Both) -> None:
        """Each call is timed by method; a claim that fails counts, by method."""
        healthy, _ = both.device_names()
        uid = await both.prepare("train-gpu", healthy)
        outcome = (await both.dra_kubelet.prepare(DRIVER, [("ml", "gone", "uid-gone")]))["uid-gone"]
        assert "not found" in outcome.error
        await both.dra_kubelet.unprepare(DRIVER, [("ml", "train-gpu", uid)])
        text = await both.metrics()
        prepare = GPU | {"method": "NodePrepareResources"}
        unprepare = GPU | {"method": "NodeUnprepareResources"}
        assert value(text, "devplugin_dra_request_duration_seconds_count", **prepare) == 2
        assert value(text, "devplugin_dra_request_duration_seconds_count", **unprepare) == 1
        assert value(text, "devplugin_dra_claim_errors_total", **prepare) == 1
        assert value(text, "devplugin_dra_claim_errors_total", **unprepare) == 0
        assert value(text, "devplugin_dra_prepared_claims", **GPU) == 0

    async def test_no_claim_in_any_label(self, both: Both) -> None:
        """Claim UIDs and names never become labels: the series do not grow with claims."""
        healthy, _ = both.device_names()
        before = set(samples(await both.metrics()))
        uid = await both.prepare("train-gpu", healthy, reserved_for=[POD])
        text = await both.metrics()
        assert uid not in text
        assert "train-gpu" not in text
        dra_series = {key for key in samples(text) if key[0].startswith("devplugin_dra_")}
        assert dra_series <= before


class TestReadiness:
    async def test_not_registered_driver_is_not_ready(self, fakes: Fakes) -> None:
        """Slices published but no kubelet took the driver: 503 naming it; ready once one does."""
        dra_kubelet = FakeDraKubelet(fakes.root / "reg")
        async for both in serve_both(fakes, dra_kubelet):
            reply = await both.host.http_get("/readyz")
            assert reply.status == 503
            waiting = "not registered with kubelet yet"
            assert reply.json()["not_ready"] == [
                {"plugin": "gpu", "dra_driver": DRIVER, "reason": waiting}
            ]
            document = await both.status()
            assert document["dra"][DRIVER]["registration"]["state"] == "waiting for kubelet"
            assert "NOT READY:" in status_text(document)
            assert f"    {DRIVER}: not registered with kubelet yet" in status_text(document)
            assert value(await both.metrics(), "devplugin_dra_driver_registered", **GPU) == 0
            async with dra_kubelet:
                await both.registered()
                assert (await both.host.http_get("/readyz")).status == 200
                assert value(await both.metrics(), "devplugin_ready") == 1

    async def test_publishing_failing_past_the_grace(
        self, fakes: Fakes, driver_kubelet: FakeDraKubelet
    ) -> None:
        """With no grace, a failing publish makes the driver not ready with the error;
        status and metrics count the failures; a success makes it ready again."""
        async for both in serve_both(fakes, driver_kubelet, publish_grace=0.0):
            await both.registered()
            assert (await both.host.http_get("/readyz")).status == 200
            both.api.begin_outage("unavailable")
            both.plugin.publisher.request_resync()
            await both.published(lambda status: status.failures > 0)
            reply = await both.host.http_get("/readyz")
            assert reply.status == 503
            [problem] = reply.json()["not_ready"]
            assert problem["dra_driver"] == DRIVER
            assert problem["reason"].startswith("publishing ResourceSlices has failed for ")
            publisher = (await both.status())["dra"][DRIVER]["publisher"]
            assert publisher["failures"] >= 1
            assert publisher["failing_since"] is not None
            assert publisher["last_error"]
            text = await both.metrics()
            errors = value(text, "devplugin_dra_publish_errors_total", **GPU)
            assert errors is not None
            assert errors >= 1
            assert value(text, "devplugin_dra_driver_ready", **GPU) == 0
            await both.api.end_outage()
            both.plugin.publisher.request_resync()
            await both.published(lambda status: status.failures == 0)
            assert (await both.host.http_get("/readyz")).status == 200
            publisher = (await both.status())["dra"][DRIVER]["publisher"]
            assert publisher["failing_since"] is None
            assert publisher["errors_total"] >= 1

    async def test_a_short_failure_within_the_grace_keeps_it_ready(self, both: Both) -> None:
        """Within the grace (60 s here) a failing publish is shown but readiness holds."""
        both.api.begin_outage("unavailable")
        both.plugin.publisher.request_resync()
        await both.published(lambda status: status.failures > 0)
        assert (await both.host.http_get("/readyz")).status == 200
        document = await both.status()
        assert "FAILING since" in status_text(document)
        await both.api.end_outage()


class TestScannerFailure:
    async def test_every_device_tainted_while_the_scanner_is_failed(self, both: Both) -> None:
        """A failed scanner: every DRA device unhealthy and tainted in status and metrics."""
        failed = asyncio.Event()
        both.plugin.feed.subscribe(lambda _snapshot, scan_failed: scan_failed and failed.set())
        both.scanner.trees.put_nowait(RuntimeError("lost the GPUs"))
        async with asyncio.timeout(10):
            await failed.wait()
        driver = (await both.status())["dra"][DRIVER]
        assert driver["scanner"]["failed"] is True
        assert (driver["healthy"], driver["unhealthy"]) == (0, 2)
        assert all(device["taints"] for device in driver["devices"])
        assert "scanner FAILED" in status_text(await both.status())


class TestText:
    async def test_health_messages_get_a_column(self, both: Both) -> None:
        """A device with a health message adds a MESSAGE column; '-' for the others."""
        entry = (await both.status())["dra"][DRIVER]
        lines = dra_text({DRIVER: entry}).splitlines()
        assert lines[3].split() == ["DEVICE", "TYPE", "ID", "HEALTH", "TAINTS", "MESSAGE"]
        assert lines[4].split()[-2:] == ["-", "-"]
        assert lines[5].endswith(f"{DRIVER}/unhealthy:NoSchedule  {ECC}")


class TestRunHostDra:
    async def test_a_plugin_served_as_dra_driver_is_serving(
        self, run_host: RunHost, dra_kubelet: FakeDraKubelet, dra_claim: ClaimMaker
    ) -> None:
        """run_host(dra=[...]): the DRA plugin is `serving` beside the device plugin, and a
        claim prepared through the fakes shows the pod it is reserved for."""
        host = await run_host(
            plugins={
                "obs": ControlledPlugin(ControlledScanner()),
                "gpu": ControlledPlugin(QueueScanner(cards(HEALTHY)), namespace=DRIVER),
            },
            dra=["gpu"],
            metrics_address="127.0.0.1:0",
        )
        claim = await dra_claim(f"{DRIVER}/i915", name="train-gpu")
        reply = await host.http_get("/status")
        document = reply.json()
        plugins = {plugin["name"]: plugin["state"] for plugin in document["plugins"]}
        assert plugins == {"obs": "serving", "gpu": "serving"}
        assert set(document["resources"]) == {RESOURCE}
        [entry] = document["dra"][DRIVER]["claims"]
        assert (entry["name"], entry["uid"]) == ("train-gpu", claim.uid)
        assert [pod["name"] for pod in entry["reserved_for"]] == ["train-gpu"]
