"""Health messages of device-plugin devices: kubelet hears Healthy/Unhealthy, the operator
reads why in the log (one line per change, escaped) and in ``/status``'s device list."""

from __future__ import annotations

import logging

import pytest

from host._host import device_json
from host.deviceplugin import HEALTHY, UNHEALTHY
from host.testing import FakeKubelet
from tests.scanners import QueueScanner

from .conftest import ServeFn
from .helpers import info, tree_of


def health_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if " now " in r.getMessage()]


@pytest.mark.asyncio
class TestHealthMessages:
    async def test_changes_are_logged_once_each(
        self, kubelet: FakeKubelet, serve: ServeFn, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A device turning Unhealthy with a reason is logged with it; the same tree again
        logs nothing; recovery is logged; kubelet only ever sees the state."""
        caplog.set_level(logging.INFO)
        scanner = QueueScanner(tree_of({"a": {"d0": info(), "d1": info()}}))
        await serve("ex.com", scanner)
        await kubelet.wait_for_resource("ex.com/a", count=2)
        assert health_lines(caplog) == []

        sick = info(state=UNHEALTHY, health_message="ECC errors\nforged line")
        scanner.trees.put_nowait(tree_of({"a": {"d0": info(), "d1": sick}}))
        await kubelet.wait_for(lambda: kubelet.resources["ex.com/a"].unhealthy == {"d1"})
        assert health_lines(caplog) == [
            "resource ex.com/a: device d1 now Unhealthy: 'ECC errors\\nforged line'"
        ]

        scanner.trees.put_nowait(tree_of({"a": {"d0": info(), "d1": sick}, "b": {"x": info()}}))
        await kubelet.wait_for_resource("ex.com/b", count=1)
        assert len(health_lines(caplog)) == 1  # type a unchanged: nothing new

        scanner.trees.put_nowait(tree_of({"a": {"d0": info(), "d1": info()}, "b": {"x": info()}}))
        await kubelet.wait_for(lambda: kubelet.resources["ex.com/a"].healthy == {"d0", "d1"})
        assert health_lines(caplog)[1:] == ["resource ex.com/a: device d1 now Healthy: no message"]

    async def test_a_healthy_device_with_a_message_is_news_too(
        self, kubelet: FakeKubelet, serve: ServeFn, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A message on a Healthy device (a warning) is logged, and its change too."""
        caplog.set_level(logging.INFO)
        warm = info(health_message="temperature 85 C")
        scanner = QueueScanner(tree_of({"a": {"d0": warm}}))
        await serve("ex.com", scanner)
        await kubelet.wait_for_resource("ex.com/a", count=1)
        assert health_lines(caplog) == [
            "resource ex.com/a: device d0 now Healthy: 'temperature 85 C'"
        ]
        hot = info(health_message="temperature 95 C")
        scanner.trees.put_nowait(tree_of({"a": {"d0": hot}, "b": {"x": info()}}))
        await kubelet.wait_for_resource("ex.com/b", count=1)
        assert health_lines(caplog)[1:] == [
            "resource ex.com/a: device d0 now Healthy: 'temperature 95 C'"
        ]


def test_status_device_carries_the_message() -> None:
    """``/status`` (and ``scan --json``) show a device's message; none when it has none."""
    assert device_json("d0", info(state=UNHEALTHY, health_message="ECC"))["health_message"] == "ECC"
    assert "health_message" not in device_json("d0", info(state=HEALTHY))
