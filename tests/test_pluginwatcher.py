"""The plugin-watcher registration service answers the kubelet over a real Unix socket."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from host import _pluginwatcher
from host._api import pluginregistration_pb2, pluginregistration_pb2_grpc
from host._pluginwatcher import (
    DEFAULT_REGISTRY_DIR,
    DEVICE_PLUGIN_TYPE,
    DRA_PLUGIN_TYPE,
    RegistrationServicer,
)


@asynccontextmanager
async def kubelet_client(servicer: RegistrationServicer, socket_dir: Path) -> AsyncIterator[Any]:
    """Serve ``servicer`` on a socket and yield the stub the kubelet would use."""
    server = grpc.aio.server()
    servicer.add_to_server(server)
    socket = socket_dir / "reg.sock"
    assert server.add_insecure_port(f"unix://{socket}") == 1
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"unix://{socket}") as channel:
            yield pluginregistration_pb2_grpc.RegistrationStub(channel)  # type: ignore[no-untyped-call]
    finally:
        await server.stop(None)


def dra_servicer(**kwargs: Any) -> RegistrationServicer:
    args: dict[str, Any] = {
        "plugin_type": DRA_PLUGIN_TYPE,
        "name": "gpu.example.com",
        "endpoint": "/var/lib/kubelet/plugins/gpu.example.com/dra.sock",
        "supported_versions": ["v1.DRAPlugin", "v1beta1.DRAPlugin"],
    }
    return RegistrationServicer(**{**args, **kwargs})


def notify(registered: bool, error: str = "") -> pluginregistration_pb2.RegistrationStatus:
    return pluginregistration_pb2.RegistrationStatus(plugin_registered=registered, error=error)


class TestConstants:
    """The module names kubelet's strings and default directory."""

    def test_values(self) -> None:
        assert DEVICE_PLUGIN_TYPE == "DevicePlugin"
        assert DRA_PLUGIN_TYPE == "DRAPlugin"
        assert DEFAULT_REGISTRY_DIR == "/var/lib/kubelet/plugins_registry"

    def test_all_is_pinned(self) -> None:
        assert sorted(_pluginwatcher.__all__) == [
            "DEFAULT_REGISTRY_DIR",
            "DEVICE_PLUGIN_TYPE",
            "DRA_PLUGIN_TYPE",
            "PLUGIN_TYPES",
            "RegistrationServicer",
            "StatusCallback",
        ]


class TestArguments:
    """The servicer refuses what the kubelet would refuse or misread."""

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"plugin_type": "CSIPlugin"}, "plugin_type must be one of"),
            ({"name": ""}, "name must not be empty"),
            ({"endpoint": "dra.sock"}, "endpoint must be an absolute socket path"),
            ({"supported_versions": []}, "supported_versions must be a non-empty list"),
            ({"supported_versions": "v1.DRAPlugin"}, "supported_versions must be a non-empty"),
            ({"supported_versions": ["v1.DRAPlugin", ""]}, "every supported version"),
        ],
    )
    def test_bad_arguments_are_refused(self, kwargs: dict[str, Any], message: str) -> None:
        """Bad arguments fail at construction with a message naming the input."""
        with pytest.raises(ValueError, match=message):
            dra_servicer(**kwargs)


@pytest.mark.asyncio
class TestGetInfo:
    """GetInfo answers exactly what the kubelet's handlers validate."""

    async def test_dra_plugin(self, short_dir: Path) -> None:
        """A DRA driver: its name, absolute DRA socket and short service names in order."""
        servicer = dra_servicer()
        async with kubelet_client(servicer, short_dir) as stub:
            info = await stub.GetInfo(pluginregistration_pb2.InfoRequest(), timeout=10)
        assert info == pluginregistration_pb2.PluginInfo(
            type="DRAPlugin",
            name="gpu.example.com",
            endpoint="/var/lib/kubelet/plugins/gpu.example.com/dra.sock",
            supported_versions=["v1.DRAPlugin", "v1beta1.DRAPlugin"],
        )
        assert servicer.registered is None
        assert servicer.status_count == 0

    async def test_device_plugin_with_empty_endpoint(self, short_dir: Path) -> None:
        """A device plugin may serve on the registration socket: endpoint stays empty."""
        servicer = RegistrationServicer(
            plugin_type=DEVICE_PLUGIN_TYPE,
            name="example.com/gpu",
            endpoint="",
            supported_versions=("v1beta1",),
        )
        async with kubelet_client(servicer, short_dir) as stub:
            first = await stub.GetInfo(pluginregistration_pb2.InfoRequest(), timeout=10)
            again = await stub.GetInfo(pluginregistration_pb2.InfoRequest(), timeout=10)
        assert first == again
        assert first.type == "DevicePlugin"
        assert first.name == "example.com/gpu"
        assert first.endpoint == ""
        assert list(first.supported_versions) == ["v1beta1"]
        assert servicer.supported_versions == ("v1beta1",)


