"""Every hook a devplugin plugin may implement, each with an example implementation.

A plugin is a module (or any object) registered under the ``devplugin.scanners``
entry-point group, or given with ``--plugin-module PATH``; its hook functions are
marked with :data:`host.hookimpl`. Hooks register things; the host validates and runs
them. Each plugin's hooks are called on their own, so one plugin's failure never
reaches another's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from host._api.api_pb2 import AllocateResponse
    from host._config import Option, PluginConfig
    from host.deviceplugin._types import Scanner

PROJECT_NAME = "devplugin"
"""The pluggy project name: hook names start with ``devplugin_``."""

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


@hookspec
def devplugin_options() -> list[Option]:  # type: ignore[empty-body]
    """Declare the options this plugin accepts.

    People set them with ``--set PLUGIN.NAME=VALUE``, ``DEVPLUGIN_SET`` or the
    ``[plugins.PLUGIN]`` table of the config file; the host parses and checks each
    value against its :class:`~host.Option` before any scanner exists, and hands the
    result to :func:`devplugin_scanners` as ``config.options``. Example::

        @hookimpl
        def devplugin_options():
            return [
                Option("shared-dev-num", default=1, help="containers sharing one device"),
                Option("policy", default="none", choices=["none", "balanced"]),
            ]
    """


@hookspec
def devplugin_scanners(config: PluginConfig) -> Iterable[tuple[str, Scanner]]:  # type: ignore[empty-body]
    """Return (or yield) ``(namespace, scanner)`` pairs, one Manager each.

    ``config`` is this plugin's own: ``config.options`` holds its option values,
    ``config.sysfs_root`` and ``config.devfs_root`` the roots to scan under. Each
    namespace must form valid resource names (``namespace/device-type``) and be used
    by no other scanner. Build scanners here; do not start scanning: the host calls
    ``scanner.scan(notifier)``. Raise :class:`~host.ConfigError` for a bad option
    value; the host prints its message and exits with 2. A scanner may promise to
    notify at least every ``check_interval`` seconds
    (:class:`~host.deviceplugin.PeriodicScanner`): served as a DRA driver, its devices
    are then reported Unknown to kubelet when it falls silent. Example::

        @hookimpl
        def devplugin_scanners(config):
            if config.options["shared-dev-num"] < 1:
                raise ConfigError("option shared-dev-num must be >= 1")
            yield "gpu.example.com", GpuScanner(config.sysfs_root, config.options)
    """


@hookspec
def devplugin_post_allocate(
    resource_name: str, response: AllocateResponse
) -> Awaitable[None] | None:
    """Adjust any Allocate response of any resource, after the scanner's own post_allocate.

    Cross-cutting: every running Manager calls the hook of every plugin that
    implements it, with the full resource name. Edit ``response`` in place; it may be
    a coroutine function. An exception fails that one Allocate with an error status
    and never stops a server. Example::

        @hookimpl
        async def devplugin_post_allocate(resource_name, response):
            for container in response.container_responses:
                container.envs["ALLOCATED_RESOURCE"] = resource_name
    """
