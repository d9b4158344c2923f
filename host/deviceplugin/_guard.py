"""Walls at every plugin boundary: the one place the host calls plugin code through.

A plugin is somebody else's code running in our process and on our event loop. Every
call into it goes through :func:`call_hook` (load time, synchronous) or a
:class:`PluginCaller` (run time, awaitable), which turn *any* ``BaseException`` the
plugin lets out (``SystemExit``, ``KeyboardInterrupt``, a stray ``CancelledError``,
``GeneratorExit`` included) into a :class:`PluginError` naming the plugin. Only a
cancellation the host itself asked for passes through unchanged.

Why ``BaseException`` matters on a loop: asyncio re-raises ``SystemExit`` and
``KeyboardInterrupt`` from a task straight out of ``run_forever`` (the host exits, or
grpc's completion queue is torn down under a live server), and a ``CancelledError``
raised by a handler that nobody cancelled makes grpc.aio drop the RPC without a
status, so kubelet, which sets no deadline, waits forever.

Plain (synchronous) plugin methods run in daemon worker threads of the plugin's own
small pool, never on the loop, and with a deadline: a plugin that blocks stalls only
its own calls. The pool's threads are daemons on purpose: a call that never returns
must not keep the process from exiting (``concurrent.futures`` workers are joined at
interpreter exit).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import logging
import queue
import signal
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = [
    "DEFAULT_CALL_TIMEOUT",
    "PluginCaller",
    "PluginError",
    "call_hook",
    "describe",
    "is_host_cancellation",
    "mark_host_interrupts",
]

log = logging.getLogger("host.deviceplugin.guard")

T = TypeVar("T")

DEFAULT_CALL_TIMEOUT = 30.0
"""Seconds a plugin's optional method may take before its RPC fails with INTERNAL.

Kubelet sets no deadline on Allocate or PreStartContainer and admits pods one at a
time, so a method that never returns would hold pod admission on the node forever.
30 s leaves room for slow but legitimate work (programming an FPGA region).
"""

_host_interrupted = threading.Event()


class PluginError(Exception):
    """Plugin code raised (anything at all) or overran its deadline.

    ``plugin`` names the plugin, ``what`` the call (``"allocate"``,
    ``"devplugin_scanners"``); ``__cause__`` is the plugin's own exception, if any.
    """

    def __init__(self, plugin: str, what: str, message: str) -> None:
        super().__init__(f"plugin {plugin!r}: {what} {message}")
        self.plugin = plugin
        self.what = what


def describe(exc: BaseException) -> str:
    """``TypeName: message`` of an exception, on one line (``TypeName`` alone if empty)."""
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def mark_host_interrupts() -> None:
    """Make a real Ctrl-C during plugin loading recognisable as the person's, not a plugin's.

    Installs a SIGINT handler that records the signal before raising
    ``KeyboardInterrupt`` as Python's default handler does; :func:`call_hook` lets
    such an interrupt through and turns any other ``KeyboardInterrupt`` into a
    plugin failure. Call it from the main thread.
    """

    def handler(signum: int, frame: Any) -> None:
        _host_interrupted.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)


def is_host_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is a cancellation of the current task that the host asked for.

    ``Task.cancelling()`` counts outstanding ``cancel()`` requests; a ``CancelledError``
    that a plugin raises on its own leaves it at zero.
    """
    if not isinstance(exc, asyncio.CancelledError):
        return False
    try:
        task = asyncio.current_task()
    except RuntimeError:
        return False
    return task is not None and task.cancelling() > 0


def _host_owned(exc: BaseException) -> bool:
    if isinstance(exc, KeyboardInterrupt):
        return _host_interrupted.is_set()
    return is_host_cancellation(exc)


