"""The fake API server speaks the real wire protocol: objects, Status errors, validation, faults."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import pytest_asyncio
from lightkube.resources.core_v1 import Node

from host.dra._client import kube_client
from host.testing import FakeApiServer

SLICES = "/apis/resource.k8s.io/v1/resourceslices"
pytestmark = pytest.mark.asyncio


def a_slice(
    name: str = "s1", driver: str = "gpu.intel.com", node: str = "node-1", **spec: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": name},
        "spec": {
            "driver": driver,
            "nodeName": node,
            "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
            "devices": [{"name": "dev-0", "attributes": {"type": {"string": "x"}}}],
        },
    }
    body["spec"].update(spec)
    return body


@pytest_asyncio.fixture
async def http(apiserver: FakeApiServer) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=apiserver.url, timeout=5) as client:
        yield client


def assert_status(
    response: httpx2.Response, code: int, reason: str, message: str
) -> dict[str, Any]:
    assert response.status_code == code
    body = response.json()
    assert body["kind"] == "Status"
    assert body["apiVersion"] == "v1"
    assert body["status"] == "Failure"
    assert body["code"] == code
    assert body["reason"] == reason
    assert message in body["message"], body["message"]
    return body


class TestResourceSlices:
    async def test_create_fills_metadata(self, http: httpx2.AsyncClient) -> None:
        """Create answers 201 with uid, resourceVersion, creationTimestamp and generation 1."""
        response = await http.post(SLICES, json=a_slice())
        assert response.status_code == 201
        meta = response.json()["metadata"]
        assert meta["uid"]
        assert meta["resourceVersion"]
        assert meta["creationTimestamp"].endswith("Z")
        assert meta["generation"] == 1

    async def test_generate_name(self, http: httpx2.AsyncClient) -> None:
        """generateName gets a 5-character random suffix."""
        body = a_slice()
        body["metadata"] = {"generateName": "node-1-gpu.intel.com-"}
        name = (await http.post(SLICES, json=body)).json()["metadata"]["name"]
        assert name.startswith("node-1-gpu.intel.com-")
        assert len(name) == len("node-1-gpu.intel.com-") + 5

    async def test_already_exists(self, http: httpx2.AsyncClient) -> None:
        """A second create of the same name is 409 AlreadyExists."""
        await http.post(SLICES, json=a_slice())
        body = assert_status(
            await http.post(SLICES, json=a_slice()),
            409,
            "AlreadyExists",
            'resourceslices.resource.k8s.io "s1" already exists',
        )
        assert body["details"] == {
            "name": "s1",
            "group": "resource.k8s.io",
            "kind": "resourceslices",
        }

    async def test_list_by_field_selector(self, http: httpx2.AsyncClient) -> None:
        """spec.driver, spec.nodeName and metadata.name select; items carry no kind."""
        await http.post(SLICES, json=a_slice("a", node="n1"))
        await http.post(SLICES, json=a_slice("b", node="n2"))
        await http.post(SLICES, json=a_slice("c", driver="other.io", node="n1"))

        async def names(selector: str) -> list[str]:
            listed = (await http.get(SLICES, params={"fieldSelector": selector})).json()
            assert listed["kind"] == "ResourceSliceList"
            assert listed["metadata"]["resourceVersion"]
            assert all("kind" not in item for item in listed["items"])
            return [item["metadata"]["name"] for item in listed["items"]]

        assert await names("spec.driver=gpu.intel.com,spec.nodeName=n1") == ["a"]
        assert await names("spec.nodeName==n1") == ["a", "c"]
        assert await names("spec.driver!=gpu.intel.com") == ["c"]
        assert await names("metadata.name=b") == ["b"]
        assert await names("") == ["a", "b", "c"]

    async def test_unsupported_field_label(self, http: httpx2.AsyncClient) -> None:
        """Any other field is 400 'field label not supported'."""
        response = await http.get(SLICES, params={"fieldSelector": "spec.pool.name=x"})
        assert_status(response, 400, "BadRequest", "field label not supported: spec.pool.name")

    async def test_get_and_not_found(self, http: httpx2.AsyncClient) -> None:
        """GET by name; a missing one is 404 NotFound naming it."""
        await http.post(SLICES, json=a_slice())
        assert (await http.get(f"{SLICES}/s1")).json()["spec"]["driver"] == "gpu.intel.com"
        assert_status(
            await http.get(f"{SLICES}/nope"),
            404,
            "NotFound",
            'resourceslices.resource.k8s.io "nope" not found',
        )

    async def test_update_with_stale_resource_version_conflicts(
        self, http: httpx2.AsyncClient
    ) -> None:
        """PUT with an old resourceVersion is 409 Conflict; with the current one it succeeds."""
        created = (await http.post(SLICES, json=a_slice())).json()
        first = copy.deepcopy(created)
        first["spec"]["pool"]["generation"] = 2
        updated = await http.put(f"{SLICES}/s1", json=first)
        assert updated.status_code == 200
        assert updated.json()["metadata"]["generation"] == 2
        assert updated.json()["metadata"]["uid"] == created["metadata"]["uid"]
        assert_status(
            await http.put(f"{SLICES}/s1", json=first),
            409,
            "Conflict",
            'Operation cannot be fulfilled on resourceslices.resource.k8s.io "s1": the object '
            "has been modified; please apply your changes to the latest version and try again",
        )

    async def test_update_without_resource_version_is_unconditional(
        self, http: httpx2.AsyncClient
    ) -> None:
        """PUT without resourceVersion overwrites."""
        await http.post(SLICES, json=a_slice())
        assert (await http.put(f"{SLICES}/s1", json=a_slice())).status_code == 200

    async def test_update_missing_or_renamed(self, http: httpx2.AsyncClient) -> None:
        """PUT of a missing object is 404; a body naming another object is 400."""
        assert (await http.put(f"{SLICES}/s1", json=a_slice())).status_code == 404
        await http.post(SLICES, json=a_slice())
        assert_status(
            await http.put(f"{SLICES}/s1", json=a_slice("s2")),
            400,
            "BadRequest",
            "does not match the name on the URL",
        )

    async def test_immutable_fields(self, http: httpx2.AsyncClient) -> None:
        """driver, pool name and nodeName cannot change."""
        await http.post(SLICES, json=a_slice())
        moved = a_slice(nodeName="node-2")
        body = assert_status(
            await http.put(f"{SLICES}/s1", json=moved), 422, "Invalid", "immutable"
        )
        assert {c["field"] for c in body["details"]["causes"]} == {"spec.nodeName"}

    async def test_delete_with_preconditions(self, http: httpx2.AsyncClient) -> None:
        """A wrong uid precondition is 409; the right one deletes and returns the object."""
        created = (await http.post(SLICES, json=a_slice())).json()
        wrong = {"preconditions": {"uid": "other"}}
        response = await http.request("DELETE", f"{SLICES}/s1", json=wrong)
        assert_status(response, 409, "Conflict", "Precondition failed: UID in precondition: other")
        stale = {"preconditions": {"resourceVersion": "0"}}
        response = await http.request("DELETE", f"{SLICES}/s1", json=stale)
        assert_status(response, 409, "Conflict", "ResourceVersion in precondition: 0")
        right = {"preconditions": {"uid": created["metadata"]["uid"]}}
        response = await http.request("DELETE", f"{SLICES}/s1", json=right)
        assert response.status_code == 200
        assert response.json()["metadata"]["name"] == "s1"
        assert (await http.delete(f"{SLICES}/s1")).status_code == 404

    async def test_delete_collection_like_kubelets_wipe(
        self, http: httpx2.AsyncClient, apiserver: FakeApiServer
    ) -> None:
        """DELETE on the collection with a field selector removes just the matching slices."""
        await http.post(SLICES, json=a_slice("a", node="n1"))
        await http.post(SLICES, json=a_slice("b", node="n2"))
        response = await http.delete(SLICES, params={"fieldSelector": "spec.nodeName=n1"})
        assert response.status_code == 200
        assert [s["metadata"]["name"] for s in apiserver.resource_slices()] == ["b"]
        assert apiserver.wipe_resource_slices("spec.nodeName=n2") == 1

    async def test_taint_time_added_is_filled_in(self, http: httpx2.AsyncClient) -> None:
        """A device taint without timeAdded gets one, as the real server does."""
        body = a_slice()
        body["spec"]["devices"][0]["taints"] = [{"key": "x.io/bad", "effect": "NoSchedule"}]
        created = (await http.post(SLICES, json=body)).json()
        assert created["spec"]["devices"][0]["taints"][0]["timeAdded"].endswith("Z")

    async def test_watch_and_patch_are_refused(self, http: httpx2.AsyncClient) -> None:
        """What the fake does not implement fails loudly, never silently."""
        assert (await http.get(SLICES, params={"watch": "true"})).status_code == 400
        assert (await http.patch(f"{SLICES}/s1", json={})).status_code == 405


def broken(mutate: Any) -> dict[str, Any]:
    body = a_slice()
    mutate(body["spec"])
    return body


def many_devices(count: int, taint: bool = False) -> list[dict[str, Any]]:
    devices: list[dict[str, Any]] = [{"name": f"d{i}"} for i in range(count)]
    if taint:
        devices[0]["taints"] = [{"key": "x.io/bad", "effect": "NoSchedule"}]
    return devices


INVALID = [
    ("no driver", lambda s: s.pop("driver"), "spec.driver", "Required value"),
    ("driver not a subdomain", lambda s: s.update(driver="Bad_Driver"), "spec.driver", "RFC 1123"),
    ("no node selection", lambda s: s.pop("nodeName"), "spec", "exactly one of"),
    ("two node selections", lambda s: s.update(allNodes=True), "spec", "multiple fields"),
    (
        "pool count 0",
        lambda s: s["pool"].update(resourceSliceCount=0),
        "spec.pool.resourceSliceCount",
        "greater than zero",
    ),
    (
        "negative generation",
        lambda s: s["pool"].update(generation=-1),
        "spec.pool.generation",
        "greater than or equal",
    ),
    (
        "device name",
        lambda s: s["devices"][0].update(name="Dev_0"),
        "spec.devices[0].name",
        "RFC 1123 label",
    ),
    (
        "duplicate devices",
        lambda s: s.update(devices=[{"name": "a"}, {"name": "a"}]),
        "spec.devices[1].name",
        "Duplicate value",
    ),
    (
        "129 devices",
        lambda s: s.update(devices=many_devices(129)),
        "spec.devices",
        "Too many: 129: must have at most 128",
    ),
    (
        "65 with a taint",
        lambda s: s.update(devices=many_devices(65, taint=True)),
        "spec.devices",
        "at most 64",
    ),
    (
        "attribute name",
        lambda s: s["devices"][0].update(attributes={"1x": {"int": 1}}),
        "spec.devices[0].attributes[1x]",
        "C identifier",
    ),
    (
        "two attribute values",
        lambda s: s["devices"][0].update(attributes={"x": {"int": 1, "bool": True}}),
        "spec.devices[0].attributes[x]",
        "exactly one value",
    ),
    (
        "long string",
        lambda s: s["devices"][0].update(attributes={"x": {"string": "y" * 65}}),
        "spec.devices[0].attributes[x].string",
        "Too long",
    ),
    (
        "bad version",
        lambda s: s["devices"][0].update(attributes={"x": {"version": "1.0"}}),
        "spec.devices[0].attributes[x].version",
        "semver",
    ),
    (
        "33 attributes",
        lambda s: s["devices"][0].update(attributes={f"a{i}": {"int": i} for i in range(33)}),
        "spec.devices[0]",
        "at most 32",
    ),
    (
        "bad quantity",
        lambda s: s["devices"][0].update(capacity={"mem": {"value": "16GB"}}),
        "spec.devices[0].capacity[mem].value",
        "quantities must match",
    ),
    (
        "taint effect",
        lambda s: s["devices"][0].update(taints=[{"key": "a.io/b", "effect": "PreferNoSchedule"}]),
        "spec.devices[0].taints[0].effect",
        "Unsupported value",
    ),
    (
        "taint key",
        lambda s: s["devices"][0].update(taints=[{"key": "a b", "effect": "NoSchedule"}]),
        "spec.devices[0].taints[0].key",
        "Invalid value",
    ),
    (
        "17 taints",
        lambda s: s["devices"][0].update(
            taints=[{"key": f"a.io/t{i}", "effect": "None"} for i in range(17)]
        ),
        "spec.devices[0].taints",
        "at most 16",
    ),
]


class TestValidation:
    @pytest.mark.parametrize(
        ("mutate", "field", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
    )
    async def test_invalid_slices_are_refused(
        self, http: httpx2.AsyncClient, mutate: Any, field: str, message: str
    ) -> None:
        """Each rule breach is 422 Invalid with a cause naming the field."""
        response = await http.post(SLICES, json=broken(mutate))
        body = assert_status(
            response, 422, "Invalid", 'ResourceSlice.resource.k8s.io "s1" is invalid'
        )
        causes = body["details"]["causes"]
        assert body["details"]["kind"] == "ResourceSlice"
        assert any(c["field"] == field and message in c["message"] for c in causes), causes
        assert (await http.get(f"{SLICES}/s1")).status_code == 404

    async def test_several_causes_are_listed(self, http: httpx2.AsyncClient) -> None:
        """Several problems: all of them, bracketed in the message."""
        body = broken(lambda s: (s.pop("driver"), s["pool"].update(resourceSliceCount=0)))
        status = (await http.post(SLICES, json=body)).json()
        assert len(status["details"]["causes"]) == 2
        assert ": [spec.driver: Required value, " in status["message"]

    async def test_bad_json_is_bad_request(self, http: httpx2.AsyncClient) -> None:
        """A body that is not JSON is 400."""
        response = await http.post(
            SLICES, content=b"{nope", headers={"content-type": "application/json"}
        )
        assert_status(response, 400, "BadRequest", "unknown format")

    async def test_wrong_api_version(self, http: httpx2.AsyncClient) -> None:
        """An object of another apiVersion is 400."""
        body = a_slice()
        body["apiVersion"] = "resource.k8s.io/v1beta1"
        assert_status(await http.post(SLICES, json=body), 400, "BadRequest", "does not match")


class TestOtherObjects:
    async def test_nodes(self, http: httpx2.AsyncClient, apiserver: FakeApiServer) -> None:
        """add_node makes a Node the client can GET; a missing one is 404 'nodes "x" not found'."""
        node = apiserver.add_node("node-1", uid="u-1")
        got = (await http.get("/api/v1/nodes/node-1")).json()
        assert got["metadata"]["uid"] == "u-1" == node["metadata"]["uid"]
        assert got["kind"] == "Node"
        assert_status(await http.get("/api/v1/nodes/x"), 404, "NotFound", 'nodes "x" not found')

    async def test_claims(self, http: httpx2.AsyncClient, apiserver: FakeApiServer) -> None:
        """Claims are namespaced; set_claim_allocation writes status.allocation."""
        claim = apiserver.add_claim("ns1", "c1")
        path = "/apis/resource.k8s.io/v1/namespaces/ns1/resourceclaims/c1"
        got = (await http.get(path)).json()
        assert got["metadata"]["uid"] == claim["metadata"]["uid"]
        assert "allocation" not in got["status"]
        allocation = {
            "devices": {
                "results": [
                    {
                        "request": "r",
                        "driver": "gpu.intel.com",
                        "pool": "node-1",
                        "device": "i915-card0-0",
                    }
                ]
            }
        }
        apiserver.set_claim_allocation("ns1", "c1", allocation)
        assert (await http.get(path)).json()["status"]["allocation"] == allocation
        assert (await http.get(path + "/status")).status_code == 200
        assert (await http.get(path.replace("ns1", "ns2"))).status_code == 404
        assert (await http.put(path, json=got)).status_code == 405

    async def test_version_discovery_and_unknown_paths(self, http: httpx2.AsyncClient) -> None:
        """/version and discovery answer; an unknown path is the plain-text 404."""
        assert (await http.get("/version")).json()["major"] == "1"
        groups = (await http.get("/apis")).json()["groups"]
        assert groups[0]["preferredVersion"]["groupVersion"] == "resource.k8s.io/v1"
        resources = (await http.get("/apis/resource.k8s.io/v1")).json()["resources"]
        assert {r["name"] for r in resources} == {
            "resourceslices",
            "resourceclaims",
            "deviceclasses",
        }
        unknown = await http.get("/apis/apps/v1/deployments")
        assert unknown.status_code == 404
        assert unknown.text == "404 page not found\n"

    async def test_kubeconfig_points_lightkube_here(
        self, apiserver: FakeApiServer, apiserver_kubeconfig: Path
    ) -> None:
        """A client built from the written kubeconfig reaches this server."""
        apiserver.add_node("node-1", uid="u-9")
        client = kube_client(apiserver_kubeconfig)
        try:
            node = await client.get(Node, "node-1")
        finally:
            await client.close()
        assert node.metadata is not None
        assert node.metadata.uid == "u-9"


class TestFaults:
    async def test_unavailable(self, http: httpx2.AsyncClient, apiserver: FakeApiServer) -> None:
        """During an 'unavailable' outage every answer is 503 ServiceUnavailable."""
        apiserver.begin_outage("unavailable")
        assert_status(await http.get(SLICES), 503, "ServiceUnavailable", "unable to handle")
        await apiserver.end_outage()
        assert (await http.get(SLICES)).status_code == 200

    async def test_refuse_then_serve_on_the_same_port(
        self, http: httpx2.AsyncClient, apiserver: FakeApiServer
    ) -> None:
        """'refuse' closes the port; after the outage the same URL answers again."""
        assert (await http.get(SLICES)).status_code == 200
        apiserver.begin_outage("refuse")
        with pytest.raises(httpx2.TransportError):
            await http.get(SLICES)
        await apiserver.end_outage()
        assert (await http.get(SLICES)).status_code == 200

    async def test_hang_until_the_outage_ends(
        self, http: httpx2.AsyncClient, apiserver: FakeApiServer
    ) -> None:
        """'hang' reads the request and never answers; the end of the outage cuts it."""
        apiserver.begin_outage("hang")
        pending = asyncio.create_task(http.get(SLICES))
        await apiserver.wait_for(
            lambda: any(r.code is None for r in apiserver.requests), what="request held"
        )
        assert not pending.done()
        await apiserver.end_outage()
        with pytest.raises(httpx2.TransportError):
            await pending

    async def test_drop_response_applies_the_write(
        self, http: httpx2.AsyncClient, apiserver: FakeApiServer
    ) -> None:
        """'drop-response' carries the create out but the client never hears back."""
        apiserver.begin_outage("drop-response")
        with pytest.raises(httpx2.TransportError):
            await http.post(SLICES, json=a_slice())
        await apiserver.end_outage()
        assert [s["metadata"]["name"] for s in apiserver.resource_slices()] == ["s1"]

    async def test_outage_with_duration_ends_by_itself(self, apiserver: FakeApiServer) -> None:
        """begin_outage(duration=...) ends on a timer; the test waits on the condition."""
        apiserver.begin_outage("refuse", duration=0.2)
        assert apiserver.outage == "refuse"
        await apiserver.wait_for(lambda: apiserver.outage is None, timeout=5, what="outage over")

    async def test_latency_still_answers(
        self, http: httpx2.AsyncClient, apiserver: FakeApiServer
    ) -> None:
        """With latency set, answers arrive (later) and are correct."""
        apiserver.latency = 0.05
        assert (await http.get(SLICES)).status_code == 200

    async def test_fail_next(self, http: httpx2.AsyncClient, apiserver: FakeApiServer) -> None:
        """fail_next answers matching requests with the given Status, once, without acting."""
        apiserver.fail_next("POST", "resourceslices$", 500, "InternalError", "etcd hiccup")
        assert_status(await http.post(SLICES, json=a_slice()), 500, "InternalError", "etcd hiccup")
        assert apiserver.resource_slices() == []
        assert (await http.post(SLICES, json=a_slice())).status_code == 201

    async def test_wait_for_times_out_with_a_message(self, apiserver: FakeApiServer) -> None:
        """A condition that never holds fails the test with what was awaited."""
        with pytest.raises(AssertionError, match="never not met within"):
            await apiserver.wait_for(lambda: False, timeout=0.05, what="never")

    async def test_requests_are_recorded(
        self, http: httpx2.AsyncClient, apiserver: FakeApiServer
    ) -> None:
        """Every request is recorded with its method, path, query and answer code."""
        await http.get(SLICES, params={"fieldSelector": "spec.driver=x"})
        (request,) = apiserver.requests
        assert (request.method, request.path, request.code) == ("GET", SLICES, 200)
        assert request.query == {"fieldSelector": "spec.driver=x"}
