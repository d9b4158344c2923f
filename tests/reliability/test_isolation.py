"""Isolation chaos suite: a plugin (or a client) misbehaves beside a well-behaved plugin.

Each case loads a culprit plugin from its own module file next to ``good`` through the
same path as ``devplugin-host run`` (loader, Managers, loop watchdog), provokes the
fault, and shows: the host is alive, ``good`` still allocates, the culprit is named in
a log line (or in the status kubelet gets), and every RPC answered.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import textwrap
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from host._api import api_pb2, api_pb2_grpc
from host.deviceplugin._service import MAX_STREAMS
from host.testing import FakeKubelet, HostHandle, start_host

pytestmark = pytest.mark.asyncio

GOOD = Path(__file__).with_name("good.py")
"""The well-behaved plugin beside each culprit (shared with benchmark figure 9)."""

BAD_HEAD = """
import asyncio, sys, time, argparse
from host import hookimpl
from host.deviceplugin import DeviceInfo, DeviceSpec, DeviceTree

def one_device(dev_id="b0"):
    tree = DeviceTree()
    tree.add_device("dev", dev_id, DeviceInfo(nodes=[DeviceSpec(host_path="/dev/null")]))
    return tree
"""

SERVING_SCANNER = """
class Scanner:
    async def scan(self, notifier):
        notifier.notify(one_device())
        await asyncio.Event().wait()
