"""A plugin for ``devplugin-host run --plugin-module``: ``twin.example.com/dev``, two devices.

Used by test_two_hosts.py to run two host processes on one plugin directory.
"""

from __future__ import annotations

import asyncio

from host import hookimpl
from host.deviceplugin import DeviceInfo, DeviceSpec, DeviceTree, Notifier


class TwinScanner:
    async def scan(self, notifier: Notifier) -> None:
        tree = DeviceTree()
        for index in range(2):
            path = f"/dev/twin{index}"
            node = DeviceSpec(host_path=path, container_path=path, permissions="rw")
            tree.add_device("dev", f"twin{index}", DeviceInfo(nodes=[node]))
        notifier.notify(tree)
        await asyncio.Future()


@hookimpl
def devplugin_scanners() -> list[tuple[str, TwinScanner]]:
    return [("twin.example.com", TwinScanner())]
