"""The host's /metrics, /healthz, /readyz and /status, scraped from a host run in-process."""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import logging
import threading
from collections.abc import Iterator

import grpc
import pytest

from host._host import JsonFormatter
from host.testing import FakeKubelet, HostHandle, KubeletError, RunHost
from tests.observe.helpers import (
    HEALTHY,
    RESOURCE,
    UNHEALTHY,
    BrokenPlugin,
    ControlledPlugin,
    ControlledScanner,
    PreferringScanner,
    ThreadScanner,
    families,
    samples,
    value,
)

pytest_plugins = ["host.testing"]
pytestmark = pytest.mark.asyncio

LOCAL = "127.0.0.1:0"
OBS = {"plugin": "obs", "resource": RESOURCE}


async def start(
    run_host: RunHost, kubelet: FakeKubelet, *states: str
) -> tuple[HostHandle, ControlledScanner]:
    scanner = ControlledScanner(*states)
    host = await run_host(plugins={"obs": ControlledPlugin(scanner)}, metrics_address=LOCAL)
    await kubelet.wait_for_resource(RESOURCE, count=len(scanner.states))
    await kubelet.wait_for(lambda: host.resources[RESOURCE].ready, what="the stream open")
    return host, scanner


async def scrape(host: HostHandle) -> str:
    reply = await host.http_get("/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    return reply.text


class TestMetrics:
    async def test_names_follow_prometheus_conventions(
        self, kubelet: FakeKubelet, run_host: RunHost
    ) -> None:
        """Every family has the devplugin_ prefix and help; counters end in _total on the wire."""
        host, _ = await start(run_host, kubelet)
        text = await scrape(host)
        found = families(text)
        assert not [name for name in found if name.endswith("_created")]
        ours = set(found)
        assert {
            "devplugin_devices",
            "devplugin_rpc_handled",
            "devplugin_rpc_duration_seconds",
            "devplugin_listandwatch_streams",
            "devplugin_listandwatch_snapshots",
            "devplugin_last_snapshot_bytes",
            "devplugin_registrations",
            "devplugin_reregistrations",
            "devplugin_kubelet_restarts",
            "devplugin_scanner_restarts",
            "devplugin_plugin_load_failures",
            "devplugin_event_loop_lag_seconds",
            "devplugin_loop_stalls",
            "devplugin_loop_stall_seconds",
            "devplugin_resource_registered",
            "devplugin_resource_ready",
            "devplugin_ready",
            "devplugin_plugin_info",
            "devplugin_build_info",
        } <= ours
        for name in ours:
            assert name.startswith("devplugin_"), name
            assert found[name].documentation, name
            if found[name].type == "counter":
                assert all(s.name.endswith("_total") for s in found[name].samples)

    async def test_devices_follow_the_scanner(
        self, kubelet: FakeKubelet, run_host: RunHost
    ) -> None:
        """Devices by health, snapshots and the last snapshot size move with each report."""
        host, scanner = await start(run_host, kubelet)
        text = await scrape(host)
        assert value(text, "devplugin_devices", **OBS, health=HEALTHY) == 2
        assert value(text, "devplugin_devices", **OBS, health=UNHEALTHY) == 0
        assert value(text, "devplugin_listandwatch_streams", **OBS) == 1
        sent = value(text, "devplugin_listandwatch_snapshots_total", **OBS)
        assert sent is not None
        assert sent >= 1
        size = value(text, "devplugin_last_snapshot_bytes", **OBS)
        assert size is not None
        assert size > 0

        scanner.report(HEALTHY, UNHEALTHY, HEALTHY)
        await kubelet.wait_for_resource(RESOURCE, count=3, healthy=2)
        text = await scrape(host)
        assert value(text, "devplugin_devices", **OBS, health=HEALTHY) == 2
        assert value(text, "devplugin_devices", **OBS, health=UNHEALTHY) == 1
        assert value(text, "devplugin_listandwatch_snapshots_total", **OBS) == sent + 1
        bigger = value(text, "devplugin_last_snapshot_bytes", **OBS)
        assert bigger is not None
        assert bigger > size

    async def test_allocate_calls_by_code_with_latency(
        self, kubelet: FakeKubelet, run_host: RunHost
    ) -> None:
        """Each Allocate is counted under its gRPC code and timed in the histogram."""
        host, _ = await start(run_host, kubelet, HEALTHY, UNHEALTHY)
        await kubelet.allocate(RESOURCE, ["d0"])
        await kubelet.allocate(RESOURCE, ["d0"])
        for bad, code in (
            (["nope"], grpc.StatusCode.NOT_FOUND),
            (["d1"], grpc.StatusCode.FAILED_PRECONDITION),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await kubelet.allocate(RESOURCE, bad)
            assert err.value.code() == code
        allocate = {**OBS, "method": "Allocate"}
        # A call is counted as its handler returns, a moment after the client has the
        # status: scrape until the last one is in (each scrape yields to the server).
        text = await scrape(host)
        async with asyncio.timeout(10):
            while value(text, "devplugin_rpc_duration_seconds_count", **allocate) != 4:
                text = await scrape(host)
        assert value(text, "devplugin_rpc_handled_total", **allocate, code="OK") == 2
        assert value(text, "devplugin_rpc_handled_total", **allocate, code="NOT_FOUND") == 1
        assert (
            value(text, "devplugin_rpc_handled_total", **allocate, code="FAILED_PRECONDITION") == 1
        )
        assert value(text, "devplugin_rpc_duration_seconds_count", **allocate) == 4
        total = value(text, "devplugin_rpc_duration_seconds_sum", **allocate)
        assert total is not None
        assert total > 0
        assert value(text, "devplugin_rpc_duration_seconds_bucket", **allocate, le="+Inf") == 4

    async def test_preferred_allocation_and_pre_start(
        self, kubelet: FakeKubelet, run_host: RunHost
    ) -> None:
        """GetPreferredAllocation and PreStartContainer are counted by code and timed."""
        scanner = PreferringScanner(HEALTHY, HEALTHY)
        host = await run_host(plugins={"obs": ControlledPlugin(scanner)}, metrics_address=LOCAL)
        await kubelet.wait_for_resource(RESOURCE, count=2)
        first = await kubelet.allocate_like_kubelet(RESOURCE, 1)
        await kubelet.start_container(first)
        second = await kubelet.allocate_like_kubelet(RESOURCE, 1)
        with pytest.raises(KubeletError):
            await kubelet.start_container(second)
        preferred = {**OBS, "method": "GetPreferredAllocation"}
        pre_start = {**OBS, "method": "PreStartContainer"}
        text = await scrape(host)
        async with asyncio.timeout(10):  # the failed call is counted as its handler returns
            while value(text, "devplugin_rpc_duration_seconds_count", **pre_start) != 2:
                text = await scrape(host)
        assert value(text, "devplugin_rpc_handled_total", **preferred, code="OK") == 2
        assert value(text, "devplugin_rpc_duration_seconds_count", **preferred) == 2
        assert value(text, "devplugin_rpc_handled_total", **pre_start, code="OK") == 1
        assert value(text, "devplugin_rpc_handled_total", **pre_start, code="INTERNAL") == 1
        assert value(text, "devplugin_rpc_duration_seconds_count", **pre_start) == 2

    async def test_kubelet_restart_counts_reregistration(
        self, kubelet: FakeKubelet, run_host: RunHost
    ) -> None:
        """A kubelet restart is seen once; registrations count what kubelet accepted."""
        host, _ = await start(run_host, kubelet)
        text = await scrape(host)
        assert value(text, "devplugin_registrations_total", **OBS) == 1
        assert value(text, "devplugin_reregistrations_total", **OBS) is None
        assert value(text, "devplugin_kubelet_restarts_total") == 0
        await kubelet.restart()
        await kubelet.wait_for_registrations(2, RESOURCE)
        await kubelet.wait_for(lambda: host.resources[RESOURCE].ready, what="the new stream")
        assert host.metrics is not None
        metrics = host.metrics

        def accepted() -> int:
            return len([r for r in kubelet.registrations if r.request.resource_name == RESOURCE])

        def counted() -> bool:
            text = metrics.render().decode()
            return value(text, "devplugin_registrations_total", **OBS) == accepted()

        # Each Register kubelet accepted is counted once, when it returns to the host.
        await kubelet.wait_for(counted, what="the registrations counted")
        text = await scrape(host)
        assert value(text, "devplugin_reregistrations_total", **OBS) == accepted() - 1
        assert value(text, "devplugin_kubelet_restarts_total") == 1
        assert value(text, "devplugin_listandwatch_streams", **OBS) == 1

    async def test_scanner_restart_is_counted(
        self, kubelet: FakeKubelet, run_host: RunHost
    ) -> None:
        """A scanner that raises is counted; its devices go Unhealthy in metrics and status."""
        host, scanner = await start(run_host, kubelet)
        scanner.crash()
        await kubelet.wait_for_resource(RESOURCE, count=2, healthy=0)
        text = await scrape(host)
        restarts = {"plugin": "obs", "namespace": "obs.example.com"}
        assert value(text, "devplugin_scanner_restarts_total", **restarts) == 1
        assert value(text, "devplugin_devices", **OBS, health=UNHEALTHY) == 2
        status = (await host.http_get("/status")).json()
        healths = {d["health"] for d in status["resources"][RESOURCE]["devices"]}
        assert healths == {UNHEALTHY}

    async def test_loop_lag_and_stalls(self, kubelet: FakeKubelet, run_host: RunHost) -> None:
        """The lag probe ticks on the loop; loop_stalled may be called from another thread."""
        host, _ = await start(run_host, kubelet)
        assert host.metrics is not None
        metrics = host.metrics

        def ticked() -> bool:
            count = value(metrics.render().decode(), "devplugin_event_loop_lag_seconds_count")
            return bool(count)

        await kubelet.wait_for(ticked, timeout=10, what="a tick of the lag probe")
        watchdog = threading.Thread(target=metrics.loop_stalled, args=("obs", 0.75))
        watchdog.start()
        watchdog.join()
        text = await scrape(host)
        assert value(text, "devplugin_loop_stalls_total", plugin="obs") == 1
        assert value(text, "devplugin_loop_stall_seconds_total", plugin="obs") == 0.75

    async def test_two_hosts_keep_separate_registries(
        self, kubelet: FakeKubelet, run_host: RunHost
    ) -> None:
        """Each host has its own registry: one host's calls never show in the other's page."""
        host, _ = await start(run_host, kubelet)
        other_scanner = ControlledScanner(HEALTHY)
        other = await run_host(
            plugins={"other": ControlledPlugin(other_scanner, "other.example.com")},
            metrics_address=LOCAL,
        )
        await kubelet.wait_for_resource("other.example.com/dev", count=1)
        assert other.metrics is not host.metrics
        assert other.metrics_address != host.metrics_address
        await kubelet.allocate(RESOURCE, ["d0"])
        ours = samples(await scrape(host))
        theirs = samples(await scrape(other))
        assert any(name == "devplugin_rpc_handled_total" for name, _ in ours)
        assert not any(name == "devplugin_rpc_handled_total" for name, _ in theirs)
        assert not any(("resource", RESOURCE) in labels for _, labels in theirs)


class TestProbes:
    async def test_healthz_answers_from_the_loop(
        self, kubelet: FakeKubelet, run_host: RunHost
    ) -> None:
        """/healthz is 200 whenever the loop answers at all; HEAD has no body."""
        host, _ = await start(run_host, kubelet)
        reply = await host.http_get("/healthz")
        assert (reply.status, reply.text) == (200, "ok\n")
        head = await host.http_get("/healthz", method="HEAD")
        assert (head.status, head.body, head.headers["content-length"]) == (200, b"", "3")

    async def test_healthz_does_not_answer_while_the_loop_is_stuck(
        self, kubelet: FakeKubelet, run_host: RunHost
    ) -> None:
        """A blocked loop leaves /healthz unanswered (the probe times out); then it answers."""
        host, _ = await start(run_host, kubelet)
        assert host.metrics_address is not None
        address = host.metrics_address.rpartition(":")
        outcomes: list[str] = []
        asked = threading.Event()

        def probe(timeout: float) -> str:
            connection = http.client.HTTPConnection(address[0], int(address[2]), timeout=timeout)
            try:
                connection.request("GET", "/healthz")
                return str(connection.getresponse().status)
            except TimeoutError:
                return "timed out"
            finally:
                connection.close()

        def prober() -> None:
            outcomes.append(probe(0.3))  # while the loop is blocked below
            asked.set()

        thread = threading.Thread(target=prober)
        thread.start()
        asked.wait(30)  # blocks the event loop until the probe has given up
        thread.join()
        assert outcomes == ["timed out"]
        assert (await host.http_get("/healthz")).status == 200

    async def test_readyz_follows_kubelet(self, kubelet: FakeKubelet, run_host: RunHost) -> None:
        """/readyz: 200 while registered and streamed, 503 naming the resource without kubelet."""
        host, _ = await start(run_host, kubelet)
        reply = await host.http_get("/readyz")
        assert (reply.status, reply.json()) == (200, {"ready": True, "not_ready": []})
        assert value(await scrape(host), "devplugin_ready") == 1

        await kubelet.stop()
        await kubelet.wait_for(lambda: not host.resources[RESOURCE].ready, what="not ready")
        reply = await host.http_get("/readyz")
        assert reply.status == 503
        [problem] = reply.json()["not_ready"]
        assert (problem["plugin"], problem["resource"]) == ("obs", RESOURCE)
        assert problem["reason"]
        text = await scrape(host)
        assert value(text, "devplugin_ready") == 0
        assert value(text, "devplugin_resource_ready", **OBS) == 0
        assert value(text, "devplugin_resource_registered", **OBS) == 0

        await kubelet.start()
        await kubelet.wait_for(lambda: host.resources[RESOURCE].ready, timeout=15, what="ready")
        reply = await host.http_get("/readyz")
        assert reply.status == 200
        assert value(await scrape(host), "devplugin_ready") == 1

    async def test_readyz_waiting_reason_names_the_kubelet_socket(
        self, kubelet: FakeKubelet, run_host: RunHost
    ) -> None:
        """Kubelet absent: the reason is the endpoint's own words (its socket path)."""
        host, _ = await start(run_host, kubelet)
        await kubelet.stop()
        await kubelet.wait_for(
            lambda: host.resources[RESOURCE].problem is not None, timeout=10, what="a problem"
        )
        [problem] = (await host.http_get("/readyz")).json()["not_ready"]
        assert "kubelet" in problem["reason"]

    async def test_failed_plugin_is_not_ready(
        self, kubelet: FakeKubelet, run_host: RunHost
    ) -> None:
        """An enabled plugin that failed to load keeps the host not ready, with its error."""
        scanner = ControlledScanner()
        host = await run_host(
            plugins={"obs": ControlledPlugin(scanner), "bad": BrokenPlugin()},
            metrics_address=LOCAL,
            check=False,
        )
        await kubelet.wait_for(
            lambda: host.resources.get(RESOURCE) is not None and host.resources[RESOURCE].ready,
            what="ready",
        )
        reply = await host.http_get("/readyz")
        assert reply.status == 503
        assert reply.json()["not_ready"] == [
            {
                "plugin": "bad",
                "reason": "failed to load: devplugin_scanners raised RuntimeError: "
                "no hardware support library",
            }
        ]
        text = await scrape(host)
        assert value(text, "devplugin_plugin_load_failures_total", plugin="bad") == 1
        assert value(text, "devplugin_plugin_load_failures_total", plugin="obs") == 0


class TestStatus:
    async def test_status_shows_plugins_and_devices(
        self, kubelet: FakeKubelet, run_host: RunHost
    ) -> None:
        """/status: plugins with state and error, resources with socket, registration, devices."""
        scanner = ControlledScanner(HEALTHY, UNHEALTHY)
        host = await run_host(
            plugins={"obs": ControlledPlugin(scanner), "bad": BrokenPlugin()},
            metrics_address=LOCAL,
            check=False,
        )
        await kubelet.wait_for_resource(RESOURCE, count=2, healthy=1)
        await kubelet.wait_for(lambda: host.resources[RESOURCE].ready, what="ready")
        status = (await host.http_get("/status")).json()
        plugins = {p["name"]: p for p in status["plugins"]}
        assert plugins["obs"]["state"] == "serving"
        assert plugins["bad"]["state"] == "failed"
        assert "no hardware support library" in plugins["bad"]["error"]
        assert status["ready"] is False
        resource = status["resources"][RESOURCE]
        assert resource["plugin"] == "obs"
        assert resource["socket"] == str(host.resources[RESOURCE].socket_path)
        assert (resource["capacity"], resource["allocatable"], resource["registrations"]) == (
            2,
            1,
            1,
        )
        assert resource["registered"] is True
        assert resource["registered_since"]
        assert [(d["id"], d["health"], d["numa"]) for d in resource["devices"]] == [
            ("d0", HEALTHY, []),
            ("d1", UNHEALTHY, []),
        ]


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


class TestJsonLogs:
    async def test_lines_name_plugin_and_resource(
        self, kubelet: FakeKubelet, run_host: RunHost, json_log: io.StringIO
    ) -> None:
        """Endpoint, service and scanner log lines carry the plugin and the resource."""
        host, scanner = await start(run_host, kubelet, HEALTHY, UNHEALTHY)
        with pytest.raises(grpc.aio.AioRpcError):
            await kubelet.allocate(RESOURCE, ["d1"])
        scanner.crash()
        await kubelet.wait_for_resource(RESOURCE, healthy=0)
        lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
        registered = [e for e in lines if "registered with kubelet" in e["message"]]
        assert registered
        assert all(e.get("plugin") == "obs" and e.get("resource") == RESOURCE for e in registered)
        crashed = [e for e in lines if "scanner failed" in e["message"]]
        assert crashed
        assert crashed[0]["plugin"] == "obs"
        assert host.running


class TestJsonLogsFromThreads:
    async def test_thread_scanner_lines_name_the_plugin(
        self, kubelet: FakeKubelet, run_host: RunHost, json_log: io.StringIO
    ) -> None:
        """A tree notified from a scanner's own thread is applied with the plugin's fields."""
        await run_host(plugins={"obs": ControlledPlugin(ThreadScanner())})
        await kubelet.wait_for_resource(RESOURCE, count=1)
        lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
        serving = [
            e for e in lines if e["message"].endswith("serving obs.example.com/dev (1 devices)")
        ]
        assert serving
        assert serving[0].get("plugin") == "obs"


class TestStatusLimits:
    async def test_devices_shown_and_counted(self, kubelet: FakeKubelet, run_host: RunHost) -> None:
        """?devices=N lists the first N by ID and counts the rest; ?devices=all lists all."""
        states = [HEALTHY] * 11 + [UNHEALTHY]
        host, _ = await start(run_host, kubelet, *states)
        short = (await host.http_get("/status?devices=3")).json()["resources"][RESOURCE]
        assert [d["id"] for d in short["devices"]] == ["d0", "d1", "d2"]
        assert short["more_devices"] == 9
        full = (await host.http_get("/status?devices=all")).json()["resources"][RESOURCE]
        assert [d["id"] for d in full["devices"]] == [f"d{i}" for i in range(12)]
        assert "more_devices" not in full
        assert (await host.http_get("/status?devices=lots")).status == 400

    async def test_text_counts_the_devices_not_fetched(
        self, kubelet: FakeKubelet, run_host: RunHost
    ) -> None:
        """The text view fetches 10 devices and still sums up the others' health."""
        from host._status_client import status_text

        states = [HEALTHY] * 11 + [UNHEALTHY]
        host, _ = await start(run_host, kubelet, *states)
        document = (await host.http_get("/status?devices=10")).json()
        text = status_text(document)
        assert "    ... 2 more (1 Healthy)" in text.splitlines()
