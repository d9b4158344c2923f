"""The host started in-process for tests: :func:`start_host` and its :class:`HostHandle`.

The same code as ``devplugin-host run`` discovers, loads and activates the plugins and
builds their servers: a Manager per device-plugin namespace, and with ``dra=`` a DRA
driver (:class:`~host.dra.DraPlugin`) per namespace of those plugins, against the API
server of a kubeconfig. No pytest needed: the fixtures of :mod:`host.testing` wrap it.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, Self

from host._config import ConfigError, OptionSetting
from host._host import build_dra_servers, build_managers, plugin_locator, serve_all
from host._http import HttpServer, parse_address
from host._loader import (
    ENTRY_POINT_GROUP,
    PluginRecord,
    ScannerRecord,
    _Candidate,
    _load,
    activate_plugins,
    discover_plugins,
)
from host._metrics import HostMetrics
from host.deviceplugin import Manager, ResourceStatus
from host.deviceplugin._watchdog import LoopWatchdog
from host.dra import DraOptions, DraPlugin
from host.testing._http import HttpReply, http_get

if TYPE_CHECKING:
    import lightkube

__all__ = ["HostHandle", "PluginModule", "start_host"]

PluginModule = str | os.PathLike[str] | ModuleType
"""A ``plugin_modules`` item: a ``.py`` file (as ``--plugin-module``) or an imported module."""

_OPTIONS_SOURCE = "run_host(options=...)"


class HostHandle:
    """The host running in-process: its Managers, DRA drivers, resources, and :meth:`stop`.

    Made by :func:`start_host` (or the ``run_host`` fixture). It serves until
    :meth:`stop`, which stops every Manager and DRA driver the way ``devplugin-host
    run`` does on SIGTERM (device-plugin sockets and CDI specs removed; DRA sockets
    removed, prepared claims, their CDI specs and the ResourceSlices kept). Also an
    async context manager.
    """

    def __init__(
        self,
        managers: Sequence[Manager],
        task: asyncio.Task[int],
        stop_event: asyncio.Event,
        *,
        plugins: Sequence[str],
        failures: Sequence[str],
        plugin_dir: Path,
        kubelet_socket: Path,
        cdi_dir: Path,
        sysfs_root: Path,
        devfs_root: Path,
        metrics: HostMetrics | None = None,
        metrics_address: str | None = None,
        watchdog: LoopWatchdog | None = None,
        dra_plugins: Sequence[DraPlugin] = (),
    ) -> None:
        self._managers = {manager.namespace: manager for manager in managers}
        self._dra_plugins = {plugin.namespace: plugin for plugin in dra_plugins}
        self.watchdog = watchdog
        """The loop watchdog: ``watchdog.stalls`` lists each stall with its culprit."""
        self._task = task
        self._stop_event = stop_event
        self.plugins = tuple(plugins)
        """Names of the plugins that loaded and activated, in load order."""
        self.failures = tuple(failures)
        """One line per enabled plugin left out (only with ``check=False``)."""
        self.plugin_dir = plugin_dir
        """Where the resources' sockets are (the kubelet's directory)."""
        self.kubelet_socket = kubelet_socket
        """The registration socket the Managers use."""
        self.cdi_dir = cdi_dir
        """Where CDI spec files are written."""
        self.sysfs_root = sysfs_root
        """The sysfs root the plugins received in ``config.sysfs_root``."""
        self.devfs_root = devfs_root
        """The devfs root the plugins received in ``config.devfs_root``."""
        self.metrics = metrics
        """The host's metrics (with ``metrics_address``), e.g. for ``loop_stalled``."""
        self.metrics_address = metrics_address
        """Where ``/metrics``, ``/healthz``, ``/readyz``, ``/status`` are served (real port)."""

    async def http_get(self, path: str, *, method: str = "GET") -> HttpReply:
        """Ask the host's metrics address for ``path`` (``/metrics``, ``/readyz``, ...)."""
        if self.metrics_address is None:
            raise RuntimeError("the host serves no metrics: start it with metrics_address=")
        return await http_get(self.metrics_address, path, method=method)

    def __repr__(self) -> str:
        state = "running" if self.running else f"stopped (exit status {self.exit_status})"
        served = [*self._managers, *(f"{name} (DRA)" for name in self._dra_plugins)]
        return f"HostHandle({', '.join(served) or 'no namespaces'}; {state})"

    @property
    def managers(self) -> Mapping[str, Manager]:
        """Every Manager, by namespace."""
        return dict(self._managers)

    @property
    def dra_plugins(self) -> Mapping[str, DraPlugin]:
        """Every DRA driver served (``dra=``), by driver name (the plugin's namespace).

        Each has its ``publisher`` (ResourceSlices) and ``driver`` (kubelet side).
        """
        return dict(self._dra_plugins)

    @property
    def resources(self) -> Mapping[str, ResourceStatus]:
        """The status of every resource served, by resource name (``namespace/type``)."""
        return {
            name: status
            for manager in self._managers.values()
            for name, status in sorted(manager.resources.items())
        }

    @property
    def running(self) -> bool:
        """Whether the host still serves (not stopped, and some Manager still running)."""
        return not self._task.done()

    @property
    def exit_status(self) -> int | None:
        """What ``devplugin-host run`` would exit with, once stopped; None while running.

        0 after :meth:`stop`; 1 when every Manager ended by itself.
        """
        if not self._task.done() or self._task.cancelled():
            return None
        return self._task.result()

    async def stop(self) -> int:
        """Stop every Manager and wait until each has cleaned up; return the exit status.

        Idempotent. A failure of the host itself (not of a plugin: plugins' failures are
        logged, as by ``run``) is raised here.
        """
        self._stop_event.set()
        return await self._task

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def start_host(
    *,
    plugin_dir: str | os.PathLike[str],
    kubelet_socket: str | os.PathLike[str] | None = None,
    enable: Sequence[str] | None = None,
    disable: Sequence[str] = (),
    plugin_modules: Sequence[PluginModule] = (),
    plugins: Mapping[str, object] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    sysfs_root: str | os.PathLike[str] = "/sys",
    devfs_root: str | os.PathLike[str] = "/dev",
    cdi_dir: str | os.PathLike[str] | None = None,
    check: bool = True,
    metrics_address: str | None = None,
    dra: Sequence[str] = (),
    node_name: str | None = None,
    kubeconfig: str | os.PathLike[str] | None = None,
    dra_plugin_dir: str | os.PathLike[str] | None = None,
    plugins_registry_dir: str | os.PathLike[str] | None = None,
) -> HostHandle:
    """Start the host in the running event loop, as ``devplugin-host run`` would; return it.

    Plugins are discovered, loaded and activated by the same code as ``run``
    (entry points of the ``devplugin.scanners`` group, ``--plugin-module`` files), then
    served by one Manager per namespace until :meth:`HostHandle.stop`:

    ``plugin_modules``
        ``.py`` files (plugin name: the file's stem, as ``--plugin-module``) or imported
        modules of hook implementations (plugin name: the last part of the module's
        name), so a plugin needs no entry point to be tested.
    ``plugins``
        Plugin objects by name: a module or any object with ``@hookimpl`` methods. A
        name given here or by a module hides an installed entry point of that name, so
        the code under test wins over an installed copy.
    ``enable`` / ``disable``
        As ``--enable`` / ``--disable``. Without ``enable``, only the plugins given by
        ``plugin_modules`` and ``plugins`` run, or every installed plugin when neither
        is given; ``enable=[]`` selects none.
    ``options``
        Option values by plugin, as ``--set PLUGIN.KEY=VALUE`` or the config file:
        ``{"color": {"count": 3}}``; strings are parsed, other values checked.
    ``sysfs_root``, ``devfs_root``, ``cdi_dir``, ``kubelet_socket``
        As the options of ``run``; ``cdi_dir`` defaults to ``<plugin_dir>/cdi``.
    ``check``
        Raise :class:`RuntimeError` when an enabled plugin is left out or nothing is
        left to serve (default). With ``check=False`` the host starts anyway, the way
        ``run`` does, and :attr:`HostHandle.failures` says what was left out.
    ``metrics_address``
        As ``--metrics-address``: serve ``/metrics``, ``/healthz``, ``/readyz`` and
        ``/status`` there (``"127.0.0.1:0"`` picks a free port; the real one is
        :attr:`HostHandle.metrics_address`, :meth:`HostHandle.http_get` asks it).
    ``dra``, ``node_name``, ``kubeconfig``, ``dra_plugin_dir``, ``plugins_registry_dir``
        As ``--dra`` and the options beside it: those plugins are served as DRA
        drivers (:attr:`HostHandle.dra_plugins`) instead of device plugins, publishing
        ResourceSlices to the API server of ``kubeconfig`` (e.g.
        :meth:`~host.testing.FakeApiServer.write_kubeconfig`) for Node ``node_name``
        and registering with kubelet's plugin watcher in ``plugins_registry_dir``
        (:class:`~host.testing.FakeDraKubelet`); their sockets and checkpoints go to
        ``dra_plugin_dir`` (default ``<plugin_dir>/dra``, and ``<plugin_dir>/registry``).

    A person's mistake (an unknown plugin name or option, a bad value, a ``ConfigError``
    from a hook) raises :class:`host.ConfigError`, as ``run`` exits with status 2.
    """
    plugin_path = Path(plugin_dir)
    records = _plugin_records(
        enable=enable,
        disable=disable,
        plugin_modules=plugin_modules,
        plugins=dict(plugins or {}),
    )
    activation = activate_plugins(
        records,
        _option_settings(options or {}),
        sysfs_root=Path(sysfs_root),
        devfs_root=Path(devfs_root),
    )
    failures = [record.describe_failure() for record in activation.failures]
    if check and failures:
        raise RuntimeError("start_host: " + "; ".join(failures))
    if check and not activation.scanners:
        raise RuntimeError(
            "start_host: no scanners to run: no plugin was selected or none returned a "
            f"scanner (plugins: {', '.join(r.name for r in records if r.enabled) or 'none'})"
        )
    dra_options = _dra_options(
        dra,
        activation.scanners,
        node_name=node_name,
        kubeconfig=kubeconfig,
        plugin_dir=Path(dra_plugin_dir) if dra_plugin_dir is not None else plugin_path / "dra",
        registry_dir=(
            Path(plugins_registry_dir)
            if plugins_registry_dir is not None
            else plugin_path / "registry"
        ),
    )
    as_dra = dra_options.plugins if dra_options is not None else frozenset()
    device_plugins = [record for record in activation.scanners if record.plugin not in as_dra]
    drivers = [record for record in activation.scanners if record.plugin in as_dra]
    kubelet_path = Path(kubelet_socket) if kubelet_socket is not None else None
    cdi_path = Path(cdi_dir) if cdi_dir is not None else plugin_path / "cdi"
    metrics = http = None
    if metrics_address is not None:
        from host._health import http_routes

        metrics = HostMetrics(activation.plugins)
        http = HttpServer(http_routes(metrics), *parse_address(metrics_address))
        await http.start()
    servers = build_managers(
        device_plugins,
        activation.post_allocators,
        plugin_dir=plugin_path,
        kubelet_socket=kubelet_path,
        cdi_dir=cdi_path,
        metrics=metrics,
    )
    managers = [server for _, server in servers if isinstance(server, Manager)]
    client, dra_servers = build_dra_servers(drivers, dra_options, cdi_dir=cdi_path, metrics=metrics)
    if drivers and client is None:
        if http is not None:
            await http.stop()
        raise RuntimeError("start_host: the DRA drivers cannot be served (see the log)")
    servers += dra_servers
    stop = asyncio.Event()
    on_stall = None if metrics is None else metrics.watchdog_stalled
    watchdog = LoopWatchdog(plugin_locator(activation.scanners), on_stall=on_stall)
    task = asyncio.create_task(
        _serve(servers, stop, metrics, http, watchdog, client), name=f"host serving {plugin_path}"
    )
    return HostHandle(
        managers,
        task,
        stop,
        plugins=[record.name for record in activation.plugins if record.active],
        failures=failures,
        plugin_dir=plugin_path,
        kubelet_socket=kubelet_path or plugin_path / "kubelet.sock",
        cdi_dir=cdi_path,
        sysfs_root=Path(sysfs_root),
        devfs_root=Path(devfs_root),
        metrics=metrics,
        metrics_address=None if http is None else http.address,
        watchdog=watchdog,
        dra_plugins=[server for _, server in dra_servers if isinstance(server, DraPlugin)],
    )


