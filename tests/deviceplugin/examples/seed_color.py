"""The seed README's example, verbatim but for the plugin directory (argv[1])."""

import asyncio
import sys

from host.deviceplugin import HEALTHY, DeviceInfo, DeviceSpec, DeviceTree, Manager


class ColorScanner:
    async def scan(self, notifier):
        while True:
            tree = DeviceTree()
            tree.add_device(
                "yellow",
                "dev0",
                DeviceInfo(
                    state=HEALTHY,
                    nodes=[
                        DeviceSpec(
                            host_path="/dev/null", container_path="/dev/null", permissions="rw"
                        )
                    ],
                ),
            )
            notifier.notify(tree)
            await asyncio.sleep(5)


Manager(
    "color.example.com", ColorScanner(), plugin_dir=sys.argv[1], cdi_dir=sys.argv[1] + "/cdi"
).run()