"""


def bad_module(body: str, *, scanner: str = SERVING_SCANNER, hook: bool = True) -> str:
    tail = (
        "\n@hookimpl\ndef devplugin_scanners(config):\n"
        '    return [("bad.example.com", Scanner())]\n'
        if hook
        else ""
    )
    return BAD_HEAD + textwrap.dedent(scanner) + textwrap.dedent(body) + tail


@pytest_asyncio.fixture
async def host_with(
    kubelet: FakeKubelet, tmp_path: Path
) -> AsyncIterator[Callable[[str], Awaitable[HostHandle]]]:
    handles: list[HostHandle] = []
    fds_before = len(os.listdir("/proc/self/fd"))

    async def start(bad_source: str) -> HostHandle:
        (tmp_path / "bad.py").write_text(bad_source)
        handle = await start_host(
            plugin_dir=kubelet.plugin_dir,
            plugin_modules=[GOOD, tmp_path / "bad.py"],
            cdi_dir=tmp_path / "cdi",
            check=False,
        )
        handles.append(handle)
        await kubelet.wait_for_resource("good.example.com/dev", count=2)
        return handle

    yield start
    for handle in handles:
        await handle.stop()
    # Nothing of the host outlives it: none of its tasks, no socket or file left open.
    await kubelet.wait_for(
        lambda: not host_tasks() and len(os.listdir("/proc/self/fd")) <= fds_before,
        timeout=10,
        what="the host's tasks and file descriptors to be gone",
    )


HOST_TASKS = ("serve ", "feed ", "scan ", "encode ", "host serving")


def host_tasks() -> set[asyncio.Task[object]]:
    """The tasks the host starts (named by what they do), still running."""
    return {t for t in asyncio.all_tasks() if t.get_name().startswith(HOST_TASKS)}


async def good_still_serves(kubelet: FakeKubelet, handle: HostHandle) -> None:
    """The host is alive and the well-behaved plugin allocates, again and again."""
    for i in range(20):
        response = await kubelet.allocate("good.example.com/dev", [f"g{i % 2}"])
        assert response.container_responses[0].devices[0].host_path == "/dev/null"
    assert handle.running


def named(caplog: pytest.LogCaptureFixture, *needles: str) -> list[str]:
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    return [line for line in lines if all(needle in line for needle in needles)]


async def bad_allocate(kubelet: FakeKubelet) -> grpc.aio.AioRpcError:
    await kubelet.wait_for_resource("bad.example.com/dev", count=1)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await asyncio.wait_for(kubelet.allocate("bad.example.com/dev", ["b0"]), 10)
    return info.value


class TestLoadTime:
    @pytest.mark.parametrize(
        ("body", "needle"),
        [
            (
                "@hookimpl\ndef devplugin_scanners(config):\n    raise SystemExit(0)\n",
                "SystemExit",
            ),
            (
                "@hookimpl\ndef devplugin_options():\n"
                "    argparse.ArgumentParser().parse_args(['--bogus'])\n",
                "SystemExit: 2",
            ),
            (
                "@hookimpl\ndef devplugin_scanners(config):\n    raise KeyboardInterrupt\n",
                "KeyboardInterrupt",
            ),
        ],
        ids=["scanners-SystemExit", "options-argparse", "scanners-KeyboardInterrupt"],
    )
    async def test_hook_escapes_fail_that_plugin_only(
        self,
        kubelet: FakeKubelet,
        host_with: Callable[[str], Awaitable[HostHandle]],
        body: str,
        needle: str,
    ) -> None:
        """A hook that exits or interrupts at load leaves its plugin out; the rest serve."""
        handle = await host_with(BAD_HEAD + body)
        (failure,) = handle.failures
        assert "plugin 'bad'" in failure
        assert needle in failure
        await good_still_serves(kubelet, handle)


class TestScanners:
    @pytest.mark.parametrize(
        "scanner",
        [
            "class Scanner:\n    async def scan(self, notifier):\n"
            "        raise KeyboardInterrupt\n",
            "class Scanner:\n    async def scan(self, notifier):\n        raise SystemExit(3)\n",
            "class Scanner:\n    def scan(self, notifier):\n        raise SystemExit(4)\n",
            "class Scanner:\n    def scan(self, notifier):\n        raise KeyboardInterrupt\n",
            "class Scanner:\n    async def scan(self, notifier):\n"
            "        raise asyncio.CancelledError\n",
        ],
        ids=["coro-KeyboardInterrupt", "coro-SystemExit", "thread-SystemExit",
             "thread-KeyboardInterrupt", "coro-CancelledError"],
    )  # fmt: skip
    async def test_scan_escapes_fail_that_scanner_only(
        self,
        kubelet: FakeKubelet,
        host_with: Callable[[str], Awaitable[HostHandle]],
        caplog: pytest.LogCaptureFixture,
        scanner: str,
    ) -> None:
        """A scan that raises any BaseException is logged with its plugin and restarted."""
        handle = await host_with(bad_module("", scanner=scanner))
        await kubelet.wait_for(
            lambda: bool(named(caplog, "plugin 'bad'", "scan raised", "scanner failed")),
            what="the culprit named in the log",
        )
        await good_still_serves(kubelet, handle)


class TestAllocatePath:
    @pytest.mark.parametrize(
        ("method", "needle"),
        [
            ("def allocate(self, request):\n    raise SystemExit(1)\n", "SystemExit"),
            ("async def allocate(self, request):\n    raise KeyboardInterrupt\n",
             "KeyboardInterrupt"),
            ("async def allocate(self, request):\n    raise asyncio.CancelledError\n",
             "CancelledError"),
            ("def post_allocate(self, response):\n    raise SystemExit(1)\n", "SystemExit"),
            ("async def allocate(self, request):\n    raise GeneratorExit\n", "GeneratorExit"),
        ],
        ids=["allocate-SystemExit", "allocate-KeyboardInterrupt", "allocate-CancelledError",
             "post_allocate-SystemExit", "allocate-GeneratorExit"],
    )  # fmt: skip
    async def test_method_escapes_answer_internal(
        self,
        kubelet: FakeKubelet,
        host_with: Callable[[str], Awaitable[HostHandle]],
        method: str,
        needle: str,
    ) -> None:
        """Allocate always answers: INTERNAL naming the plugin, again on the next call."""
        scanner = SERVING_SCANNER + textwrap.indent(method, "    ")
        handle = await host_with(bad_module("", scanner=scanner))
        for _ in range(2):
            err = await bad_allocate(kubelet)
            assert err.code() == grpc.StatusCode.INTERNAL
            assert "plugin 'bad'" in (err.details() or "")
            assert needle in (err.details() or "")
        await good_still_serves(kubelet, handle)

    async def test_failing_post_allocate_hook_spares_other_plugins(
        self,
        kubelet: FakeKubelet,
        host_with: Callable[[str], Awaitable[HostHandle]],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A devplugin_post_allocate that exits fails its own resources only, and is logged."""
        body = "@hookimpl\ndef devplugin_post_allocate(resource_name, response):\n"
        body += "    raise SystemExit(0)\n"
        handle = await host_with(bad_module(body))
        err = await bad_allocate(kubelet)
        assert err.code() == grpc.StatusCode.INTERNAL
        assert "plugin 'bad'" in (err.details() or "")
        await good_still_serves(kubelet, handle)
        assert named(caplog, "plugin 'bad'", "devplugin_post_allocate", "left out")