@pytest.mark.asyncio
class TestNotifyRegistrationStatus:
    """Kubelet's verdict is recorded, logged, passed to the callback and awaitable."""

    async def test_success_is_recorded_and_called_back(
        self, short_dir: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="host.pluginwatcher")
        calls: list[tuple[bool, str]] = []
        servicer = dra_servicer(on_status=lambda ok, err: calls.append((ok, err)))
        async with kubelet_client(servicer, short_dir) as stub:
            waiter = asyncio.create_task(servicer.wait_for_status())
            reply = await stub.NotifyRegistrationStatus(notify(True), timeout=10)
            async with asyncio.timeout(10):
                assert await waiter is True
        assert reply == pluginregistration_pb2.RegistrationStatusResponse()
        assert servicer.registered is True
        assert servicer.error == ""
        assert servicer.status_count == 1
        assert calls == [(True, "")]
        assert "kubelet registered DRAPlugin 'gpu.example.com'" in caplog.text
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

    async def test_refusal_is_logged_with_kubelets_reason(
        self, short_dir: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        reason = (
            "RegisterPlugin error -- plugin validation failed with err: none of services"
            ' supported by the plugin (["v9.DRAPlugin"]) are supported by the kubelet'
        )
        calls: list[tuple[bool, str]] = []
        servicer = dra_servicer(on_status=lambda ok, err: calls.append((ok, err)))
        async with kubelet_client(servicer, short_dir) as stub:
            await stub.NotifyRegistrationStatus(notify(False, reason), timeout=10)
            async with asyncio.timeout(10):
                assert await servicer.wait_for_status() is False
        assert servicer.registered is False
        assert servicer.error == reason
        assert calls == [(False, reason)]
        (record,) = [r for r in caplog.records if r.name == "host.pluginwatcher"]
        assert record.levelno == logging.ERROR
        assert record.getMessage() == (
            f"kubelet refused to register DRAPlugin 'gpu.example.com': {reason}"
        )

    async def test_last_report_wins_and_next_one_is_awaitable(self, short_dir: Path) -> None:
        """A refusal then a success (kubelet retried): the state follows; waiters see each."""
        servicer = dra_servicer()
        async with kubelet_client(servicer, short_dir) as stub:
            await stub.NotifyRegistrationStatus(notify(False, "not yet"), timeout=10)
            seen = servicer.status_count
            waiter = asyncio.create_task(servicer.wait_for_status(after=seen))
            # A whole RPC round trip lets the waiter run; it must still be waiting.
            await stub.GetInfo(pluginregistration_pb2.InfoRequest(), timeout=10)
            assert not waiter.done()
            await stub.NotifyRegistrationStatus(notify(True), timeout=10)
            async with asyncio.timeout(10):
                assert await waiter is True
        assert (servicer.registered, servicer.error, servicer.status_count) == (True, "", 2)

    async def test_failing_callback_does_not_fail_the_rpc(
        self, short_dir: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The kubelet still gets OK (an error would count as a failed registration)."""

        def broken(ok: bool, err: str) -> None:
            raise RuntimeError("callback broke")

        callback: Callable[[bool, str], None] = broken
        servicer = dra_servicer(on_status=callback)
        async with kubelet_client(servicer, short_dir) as stub:
            reply = await stub.NotifyRegistrationStatus(notify(True), timeout=10)
        assert reply == pluginregistration_pb2.RegistrationStatusResponse()
        assert servicer.registered is True
        assert "on_status callback of DRAPlugin 'gpu.example.com' failed" in caplog.text
        assert "callback broke" in caplog.text
