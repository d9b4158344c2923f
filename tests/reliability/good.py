"""The well-behaved plugin of the isolation checks: ``good.example.com/dev``, two devices.

Loaded with ``--plugin-module`` (plugin name ``good``, the file's stem) beside a
misbehaving one, by the chaos suite (``test_isolation.py``) and by benchmark figure 9
(``tests/bench/isolation.py``); its Allocate must keep answering whatever the other does.
"""

from __future__ import annotations

import asyncio

from host import hookimpl
from host.deviceplugin import DeviceInfo, DeviceSpec, DeviceTree, Notifier


class GoodScanner:
    """Notifies two devices (``g0``, ``g1``, each ``/dev/null``) once, then idles."""

    async def scan(self, notifier: Notifier) -> None:
        tree = DeviceTree()
        for index in range(2):
            node = DeviceSpec(host_path="/dev/null")
            tree.add_device("dev", f"g{index}", DeviceInfo(nodes=[node]))
        notifier.notify(tree)
        await asyncio.Event().wait()


@hookimpl
def devplugin_scanners() -> list[tuple[str, GoodScanner]]:
    return [("good.example.com", GoodScanner())]
