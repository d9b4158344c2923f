"""The publisher keeps the node's slices in sync: adoption, minimal writes, conflicts, outages."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from host.deviceplugin import DeviceInfo
from host.dra import ResourceSlicePublisher, device_name, slice_name, unhealthy_taint_key
from host.testing import FakeApiServer
from host.testing._apiserver_store import NODES
from tests.dra.publishing import (
    DRIVER,
    NODE,
    NODE_UID,
    devices,
    failures,
    gpus,
    matches,
    node,
    pool_complete,
    publishing,
    synced,
    writes,
)
from tests.dra.schema import assert_schema_valid

pytestmark = pytest.mark.asyncio
__all__ = ["node"]  # the fixture, imported


@pytest.mark.usefixtures("node")
class TestPublishing:
    async def test_first_snapshot_publishes_valid_slices(
        self, apiserver: FakeApiServer, apiserver_kubeconfig: Path
    ) -> None:
        """300 devices: five valid slices, generation 1, owned by the Node (uid looked up)."""
        async with publishing(apiserver_kubeconfig) as publisher:
            publisher.update(gpus(300))
            await synced(publisher)
        slices = apiserver.resource_slices()
        assert [s["metadata"]["name"] for s in slices] == [
            slice_name(DRIVER, NODE, i) for i in range(5)
        ]
        for one in slices:
            assert one["spec"]["pool"] == {"name": NODE, "generation": 1, "resourceSliceCount": 5}
            assert one["metadata"]["ownerReferences"][0]["uid"] == NODE_UID
            assert_schema_valid(one)
        assert len(devices(apiserver)) == 300
        assert publisher.status.synced
        assert publisher.status.generation == 1

    async def test_nothing_before_the_first_snapshot(
        self, apiserver: FakeApiServer, apiserver_kubeconfig: Path
    ) -> None:
        """Before update() the publisher writes nothing (an unscanned node is not 'empty')."""
        async with publishing(apiserver_kubeconfig) as publisher:
            publisher.request_resync()
            assert not publisher.status.synced
        assert writes(apiserver) == []

    async def test_unhealthy_device_becomes_a_taint_in_one_update(
        self, apiserver: FakeApiServer, apiserver_kubeconfig: Path
    ) -> None:
        """A device turning Unhealthy is tainted by one PUT of its slice, same generation."""
        async with publishing(apiserver_kubeconfig) as publisher:
            publisher.update(gpus(4))
            await synced(publisher)
            before = len(apiserver.requests)
            publisher.update(gpus(4, unhealthy={2}))
            await synced(publisher)
        assert writes(apiserver, before) == [f"PUT {slice_name(DRIVER, NODE, 0)}"]
        tainted = devices(apiserver)[device_name("i915", "card2-0")]
        assert tainted["taints"][0]["key"] == unhealthy_taint_key(DRIVER)
        assert tainted["taints"][0]["effect"] == "NoSchedule"
        assert apiserver.resource_slices()[0]["spec"]["pool"]["generation"] == 1
        assert matches(apiserver, gpus(4, unhealthy={2}))()

    async def test_scan_failed_taints_everything(
        self, apiserver: FakeApiServer, apiserver_kubeconfig: Path
    ) -> None:
        """scan_failed: every device tainted, in the same slices; healthy again later."""
        async with publishing(apiserver_kubeconfig) as publisher:
            publisher.update(gpus(200))
            await synced(publisher)
            publisher.update(gpus(200), scan_failed=True)
            await synced(publisher)
            assert all("taints" in d for d in devices(apiserver).values())
            assert len(apiserver.resource_slices()) == 4
            assert apiserver.resource_slices()[0]["spec"]["pool"]["generation"] == 2
            assert pool_complete(apiserver)
            publisher.update(gpus(200))
            await synced(publisher)
        assert matches(apiserver, gpus(200))()
        assert len(apiserver.resource_slices()) == 4

    async def test_same_snapshot_writes_nothing(
        self, apiserver: FakeApiServer, apiserver_kubeconfig: Path
    ) -> None:
        """An equal snapshot, or a forced re-list, changes nothing on the server."""
        async with publishing(apiserver_kubeconfig) as publisher:
            publisher.update(gpus(130))
            await synced(publisher)
            before = len(apiserver.requests)
            publisher.update(gpus(130))
            await synced(publisher)
            lists = sum(r.method == "GET" for r in apiserver.requests)
            publisher.request_resync()
            await apiserver.wait_for(
                lambda: sum(r.method == "GET" for r in apiserver.requests) > lists, what="re-list"
            )
            await synced(publisher)
        assert writes(apiserver, before) == []

    async def test_growing_and_shrinking_bumps_the_generation(
        self, apiserver: FakeApiServer, apiserver_kubeconfig: Path
    ) -> None:
        """A change spanning slices rewrites all with generation+1 and deletes leftovers.

        700 devices: large enough to be built in a worker thread.
        """
        async with publishing(apiserver_kubeconfig) as publisher:
            publisher.update(gpus(700))
            await synced(publisher)
            assert len(apiserver.resource_slices()) == 11
            publisher.update(gpus(100))
            await synced(publisher)
        slices = apiserver.resource_slices()
        assert len(slices) == 2
        assert slices[0]["spec"]["pool"] == {"name": NODE, "generation": 2, "resourceSliceCount": 2}
        assert matches(apiserver, gpus(100))()

    async def test_wider_slices_on_request(
        self, apiserver: FakeApiServer, apiserver_kubeconfig: Path
    ) -> None:
        """max_devices_per_slice=128: 128 a slice, re-split at 64 once a taint appears."""
        async with publishing(apiserver_kubeconfig, max_devices_per_slice=128) as publisher:
            publisher.update(gpus(200))
            await synced(publisher)
            assert [len(s["spec"]["devices"]) for s in apiserver.resource_slices()] == [128, 72]
            publisher.update(gpus(200, unhealthy={0}))
            await synced(publisher)
        assert matches(apiserver, gpus(200, unhealthy={0}))()
        assert len(apiserver.resource_slices()) == 3

    async def test_empty_snapshot_is_one_empty_slice(
        self, apiserver: FakeApiServer, apiserver_kubeconfig: Path
    ) -> None:
        """All devices gone: one slice without devices says the pool is empty."""
        async with publishing(apiserver_kubeconfig) as publisher:
            publisher.update(gpus(2))
            await synced(publisher)
            publisher.update({})
            await synced(publisher)
        (only,) = apiserver.resource_slices()
        assert "devices" not in only["spec"]

    async def test_taint_time_is_kept_across_updates(
        self, apiserver: FakeApiServer, apiserver_kubeconfig: Path
    ) -> None:
        """A taint keeps the timeAdded the server gave it when its slice is rewritten."""
        async with publishing(apiserver_kubeconfig) as publisher:
            publisher.update(gpus(3, unhealthy={0}))
            await synced(publisher)
            first = devices(apiserver)[device_name("i915", "card0-0")]["taints"][0]["timeAdded"]
            publisher.update(gpus(3, unhealthy={0, 1}))
            await synced(publisher)
        assert devices(apiserver)[device_name("i915", "card0-0")]["taints"][0]["timeAdded"] == first

    async def test_updates_coalesce(
        self, apiserver: FakeApiServer, apiserver_kubeconfig: Path
    ) -> None:
        """100 snapshots pushed at once: far fewer writes, and the last snapshot wins."""
        apiserver.latency = 0.01
        async with publishing(apiserver_kubeconfig) as publisher:
            for count in range(1, 101):
                publisher.update(gpus(count % 7 + 1))
            await synced(publisher)
        assert len(writes(apiserver)) < 10
        assert matches(apiserver, gpus(100 % 7 + 1))()

    async def test_device_that_cannot_be_published_is_logged(
        self, apiserver: FakeApiServer, apiserver_kubeconfig: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A device over the limits is logged once by ID; the others are published."""
        crowded = DeviceInfo(attributes={f"a{i}": i for i in range(31)})
        snapshot = {"i915": {"card0-0": crowded, "card1-0": DeviceInfo()}}
        with caplog.at_level(logging.WARNING, logger="host.dra"):
            async with publishing(apiserver_kubeconfig) as publisher:
                publisher.update(snapshot)
                await synced(publisher)
                publisher.update(dict(snapshot))
                await synced(publisher)
        assert list(devices(apiserver)) == [device_name("i915", "card1-0")]
        assert [r.getMessage() for r in caplog.records].count(
            next(r.getMessage() for r in caplog.records if "'card0-0'" in r.getMessage())
        ) == 1

    async def test_cleanup_on_stop(
        self, apiserver: FakeApiServer, apiserver_kubeconfig: Path
    ) -> None:
        """stop() leaves the slices; stop(cleanup=True) deletes them."""
        async with publishing(apiserver_kubeconfig) as publisher:
            publisher.update(gpus(200))
            await synced(publisher)
        assert len(apiserver.resource_slices()) == 4
        publisher = ResourceSlicePublisher(DRIVER, NODE, kubeconfig=apiserver_kubeconfig)
        await publisher.start()
        await publisher.stop(cleanup=True)
        assert apiserver.resource_slices() == []


