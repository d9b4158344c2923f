"""Kubelet restarts, absence, scanner crashes: the manager keeps every resource registered."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import grpc
import pytest

from host._api import api_pb2
from host.deviceplugin import UNHEALTHY, _endpoint
from host.testing import FakeKubelet
from tests.scanners import QueueScanner

from .conftest import ServeFn
from .helpers import info, registration_server, tree_of

pytestmark = pytest.mark.asyncio


class TestKubeletRestart:
    async def test_hundred_restarts_in_a_row(
        self, kubelet: FakeKubelet, serve: ServeFn, short_dir: Path
    ) -> None:
        """After each of 100 restarts, every resource registers again, exactly once."""
        await serve("ex.com", QueueScanner(tree_of({"a": {"a0": info()}, "b": {"b0": info()}})))
        await kubelet.wait_for_resource("ex.com/a", count=1, healthy=1)
        await kubelet.wait_for_resource("ex.com/b", count=1, healthy=1)
        for round_ in range(1, 101):
            await kubelet.restart()
            await kubelet.wait_for(
                lambda round_=round_: all(  # type: ignore[misc]
                    kubelet.resources[r].registrations == round_ + 1
                    and kubelet.resources[r].allocatable == 1
                    for r in ("ex.com/a", "ex.com/b")
                ),
                timeout=5,
            )
        assert {p.name for p in short_dir.iterdir() if p.is_socket()} == {
            "kubelet.sock",
            "ex.com-a.sock",
            "ex.com-b.sock",
        }

    async def test_kubelet_started_after_the_manager(self, short_dir: Path, serve: ServeFn) -> None:
        """A manager started 5 s before kubelet registers as soon as kubelet appears."""
        await serve("ex.com", QueueScanner(tree_of({"a": {"a0": info()}})))
        await asyncio.sleep(5)  # the scenario: kubelet absent for 5 s
        kubelet = FakeKubelet(short_dir)
        await kubelet.start()
        try:
            await kubelet.wait_for_resource("ex.com/a", count=1, timeout=5)
        finally:
            await kubelet.stop()

    async def test_kubelet_gone_and_back(self, kubelet: FakeKubelet, serve: ServeFn) -> None:
        """Kubelet dying closes the stream (readiness drops); its return brings registration."""
        manager = await serve("ex.com", QueueScanner(tree_of({"a": {"a0": info()}})))
        await kubelet.wait_for_resource("ex.com/a", count=1)
        await kubelet.wait_for(lambda: manager.resources["ex.com/a"].ready)
        await kubelet.stop()
        await kubelet.wait_for(lambda: not manager.resources["ex.com/a"].ready)
        await kubelet.restart()
        await kubelet.wait_for(
            lambda: (
                kubelet.resources["ex.com/a"].registrations == 2
                and kubelet.resources["ex.com/a"].allocatable == 1
            )
        )
        await kubelet.wait_for(lambda: manager.resources["ex.com/a"].ready)


class TestScannerFailure:
    async def test_raising_scanner_marks_unhealthy_then_recovers(
        self,
        kubelet: FakeKubelet,
        serve: ServeFn,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A crash keeps capacity with allocatable 0; the restarted scan's notify heals it."""
        caplog.set_level(logging.ERROR)
        scanner = QueueScanner(tree_of({"a": {"a0": info(), "a1": info()}}))
        other = QueueScanner(tree_of({"b": {"b0": info()}}))
        await serve("ex.com", scanner)
        await serve("other.com", other)
        await kubelet.wait_for_resource("ex.com/a", count=2, healthy=2)
        await kubelet.wait_for_resource("other.com/b", count=1, healthy=1)
        scanner.trees.put_nowait(RuntimeError("scanner bug"))
        state = await kubelet.wait_for_resource("ex.com/a", count=2, healthy=0)
        assert state.capacity == 2
        assert "scanner bug" in caplog.text
        assert kubelet.resources["other.com/b"].allocatable == 1
        scanner.trees.put_nowait(tree_of({"a": {"a0": info(), "a1": info()}}))
        await kubelet.wait_for_resource("ex.com/a", count=2, healthy=2)

    async def test_returning_scanner_keeps_serving(
        self, kubelet: FakeKubelet, serve: ServeFn
    ) -> None:
        """A scanner that notifies once and returns keeps its devices served."""

        class Static:
            async def scan(self, notifier: Any) -> None:
                notifier.notify(tree_of({"s": {"s0": info(), "s1": info(state=UNHEALTHY)}}))

        await serve("ex.com", Static())
        state = await kubelet.wait_for_resource("ex.com/s", count=2)
        assert state.allocatable == 1
        assert (await kubelet.allocate("ex.com/s", ["s0"])).container_responses


