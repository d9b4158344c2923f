"""devplugin-example-color: the seed README's example as a devplugin-host plugin.

Serves ``color.example.com/yellow`` and ``color.example.com/green``, each with
``count`` devices backed by ``/dev/null`` (under ``--devfs-root``), and annotates every
allocation with ``color.example.com/painted: <color>``.

Registered under the ``devplugin.scanners`` entry point ``color`` (see pyproject.toml):
``devplugin-host run --enable color --set color.count=3``.

Options
=======
``count`` (default 2)
    Devices of each color.
``interval`` (default 5.0)
    Seconds between two looks at the device node.
"""

from __future__ import annotations

from devplugin_example_color._scanner import COLORS, NAMESPACE, NODE, PAINTED, ColorScanner
from host import ConfigError, Option, PluginConfig, hookimpl

__all__ = [
    "COLORS",
    "NAMESPACE",
    "NODE",
    "PAINTED",
    "ColorScanner",
    "devplugin_options",
    "devplugin_scanners",
]


@hookimpl
def devplugin_options() -> list[Option]:
    """Declare ``count`` and ``interval``; the host parses and checks their types."""
    return [
        Option("count", default=2, help="devices of each color"),
        Option("interval", default=5.0, help="seconds between two looks at the device node"),
    ]


@hookimpl
def devplugin_scanners(config: PluginConfig) -> list[tuple[str, ColorScanner]]:
    """Return the one scanner, for namespace ``color.example.com``; check the values first."""
    count = config.options["count"]
    interval = config.options["interval"]
    if count < 1:
        raise ConfigError(f"plugin {config.name!r}: option count must be >= 1, got {count}")
    if interval <= 0:
        raise ConfigError(
            f"plugin {config.name!r}: option interval must be > 0 seconds, got {interval}"
        )
    return [(NAMESPACE, ColorScanner(config.devfs_root, count=count, interval=interval))]
