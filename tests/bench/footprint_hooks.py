"""A bench plugin for ``devplugin-host run --plugin-module``: one resource of 8 devices.

The footprint figure copies this file to ``fp0.py`` ... ``fp7.py``: each copy is a
plugin of its own, named after its file, serving ``<name>.bench.example.com/dev``.
The scanner reports once and then idles, so the idle CPU measured is the host's own.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from host import hookimpl
from host.deviceplugin import DeviceInfo, DeviceSpec, DeviceTree, Notifier

NAME = Path(__file__).stem


class IdleScanner:
    async def scan(self, notifier: Notifier) -> None:
        tree = DeviceTree()
        for index in range(8):
            path = f"/dev/bench/{NAME}/{index}"
            node = DeviceSpec(host_path=path, container_path=path, permissions="rw")
            tree.add_device("dev", f"{NAME}-{index}", DeviceInfo(nodes=[node]))
        notifier.notify(tree)
        await asyncio.Future()


@hookimpl
def devplugin_scanners() -> list[tuple[str, IdleScanner]]:
    return [(f"{NAME}.bench.example.com", IdleScanner())]
