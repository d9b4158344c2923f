"""DraDriver end to end: a fake kubelet prepares and unprepares claims over real sockets."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from typing import Any

import pytest

from host._api import api_pb2 as pluginapi
from host.deviceplugin import UseDefaultMethodError
from host.deviceplugin._cdi import CdiSpecWriter, qualified_name
from host.deviceplugin._endpoint import SocketInUseError
from host.dra import DraDriver, build_slices
from host.dra._checkpoint import ClaimCheckpoint
from host.testing import FakeClaims, FakeDraKubelet
from tests.dra.helpers import (
    DRIVER,
    NODE,
    PLUGIN_SPEC,
    Dirs,
    DriverRunner,
    add_claim,
    cdi_files,
    gpu,
    prepare_ok,
    resolve_cdi,
    result,
    snapshot,
    without_version,
)

pytestmark = pytest.mark.asyncio

UID1 = "0b5c8b55-6c1f-4c8e-9f0a-000000000001"
UID2 = "0b5c8b55-6c1f-4c8e-9f0a-000000000002"


class TestRegistration:
    async def test_registers_as_dra_plugin(
        self, drivers: DriverRunner, dra_kubelet: FakeDraKubelet, dirs: Dirs
    ) -> None:
        """GetInfo names the driver, the absolute DRA socket, v1 before v1beta1, then health."""
        driver = await drivers.start()
        reg = await dra_kubelet.wait_for_driver(DRIVER)
        assert reg.endpoint == str(dirs.plugins / DRIVER / "dra.sock")
        assert reg.supported_versions == (
            "v1.DRAPlugin",
            "v1beta1.DRAPlugin",
            "v1.DRAResourceHealth",
            "v1alpha1.DRAResourceHealth",
        )
        assert reg.service == "v1.DRAPlugin"
        assert reg.socket_path == str(dirs.registry / f"{DRIVER}-reg.sock")
        assert driver.socket_path == dirs.plugins / DRIVER / "dra.sock"
        assert dra_kubelet.rejections == ()
        async with asyncio.timeout(5):
            assert await driver.registration.wait_for_status() is True

    async def test_kubelet_restart_registers_again(
        self, drivers: DriverRunner, dra_kubelet: FakeDraKubelet, claims: FakeClaims
    ) -> None:
        """A restarted kubelet finds the socket again and the driver hears of it."""
        driver = await drivers.start(kubelet=dra_kubelet)
        async with asyncio.timeout(5):
            await driver.registration.wait_for_status()
        reports = driver.registration.status_count
        await dra_kubelet.restart()
        await dra_kubelet.wait_for_driver(DRIVER)
        async with asyncio.timeout(5):
            assert await driver.registration.wait_for_status(after=reports) is True
        claim = add_claim(claims, "c1", UID1, result("i915-card0"))
        await prepare_ok(dra_kubelet, claim)

    async def test_refusal_reported(self, drivers: DriverRunner, dirs: Dirs) -> None:
        """A kubelet speaking none of our services refuses; the driver hears why."""
        driver = await drivers.start()
        async with FakeDraKubelet(dirs.registry, services=("v1alpha3.NodeService",)) as kubelet:
            async with asyncio.timeout(5):
                assert await driver.registration.wait_for_status() is False
            assert "none of services supported by the plugin" in driver.registration.error
            assert kubelet.drivers == {}

    async def test_sockets_removed_at_stop(
        self, drivers: DriverRunner, dra_kubelet: FakeDraKubelet, dirs: Dirs
    ) -> None:
        """Stopping removes both sockets; kubelet deregisters the driver."""
        driver = await drivers.start(kubelet=dra_kubelet)
        await drivers.stop(driver)
        assert not driver.socket_path.exists()
        assert not driver.registration_socket_path.exists()
        await dra_kubelet.wait_for_no_driver(DRIVER)

    async def test_stale_sockets_replaced(self, drivers: DriverRunner, dirs: Dirs) -> None:
        """Socket files nobody listens on are removed before listening."""
        import socket

        for path in (dirs.plugins / DRIVER / "dra.sock", dirs.registry / f"{DRIVER}-reg.sock"):
            path.parent.mkdir(parents=True, exist_ok=True)
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(str(path))
            sock.close()  # the file stays, dead
        driver = await drivers.start()
        async with FakeDraKubelet(dirs.registry) as kubelet:
            await kubelet.wait_for_driver(DRIVER)
        assert stat.S_ISSOCK(os.stat(driver.socket_path).st_mode)

    async def test_live_socket_not_taken_over(
        self, drivers: DriverRunner, claims: FakeClaims, dirs: Dirs
    ) -> None:
        """A second driver on the same socket refuses to start; the first keeps serving."""
        first = await drivers.start()
        second = DraDriver(
            DRIVER,
            NODE,
            None,
            claims,
            plugin_dir=dirs.plugins,
            registry_dir=dirs.registry,
            cdi_dir=dirs.cdi,
        )
        with pytest.raises(SocketInUseError, match="in use by another process"):
            await second.serve()
        assert first.serving
        assert stat.S_ISSOCK(os.stat(first.socket_path).st_mode)
        async with FakeDraKubelet(dirs.registry) as kubelet:
            await kubelet.wait_for_driver(DRIVER)

    async def test_non_socket_file_refused(self, drivers: DriverRunner, dirs: Dirs) -> None:
        """A regular file where the socket goes is left alone and reported."""
        path = dirs.plugins / DRIVER / "dra.sock"
        path.parent.mkdir(parents=True)
        path.write_text("not a socket")
        with pytest.raises(SocketInUseError, match="is not a socket"):
            await drivers.start()
        assert path.read_text() == "not a socket"

    async def test_instance_id_names(self, drivers: DriverRunner, dirs: Dirs) -> None:
        """With an instance id both sockets carry it (rolling update)."""
        driver = await drivers.start(instance_id="pod-1234")
        assert driver.socket_path.name == "dra-pod-1234.sock"
        assert driver.registration_socket_path.name == f"{DRIVER}-pod-1234-reg.sock"
        async with FakeDraKubelet(dirs.registry) as kubelet:
            reg = await kubelet.wait_for_driver(DRIVER)
        assert reg.endpoint == str(driver.socket_path)

    async def test_v1beta1_kubelet(
        self, drivers: DriverRunner, claims: FakeClaims, dirs: Dirs
    ) -> None:
        """A kubelet speaking only v1beta1 picks it and prepares through it."""
        await drivers.start()
        claim = add_claim(claims, "c1", UID1, result("i915-card0"))
        async with FakeDraKubelet(dirs.registry, services=("v1beta1.DRAPlugin",)) as kubelet:
            reg = await kubelet.wait_for_driver(DRIVER)
            assert reg.service == "v1beta1.DRAPlugin"
            results = await kubelet.prepare(DRIVER, [claim])
            assert results[UID1].error == ""
            assert [d.device for d in results[UID1].devices] == ["i915-card0"]
            assert await kubelet.unprepare(DRIVER, [claim]) == {UID1: ""}


class TestPrepare:
    async def test_prepare_and_unprepare(
        self, drivers: DriverRunner, dra_kubelet: FakeDraKubelet, claims: FakeClaims, dirs: Dirs
    ) -> None:
        """Devices come back with CDI IDs whose spec files exist; unprepare removes them."""
        driver = await drivers.start(kubelet=dra_kubelet)
        claim = add_claim(
            claims, "c1", UID1, result("i915-card1"), result("i915-card2", request="gpu/big")
        )
        results = await dra_kubelet.prepare(DRIVER, [claim])
        prepared = results[UID1]
        assert prepared.error == ""
        assert [(d.request_names, d.pool, d.device) for d in prepared.devices] == [
            (("gpu",), NODE, "i915-card1"),
            (("gpu",), NODE, "i915-card2"),
        ]
        for index, device in zip((1, 2), prepared.devices, strict=True):
            assert device.cdi_device_ids == (f"{DRIVER}/dra=claim-{UID1}-i915-card{index}",)
            spec = resolve_cdi(dirs.cdi, device.cdi_device_ids[0])
            edits = spec["devices"][0]["containerEdits"]
            path = f"/dev/dri/card{index}"
            assert edits["deviceNodes"] == [{"path": path, "hostPath": path, "permissions": "rw"}]
        assert UID1 in driver.prepared_claims
        assert UID1 in ClaimCheckpoint(dirs.checkpoint, DRIVER).load()

        assert await dra_kubelet.unprepare(DRIVER, [claim]) == {UID1: ""}
        assert cdi_files(dirs.cdi) == []
        assert driver.prepared_claims == {}
        assert ClaimCheckpoint(dirs.checkpoint, DRIVER).load() == {}

    async def test_mounts_envs_and_own_cdi_spec(
        self, drivers: DriverRunner, dra_kubelet: FakeDraKubelet, claims: FakeClaims, dirs: Dirs
    ) -> None:
        """Mounts and envs become edits; the plugin's own CDI device is named as it is."""
        info = gpu(
            0,
            mounts=[pluginapi.Mount(host_path="/opt/x", container_path="/x", read_only=True)],
            envs={"GPU": "0"},
            cdi_spec=PLUGIN_SPEC,
        )
        await drivers.start(devices={"i915": {"card0": info}}, kubelet=dra_kubelet)
        claim = add_claim(claims, "c1", UID1, result("i915-card0"))
        (device,) = (await prepare_ok(dra_kubelet, claim))[UID1].devices
        assert device.cdi_device_ids == (
            "example.com/gpu=card0",
            f"{DRIVER}/dra=claim-{UID1}-i915-card0",
        )
        assert without_version(resolve_cdi(dirs.cdi, "example.com/gpu=card0")) == without_version(
            PLUGIN_SPEC
        )
        edits = resolve_cdi(dirs.cdi, device.cdi_device_ids[1])["devices"][0]["containerEdits"]
        assert edits["env"] == ["GPU=0"]
        assert edits["mounts"] == [
            {
                "hostPath": "/opt/x",
                "containerPath": "/x",
                "options": ["ro", "nosuid", "nodev", "bind"],
            }
        ]
        await dra_kubelet.unprepare(DRIVER, [claim])
        # the claim's own file goes; the plugin's may be in use by the device-plugin
        # side too, whose CDI store collects it
        assert cdi_files(dirs.cdi) == ["example.com-gpu-card0.json"]

    async def test_names_agree_with_slices(
        self, drivers: DriverRunner, dra_kubelet: FakeDraKubelet, claims: FakeClaims
    ) -> None:
        """A device named as the ResourceSlices name it (hashed for awkward IDs) prepares."""
        devices = {"af-AbC_1": {"Port_0": gpu(0)}}
        await drivers.start(devices=devices, kubelet=dra_kubelet)
        (published,) = [
            d["name"]
            for s in build_slices(
                driver=DRIVER, node_name=NODE, node_uid="node-uid", snapshot=devices
            ).slices
            for d in s["spec"]["devices"]
        ]
        assert published != "af-AbC_1-Port_0"
        claim = add_claim(claims, "c1", UID1, result(published))
        prepared = (await dra_kubelet.prepare(DRIVER, [claim]))[UID1]
        assert prepared.error == ""
        assert [d.device for d in prepared.devices] == [published]

    async def test_share_id_in_v1(
        self, drivers: DriverRunner, dra_kubelet: FakeDraKubelet, claims: FakeClaims
    ) -> None:
        """A result's shareID comes back as share_id (v1)."""
        await drivers.start(kubelet=dra_kubelet)
        share = "5a1e0d4c-0000-4000-8000-000000000001"
        claim = add_claim(claims, "c1", UID1, {**result("i915-card0"), "shareID": share})
        (device,) = (await prepare_ok(dra_kubelet, claim))[UID1].devices
        assert device.share_id == share

    async def test_claims_fetched_concurrently(
        self, drivers: DriverRunner, dra_kubelet: FakeDraKubelet, claims: FakeClaims
    ) -> None:
        """Every claim of one call is fetched at the same time as the others."""
        await drivers.start(devices=snapshot(8), kubelet=dra_kubelet)
        claims.together = 8  # no fetch answered before all 8 are in flight
        batch = [add_claim(claims, f"c{i}", f"uid-{i}", result(f"i915-card{i}")) for i in range(8)]
        results = await dra_kubelet.prepare(DRIVER, batch)
        assert all(r.error == "" for r in results.values())
        assert claims.in_flight_max == 8

    async def test_many_claims_leave_no_file_locks(
        self, drivers: DriverRunner, dra_kubelet: FakeDraKubelet, claims: FakeClaims, dirs: Dirs
    ) -> None:
        """Every claim has its own spec file; none keeps a lock once unprepared."""
        writer = CdiSpecWriter(dirs.cdi, DRIVER)
        await drivers.start(devices=snapshot(8), cdi_writer=writer, kubelet=dra_kubelet)
        for round_ in range(5):
            batch = [
                add_claim(claims, f"c{round_}-{i}", f"uid-{round_}-{i}", result(f"i915-card{i}"))
                for i in range(8)
            ]
            results = await dra_kubelet.prepare(DRIVER, batch)
            assert all(r.error == "" for r in results.values())
            assert len(cdi_files(dirs.cdi)) == 8
            assert set((await dra_kubelet.unprepare(DRIVER, batch)).values()) == {""}
        assert cdi_files(dirs.cdi) == []
        assert writer._file_locks == {}


