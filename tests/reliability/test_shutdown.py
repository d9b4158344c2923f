"""Stopping: a cancelled manager, endpoint or watcher task ends, whatever else is happening.

Regression tests for lost cancellations: on Python 3.11, ``asyncio.wait_for`` returns
the inner result instead of raising when a cancellation arrives in the loop iteration
in which the awaited thing completes (cpython gh-86296; 3.12 rebuilt ``wait_for`` on
``asyncio.timeout``). The watcher (waiting for inotify events) and the endpoint
(waiting out a backoff) once waited that way: the cancellation was lost and the task
ran on, so ``Manager.serve()`` never returned and a watcher outlived its last
subscriber (``asyncio.run`` then waited for it forever at exit). Both now wait with
``asyncio.timeout``; these tests fail if either goes back to ``wait_for``. grpc.aio's
``Server.stop(grace)`` waits with ``wait_for`` too: an endpoint cancelled while it
re-creates its socket must raise the cancellation that stop swallowed.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from host.deviceplugin import Manager, PluginDirWatcher

from .conftest import SteadyScanner, info, tree_of, until

pytestmark = pytest.mark.asyncio


async def ended(task: asyncio.Task[None]) -> bool:
    """Whether ``task`` ends within a second (then, in any case, make sure it does)."""
    done, _ = await asyncio.wait({task}, timeout=1)
    while not task.done():  # do not leave it running after the test
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    return bool(done)


class TestCancellationIsNeverLost:
    async def test_watcher_ends_when_its_last_subscriber_leaves_during_events(
        self, short_dir: Path
    ) -> None:
        """Unsubscribing while inotify events are queued (sockets going away) ends the watcher."""
        for attempt in range(20):
            watcher = PluginDirWatcher(short_dir)
            events: list[object] = []
            unsubscribe = watcher.subscribe(events.append)
            task = watcher._task
            assert task is not None
            await until(lambda e=events: bool(e), "the watch to be set (its first RESYNC)")
            for index in range(200):  # a burst, as when a host stops 100 sockets
                path = short_dir / f"burst-{attempt}-{index}"
                path.touch()
                os.unlink(path)
            for _ in range(attempt % 5 + 1):
                await asyncio.sleep(0)  # vary how much of the burst it has read
            unsubscribe()
            assert await ended(task), f"attempt {attempt}: the watcher outlived its cancellation"

    async def test_manager_stops_when_a_wakeup_coincides_with_the_cancel(
        self, short_dir: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Cancelling serve() stops it even when an endpoint is woken in the same iteration."""
        manager = Manager(
            "ex.com",
            SteadyScanner(tree_of({"a": {"a0": info()}})),
            plugin_dir=short_dir,
            cdi_dir=short_dir / "cdi",
            register_backoff=(5.0, 5.0),
        )
        serve = asyncio.create_task(manager.serve())
        # No kubelet: once the failed registration is logged, the endpoint is in its
        # backoff wait (the log is the last thing it does before waiting).
        await until(lambda: "waiting for kubelet" in caplog.text, "the first registration attempt")
        # What a watcher event or a closed stream does, in the iteration of a SIGTERM.
        manager._endpoints["a"]._wake.set()
        serve.cancel()
        assert await ended(serve), "Manager.serve() did not end after its cancellation"

    async def test_manager_stops_when_cancelled_as_an_endpoint_stops_its_old_server(
        self, short_dir: Path
    ) -> None:
        """Cancelling serve() while an endpoint re-creates its socket stops it."""
        lost: list[int] = []
        # The cancellation is lost only when it comes in the loop iteration in which
        # grpc's stop completes, a few iterations after the wake-up: try each of them.
        for attempt in range(36):
            plugin_dir = short_dir / str(attempt)
            registry = plugin_dir / "reg"
            # Through the plugins registry a removed socket is served by a new server
            # (kubelet's plugin watcher registers a new socket only), so the old one stops.
            manager = Manager(
                "ex.com",
                SteadyScanner(tree_of({"a": {"a0": info()}})),
                plugin_dir=plugin_dir,
                cdi_dir=plugin_dir / "cdi",
                registration="plugins-registry",
                plugins_registry_dir=registry,
            )
            serve = asyncio.create_task(manager.serve())
            socket = registry / "ex.com-a.sock"
            await until(socket.exists, "the socket served for the plugin watcher")
            os.unlink(socket)
            manager._endpoints["a"]._wake.set()  # what the watcher's event does
            for _ in range(attempt % 12):
                await asyncio.sleep(0)
            serve.cancel()
            if not await ended(serve):
                lost.append(attempt)
        assert lost == [], f"Manager.serve() outlived its cancellation in attempts {lost}"