def call_hook(plugin: str, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call plugin code synchronously (load-time hooks); any escape becomes a PluginError.

    ``argparse`` calling ``sys.exit`` inside ``devplugin_options`` or a hook raising
    ``KeyboardInterrupt`` fails that plugin only.
    """
    try:
        return fn(*args, **kwargs)
    except BaseException as exc:
        if _host_owned(exc):
            raise
        raise PluginError(plugin, what, f"raised {describe(exc)}") from exc


class _DaemonPool(concurrent.futures.Executor):
    """A small executor of daemon threads, started on demand, for one plugin's plain calls."""

    def __init__(self, name: str, max_workers: int) -> None:
        self._name = name
        self._max_workers = max_workers
        self._queue: queue.SimpleQueue[
            tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]] | None
        ] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._shutdown = False

    @property
    def busy(self) -> int:
        """Threads running a call right now (a stuck plugin shows here)."""
        with self._lock:
            return len(self._threads) - self._idle

    def submit(  # type: ignore[override]  # positional arguments only, as the loop uses it
        self, fn: Callable[..., T], /, *args: Any
    ) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("the plugin's worker pool is shut down")
            if self._idle == 0 and len(self._threads) < self._max_workers:
                thread = threading.Thread(
                    target=self._work,
                    name=f"{self._name}-{len(self._threads)}",
                    daemon=True,  # a plugin call that never returns must not block exit
                )
                self._threads.append(thread)
                self._idle += 1
                thread.start()
        self._queue.put((future, fn, args))
        return future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args = item
            with self._lock:
                self._idle -= 1
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        result = fn(*args)
                    except BaseException as exc:
                        future.set_exception(exc)
                    else:
                        future.set_result(result)
            finally:
                with self._lock:
                    self._idle += 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)


class PluginCaller:
    """Runs one plugin's run-time methods behind a wall, with a deadline.

    Coroutine functions are awaited on the loop (they are the plugin's promise not to
    block it; the loop watchdog names those that break it). Plain functions run in
    the plugin's own pool of ``max_threads`` daemon threads; an awaitable they return
    is awaited on the loop. Either way the call ends within ``timeout`` seconds, and
    whatever the plugin raises comes out as a :class:`PluginError` (a ``ValueError``
    is kept as the cause, so callers can treat it as "bad request").
    """

    def __init__(
        self, plugin: str, *, timeout: float = DEFAULT_CALL_TIMEOUT, max_threads: int = 4
    ) -> None:
        self.plugin = plugin
        self.timeout = timeout
        self._pool = _DaemonPool(f"plugin-{plugin}", max_threads)

    @property
    def busy_threads(self) -> int:
        """Worker threads currently inside a plain plugin method."""
        return self._pool.busy

    async def call(self, what: str, method: Callable[..., T | Awaitable[T]], *args: Any) -> T:
        """Call ``method(*args)`` behind the wall; return its (awaited) result."""
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                if _is_coroutine_function(method):
                    return await method(*args)  # type: ignore[no-any-return,misc]
                loop = asyncio.get_running_loop()
                # The caller's context (log fields naming plugin and resource) goes along.
                context = contextvars.copy_context()
                result = await loop.run_in_executor(self._pool, context.run, method, *args)
                if inspect.isawaitable(result):
                    return await result
                return result
        except BaseException as exc:
            if deadline.expired() and isinstance(exc, TimeoutError):
                raise PluginError(
                    self.plugin,
                    what,
                    f"did not return within {self.timeout:g} s "
                    f"({self._pool.busy} of its calls still running)",
                ) from None
            if _host_owned(exc):
                raise
            raise PluginError(self.plugin, what, f"raised {describe(exc)}") from exc

    def close(self) -> None:
        """Let the pool's idle threads end; calls still running are abandoned."""
        self._pool.shutdown(wait=False)


def _is_coroutine_function(method: Any) -> bool:
    return inspect.iscoroutinefunction(method) or inspect.iscoroutinefunction(
        getattr(method, "__call__", None)  # noqa: B004 - callables with an async __call__
    )
