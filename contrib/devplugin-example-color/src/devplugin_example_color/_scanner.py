"""ColorScanner: the seed README's scanner, with a second color and a PostAllocator."""

from __future__ import annotations

import asyncio
from pathlib import Path

from host.deviceplugin import (
    HEALTHY,
    UNHEALTHY,
    DeviceInfo,
    DeviceSpec,
    DeviceTree,
    Notifier,
    pluginapi,
)

__all__ = ["COLORS", "NAMESPACE", "NODE", "PAINTED", "ColorScanner"]

NAMESPACE = "color.example.com"
"""The resources are ``color.example.com/yellow`` and ``color.example.com/green``."""
COLORS = ("yellow", "green")
"""The device types, one resource each."""
NODE = "null"
"""The device node behind every device, relative to the devfs root: ``/dev/null``."""
PAINTED = f"{NAMESPACE}/painted"
"""The annotation :meth:`ColorScanner.post_allocate` adds: the color allocated."""


class ColorScanner:
    """Reports ``count`` devices of each color, all backed by ``<devfs_root>/null``.

    A device is Healthy while the node exists, Unhealthy otherwise; the node is looked
    at again every ``interval`` seconds and kubelet hears of changes only. Being a
    PostAllocator too, it annotates every Allocate response with the color allocated.
    """

    def __init__(
        self, devfs_root: Path = Path("/dev"), *, count: int = 2, interval: float = 5.0
    ) -> None:
        self.devfs_root = Path(devfs_root)
        self.count = count
        self.interval = interval

    def devices(self) -> DeviceTree:
        """Build the current device tree (blocking: it looks at the filesystem)."""
        node = self.devfs_root / NODE
        state = HEALTHY if node.exists() else UNHEALTHY
        # Looked for under the devfs root, reported as the node's own path: kubelet and
        # the container runtime know nothing of where this process sees /dev.
        spec = DeviceSpec(host_path="/dev/null", container_path="/dev/null", permissions="rw")
        tree = DeviceTree()
        for color in COLORS:
            for index in range(self.count):
                info = DeviceInfo(state=state, nodes=(spec,), envs={"COLOR": color})
                tree.add_device(color, f"{color}-{index}", info)
        return tree

    async def scan(self, notifier: Notifier) -> None:
        """Notify the device tree now and whenever it changes, until cancelled."""
        last: DeviceTree | None = None
        while True:
            tree = await asyncio.to_thread(self.devices)
            if tree != last:
                notifier.notify(tree)
                last = tree
            await asyncio.sleep(self.interval)

    def post_allocate(self, response: pluginapi.AllocateResponse) -> None:
        """Add ``color.example.com/painted: <color>`` to each container's annotations.

        The default Allocate has merged the devices' envs into each container response
        already, so ``COLOR`` says which resource this is.
        """
        for container in response.container_responses:
            color = container.envs.get("COLOR")
            if color:
                container.annotations[PAINTED] = color