@pytest.mark.asyncio
class TestSecondRegistrationSameSocket:
    async def test_refused_second_register_keeps_the_live_stream(
        self, serve: ServeFn, short_dir: Path
    ) -> None:
        """Kubelet 1.36 refuses a Register for a socket it still serves; the endpoint stays
        registered and ready on the stream it has, instead of retrying forever."""
        async with FakeKubelet(short_dir, mode="1.36") as kubelet:
            manager = await serve("ex.com", QueueScanner(tree_of({"a": {"d0": info()}})))
            await kubelet.wait_for_resource("ex.com/a", count=1, healthy=1)
            endpoint = manager._endpoints["a"]
            endpoint._need_register = True  # as after a spurious kubelet-restart signal
            endpoint._wake.set()
            await kubelet.wait_for(lambda: len(kubelet.rejected) > 0, what="the refusal")
            assert "already connected" in kubelet.rejected[-1].reason
            await kubelet.wait_for(lambda: manager.resources["ex.com/a"].ready)
            assert manager.resources["ex.com/a"].registered
            assert kubelet.resources["ex.com/a"].registrations == 1
            assert len(kubelet.rejected) == 1  # no retry loop


class TestRestartDuringRegister:
    async def test_a_registration_taken_by_the_stopped_kubelet_is_sent_again(
        self, serve: ServeFn, short_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The old kubelet took Register (dial back included) and stopped; the new one hears.

        The new ``kubelet.sock`` appears while the call is outstanding, and the answer
        comes after it; only the dial back's time tells the two kubelets apart. The
        stream check (STREAM_WAIT) is put out of reach: it must not be what recovers.
        """
        monkeypatch.setattr(_endpoint, "STREAM_WAIT", 600.0)
        arrived, proceed = asyncio.Event(), asyncio.Event()

        async def register(request: api_pb2.RegisterRequest, context: object) -> api_pb2.Empty:
            # As kubelet's Register: dial back, ask for the options; then stop short.
            target = f"unix:{short_dir / request.endpoint}"
            async with grpc.aio.insecure_channel(target) as channel:
                options = channel.unary_unary(
                    "/v1beta1.DevicePlugin/GetDevicePluginOptions",
                    request_serializer=api_pb2.Empty.SerializeToString,
                    response_deserializer=api_pb2.DevicePluginOptions.FromString,
                )
                await options(api_pb2.Empty(), timeout=5)
            arrived.set()
            await proceed.wait()
            return api_pb2.Empty()

        old = await registration_server(short_dir / "kubelet.sock", register)
        new = FakeKubelet(short_dir)
        try:
            await serve("ex.com", QueueScanner(tree_of({"a": {"a0": info()}})))
            async with asyncio.timeout(10):
                await arrived.wait()
            await new.start()  # unlinks the old kubelet.sock and ours, serves a new one
            await new.wait_for(lambda: (short_dir / "ex.com-a.sock").exists())
            proceed.set()
            await new.wait_for_resource("ex.com/a", count=1, healthy=1, timeout=10)
            assert len(new.registrations) == 1
        finally:
            proceed.set()
            await new.stop()
            await old.stop(None)

    async def test_which_kubelet_asked_for_the_options(
        self, kubelet: FakeKubelet, serve: ServeFn, short_dir: Path
    ) -> None:
        """Before kubelet.sock's change time: the old one; a coarse tick after: the new one."""
        manager = await serve("ex.com", QueueScanner(tree_of({"a": {"a0": info()}})))
        await kubelet.wait_for_resource("ex.com/a", count=1, healthy=1)
        endpoint = manager._endpoints["a"]
        made = (short_dir / "kubelet.sock").stat().st_ctime_ns
        verdicts = []
        for asked in (made - 1, made, made + _endpoint.COARSE_TICK_NS, None):
            endpoint.service.options_asked_at = asked
            verdicts.append(endpoint._dialed_back_by_current_kubelet())
        assert verdicts == [False, None, True, False]
