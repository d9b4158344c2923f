"""The scan loop every periodic built-in scanner shares (gpu, fpga, qat, idxd, npu, dlb, sgx).

The ``generic`` plugin's loop is its own: it notifies only when the tree changed, has
no :meth:`~PeriodicScanner.rescan`, and lets tests replace its sleep.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging

from host.deviceplugin import DeviceTree, Notifier

__all__ = ["NoHardware", "PeriodicScanner", "Problems", "add_problem", "no_hardware"]


class NoHardware(str):
    """A scan's note that the node has no such hardware (no driver, no class directory).

    Not a problem: the tree is empty and the note is logged once at INFO, where a
    problem is logged at WARNING. Every built-in plugin reports a missing driver so.
    """


def add_problem(problems: list[str] | None, message: str, logger: logging.Logger) -> None:
    """Append ``message`` to ``problems``, or log it (at the level it deserves) if no list."""
    if problems is None:
        _log_problem(logger, message)
    else:
        problems.append(message)


def no_hardware(problems: list[str] | None, message: str, logger: logging.Logger) -> None:
    """Report that the node has no such hardware: logged once at INFO, never a warning."""
    add_problem(problems, NoHardware(message), logger)


def _log_problem(logger: logging.Logger, message: str) -> None:
    if isinstance(message, NoHardware):
        logger.info("%s; no devices", message)
    else:
        logger.warning("%s", message)


class Problems:
    """Collects what a scan had to skip, so the loop can log each problem once."""

    def __init__(self, sink: list[str] | None, log: logging.Logger) -> None:
        self._sink = sink
        self._log = log

    def add(self, message: str) -> None:
        """Record ``message`` (logged as a warning at once when nobody collects them)."""
        add_problem(self._sink, message, self._log)


class PeriodicScanner(abc.ABC):
    """A scanner that runs :meth:`scan_once` in a worker thread and notifies every tree.

    With ``interval`` > 0 it scans again every ``interval`` seconds, or sooner when
    :meth:`rescan` asks; with 0 it scans once and then only when :meth:`rescan` asks
    (the Go SGX plugin's "scan once, then block"). Problems a scan reports are logged
    when they first appear, not on every scan. With a ``namespace``, a change in the
    number of devices per resource is also logged at info level.
    """

    def __init__(
        self, *, interval: float, logger: logging.Logger, namespace: str | None = None
    ) -> None:
        self._interval = interval
        self._log = logger
        self._namespace = namespace
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._reported: set[str] = set()
        self._counts: dict[str, int] | None = None

    @abc.abstractmethod
    def scan_once(self, problems: list[str] | None = None) -> DeviceTree:
        """Scan once and return the tree; append what had to be skipped to ``problems``."""

    async def scan(self, notifier: Notifier) -> None:
        """Notify a fresh tree every interval (or once) and on :meth:`rescan`, until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        while True:
            self._wake.clear()
            problems: list[str] = []
            tree = await asyncio.to_thread(self.scan_once, problems)
            self._report(problems)
            if self._namespace is not None:
                self._log_counts(tree, self._namespace)
            notifier.notify(tree)
            if self._interval > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._interval)
            else:
                await self._wake.wait()

    def rescan(self) -> None:
        """Ask for a scan now rather than at the end of the interval; safe from any thread."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return  # not scanning yet: the first scan happens anyway
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to wake
            loop.call_soon_threadsafe(wake.set)

    def _report(self, problems: list[str]) -> None:
        """Log each problem when it first appears, not on every scan."""
        for message in problems:
            if message not in self._reported:
                _log_problem(self._log, message)
        self._reported = set(problems)

    def _log_counts(self, tree: DeviceTree, namespace: str) -> None:
        # The Go NPU plugin logs a count that is always 0 (it asks for the type
        # "npu.intel.com/accel"); these are the counts of the tree's own types.
        counts = {dev_type: tree.device_type_count(dev_type) for dev_type in tree}
        if counts == self._counts:
            return
        self._counts = counts
        found = ", ".join(f"{namespace}/{t}: {n}" for t, n in sorted(counts.items()))
        self._log.info("%s devices: %s", namespace, found or "none")