def _dra_options(
    dra: Sequence[str],
    scanners: Sequence[ScannerRecord],
    *,
    node_name: str | None,
    kubeconfig: str | os.PathLike[str] | None,
    plugin_dir: Path,
    registry_dir: Path,
) -> DraOptions | None:
    """Check ``dra=`` as ``run`` checks ``--dra``; return the options, None without DRA."""
    if isinstance(dra, str):
        raise ConfigError(f"start_host: dra must be a list of plugin names, got {dra!r}")
    if not dra:
        return None
    if not node_name:
        raise ConfigError("start_host: dra=... needs node_name (the Node of the slices)")
    served = {record.plugin for record in scanners}
    for name in dra:
        if name not in served:
            raise ConfigError(
                f"start_host: dra names plugin {name!r}, which is not enabled or has no "
                f"scanner (serving: {', '.join(sorted(served)) or 'none'})"
            )
    from host.dra._client import kube_config_error
    from host.dra._sockets import validate_driver_name

    for record in scanners:
        if record.plugin in dra:
            try:
                validate_driver_name(record.namespace)
            except ValueError as exc:
                raise ConfigError(f"start_host: plugin {record.plugin!r}: {exc}") from None
    config = Path(kubeconfig) if kubeconfig is not None else None
    problem = kube_config_error(config)
    if problem is not None:
        raise ConfigError(f"start_host: kubeconfig {config}: {problem}")
    return DraOptions(
        frozenset(dra),
        node_name,
        kubeconfig=config,
        plugin_dir=plugin_dir,
        registry_dir=registry_dir,
    )


