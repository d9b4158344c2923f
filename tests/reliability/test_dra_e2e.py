"""``run --dra`` end to end, in-process: kubelet restarts and API-server outages.

The host is started as ``run_host`` starts it (the same wiring as ``devplugin-host run
--dra``), against the fake API server (real HTTP) and the fake DRA kubelet (real gRPC
on Unix sockets). After each disruption: no prepared claim lost, no ResourceSlice
duplicated (see :mod:`tests.reliability.dra_checks`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from host.dra import PublisherStatus, ResourceSlicePublisher
from host.testing import ClaimMaker, FakeApiServer, FakeDraKubelet, OutageMode, RunHost
from tests.reliability.dra_checks import (
    DRIVER,
    PoolHistory,
    ScriptedPlugin,
    ScriptedScanner,
    assert_claims_kept,
    gpu_tree,
)

pytest_plugins = ["host.testing"]
pytestmark = pytest.mark.asyncio

I915 = f"{DRIVER}/i915"


def unhealthy_taint(history: PoolHistory, device: str) -> bool:
    return any(t["key"] == f"{DRIVER}/unhealthy" for t in history.devices().get(device, ()))


class TestKubeletRestart:
    async def test_reregisters_republishes_and_keeps_claims(
        self,
        run_host: RunHost,
        apiserver: FakeApiServer,
        dra_kubelet: FakeDraKubelet,
        dra_claim: ClaimMaker,
    ) -> None:
        """kubelet restarts as it does (sockets kept, the node's slices wiped at its start):
        the driver registers again, its slices are back at once (not at the next 30 s
        re-list), and the claims prepared before are re-prepared identically, then
        unprepared."""
        scanner = ScriptedScanner(gpu_tree("card0", "card1", "card2"))
        host = await run_host(plugins={"gpu": ScriptedPlugin(scanner)}, dra=["gpu"])
        claims = [await dra_claim(I915), await dra_claim(I915)]
        history = PoolHistory(apiserver)
        before = time.monotonic()

        await dra_kubelet.stop()
        await dra_kubelet.start()
        assert dra_kubelet.wiped == 1
        assert history.states[-1] == []  # the wipe

        await dra_kubelet.wait_for_driver(DRIVER, after=before)
        await apiserver.wait_for(lambda: len(history.devices()) == 3, what="slices back")
        await assert_claims_kept(apiserver, dra_kubelet, claims)
        history.assert_clean()
        assert host.dra_plugins[DRIVER].not_ready_reason is None

    async def test_registry_emptied_while_kubelet_is_down(
        self,
        run_host: RunHost,
        apiserver: FakeApiServer,
        dra_kubelet: FakeDraKubelet,
        dra_claim: ClaimMaker,
    ) -> None:
        """The registry directory emptied while kubelet is down (kubelet itself leaves
        plugins_registry alone, but a re-provisioned /var/lib/kubelet does not): the
        driver puts its registration socket back and registers; the claims are kept."""
        scanner = ScriptedScanner(gpu_tree("card0", "card1"))
        await run_host(plugins={"gpu": ScriptedPlugin(scanner)}, dra=["gpu"])
        claims = [await dra_claim(I915)]
        history = PoolHistory(apiserver)
        before = time.monotonic()

        await dra_kubelet.stop()
        for socket in dra_kubelet.registry_dir.glob("*.sock"):
            socket.unlink()
        await dra_kubelet.start()

        await dra_kubelet.wait_for_driver(DRIVER, after=before, timeout=15)
        await apiserver.wait_for(lambda: len(history.devices()) == 2, what="slices back")
        await assert_claims_kept(apiserver, dra_kubelet, claims)
        history.assert_clean()


class TestApiServerOutage:
    @pytest.mark.parametrize("mode", ["unavailable", "refuse"])
    async def test_newest_state_published_after_the_outage(
        self,
        run_host: RunHost,
        apiserver: FakeApiServer,
        dra_kubelet: FakeDraKubelet,
        dra_claim: ClaimMaker,
        mode: OutageMode,
    ) -> None:
        """An outage (503s, or connections refused) while card1 turns Unhealthy and card3
        arrives: the publisher retries with backoff, then writes only the newest state;
        prepared claims are answered meanwhile, new ones fail alone.

        The outage ends once the host has demonstrably retried (two failed attempts),
        not after 10 s: a longer outage runs the same code, with more failed attempts
        and backoff up to 30 s between them (the benchmark's figure is for 10 s)."""
        scanner = ScriptedScanner(gpu_tree("card0", "card1", "card2"))
        host = await run_host(plugins={"gpu": ScriptedPlugin(scanner)}, dra=["gpu"])
        publisher = host.dra_plugins[DRIVER].publisher
        claims = [await dra_claim(I915)]
        history = PoolHistory(apiserver)
        writes_before = len(history.states)

        apiserver.begin_outage(mode)
        scanner.publish(gpu_tree("card0", "card1", "card2", unhealthy=["card1"]))
        scanner.publish(gpu_tree("card0", "card1", "card2", "card3", unhealthy=["card1"]))
        status = await until_status(publisher, lambda s: s.failures >= 2)
        assert status.last_error
        assert not status.synced
        assert len(history.states) == writes_before  # nothing got through
        if mode == "unavailable":
            assert sum(r.code == 503 for r in apiserver.requests) >= 2
        # A prepared claim needs no API server; a new one fails alone, saying why.
        await assert_claims_kept(apiserver, dra_kubelet, claims, unprepare=False)
        new = apiserver.add_claim("default", "during-outage")
        ref = ("default", "during-outage", new["metadata"]["uid"])
        outcome = (await dra_kubelet.prepare(DRIVER, [ref]))[ref[2]]
        assert "cannot read claim default/during-outage from the API server" in outcome.error

        await apiserver.end_outage()
        await apiserver.wait_for(
            lambda: "card3" in str(history.devices()) and len(history.devices()) == 4,
            what="the newest state",
        )
        await until_status(publisher, lambda s: s.synced and s.failures == 0)
        assert unhealthy_taint(history, "i915-card1")
        assert not unhealthy_taint(history, "i915-card0")
        # Only the newest snapshot was written: never card1 tainted without card3.
        for state in history.states[writes_before:]:
            names = {d["name"] for item in state for d in item["spec"]["devices"]}
            assert "i915-card3" in names
        history.assert_clean()
        await assert_claims_kept(apiserver, dra_kubelet, claims)
        assert host.dra_plugins[DRIVER].not_ready_reason is None

    async def test_hung_requests_cut_when_it_answers_again(
        self,
        run_host: RunHost,
        apiserver: FakeApiServer,
        dra_kubelet: FakeDraKubelet,
        dra_claim: ClaimMaker,
    ) -> None:
        """The API server stops answering (requests read, never answered) while card0
        turns Unhealthy and card2 arrives: when it answers again (the hung connections
        cut), the publisher retries and writes the newest state, once."""
        scanner = ScriptedScanner(gpu_tree("card0", "card1"))
        host = await run_host(plugins={"gpu": ScriptedPlugin(scanner)}, dra=["gpu"])
        publisher = host.dra_plugins[DRIVER].publisher
        claims = [await dra_claim(I915)]
        history = PoolHistory(apiserver)
        writes_before, seen = len(history.states), len(apiserver.requests)

        apiserver.begin_outage("hang")
        scanner.publish(gpu_tree("card0", "card1", "card2", unhealthy=["card0"]))
        await apiserver.wait_for(
            lambda: any(r.code is None for r in apiserver.requests[seen:]), what="a request hung"
        )
        await apiserver.end_outage()

        await apiserver.wait_for(lambda: len(history.devices()) == 3, what="the newest state")
        status = await until_status(publisher, lambda s: s.synced and s.failures == 0)
        assert status.errors_total >= 1  # the cut request failed, and was retried
        assert unhealthy_taint(history, "i915-card0")
        assert len(history.states) == writes_before + 1  # one write: the newest state
        history.assert_clean()
        await assert_claims_kept(apiserver, dra_kubelet, claims)


async def until_status(
    publisher: ResourceSlicePublisher,
    predicate: Callable[[PublisherStatus], bool],
    timeout: float = 15.0,  # noqa: ASYNC109 - a bound per wait reads best
) -> PublisherStatus:
    """Wait until the publisher's status satisfies ``predicate`` (checked after each attempt)."""
    try:
        async with asyncio.timeout(timeout):
            return await publisher.wait_status(predicate)
    except TimeoutError:
        raise AssertionError(f"publisher status after {timeout:g} s: {publisher.status}") from None