@pytest.mark.usefixtures("node")
class TestAdoption:
    async def test_restart_adopts_without_duplicates(
        self, apiserver: FakeApiServer, apiserver_kubeconfig: Path
    ) -> None:
        """A new publisher finds its predecessor's slices: no create, no duplicate device."""
        async with publishing(apiserver_kubeconfig) as first:
            first.update(gpus(300))
            await synced(first)
        uids = {s["metadata"]["uid"] for s in apiserver.resource_slices()}
        before = len(apiserver.requests)
        async with publishing(apiserver_kubeconfig) as second:
            second.update(gpus(300))
            await synced(second)
            assert writes(apiserver, before) == []
            second.update(gpus(300, unhealthy={5}))
            await synced(second)
        assert {s["metadata"]["uid"] for s in apiserver.resource_slices()} == uids
        assert not any(w.startswith("POST") for w in writes(apiserver, before))
        assert matches(apiserver, gpus(300, unhealthy={5}))()

    async def test_foreign_names_are_replaced(
        self, apiserver: FakeApiServer, apiserver_kubeconfig: Path
    ) -> None:
        """Slices of the driver on the node under other names (generateName) are removed."""
        stray = {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceSlice",
            "metadata": {"name": f"{NODE}-{DRIVER}-x7k2p"},
            "spec": {
                "driver": DRIVER,
                "nodeName": NODE,
                "pool": {"name": NODE, "generation": 4, "resourceSliceCount": 1},
                "devices": [{"name": "old-device"}],
            },
        }
        apiserver.put_resource_slice(stray)
        other_node = dict(
            stray, metadata={"name": "other"}, spec=dict(stray["spec"], nodeName="node-2")
        )
        apiserver.put_resource_slice(other_node)
        async with publishing(apiserver_kubeconfig) as publisher:
            publisher.update(gpus(2))
            await synced(publisher)
        mine = apiserver.resource_slices(node_name=NODE)
        assert [s["metadata"]["name"] for s in mine] == [slice_name(DRIVER, NODE, 0)]
        assert mine[0]["spec"]["pool"]["generation"] == 5
        assert [s["metadata"]["name"] for s in apiserver.resource_slices(node_name="node-2")] == [
            "other"
        ]

    async def test_recreated_node_gets_its_new_uid(
        self, apiserver: FakeApiServer, apiserver_kubeconfig: Path
    ) -> None:
        """A Node re-created under the same name: the re-list moves the owner to its new uid."""
        async with publishing(apiserver_kubeconfig) as publisher:
            publisher.update(gpus(3))
            await synced(publisher)
            apiserver.store.delete(NODES, NODE)
            apiserver.add_node(NODE, uid="new-uid")
            publisher.request_resync()
            await apiserver.wait_for(
                lambda: all(
                    s["metadata"]["ownerReferences"][0]["uid"] == "new-uid"
                    for s in apiserver.resource_slices()
                ),
                what="owner moved to the new uid",
            )

    async def test_kubelet_wipe_is_repaired_by_the_resync(
        self, apiserver: FakeApiServer, apiserver_kubeconfig: Path
    ) -> None:
        """Slices wiped behind the publisher's back come back at the next re-list."""
        async with publishing(apiserver_kubeconfig, resync_interval=0.1) as publisher:
            publisher.update(gpus(3))
            await synced(publisher)
            assert apiserver.wipe_resource_slices(f"spec.nodeName={NODE}") == 1
            await apiserver.wait_for(matches(apiserver, gpus(3)), what="slices republished")