async def _serve(
    servers: Sequence[tuple[str, Any]],
    stop: asyncio.Event,
    metrics: HostMetrics | None,
    http: HttpServer | None,
    watchdog: LoopWatchdog,
    client: lightkube.AsyncClient | None,
) -> int:
    try:
        return await serve_all(servers, stop, metrics=metrics, watchdog=watchdog)
    finally:
        if http is not None:
            await http.stop()
        if client is not None:
            await client.close()


def _plugin_records(
    *,
    enable: Sequence[str] | None,
    disable: Sequence[str],
    plugin_modules: Sequence[PluginModule],
    plugins: dict[str, object],
) -> list[PluginRecord]:
    """Discover the plugins as ``run`` does, plus the plugin objects given directly."""
    paths: list[Path] = []
    for item in plugin_modules:
        if isinstance(item, ModuleType):
            name = item.__name__.rpartition(".")[2]
            if name in plugins:
                raise ValueError(f"start_host: plugin name {name!r} is given twice")
            plugins[name] = item
        else:
            paths.append(Path(item))
    clashes = sorted({path.stem for path in paths} & set(plugins))
    if clashes:
        raise ValueError(f"start_host: plugin name {clashes[0]!r} is given twice")
    selected = list(enable) if enable is not None else None
    if selected is None and (paths or plugins):
        selected = [path.stem for path in paths] + list(plugins)
    installed = {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    hidden = sorted(installed & set(plugins))
    wanted = None if selected is None else [name for name in selected if name not in plugins]
    records: list[PluginRecord] = []
    if wanted is None or wanted:
        records = discover_plugins(
            enable=wanted or (),
            disable=[name for name in disable if name not in plugins] + hidden,
            plugin_modules=paths,
        )
        records = [record for record in records if record.name not in hidden]
    for name, plugin in plugins.items():
        if (selected is not None and name not in selected) or name in disable:
            records.append(PluginRecord(name, enabled=False))
            continue
        records.append(_load(_object_candidate(name, plugin)))
    return records


def _object_candidate(name: str, plugin: object) -> _Candidate:
    source = getattr(plugin, "__file__", None)
    return _Candidate(
        name, lambda: plugin, module_path=Path(source) if isinstance(source, str) else None
    )


def _option_settings(options: Mapping[str, Mapping[str, Any]]) -> list[OptionSetting]:
    if isinstance(options, str) or not isinstance(options, Mapping):
        raise ConfigError(
            f"{_OPTIONS_SOURCE} expects {{plugin: {{option: value}}}}, got {options!r}"
        )
    settings = []
    for plugin, values in options.items():
        if isinstance(values, str) or not isinstance(values, Mapping):
            raise ConfigError(
                f"{_OPTIONS_SOURCE}: the options of plugin {plugin!r} must be a mapping "
                f"of option name to value, got {values!r}"
            )
        settings += [
            OptionSetting(plugin, key, value, _OPTIONS_SOURCE) for key, value in values.items()
        ]
    return settings