class TestClaimErrors:
    async def test_errors_isolated_per_claim(
        self, drivers: DriverRunner, dra_kubelet: FakeDraKubelet, claims: FakeClaims
    ) -> None:
        """Each bad claim carries its own error; the good one is prepared."""
        await drivers.start(kubelet=dra_kubelet)
        good = add_claim(claims, "good", "uid-good", result("i915-card0"))
        replaced = add_claim(claims, "replaced", "uid-new", result("i915-card1"))
        replaced = (replaced[0], replaced[1], "uid-old")
        unallocated = add_claim(claims, "unallocated", "uid-unalloc")
        foreign = add_claim(claims, "foreign", "uid-foreign", result("i915-card1", pool="node-b"))
        unknown = add_claim(claims, "unknown", "uid-unknown", result("i915-card9"))
        other = add_claim(claims, "other", "uid-other", result("x", driver="other.example.com"))
        missing = ("default", "missing", "uid-missing")
        results = await dra_kubelet.prepare(
            DRIVER, [good, replaced, unallocated, foreign, unknown, other, missing]
        )
        assert results["uid-good"].error == ""
        assert [d.device for d in results["uid-good"].devices] == ["i915-card0"]
        assert "got replaced" in results["uid-old"].error
        assert results["uid-unalloc"].error == "claim default/unallocated not allocated"
        assert "not in this node's pool 'node-a'" in results["uid-foreign"].error
        assert "'i915-card9' is not a device of driver" in results["uid-unknown"].error
        assert "no device allocated from driver" in results["uid-other"].error
        assert "not found" in results["uid-missing"].error
        for uid, outcome in results.items():
            if uid != "uid-good":
                assert outcome.devices == ()

    async def test_api_failure_is_per_claim(
        self, drivers: DriverRunner, dra_kubelet: FakeDraKubelet, claims: FakeClaims
    ) -> None:
        """An API server failure fails the claims, not the call; a retry succeeds."""
        await drivers.start(kubelet=dra_kubelet)
        claim = add_claim(claims, "c1", UID1, result("i915-card0"))
        claims.failure = ConnectionError("connection refused")
        results = await dra_kubelet.prepare(DRIVER, [claim])
        assert "cannot read claim default/c1 from the API server: connection refused" in (
            results[UID1].error
        )
        claims.failure = None
        await prepare_ok(dra_kubelet, claim)

    async def test_unhealthy_and_failed_scanner(
        self, drivers: DriverRunner, dra_kubelet: FakeDraKubelet, claims: FakeClaims
    ) -> None:
        """Unhealthy devices and a failed scanner refuse new claims until they recover."""
        driver = await drivers.start(devices=snapshot(state="Unhealthy"), kubelet=dra_kubelet)
        claim = add_claim(claims, "c1", UID1, result("i915-card0"))
        error = (await dra_kubelet.prepare(DRIVER, [claim]))[UID1].error
        assert "the device is unhealthy" in error
        assert f"tolerate the taint {DRIVER}/unhealthy" in error
        driver.update(snapshot(), scan_failed=True)
        assert "scanner failed" in (await dra_kubelet.prepare(DRIVER, [claim]))[UID1].error
        driver.update(snapshot())
        await prepare_ok(dra_kubelet, claim)

    async def test_tolerated_unhealthy_device(
        self, drivers: DriverRunner, dra_kubelet: FakeDraKubelet, claims: FakeClaims
    ) -> None:
        """A result tolerating the unhealthy taint gets the device prepared."""
        await drivers.start(devices=snapshot(state="Unhealthy"), kubelet=dra_kubelet)
        toleration = {"key": f"{DRIVER}/unhealthy", "operator": "Exists", "effect": "NoSchedule"}
        claim = add_claim(claims, "c1", UID1, {**result("i915-card0"), "tolerations": [toleration]})
        await prepare_ok(dra_kubelet, claim)

    async def test_claim_without_uid_fails_the_call(
        self, drivers: DriverRunner, dra_kubelet: FakeDraKubelet
    ) -> None:
        """A claim without UID cannot be answered per claim: INVALID_ARGUMENT."""
        import grpc

        await drivers.start(kubelet=dra_kubelet)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await dra_kubelet.prepare(DRIVER, [("default", "c1", "")])
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "has no UID" in (info.value.details() or "")


