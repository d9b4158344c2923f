"""Socket names and the problems of creating sockets: never a crash, always a reason."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import grpc
import pytest

from host.deviceplugin._endpoint import MAX_SOCKET_PATH
from host.deviceplugin._names import socket_name
from host.testing import FakeKubelet
from tests.scanners import QueueScanner

from .conftest import ServeFn
from .helpers import info, tree_of

pytestmark = pytest.mark.asyncio

LONG_NAMESPACE = "a" * 60 + ".example.com"
LONG_TYPE = "t" * 63


class TestSocketNames:
    async def test_common_names_are_unchanged(self) -> None:
        """A namespace without '-' keeps Intel's `<namespace>-<type>.sock`."""
        assert socket_name("gpu.intel.com", "i915") == "gpu.intel.com-i915.sock"
        name = socket_name("gpu.intel.com", "i915_monitoring")
        assert name == "gpu.intel.com-i915_monitoring.sock"

    async def test_names_that_used_to_collide_are_distinct(self) -> None:
        """a.com/x-y and a.com-x/y got the same socket before; the namespace's '-' is doubled."""
        assert socket_name("a.com", "x-y") == "a.com-x-y.sock"
        assert socket_name("a.com-x", "y") == "a.com--x-y.sock"

    async def test_both_resources_serve_side_by_side(
        self, kubelet: FakeKubelet, serve: ServeFn, short_dir: Path
    ) -> None:
        """Two resources whose names once shared a socket both register and stay."""
        await serve("a.com", QueueScanner(tree_of({"x-y": {"d0": info()}})))
        await serve("a.com-x", QueueScanner(tree_of({"y": {"d1": info()}})))
        await kubelet.wait_for_resource("a.com/x-y", count=1)
        await kubelet.wait_for_resource("a.com-x/y", count=1)
        endpoints = {r.request.resource_name: r.request.endpoint for r in kubelet.registrations}
        assert endpoints == {"a.com/x-y": "a.com-x-y.sock", "a.com-x/y": "a.com--x-y.sock"}
        assert {p.name for p in short_dir.iterdir() if p.is_socket()} >= set(endpoints.values())


class TestSocketProblems:
    async def test_too_long_socket_path_is_reported_and_the_others_serve(
        self, kubelet: FakeKubelet, serve: ServeFn, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A socket path over 107 bytes: logged with its length, a not-ready reason, no crash."""
        caplog.set_level(logging.WARNING, "host.deviceplugin.endpoint")
        manager = await serve(
            LONG_NAMESPACE, QueueScanner(tree_of({LONG_TYPE: {"d0": info()}, "ok": {"o": info()}}))
        )
        await kubelet.wait_for_resource(f"{LONG_NAMESPACE}/ok", count=1)
        await kubelet.wait_for(lambda: f"at most {MAX_SOCKET_PATH}" in caplog.text)
        status = manager.resources[f"{LONG_NAMESPACE}/{LONG_TYPE}"]
        assert not status.ready
        assert status.not_ready_reason is not None
        assert "bytes long; Unix sockets allow at most 107" in status.not_ready_reason
        await kubelet.wait_for(lambda: manager.resources[f"{LONG_NAMESPACE}/ok"].ready)
        assert manager.resources[f"{LONG_NAMESPACE}/ok"].not_ready_reason is None
        assert f"{LONG_NAMESPACE}/{LONG_TYPE}" not in kubelet.resources

    async def test_socket_in_use_is_a_not_ready_reason_until_it_is_free(
        self, kubelet: FakeKubelet, serve: ServeFn, short_dir: Path
    ) -> None:
        """Another process's live socket: not ready with that reason, then served once gone."""
        path = short_dir / "ex.com-a.sock"
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        other.bind(str(path))
        other.listen()
        try:
            manager = await serve("ex.com", QueueScanner(tree_of({"a": {"a0": info()}})))
            await kubelet.wait_for(lambda: "ex.com/a" in manager.resources)
            await kubelet.wait_for(
                lambda: "already in use" in (manager.resources["ex.com/a"].not_ready_reason or "")
            )
        finally:
            other.close()
            path.unlink()
        await kubelet.wait_for_resource("ex.com/a", count=1)
        await kubelet.wait_for(lambda: manager.resources["ex.com/a"].ready)
        assert manager.resources["ex.com/a"].not_ready_reason is None

    async def test_bind_failure_is_retried_and_never_kills_the_resource(
        self,
        kubelet: FakeKubelet,
        serve: ServeFn,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """gRPC failing to bind (RuntimeError) twice: reported, retried, then served."""
        caplog.set_level(logging.WARNING, "host.deviceplugin.endpoint")
        real_server = grpc.aio.server
        failures = {"left": 2}

        def server(*args: Any, **kwargs: Any) -> Any:
            created = real_server(*args, **kwargs)
            real_add = created.add_insecure_port

            def add_insecure_port(address: str) -> int:
                if address.endswith("ex.com-a.sock") and failures["left"]:
                    failures["left"] -= 1
                    raise RuntimeError(f"Failed to bind to address {address}")
                return real_add(address)

            created.add_insecure_port = add_insecure_port  # type: ignore[method-assign]
            return created

        monkeypatch.setattr(grpc.aio, "server", server)
        manager = await serve("ex.com", QueueScanner(tree_of({"a": {"a0": info()}})))
        await kubelet.wait_for_resource("ex.com/a", count=1)
        assert failures["left"] == 0
        assert "cannot create socket" in caplog.text
        await kubelet.wait_for(lambda: manager.resources["ex.com/a"].ready)