@pytest.mark.usefixtures("node")
class TestFailures:
    async def test_conflict_is_retried_after_a_re_read(
        self, apiserver: FakeApiServer, apiserver_kubeconfig: Path
    ) -> None:
        """Someone else changed the slice: the PUT gets 409, the publisher re-reads and wins."""
        async with publishing(apiserver_kubeconfig) as publisher:
            publisher.update(gpus(3))
            await synced(publisher)
            theirs = apiserver.resource_slices()[0]
            theirs["spec"]["devices"] = theirs["spec"]["devices"][:1]
            apiserver.put_resource_slice(theirs)
            publisher.update(gpus(3, unhealthy={1}))
            await synced(publisher)
        assert any(r.code == 409 for r in apiserver.requests)
        assert matches(apiserver, gpus(3, unhealthy={1}))()

    async def test_injected_conflicts_and_server_errors(
        self, apiserver: FakeApiServer, apiserver_kubeconfig: Path
    ) -> None:
        """409s then a 500 on writes: retried until the state is published."""
        apiserver.fail_next("POST", "resourceslices$", times=3)
        apiserver.fail_next("POST", "resourceslices$", 500, "InternalError", "etcd timeout")
        async with publishing(apiserver_kubeconfig) as publisher:
            publisher.update(gpus(2))
            await synced(publisher)
            assert publisher.status.failures == 0
        assert [r.code for r in apiserver.requests if r.method == "POST"] == [
            409,
            409,
            409,
            500,
            201,
        ]
        assert matches(apiserver, gpus(2))()

    async def test_missing_node_is_retried(
        self, apiserver: FakeApiServer, apiserver_kubeconfig: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """No Node yet: the failure is logged and retried; the Node's arrival unblocks it."""
        apiserver.store.delete(NODES, NODE)
        with caplog.at_level(logging.WARNING, logger="host.dra"):
            async with publishing(apiserver_kubeconfig) as publisher:
                publisher.update(gpus(1))
                await failures(publisher, 2)
                assert "404" in (publisher.status.last_error or "") or "not found" in (
                    publisher.status.last_error or ""
                )
                apiserver.add_node(NODE, uid="late-uid")
                await synced(publisher)
        assert apiserver.resource_slices()[0]["metadata"]["ownerReferences"][0]["uid"] == "late-uid"
        assert any("publishing ResourceSlices failed" in r.getMessage() for r in caplog.records)

    @pytest.mark.parametrize("mode", ["unavailable", "refuse", "hang", "drop-response"])
    async def test_short_outage_of_each_kind(
        self, apiserver: FakeApiServer, apiserver_kubeconfig: Path, mode: Any
    ) -> None:
        """During any kind of outage updates pile up; afterwards the newest state, no duplicates."""
        async with publishing(apiserver_kubeconfig, request_timeout=0.5) as publisher:
            publisher.update(gpus(130))
            await synced(publisher)
            apiserver.begin_outage(mode)
            publisher.update(gpus(300, unhealthy={7}))
            await failures(publisher, 1)
            publisher.update(gpus(260, unhealthy={9}))
            await apiserver.end_outage()
            await synced(publisher)
        assert matches(apiserver, gpus(260, unhealthy={9}))()

    async def test_lasting_failure_warns_at_tenfold_counts(
        self,
        apiserver: FakeApiServer,
        apiserver_kubeconfig: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A failure that lasts warns at failures 1 and 10, quietly in between."""
        apiserver.begin_outage("unavailable")
        with caplog.at_level(logging.WARNING, logger="host.dra"):
            async with publishing(apiserver_kubeconfig, retry_max=0.05) as publisher:
                publisher.update(gpus(1))
                await failures(publisher, 11)
        warned = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
        assert len(warned) == 2
        assert "failure 1 in a row" in warned[0]
        assert "failure 10 in a row" in warned[1]
        assert "ServiceUnavailable" in warned[0] or "unable to handle" in warned[0]

    async def test_cleanup_during_an_outage_is_logged_not_raised(
        self,
        apiserver: FakeApiServer,
        apiserver_kubeconfig: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """stop(cleanup=True) while the API server is down warns and returns."""
        publisher = ResourceSlicePublisher(
            DRIVER, NODE, kubeconfig=apiserver_kubeconfig, request_timeout=0.5
        )
        await publisher.start()
        publisher.update(gpus(2))
        await synced(publisher)
        apiserver.begin_outage("refuse")
        with caplog.at_level(logging.WARNING, logger="host.dra"):
            await publisher.stop(cleanup=True)
        assert "could not delete the ResourceSlices" in caplog.text
        await apiserver.end_outage()
        assert len(apiserver.resource_slices()) == 1

    async def test_ten_second_outage_loses_nothing(
        self, apiserver: FakeApiServer, apiserver_kubeconfig: Path
    ) -> None:
        """A 10 s outage with changes during it: the newest state lands once, no duplicates."""
        async with publishing(apiserver_kubeconfig, retry_max=1.0) as publisher:
            publisher.update(gpus(500))
            await synced(publisher)
            uids = {
                s["metadata"]["name"]: s["metadata"]["uid"] for s in apiserver.resource_slices()
            }
            apiserver.begin_outage("unavailable", duration=10)
            for step in range(5):
                publisher.update(gpus(500 - step * 40, unhealthy={step}))
                await failures(publisher, step + 1, timeout=15)
            final = gpus(420, unhealthy={1, 2, 3})
            publisher.update(final)
            await apiserver.wait_for(
                lambda: apiserver.outage is None, timeout=15, what="outage end"
            )
            await synced(publisher, timeout=15)
        assert matches(apiserver, final)()
        # slices that still exist are the objects from before the outage, updated in place
        kept = [s for s in apiserver.resource_slices() if s["metadata"]["name"] in uids]
        assert len(kept) == len(apiserver.resource_slices())
        assert all(uids[s["metadata"]["name"]] == s["metadata"]["uid"] for s in kept)
        assert len(devices(apiserver)) == 420
