"""DeviceHealthService without kubelet: the scanner's promise, the encoding, the log lines."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from host._api import dra_health_v1_pb2
from host.deviceplugin import UNHEALTHY, DeviceInfo
from host.deviceplugin._healthlog import LINES_PER_MINUTE
from host.deviceplugin._scanning import check_interval_of
from host.dra import DeviceHealthService
from host.dra._health import encode_health
from tests.dra.helpers import DRIVER, NODE, gpu


def entries(count: int, **kwargs: Any) -> dict[str, tuple[str, str, DeviceInfo]]:
    return {f"i915-card{i}": ("i915", f"card{i}", gpu(i, **kwargs)) for i in range(count)}


class Declared:
    def __init__(self, value: object) -> None:
        self.check_interval = value


class DeclaredByMethod:
    def check_interval(self) -> float:
        return 2.5


class Raising:
    @property
    def check_interval(self) -> float:
        raise SystemExit(3)


class TestCheckInterval:
    def test_attribute_or_method(self) -> None:
        """A number as attribute or from a method; none declared is None."""
        assert check_interval_of(Declared(5)) == 5.0
        assert check_interval_of(Declared(0.25)) == 0.25
        assert check_interval_of(DeclaredByMethod()) == 2.5
        assert check_interval_of(object()) is None
        assert check_interval_of(None) is None

    @pytest.mark.parametrize("value", [0, -1, "5", float("nan"), float("inf"), True, [1]])
    def test_bad_values_are_no_promise(
        self, value: object, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Not a positive finite number: logged with the plugin's name, taken as no promise."""
        assert check_interval_of(Declared(value), plugin="gpu") is None
        assert "plugin 'gpu': check_interval must be a positive number of seconds" in caplog.text
        assert "never Unknown for lack of news" in caplog.text

    def test_a_raising_read_is_walled(self, caplog: pytest.LogCaptureFixture) -> None:
        """Even SystemExit from a property is the plugin's failure, logged, not the host's."""
        assert check_interval_of(Raising(), plugin="gpu") is None
        assert "plugin 'gpu': check_interval raised SystemExit: 3" in caplog.text

    def test_a_coroutine_method_is_refused_and_closed(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """``async def check_interval`` is no number (and never left un-awaited)."""

        class Async:
            async def check_interval(self) -> float:
                return 1.0

        assert check_interval_of(Async(), plugin="gpu") is None
        assert "check_interval must be a positive number" in caplog.text


class TestVerdicts:
    def test_states_messages_and_scan_failure(self) -> None:
        """Own state and message; a failed scan makes all Unhealthy with the failure."""
        service = DeviceHealthService(DRIVER, NODE)
        devices = entries(2)
        devices["i915-card1"] = ("i915", "card1", gpu(1, UNHEALTHY, health_message="hot"))
        service.update(devices)
        assert [(h.health, h.message) for h in service.health.values()] == [
            ("Healthy", ""),
            ("Unhealthy", "hot"),
        ]
        service.update(devices, scan_failed=True, scan_error="plugin 'gpu': scan raised OSError")
        assert {(h.health, h.message) for h in service.health.values()} == {
            ("Unhealthy", "plugin 'gpu': scan raised OSError; restarting it")
        }

    def test_unchanged_devices_keep_their_entry_and_bytes(self) -> None:
        """A notify that changes nothing keeps each entry (and its time) and the message."""
        service = DeviceHealthService(DRIVER, NODE)
        devices = entries(3)
        service.update(devices)
        before, encoded = dict(service.health), service.encoded
        service.update(dict(devices))
        assert all(service.health[name] is entry for name, entry in before.items())
        assert service.encoded is encoded
        service.update(entries(2))  # a device went away: a new list
        assert (
            len(dra_health_v1_pb2.NodeWatchResourcesResponse.FromString(service.encoded).devices)
            == 2
        )

    @pytest.mark.asyncio
    async def test_no_promise_never_unknown(self) -> None:
        """No check_interval, no silence timer; with one, each notify re-arms it."""
        silent = DeviceHealthService(DRIVER, NODE)
        silent.update(entries(1))
        assert silent._timer is None
        promised = DeviceHealthService(DRIVER, NODE, check_interval=60)
        promised.update(entries(1))
        first = promised._timer
        assert first is not None
        promised.update(entries(1))
        assert first.cancelled()
        assert promised._timer is not first
        promised.stop()
        assert promised._timer is None


class TestEncoding:
    def test_parts_joined_equal_protobuf_encoding(self) -> None:
        """Per-device parts, reused across calls, make exactly protobuf's own bytes."""
        service = DeviceHealthService(DRIVER, NODE)
        service.update(entries(300, health_message="m" * 200))
        data, parts = encode_health(service.health.values(), NODE, 30)
        expected = dra_health_v1_pb2.NodeWatchResourcesResponse()
        for entry in service.health.values():
            expected.devices.add(
                device=dra_health_v1_pb2.DeviceIdentifier(pool_name=NODE, device_name=entry.device),
                health=dra_health_v1_pb2.HEALTHY,
                last_updated_time=int(entry.since),
                health_check_timeout_seconds=30,
                message=entry.message,
            )
        assert data == expected.SerializeToString() == service.encoded
        again, reused = encode_health(service.health.values(), NODE, 30, parts)
        assert again == data
        assert all(reused[name][1] is parts[name][1] for name in parts)


class TestLog:
    def test_grouped_and_escaped(self, caplog: pytest.LogCaptureFixture) -> None:
        """Devices failing alike share one line; the plugin's message is quoted, escaped."""
        caplog.set_level(logging.INFO, "host.dra.health")
        service = DeviceHealthService(DRIVER, NODE)
        service.update(entries(8))
        assert caplog.records == []  # new healthy devices are no news
        service.update(entries(8, state=UNHEALTHY, health_message="bad\nWARNING fake line"))
        (record,) = caplog.records
        assert record.levelno == logging.WARNING
        assert record.getMessage() == (
            f"DRA driver {DRIVER}: 8 devices i915-card0, i915-card1, i915-card2, i915-card3, "
            "i915-card4 and 3 more now Unhealthy: 'bad\\nWARNING fake line'"
        )
        caplog.clear()
        service.update(entries(8))
        (record,) = caplog.records
        assert record.levelno == logging.INFO
        assert record.getMessage().endswith("now Healthy: no message")

    def test_rate_limited(self, caplog: pytest.LogCaptureFixture) -> None:
        """A message changing at every notify logs at most LINES_PER_MINUTE lines a minute."""
        caplog.set_level(logging.INFO, "host.dra.health")
        service = DeviceHealthService(DRIVER, NODE)
        for step in range(200):
            service.update(entries(1, health_message=f"temperature {step}"))
        assert len(caplog.records) == LINES_PER_MINUTE
        assert service.health["i915-card0"].message == "temperature 199"
