"""Checks of ``--dra`` and the options beside it; what ``run`` hands to the DRA side.

Every mistake is a :class:`~host._config.ConfigError` (one line, exit status 2) raised
before anything is served: ``--dra`` without ``--node-name``, a plugin in ``--dra``
that is not enabled, a namespace that cannot be a DRA driver name, no usable API
server configuration.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from host._config import ConfigError, HostSettings, check_plugin_dir

if TYPE_CHECKING:
    from host._loader import PluginRecord, ScannerRecord
    from host.dra import DraOptions

__all__ = ["check_dra_plugins", "check_dra_settings", "dra_options"]


def check_dra_settings(settings: HostSettings) -> None:
    """Check what ``--dra`` needs before plugins are loaded: node name, directories, API server."""
    if not settings.dra:
        return
    source = settings.source("dra", "--dra")
    if not settings.node_name:
        raise ConfigError(
            f"{source} needs this node's name: give --node-name (NODE_NAME; the DaemonSet "
            "sets it from the pod's spec.nodeName)"
        )
    check_plugin_dir(settings.dra_plugin_dir, settings.source("dra_plugin_dir", "--dra-plugin-dir"))
    check_plugin_dir(
        settings.plugins_registry_dir,
        settings.source("plugins_registry_dir", "--plugins-registry-dir"),
    )
    from host.dra._client import kube_config_error

    problem = kube_config_error(settings.kubeconfig)
    if problem is None:
        return
    if settings.kubeconfig is not None:
        where = settings.source("kubeconfig", "--kubeconfig")
        raise ConfigError(f"{where} {settings.kubeconfig}: {problem}")
    raise ConfigError(
        f"{source} needs the API server: not in a cluster (no service account token) and "
        f"no kubeconfig ({problem}); give --kubeconfig (KUBECONFIG)"
    )


def check_dra_plugins(
    settings: HostSettings, plugins: Sequence[PluginRecord], scanners: Sequence[ScannerRecord]
) -> None:
    """Check that every ``--dra`` plugin is enabled and each of its namespaces is a driver name."""
    if not settings.dra:
        return
    source = settings.source("dra", "--dra")
    enabled = sorted(plugin.name for plugin in plugins if plugin.enabled)
    for name in settings.dra:
        if name not in enabled:
            listed = ", ".join(enabled) or "none"
            raise ConfigError(
                f"{source} names plugin {name!r}, which is not enabled (enabled: {listed}; "
                "see --enable, --disable and `devplugin-host plugins`)"
            )
    from host.dra._sockets import validate_driver_name

    for record in scanners:
        if record.plugin in settings.dra:
            try:
                validate_driver_name(record.namespace)
            except ValueError as exc:
                raise ConfigError(
                    f"{source}: plugin {record.plugin!r} cannot be served as a DRA driver: {exc}"
                ) from None


def dra_options(
    settings: HostSettings, plugins: Sequence[PluginRecord], scanners: Sequence[ScannerRecord]
) -> DraOptions | None:
    """Check the ``--dra`` plugins and return how to serve them (None without ``--dra``)."""
    check_dra_plugins(settings, plugins, scanners)
    if not settings.dra:
        return None
    from host.dra import DraOptions
    from host.dra._serving import PUBLISH_GRACE

    assert settings.node_name is not None, "check_dra_settings first"
    grace = settings.dra_publish_grace
    return DraOptions(
        plugins=frozenset(settings.dra),
        node_name=settings.node_name,
        kubeconfig=settings.kubeconfig,
        plugin_dir=settings.dra_plugin_dir,
        registry_dir=settings.plugins_registry_dir,
        cleanup_on_exit=settings.dra_cleanup_on_exit,
        publish_grace=PUBLISH_GRACE if grace is None else grace,
    )