class TestIdempotence:
    async def test_repeats(
        self, drivers: DriverRunner, dra_kubelet: FakeDraKubelet, claims: FakeClaims, dirs: Dirs
    ) -> None:
        """A repeated prepare answers the same without fetching; unprepare may repeat."""
        await drivers.start(kubelet=dra_kubelet)
        claim = add_claim(claims, "c1", UID1, result("i915-card0"))
        first = await dra_kubelet.prepare(DRIVER, [claim])
        gets = claims.gets
        again = await dra_kubelet.prepare(DRIVER, [claim, claim])
        assert again == first
        assert claims.gets == gets
        assert await dra_kubelet.unprepare(DRIVER, [claim]) == {UID1: ""}
        assert await dra_kubelet.unprepare(DRIVER, [claim]) == {UID1: ""}
        assert await dra_kubelet.unprepare(DRIVER, [("default", "never", UID2)]) == {UID2: ""}
        assert cdi_files(dirs.cdi) == []

    async def test_concurrent_prepares_of_one_claim(
        self, drivers: DriverRunner, dra_kubelet: FakeDraKubelet, claims: FakeClaims
    ) -> None:
        """Two calls racing for the same claim fetch it once and answer the same."""
        await drivers.start(kubelet=dra_kubelet)
        claims.latency = 0.02
        claim = add_claim(claims, "c1", UID1, result("i915-card0"))
        first, second = await asyncio.gather(
            dra_kubelet.prepare(DRIVER, [claim]), dra_kubelet.prepare(DRIVER, [claim])
        )
        assert first == second
        assert claims.gets == 1


