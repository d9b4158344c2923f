"""Device health to kubelet (KEP-4680): DRAResourceHealth streams as kubelet consumes them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest

from host._api import (
    dra_health_v1_pb2,
    dra_health_v1_pb2_grpc,
    dra_health_v1alpha1_pb2,
    dra_health_v1alpha1_pb2_grpc,
)
from host.deviceplugin import UNHEALTHY
from host.dra import DeviceHealthService
from host.testing import DraResourceHealth, FakeApiServer, FakeClaims, FakeDraKubelet
from tests.dra.helpers import (
    DRIVER,
    NODE,
    Dirs,
    DriverRunner,
    PluginRunner,
    add_claim,
    gpu,
    gpu_tree,
    prepare_ok,
    prepare_on_api,
    result,
    snapshot,
)
from tests.scanners import QueueScanner

pytestmark = pytest.mark.asyncio

UID = "0b5c8b55-6c1f-4c8e-9f0a-0000000000a1"
SERVICES = ("v1.DRAResourceHealth", "v1alpha1.DRAResourceHealth")


def healths(updates: Sequence[tuple[DraResourceHealth, ...]]) -> list[str]:
    return [entry.health for update in updates for entry in update]


def now(kubelet: FakeDraKubelet, uid: str = UID) -> list[str]:
    """The health of each device of claim ``uid`` as kubelet reads it now."""
    return healths([kubelet.health.claim_health(uid)])


async def prepared(kubelet: FakeDraKubelet, claims: FakeClaims, device: str = "i915-card0") -> str:
    """Prepare claim UID holding ``device``; return the device's resource ID (first CDI ID)."""
    await kubelet.wait_for_driver(DRIVER)
    claim = add_claim(claims, "c0", UID, result(device))
    return (await prepare_ok(kubelet, claim))[UID].devices[0].cdi_device_ids[0]