class TestTheLoop:
    async def test_blocking_coroutine_is_named_by_the_watchdog(
        self,
        kubelet: FakeKubelet,
        host_with: Callable[[str], Awaitable[HostHandle]],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """time.sleep in a coroutine scanner: the watchdog names the plugin and the line."""
        scanner = """
        class Scanner:
            async def scan(self, notifier):
                notifier.notify(one_device())
                await asyncio.sleep(0.2)
                time.sleep(1.5)
                await asyncio.Event().wait()
        """
        handle = await host_with(bad_module("", scanner=scanner))
        watchdog = handle.watchdog
        assert watchdog is not None
        # On a busy machine the host may stall briefly on its own first: look for bad's.
        await kubelet.wait_for(
            lambda: any(s.culprit == "bad" for s in watchdog.stalls),
            timeout=10,
            what="bad's stall to be reported",
        )
        stall = next(s for s in watchdog.stalls if s.culprit == "bad")
        assert stall.where.startswith("bad.py:")
        assert stall.seconds >= 1.0
        assert named(caplog, "blocked", "so far", "plugin 'bad'", "bad.py:")
        await good_still_serves(kubelet, handle)


class TestBoundedRequests:
    async def test_millions_of_ids_are_refused_at_once(
        self, kubelet: FakeKubelet, host_with: Callable[[str], Awaitable[HostHandle]]
    ) -> None:
        """3,000,000 IDs: over the 8 MiB request limit or the ID cap, refused; serving goes on."""
        handle = await host_with(bad_module(""))
        for count, code in ((3_000_000, grpc.StatusCode.RESOURCE_EXHAUSTED),
                            (200_000, grpc.StatusCode.INVALID_ARGUMENT)):  # fmt: skip
            ids = [f"{i}" for i in range(count)]
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await kubelet.allocate("good.example.com/dev", ids)
            assert info.value.code() == code
        # Refused before decoding: 20 times the device list is the most worth reading.
        assert "bytes; at most 65536 are accepted" in (info.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await kubelet.allocate("good.example.com/dev", [f"{i}" for i in range(1_000)])
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "names 1000 device IDs; at most 128" in (info.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await kubelet.allocate("good.example.com/dev", ["g0", "g0"])
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'g0' twice" in (info.value.details() or "")
        await good_still_serves(kubelet, handle)

    async def test_refused_requests_are_freed_with_their_call(
        self, kubelet: FakeKubelet, host_with: Callable[[str], Awaitable[HostHandle]]
    ) -> None:
        """A refused request is not held in a reference cycle until the collector runs."""
        handle = await host_with(bad_module(""))
        big = [f"{i}" for i in range(200_000)]
        gc.collect()
        gc.disable()  # what an idle host looks like: the collector does not run
        try:
            for ids in (big, ["g0", "nope"], ["g0", "g0"]):
                with pytest.raises(grpc.aio.AioRpcError):
                    await kubelet.allocate("good.example.com/dev", ids)
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            held = [
                (frame.f_code.co_name, name)
                for frame in gc.garbage
                if isinstance(frame, types.FrameType) and "deviceplugin" in frame.f_code.co_filename
                for name, value in frame.f_locals.items()
                if isinstance(value, bytes | api_pb2.AllocateRequest)
            ]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        assert held == []
        await good_still_serves(kubelet, handle)

    async def test_streams_beyond_the_cap_are_refused(
        self, kubelet: FakeKubelet, host_with: Callable[[str], Awaitable[HostHandle]]
    ) -> None:
        """50 more ListAndWatch streams: MAX_STREAMS served (kubelet's included), rest refused."""
        handle = await host_with(bad_module(""))
        socket = next(Path(kubelet.plugin_dir).glob("good.example.com*dev*.sock"))
        async with grpc.aio.insecure_channel(f"unix://{socket}") as channel:
            stub = api_pb2_grpc.DevicePluginStub(channel)
            calls = [stub.ListAndWatch(api_pb2.Empty()) for _ in range(50)]
            codes: list[grpc.StatusCode | None] = []
            for call in calls:
                try:
                    first = await asyncio.wait_for(call.read(), 10)
                except grpc.aio.AioRpcError as err:
                    codes.append(err.code())
                else:
                    assert len(first.devices) == 2
                    codes.append(None)
            for call in calls:
                call.cancel()
        # kubelet holds one stream already.
        assert codes.count(None) == MAX_STREAMS - 1
        assert set(codes) == {None, grpc.StatusCode.RESOURCE_EXHAUSTED}
        await good_still_serves(kubelet, handle)


class TestNamesAreData:
    async def test_control_characters_in_ids_are_refused_and_logged_escaped(
        self,
        kubelet: FakeKubelet,
        host_with: Callable[[str], Awaitable[HostHandle]],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A newline in a device ID: that device is left out (named, escaped); the rest served."""
        scanner = """
        class Scanner:
            async def scan(self, notifier):
                tree = one_device()
                tree.add_device("dev", "evil\\nINFO forged line", DeviceInfo())
                notifier.notify(tree)
                await asyncio.Event().wait()
        """
        handle = await host_with(bad_module("", scanner=scanner))
        state = await kubelet.wait_for_resource("bad.example.com/dev", count=1)
        assert sorted(state.devices) == ["b0"]
        (line,) = named(caplog, "not served", "control character")
        assert "\n" not in line
        assert "'evil\\nINFO forged line'" in line
        await good_still_serves(kubelet, handle)
