"""``run --dra`` end to end, in-process: kubelet restarts and API-server outages.

The host is started as ``run_host`` starts it (the same wiring as ``devplugin-host run
--dra``), against the fake API server (real HTTP) and the fake DRA kubelet (real gRPC
on Unix sockets). After each disruption: no prepared claim lost, no ResourceSlice
duplicated (see :mod:`tests.reliability.dra_checks`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

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


async def restart_kubelet(kubelet: FakeDraKubelet, history: PoolHistory) -> None:
    """kubelet restarts as it does: sockets kept, the node's slices wiped at its start."""
    await kubelet.stop()
    await kubelet.start()
    assert kubelet.wiped == 1
    assert history.states[-1] == []  # the wipe


async def restart_with_the_registry_emptied(kubelet: FakeDraKubelet, history: PoolHistory) -> None:
    """The registry directory emptied while kubelet is down (kubelet itself leaves
    plugins_registry alone, but a re-provisioned /var/lib/kubelet does not)."""
    await kubelet.stop()
    for socket in kubelet.registry_dir.glob("*.sock"):
        socket.unlink()
    await kubelet.start()


class TestKubeletRestart:
    @pytest.mark.parametrize(
        "disrupt",
        [restart_kubelet, restart_with_the_registry_emptied],
        ids=["restart", "registry-emptied"],
    )
    async def test_reregisters_republishes_and_keeps_claims(
        self,
        run_host: RunHost,
        apiserver: FakeApiServer,
        dra_kubelet: FakeDraKubelet,
        dra_claim: ClaimMaker,
        disrupt: Callable[[FakeDraKubelet, PoolHistory], Awaitable[None]],
    ) -> None:
        """After a kubelet restart (or one that finds the registry emptied) the driver
        registers again (putting its registration socket back), its slices are back at
        once (not at the next 30 s re-list), and the claims prepared before are
        re-prepared identically, then unprepared; the driver is ready."""
        scanner = ScriptedScanner(gpu_tree("card0", "card1", "card2"))
        host = await run_host(plugins={"gpu": ScriptedPlugin(scanner)}, dra=["gpu"])
        claims = [await dra_claim(I915), await dra_claim(I915)]
        history = PoolHistory(apiserver)
        before = time.monotonic()

        await disrupt(dra_kubelet, history)

        await dra_kubelet.wait_for_driver(DRIVER, after=before, timeout=15)
        await apiserver.wait_for(lambda: len(history.devices()) == 3, what="slices back")
        await assert_claims_kept(apiserver, dra_kubelet, claims)
        history.assert_clean()
        assert host.dra_plugins[DRIVER].not_ready_reason is None


class TestApiServerOutage:
    @pytest.mark.parametrize("mode", ["unavailable", "refuse", "hang"])
    async def test_newest_state_published_after_the_outage(
        self,
        run_host: RunHost,
        apiserver: FakeApiServer,
        dra_kubelet: FakeDraKubelet,
        dra_claim: ClaimMaker,
        mode: OutageMode,
    ) -> None:
        """An outage (503s, connections refused, or requests read and never answered)
        while card1 turns Unhealthy and card3 arrives: the publisher retries with backoff
        (a hung request once its connection is cut), then writes only the newest state,
        once; prepared claims are answered meanwhile, new ones fail alone.

        The outage ends once the host has demonstrably retried (two failed attempts; a
        hung request), not after 10 s: a longer outage runs the same code, with more
        failed attempts and backoff up to 30 s between them (the benchmark's figure is
        for 10 s)."""
        scanner = ScriptedScanner(gpu_tree("card0", "card1", "card2"))
        host = await run_host(plugins={"gpu": ScriptedPlugin(scanner)}, dra=["gpu"])
        publisher = host.dra_plugins[DRIVER].publisher
        claims = [await dra_claim(I915)]
        history = PoolHistory(apiserver)
        writes_before, seen = len(history.states), len(apiserver.requests)

        apiserver.begin_outage(mode)
        scanner.publish(gpu_tree("card0", "card1", "card2", unhealthy=["card1"]))
        scanner.publish(gpu_tree("card0", "card1", "card2", "card3", unhealthy=["card1"]))
        if mode == "hang":
            await apiserver.wait_for(
                lambda: any(r.code is None for r in apiserver.requests[seen:]),
                what="a request hung",
            )
        else:
            status = await until_status(publisher, lambda s: s.failures >= 2)
            assert status.last_error
        assert not publisher.status.synced
        assert len(history.states) == writes_before  # nothing got through
        if mode == "unavailable":
            assert sum(r.code == 503 for r in apiserver.requests) >= 2
        # A prepared claim needs no API server; a new one fails alone, saying why (a hung
        # request would only fail at kubelet's timeout).
        await assert_claims_kept(apiserver, dra_kubelet, claims, unprepare=False)
        if mode != "hang":
            new = apiserver.add_claim("default", "during-outage")
            ref = ("default", "during-outage", new["metadata"]["uid"])
            outcome = (await dra_kubelet.prepare(DRIVER, [ref]))[ref[2]]
            assert "cannot read claim default/during-outage from the API server" in outcome.error

        await apiserver.end_outage()
        await apiserver.wait_for(
            lambda: "card3" in str(history.devices()) and len(history.devices()) == 4,
            what="the newest state",
        )
        status = await until_status(publisher, lambda s: s.synced and s.failures == 0)
        assert status.errors_total >= 1  # the failed (or cut) attempt, retried
        assert unhealthy_taint(history, "i915-card1")
        assert not unhealthy_taint(history, "i915-card0")
        # Only the newest snapshot was written, once: never card1 tainted without card3.
        assert len(history.states) == writes_before + 1
        for state in history.states[writes_before:]:
            names = {d["name"] for item in state for d in item["spec"]["devices"]}
            assert "i915-card3" in names
        history.assert_clean()
        await assert_claims_kept(apiserver, dra_kubelet, claims)
        assert host.dra_plugins[DRIVER].not_ready_reason is None


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
