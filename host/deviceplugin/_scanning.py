"""Running a scanner's ``scan``, whether a plain function or a coroutine, behind a wall."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from host.deviceplugin._guard import PluginError, call_hook, describe, is_host_cancellation
from host.deviceplugin._types import Notifier, Scanner

__all__ = ["check_interval_of", "run_scan"]

log = logging.getLogger("host.deviceplugin.scanning")

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


def check_interval_of(scanner: object, *, plugin: str = "?") -> float | None:
    """Return the seconds ``scanner`` promises between notifies (``check_interval``), or None.

    ``check_interval`` may be an attribute or a method returning the number (see
    :class:`~host.deviceplugin.PeriodicScanner`); it is read behind the plugin wall. A
    value that is no positive finite number, or a read that raises, is logged with the
    plugin's name and taken as no promise: the devices are then never Unknown for lack
    of news, rather than always.
    """
    try:
        declared = call_hook(plugin, "check_interval", getattr, scanner, "check_interval", None)
        if callable(declared):
            declared = call_hook(plugin, "check_interval", declared)
    except PluginError as exc:
        log.error("%s; its devices are never Unknown for lack of news", exc)
        return None
    if declared is None:
        return None
    if inspect.iscoroutine(declared):
        declared.close()  # never awaited: it is read once, synchronously
    if (
        isinstance(declared, bool)
        or not isinstance(declared, int | float)
        or not math.isfinite(declared)
        or declared <= 0
    ):
        log.error(
            "plugin %r: check_interval must be a positive number of seconds, got %r; "
            "its devices are never Unknown for lack of news",
            plugin,
            declared,
        )
        return None
    return float(declared)


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