class TestRestart:
    async def test_restart_answers_repeats_and_unprepares(
        self, drivers: DriverRunner, dra_kubelet: FakeDraKubelet, claims: FakeClaims, dirs: Dirs
    ) -> None:
        """A new driver on the same dirs knows the claims prepared before it."""
        old = await drivers.start(kubelet=dra_kubelet)
        c1 = add_claim(claims, "c1", UID1, result("i915-card0"))
        c2 = add_claim(claims, "c2", UID2, result("i915-card1"))
        before = await prepare_ok(dra_kubelet, c1, c2)
        files = cdi_files(dirs.cdi)
        assert len(files) == 2
        await drivers.stop(old)
        assert cdi_files(dirs.cdi) == files  # containers still use them
        await dra_kubelet.wait_for_no_driver(DRIVER)

        claims.delete("default", "c1")  # a repeat must not need the API server
        since = time.monotonic()
        new = await drivers.start()
        await dra_kubelet.wait_for_driver(DRIVER, after=since)
        assert set(new.prepared_claims) == {UID1, UID2}
        assert (await dra_kubelet.prepare(DRIVER, [c1]))[UID1] == before[UID1]
        assert await dra_kubelet.unprepare(DRIVER, [c1, c2]) == {UID1: "", UID2: ""}
        assert cdi_files(dirs.cdi) == []

    async def test_restored_specs_rewritten(
        self, drivers: DriverRunner, claims: FakeClaims, dirs: Dirs
    ) -> None:
        """A spec file lost while the host was down is written again from the checkpoint."""
        old = await drivers.start()
        await old.prepare([_ref(add_claim(claims, "c1", UID1, result("i915-card0")))])
        await drivers.stop(old)
        (lost,) = dirs.cdi.glob("*.json")
        lost.unlink()
        await drivers.start()
        assert lost.exists()

    async def test_corrupt_checkpoint_set_aside(
        self, drivers: DriverRunner, claims: FakeClaims, dirs: Dirs
    ) -> None:
        """A corrupt checkpoint is moved aside; the driver starts empty and serves."""
        dirs.checkpoint.parent.mkdir(parents=True)
        dirs.checkpoint.write_text('{"version": 1, "checksum": "x", "data": {}}')
        driver = await drivers.start()
        assert driver.prepared_claims == {}
        assert [p.name.split("-")[0] for p in dirs.checkpoint.parent.glob("*.corrupt-*")] == [
            "checkpoint.json.corrupt"
        ]


