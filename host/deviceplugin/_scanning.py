"""Running a scanner's ``scan``, whether a plain function or a coroutine, behind a wall."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from host.deviceplugin._guard import PluginError, describe, is_host_cancellation
from host.deviceplugin._types import Notifier, Scanner

__all__ = ["run_scan"]

T = TypeVar("T")


async def run_scan(scanner: Scanner, notifier: Notifier, *, plugin: str = "?") -> None:
    """Run ``scanner.scan(notifier)`` until it returns; cancelling this stops a coroutine scan.

    Whatever the scan lets out (``SystemExit`` and ``KeyboardInterrupt`` included)
    comes out as a :class:`~host.deviceplugin._guard.PluginError` naming ``plugin``;
    only a cancellation of this task by the host passes through.

    A plain ``scan`` runs in a daemon thread of its own rather than the default
    executor: a blocking scan loop never returns, and ``asyncio.run`` would wait for
    the executor at shutdown forever. Cancelling abandons such a thread (it can only
    be stopped by its own logic); its later notifications are ignored by the caller.
    """
    try:
        await _run_scan(scanner, notifier)
    except BaseException as exc:
        if is_host_cancellation(exc):
            raise
        raise PluginError(plugin, "scan", f"raised {describe(exc)}") from exc


async def _run_scan(scanner: Scanner, notifier: Notifier) -> None:
    scan = scanner.scan
    if inspect.iscoroutinefunction(scan) or inspect.iscoroutinefunction(
        getattr(scan, "__call__", None)  # noqa: B004 - callables with async __call__
    ):
        await scan(notifier)  # type: ignore[misc]
        return
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(exc: BaseException | None) -> None:
        if done.done():
            return
        if exc is None:
            done.set_result(None)
        else:
            done.set_exception(exc)

    def worker() -> None:
        try:
            result = scan(notifier)
            if inspect.isawaitable(result):
                # A plain function that returned an awaitable: run it on the loop.
                fut = asyncio.run_coroutine_threadsafe(_await(result), loop)
                fut.result()
        except BaseException as exc:
            _call_soon(loop, settle, exc)
        else:
            _call_soon(loop, settle, None)

    thread = threading.Thread(target=worker, name=f"scan-{type(scanner).__name__}", daemon=True)
    thread.start()
    await done


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    # A closed loop means nobody is waiting for this scan any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)
