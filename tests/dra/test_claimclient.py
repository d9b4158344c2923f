"""KubeClaimSource against the fake API server, alone and under a DraDriver."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import lightkube
import pytest
import pytest_asyncio

from host.dra import ClaimNotFoundError, KubeClaimSource
from host.dra._client import kube_client
from host.testing import FakeApiServer, FakeDraKubelet
from tests.dra.helpers import DRIVER, NODE, Dirs, DriverRunner, result

pytestmark = pytest.mark.asyncio

UID = "6c0ffee0-0000-4000-8000-000000000001"


@pytest_asyncio.fixture
async def client(apiserver_kubeconfig: Path) -> AsyncIterator[lightkube.AsyncClient]:
    kube = kube_client(apiserver_kubeconfig, timeout=5.0)
    try:
        yield kube
    finally:
        await kube.close()


class TestKubeClaimSource:
    async def test_get_claim(self, apiserver: FakeApiServer, client: lightkube.AsyncClient) -> None:
        """The claim comes back as JSON data with its UID and allocation."""
        apiserver.add_claim(
            "ns1", "c1", uid=UID, allocation={"devices": {"results": [result("i915-card0")]}}
        )
        claim = await KubeClaimSource(client).get_claim("ns1", "c1")
        assert claim["metadata"]["uid"] == UID
        assert claim["status"]["allocation"]["devices"]["results"] == [result("i915-card0")]

    async def test_missing_claim(
        self, apiserver: FakeApiServer, client: lightkube.AsyncClient
    ) -> None:
        """A 404 is ClaimNotFoundError naming the claim."""
        with pytest.raises(ClaimNotFoundError, match="ResourceClaim ns1/gone does not exist"):
            await KubeClaimSource(client).get_claim("ns1", "gone")

    async def test_server_error_raised(
        self, apiserver: FakeApiServer, client: lightkube.AsyncClient
    ) -> None:
        """Other failures are raised as the client raised them."""
        apiserver.add_claim("ns1", "c1", uid=UID)
        apiserver.fail_next("GET", "resourceclaims", 500, "InternalError", "etcd is sad")
        with pytest.raises(lightkube.ApiError, match="etcd is sad"):
            await KubeClaimSource(client).get_claim("ns1", "c1")


class TestDriverWithApiServer:
    async def test_prepare_through_api_server(
        self,
        apiserver: FakeApiServer,
        client: lightkube.AsyncClient,
        drivers: DriverRunner,
        dirs: Dirs,
    ) -> None:
        """Claims created in the API server prepare; a replaced one fails alone."""
        drivers.claims = KubeClaimSource(client)
        await drivers.start()
        apiserver.add_claim(
            "ns1", "c1", uid=UID, allocation={"devices": {"results": [result("i915-card0")]}}
        )
        apiserver.add_claim(
            "ns1", "c2", uid="new-uid", allocation={"devices": {"results": [result("i915-card1")]}}
        )
        async with FakeDraKubelet(dirs.registry) as kubelet:
            await kubelet.wait_for_driver(DRIVER)
            results = await kubelet.prepare(
                DRIVER, [("ns1", "c1", UID), ("ns1", "c2", "old-uid"), ("ns1", "c3", "x")]
            )
            assert results[UID].error == ""
            assert [(d.pool, d.device) for d in results[UID].devices] == [(NODE, "i915-card0")]
            assert "got replaced" in results["old-uid"].error
            assert "does not exist" in results["x"].error

            apiserver.begin_outage()
            again = await kubelet.prepare(DRIVER, [("ns1", "c1", UID)])
            assert again[UID] == results[UID]  # a repeat needs no API server
            assert await kubelet.unprepare(DRIVER, [("ns1", "c1", UID)]) == {UID: ""}