class TestPluginMethods:
    async def test_allocate_and_post_allocate(
        self, drivers: DriverRunner, dra_kubelet: FakeDraKubelet, claims: FakeClaims, dirs: Dirs
    ) -> None:
        """The plugin's allocate answers per device type; post_allocate edits it."""
        seen: list[list[str]] = []

        class Scanner:
            def allocate(self, request: Any) -> Any:
                ids = list(request.container_requests[0].devices_ids)
                seen.append(ids)
                response = pluginapi.AllocateResponse()
                cresp = response.container_responses.add()
                cresp.envs["ZE_AFFINITY_MASK"] = ",".join(i[-1] for i in ids)
                cresp.annotations["dropped"] = "yes"
                return response

            async def post_allocate(self, response: Any) -> None:
                response.container_responses[0].envs["POST"] = "1"

        await drivers.start(Scanner(), kubelet=dra_kubelet)
        claim = add_claim(claims, "c1", UID1, result("i915-card0"), result("i915-card3"))
        devices = (await prepare_ok(dra_kubelet, claim))[UID1].devices
        assert seen == [["card0", "card3"]]
        cdi_id = f"{DRIVER}/dra=claim-{UID1}-i915"
        assert [d.cdi_device_ids for d in devices] == [(cdi_id,), (cdi_id,)]
        edits = resolve_cdi(dirs.cdi, cdi_id)["devices"][0]["containerEdits"]
        assert sorted(edits["env"]) == ["POST=1", "ZE_AFFINITY_MASK=0,3"]

    async def test_default_allocate_with_post_allocate(
        self, drivers: DriverRunner, dra_kubelet: FakeDraKubelet, claims: FakeClaims, dirs: Dirs
    ) -> None:
        """Without allocate the default answer (device nodes) goes to post_allocate."""

        class Scanner:
            def allocate(self, request: Any) -> Any:
                raise UseDefaultMethodError

            def post_allocate(self, response: Any) -> None:
                response.container_responses[0].envs["N"] = str(
                    len(response.container_responses[0].devices)
                )

        await drivers.start(Scanner(), kubelet=dra_kubelet)
        claim = add_claim(claims, "c1", UID1, result("i915-card0", "a"), result("i915-card1", "b"))
        devices = (await prepare_ok(dra_kubelet, claim))[UID1].devices
        # different requests: different containers may get them, so one CDI device each
        assert [d.cdi_device_ids for d in devices] == [
            (f"{DRIVER}/dra=claim-{UID1}-i915-1",),
            (f"{DRIVER}/dra=claim-{UID1}-i915-2",),
        ]
        edits = resolve_cdi(dirs.cdi, devices[1].cdi_device_ids[0])["devices"][0]
        assert edits["containerEdits"]["env"] == ["N=1"]
        assert edits["containerEdits"]["deviceNodes"][0]["path"] == "/dev/dri/card1"

    async def test_plugin_failure_is_per_claim(
        self, drivers: DriverRunner, dra_kubelet: FakeDraKubelet, claims: FakeClaims, dirs: Dirs
    ) -> None:
        """A plugin exception fails its claim only and leaves no CDI file behind."""

        class Scanner:
            def allocate(self, request: Any) -> Any:
                if "card1" in request.container_requests[0].devices_ids:
                    raise RuntimeError("card1 is on fire")
                raise UseDefaultMethodError

        await drivers.start(Scanner(), kubelet=dra_kubelet)
        good = add_claim(claims, "good", UID1, result("i915-card0"))
        bad = add_claim(claims, "bad", UID2, result("i915-card1"))
        results = await dra_kubelet.prepare(DRIVER, [good, bad])
        assert results[UID1].error == ""
        assert "allocate raised RuntimeError: card1 is on fire" in results[UID2].error
        assert len(cdi_files(dirs.cdi)) == 1

    async def test_invalid_edits_are_per_claim(
        self, drivers: DriverRunner, dra_kubelet: FakeDraKubelet, claims: FakeClaims, dirs: Dirs
    ) -> None:
        """An answer that makes an invalid CDI spec fails its claim, naming the problem."""

        class Scanner:
            def post_allocate(self, response: Any) -> None:
                response.container_responses[0].envs[""] = "nameless"

        await drivers.start(Scanner(), kubelet=dra_kubelet)
        claim = add_claim(claims, "c1", UID1, result("i915-card0"))
        error = (await dra_kubelet.prepare(DRIVER, [claim]))[UID1].error
        assert "claim default/c1: invalid CDI spec" in error
        assert "'=nameless'" in error
        assert cdi_files(dirs.cdi) == []

    async def test_plugin_base_exception_is_per_claim(
        self, drivers: DriverRunner, dra_kubelet: FakeDraKubelet, claims: FakeClaims
    ) -> None:
        """A plugin raising SystemExit fails its claim; the driver keeps serving."""

        class Scanner:
            async def post_allocate(self, response: Any) -> None:
                raise SystemExit(3)

        await drivers.start(Scanner(), kubelet=dra_kubelet)
        claim = add_claim(claims, "c1", UID1, result("i915-card0"))
        assert "post_allocate raised SystemExit" in (
            (await dra_kubelet.prepare(DRIVER, [claim]))[UID1].error
        )
        assert await dra_kubelet.unprepare(DRIVER, [claim]) == {UID1: ""}

    async def test_plugin_own_cdi_name_passed_on(
        self, drivers: DriverRunner, dra_kubelet: FakeDraKubelet, claims: FakeClaims, dirs: Dirs
    ) -> None:
        """CDI names in the Allocate answer become CDI IDs; known specs are written."""

        class Scanner:
            def post_allocate(self, response: Any) -> None:
                del response.container_responses[0].devices[:]

        await drivers.start(
            Scanner(),
            devices={"i915": {"card0": gpu(0, cdi_spec=PLUGIN_SPEC)}},
            kubelet=dra_kubelet,
        )
        claim = add_claim(claims, "c1", UID1, result("i915-card0"))
        (device,) = (await prepare_ok(dra_kubelet, claim))[UID1].devices
        assert device.cdi_device_ids == (qualified_name(PLUGIN_SPEC),)
        assert without_version(
            resolve_cdi(dirs.cdi, qualified_name(PLUGIN_SPEC))
        ) == without_version(PLUGIN_SPEC)


def _ref(triple: tuple[str, str, str]) -> Any:
    from host.dra import ClaimRef

    return ClaimRef(*triple)
