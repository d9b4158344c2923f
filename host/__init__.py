"""devplugin-host: one process hosting any number of Kubernetes device plugins.

The public surface for plugin authors: mark hook implementations with
:data:`hookimpl`, declare options with :class:`Option`, raise :class:`ConfigError`
for a person's configuration mistake. The device-plugin framework itself lives in
:mod:`host.deviceplugin`.
"""

from __future__ import annotations

import pluggy

from host._config import ConfigError, Option, PluginConfig

__all__ = ["ConfigError", "Option", "PluginConfig", "__version__", "hookimpl"]

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("devplugin")
"""Marker for a plugin's hook implementations: ``@hookimpl def devplugin_scanners(config): ...``."""