class TestKubeletSeesHealth:
    @pytest.mark.parametrize("service", SERVICES)
    async def test_transitions_of_a_claimed_device(
        self, drivers: DriverRunner, claims: FakeClaims, dirs: Dirs, service: str
    ) -> None:
        """Unhealthy with the plugin's message, then Healthy, reach the claim's status."""
        driver = await drivers.start()
        async with FakeDraKubelet(dirs.registry, health_services=(service,)) as kubelet:
            resource_id = await prepared(kubelet, claims)
            await kubelet.wait_for(
                lambda: (
                    kubelet.health.claim_health(UID)
                    == (DraResourceHealth(resource_id, "Healthy", ""),)
                ),
                what="healthy",
            )
            # The first report may reach kubelet before or after the claim is prepared:
            # only the updates from here on are the transitions.
            seen = len(kubelet.health.claim_updates(UID))
            (stream,) = kubelet.health.streams(DRIVER)
            assert stream.service == service

            devices = snapshot()
            devices["i915"]["card0"] = gpu(0, UNHEALTHY, health_message="ECC: 3 uncorrectable")
            driver.update(devices)
            unhealthy = (DraResourceHealth(resource_id, "Unhealthy", "ECC: 3 uncorrectable"),)
            await kubelet.wait_for(
                lambda: kubelet.health.claim_health(UID) == unhealthy, what="unhealthy"
            )
            assert driver.device_health["i915-card0"].health == "Unhealthy"
            assert driver.device_health["i915-card0"].message == "ECC: 3 uncorrectable"

            driver.update(snapshot())
            await kubelet.wait_for(
                lambda: (
                    healths(kubelet.health.claim_updates(UID)[seen:]) == ["Unhealthy", "Healthy"]
                ),
                what="healthy again",
            )
            assert kubelet.health.claim_updates(UID)[seen] == unhealthy

    async def test_an_unclaimed_device_updates_no_claim(
        self, drivers: DriverRunner, claims: FakeClaims, dra_kubelet: FakeDraKubelet
    ) -> None:
        """A device nobody holds changes kubelet's cache, not the claim's status."""
        driver = await drivers.start()
        await prepared(dra_kubelet, claims)
        # The first report may reach kubelet before or after the claim is prepared.
        await dra_kubelet.wait_for(lambda: now(dra_kubelet) == ["Healthy"], what="healthy")
        seen = len(dra_kubelet.health.claim_updates(UID))
        devices = snapshot()
        devices["i915"]["card1"] = gpu(1, UNHEALTHY, health_message="gone")
        driver.update(devices)
        await dra_kubelet.wait_for(
            lambda: (
                dra_kubelet.health.health_of(DRIVER, NODE, "i915-card1") == ("Unhealthy", "gone")
            ),
            what="card1 unhealthy",
        )
        assert dra_kubelet.health.claim_updates(UID)[seen:] == ()
        assert now(dra_kubelet) == ["Healthy"]

    async def test_unknown_after_the_declared_interval(
        self,
        drivers: DriverRunner,
        claims: FakeClaims,
        dra_kubelet: FakeDraKubelet,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A scanner silent past its check_interval: Unknown with a reason; a notify heals."""
        caplog.set_level(logging.INFO, "host.dra.health")
        driver = await drivers.start(scanner=QueueScanner(check_interval=0.2))
        assert driver.health.check_interval == 0.2
        await prepared(dra_kubelet, claims)
        driver.update(snapshot())  # a notify, whatever happened before the claim
        await dra_kubelet.wait_for(
            lambda: "Unknown" in healths(dra_kubelet.health.claim_updates(UID)), what="unknown"
        )
        unknown = dra_kubelet.health.claim_updates(UID)[-1][0]
        assert unknown.message.startswith("no news from the plugin's scanner for over 0.3 s")
        assert driver.device_health["i915-card0"].health == "Unknown"
        assert driver.health.stale

        driver.update(snapshot())
        await dra_kubelet.wait_for(
            lambda: healths(dra_kubelet.health.claim_updates(UID))[-1] == "Healthy",
            what="healthy again",
        )
        assert not driver.health.stale
        assert "has not notified for" in caplog.text
        assert "the scanner notified again" in caplog.text

    async def test_scanner_crash_makes_devices_unhealthy_with_its_error(
        self, apiserver: FakeApiServer, dra_plugins: PluginRunner, dra_kubelet: FakeDraKubelet
    ) -> None:
        """A failed scan: Unhealthy with the plugin's exception; its next notify heals."""
        scanner = QueueScanner(gpu_tree(0, 1))
        plugin = dra_plugins.start(scanner)
        await dra_kubelet.wait_for_driver(DRIVER)
        await dra_kubelet.wait_for(lambda: "i915-card1" in plugin.driver.devices)
        uid, _ = await prepare_on_api(apiserver, dra_kubelet, "i915-card1")

        scanner.trees.put_nowait(RuntimeError("sysfs vanished"))
        await dra_kubelet.wait_for(
            lambda: now(dra_kubelet, uid) == ["Unhealthy"],
            what="unhealthy",
        )
        (status,) = dra_kubelet.health.claim_health(uid)
        assert "plugin 'gpu': scan raised RuntimeError: sysfs vanished" in status.message

        scanner.trees.put_nowait(gpu_tree(0, 1))  # the restarted scanner notifies again
        await dra_kubelet.wait_for(
            lambda: now(dra_kubelet, uid) == ["Healthy"],
            what="healthy",
        )
        assert dra_kubelet.health.claim_health(uid)[0].message == ""


class TestStream:
    async def test_both_versions_carry_every_device(self, drivers: DriverRunner) -> None:
        """v1 and v1alpha1 send the same bytes: pool, slice names, health, message, timeout."""
        devices = snapshot(2)
        devices["i915"]["card1"] = gpu(1, UNHEALTHY, health_message="fan stopped")
        started = int(time.time())
        driver = await drivers.start(devices=devices)
        async with grpc.aio.insecure_channel(f"unix:{driver.socket_path}") as channel:
            v1 = dra_health_v1_pb2_grpc.DRAResourceHealthStub(channel).NodeWatchResources(
                dra_health_v1_pb2.NodeWatchResourcesRequest()
            )
            alpha = dra_health_v1alpha1_pb2_grpc.DRAResourceHealthStub(channel).NodeWatchResources(
                dra_health_v1alpha1_pb2.NodeWatchResourcesRequest()
            )
            first, first_alpha = await v1.read(), await alpha.read()
            v1.cancel()
            alpha.cancel()
        assert first.SerializeToString() == first_alpha.SerializeToString()
        assert [(d.device.pool_name, d.device.device_name) for d in first.devices] == [
            (NODE, "i915-card0"),
            (NODE, "i915-card1"),
        ]
        assert [d.health for d in first.devices] == [
            dra_health_v1_pb2.HEALTHY,
            dra_health_v1_pb2.UNHEALTHY,
        ]
        assert [d.message for d in first.devices] == ["", "fan stopped"]
        assert {d.health_check_timeout_seconds for d in first.devices} == {30}
        assert all(started <= d.last_updated_time <= time.time() for d in first.devices)

    async def test_streams_share_one_message_and_are_capped(self, drivers: DriverRunner) -> None:
        """Every stream sends the one encoded message; past the cap RESOURCE_EXHAUSTED."""
        driver = await drivers.start(health=DeviceHealthService(DRIVER, NODE, max_streams=2))
        async with grpc.aio.insecure_channel(f"unix:{driver.socket_path}") as channel:
            stub = dra_health_v1_pb2_grpc.DRAResourceHealthStub(channel)
            request = dra_health_v1_pb2.NodeWatchResourcesRequest()
            calls = [stub.NodeWatchResources(request) for _ in range(2)]
            received = [await call.read() for call in calls]
            assert all(m.SerializeToString() == driver.health.encoded for m in received)
            assert driver.health.stream_count == 2
            extra = stub.NodeWatchResources(request)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await extra.read()
            assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "kubelet keeps one" in (failed.value.details() or "")
            for call in calls:
                call.cancel()

    async def test_a_stream_reaching_a_stopping_server_ends_at_once(self, short_dir: Path) -> None:
        """After close() the handlers made before it end new streams; new handlers serve."""
        service = DeviceHealthService(DRIVER, NODE)
        service.update({"d0": ("t", "0", gpu(0))})
        servers: list[grpc.aio.Server] = []

        async def serve(name: str) -> str:
            server = grpc.aio.server()
            server.add_generic_rpc_handlers(service.rpc_handlers())
            server.add_insecure_port(f"unix:{short_dir}/{name}")
            await server.start()
            servers.append(server)
            return f"unix:{short_dir}/{name}"

        async def first_message(address: str) -> object:
            async with grpc.aio.insecure_channel(address) as channel:
                call = dra_health_v1_pb2_grpc.DRAResourceHealthStub(channel).NodeWatchResources(
                    dra_health_v1_pb2.NodeWatchResourcesRequest()
                )
                async with asyncio.timeout(5):
                    message = await call.read()
                call.cancel()
                return message

        try:
            stopping = await serve("old.sock")
            # What the driver's stop does first; a stream kubelet opened just before
            # reaches its handler only now (the server's grace would have held it).
            service.close()
            assert await first_message(stopping) is grpc.aio.EOF
            restarted = await serve("new.sock")
            message = await first_message(restarted)
            assert message != grpc.aio.EOF
        finally:
            service.stop()
            for server in servers:
                await server.stop(None)
        assert service.stream_count == 0

    async def test_a_slow_reader_gets_only_the_newest_list(self, short_dir: Path) -> None:
        """Changes made while a stream is not read are never queued: the newest is sent."""
        service = DeviceHealthService(DRIVER, NODE)
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(service.rpc_handlers())
        server.add_insecure_port(f"unix:{short_dir}/h.sock")
        await server.start()
        base = {f"d{i}": ("t", str(i), gpu(i, health_message="x" * 100)) for i in range(2000)}
        service.update(base)
        changes = 100
        try:
            async with grpc.aio.insecure_channel(f"unix:{short_dir}/h.sock") as channel:
                call = dra_health_v1_pb2_grpc.DRAResourceHealthStub(channel).NodeWatchResources(
                    dra_health_v1_pb2.NodeWatchResourcesRequest()
                )
                await call.read()
                for change in range(1, changes + 1):
                    devices = dict(base)
                    devices["d0"] = ("t", "0", gpu(0, health_message=f"change {change}"))
                    service.update(devices)
                    await asyncio.sleep(0)  # let the stream run: it must not queue
                sent_while_unread = service.messages_sent
                received = 0
                while True:
                    message = await call.read()
                    received += 1
                    if message.devices[0].message == f"change {changes}":
                        break
                call.cancel()
        finally:
            service.stop()
            await server.stop(None)
        assert sent_while_unread < changes // 2
        assert received < changes // 2
        assert message.SerializeToString() == service.encoded

    async def test_resent_when_nothing_changes(
        self, drivers: DriverRunner, dra_kubelet: FakeDraKubelet
    ) -> None:
        """The same list goes out again every resend interval, so kubelet keeps trusting it."""
        driver = await drivers.start(
            health=DeviceHealthService(DRIVER, NODE, resend_interval=0.05), kubelet=dra_kubelet
        )
        await dra_kubelet.wait_for(
            lambda: sum(s.messages for s in dra_kubelet.health.streams(DRIVER)) >= 4,
            what="resends",
        )
        assert dra_kubelet.health.health_of(DRIVER, NODE, "i915-card0") == ("Healthy", "")
        assert driver.health.messages_sent >= 4


class TestFakeKubeletHealthClient:
    async def test_stream_end_clears_and_retries(
        self, drivers: DriverRunner, claims: FakeClaims, dirs: Dirs
    ) -> None:
        """An ended stream: the driver's health is forgotten, a new stream opened later."""
        driver = await drivers.start()
        async with FakeDraKubelet(dirs.registry, health_retry_interval=0.05) as kubelet:
            await prepared(kubelet, claims)
            await kubelet.wait_for(lambda: now(kubelet) == ["Healthy"])
            driver.health.stop()  # ends every stream; the server goes on
            await kubelet.wait_for(
                lambda: kubelet.health.streams(DRIVER)[0].opened >= 2, what="a second stream"
            )
            (stream,) = kubelet.health.streams(DRIVER)
            assert stream.last_error == "EOF"
            await kubelet.wait_for(lambda: now(kubelet) == ["Healthy"])

    async def test_a_report_times_out_to_unknown(
        self, drivers: DriverRunner, claims: FakeClaims, dra_kubelet: FakeDraKubelet
    ) -> None:
        """A device not re-reported within its health_check_timeout_seconds reads Unknown."""
        health = DeviceHealthService(DRIVER, NODE, timeout_seconds=1, resend_interval=600)
        await drivers.start(health=health)
        await prepared(dra_kubelet, claims)
        await dra_kubelet.wait_for(
            lambda: now(dra_kubelet) == ["Unknown"],
            what="timed out",
        )
        report = dra_kubelet.health.device_health(DRIVER)[(NODE, "i915-card0")]
        assert (report.health, report.timeout) == ("Healthy", 1.0)

    async def test_no_health_service_no_stream(
        self, drivers: DriverRunner, dirs: Dirs, claims: FakeClaims
    ) -> None:
        """A kubelet whose gate is off opens no stream; every claimed device reads Unknown."""
        await drivers.start()
        async with FakeDraKubelet(dirs.registry, health_services=()) as kubelet:
            await prepared(kubelet, claims)
            assert kubelet.health.streams(DRIVER) == ()
            assert now(kubelet) == ["Unknown"]
