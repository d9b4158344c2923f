"""The loop watchdog: names the plugin whose code holds the shared event loop.

Every plugin shares one event loop; a coroutine that blocks (``time.sleep``, a busy
loop, a synchronous read of a slow file) stalls every resource's Allocate. Python
cannot pre-empt it, but it can say who it is: a thread of the watchdog's own (the
loop cannot watch itself while it is stuck) sees the loop's heartbeat stop, reads
the loop thread's current stack (``sys._current_frames``) and finds the innermost
frame that belongs to a plugin's code. It logs the culprit once the stall passes
``threshold`` seconds, and the total when the loop runs again::

    event loop blocked for 0.15 s so far by plugin 'slow' at slow.py:12 in scan
    event loop was blocked for 5.01 s by plugin 'slow' at slow.py:12 in scan
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import FrameType, ModuleType

__all__ = ["LoopWatchdog", "PluginLocator", "Stall"]

log = logging.getLogger("host.watchdog")

HOST = "host"
"""The culprit named when no plugin frame is on the loop thread's stack."""


class PluginLocator:
    """Tells which plugin a source file belongs to, from the objects each plugin gave us.

    A plugin's code is the package directory of each of its objects' modules (the
    module file itself for a top-level module): ``hostplugins/gpu/`` for a scanner
    defined in ``hostplugins.gpu._scanner``.
    """

    def __init__(self) -> None:
        self._prefixes: list[tuple[str, str]] = []

    def add(self, plugin: str, objects: Iterable[object]) -> None:
        """Record where ``objects`` (modules, classes, instances) are defined as plugin code."""
        for obj in objects:
            prefix = _code_location(obj)
            if prefix is not None and (prefix, plugin) not in self._prefixes:
                self._prefixes.append((prefix, plugin))
        # Longest first: a plugin nested in another's package is found before it.
        self._prefixes.sort(key=lambda item: len(item[0]), reverse=True)

    def plugin_of(self, filename: str) -> str | None:
        """Return the plugin whose code ``filename`` is, or None."""
        for prefix, plugin in self._prefixes:
            if filename.startswith(prefix):
                return plugin
        return None


def _code_location(obj: object) -> str | None:
    module: ModuleType | None
    if isinstance(obj, ModuleType):
        module = obj
    else:
        module = inspect.getmodule(obj if inspect.isclass(obj) or callable(obj) else type(obj))
    found = getattr(module, "__file__", None)
    if module is None or not isinstance(found, str) or not found:
        return None
    filename = os.path.abspath(found)
    if os.path.basename(filename) == "__init__.py" or "." in module.__name__:
        return os.path.dirname(filename) + os.sep
    return filename


@dataclass(frozen=True)
class Stall:
    """One stall of the loop: how long, who (a plugin name or ``"host"``), and where."""

    seconds: float
    culprit: str
    where: str


class LoopWatchdog:
    """Watches one event loop from a thread; logs and reports stalls over ``threshold``.

    Start it on the loop (``start()``), stop it before the loop closes (``stop()``).
    ``on_stall(stall)`` is called from the watchdog thread once per stall, when it ends
    (for a metric such as a loop-stall counter labelled by plugin).
    """

    def __init__(
        self,
        locator: PluginLocator,
        *,
        threshold: float = 0.1,
        tick: float = 0.025,
        on_stall: Callable[[Stall], None] | None = None,
    ) -> None:
        self.locator = locator
        self.threshold = threshold
        self.tick = tick
        self.on_stall = on_stall
        self.stalls: list[Stall] = []
        self._beat = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Begin the heartbeat on the running loop and the watching thread."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._beat = time.monotonic()
        self._handle = self._loop.call_later(self.tick, self._heartbeat)
        # A thread of our own: the loop cannot observe itself while it is blocked.
        self._thread = threading.Thread(target=self._watch, name="loop-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (call on the loop)."""
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def _heartbeat(self) -> None:
        self._beat = time.monotonic()
        if not self._stop.is_set() and self._loop is not None:
            self._handle = self._loop.call_later(self.tick, self._heartbeat)

    def _watch(self) -> None:
        stalled_since: float | None = None
        culprit, where = HOST, "?"
        while not self._stop.wait(self.tick):
            beat = self._beat
            late = time.monotonic() - beat - self.tick
            if stalled_since is None:
                if late < self.threshold:
                    continue
                stalled_since = beat
                culprit, where = self._culprit()
                log.warning(
                    "event loop blocked for %.2f s so far by %s at %s",
                    late,
                    _name(culprit),
                    where,
                )
                continue
            if beat <= stalled_since:
                continue  # still blocked
            stall = Stall(beat - stalled_since - self.tick, culprit, where)
            stalled_since = None
            self.stalls.append(stall)
            log.warning(
                "event loop was blocked for %.2f s by %s at %s (every resource waited; "
                "a coroutine must never block: use asyncio.to_thread for blocking work)",
                stall.seconds,
                _name(stall.culprit),
                stall.where,
            )
            if self.on_stall is not None:
                with contextlib.suppress(Exception):
                    self.on_stall(stall)

    def _culprit(self) -> tuple[str, str]:
        if self._loop_thread is None:
            return HOST, "?"
        frame: FrameType | None = sys._current_frames().get(self._loop_thread)
        innermost = frame
        while frame is not None:
            plugin = self.locator.plugin_of(frame.f_code.co_filename)
            if plugin is not None:
                return plugin, _where(frame)
            frame = frame.f_back
        return HOST, "?" if innermost is None else _where(innermost)


def _where(frame: FrameType) -> str:
    return (
        f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno} in {frame.f_code.co_name}"
    )


def _name(culprit: str) -> str:
    return "the host's own code" if culprit == HOST else f"plugin {culprit!r}"
