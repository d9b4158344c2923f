"""Scanners the tests drive by hand, shared by the device-plugin and DRA tests."""

from __future__ import annotations

import asyncio
from typing import Any

from host.deviceplugin import DeviceTree


class QueueScanner:
    """A scanner driven by the test: each tree put on ``trees`` is notified, an exception raised.

    ``check_interval``: the seconds between notifies it promises (None: no promise).
    """

    def __init__(self, *trees: DeviceTree, check_interval: float | None = None) -> None:
        self.check_interval = check_interval
        self.trees: asyncio.Queue[DeviceTree | BaseException] = asyncio.Queue()
        for tree in trees:
            self.trees.put_nowait(tree)

    async def scan(self, notifier: Any) -> None:
        """Notify each tree as it is put on the queue; raise each exception put there."""
        while True:
            item = await self.trees.get()
            if isinstance(item, BaseException):
                raise item
            notifier.notify(item)
