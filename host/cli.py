"""The ``devplugin-host`` command: ``plugins``, ``scan``, ``run``, ``simulate``, ``dra``.

Thin on purpose: parse options, resolve settings (:mod:`host._config`), discover and
activate plugins (:mod:`host._loader`), hand over to the runtime (:mod:`host._host`).
Heavy modules (grpc, the plugins) are imported only by the command that needs them,
so ``devplugin-host --version`` and ``--help`` stay fast.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click
from click.core import ParameterSource

from host import __version__
from host._config import (
    DEFAULT_CDI_DIR,
    DEFAULT_DRA_PLUGIN_DIR,
    DEFAULT_PLUGIN_DIR,
    DEFAULT_PLUGINS_REGISTRY_DIR,
    DEFAULT_POD_RESOURCES_SOCKET,
    LOG_FORMATS,
    LOG_LEVELS,
    REGISTRATION_MODES,
    ConfigError,
    HostSettings,
    OptionSetting,
    check_instance_id,
    check_node_name,
    check_plugin_dir,
    check_seconds,
    parse_set_item,
    read_config_file,
    resolve_settings,
    split_env_items,
    split_names,
)
from host._dra_config import check_dra_plugins, check_dra_settings, dra_options

if TYPE_CHECKING:
    from host._loader import Activation, PluginRecord
    from host.testing import KubeletMode

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("host")

EXIT_FAILED = 1
EXIT_USAGE = 2


class _UsageError(click.ClickException):
    """A person's mistake: one line on stderr, exit status 2."""

    exit_code = EXIT_USAGE


class _NothingToRun(click.ClickException):
    """No scanner to run (scan, run and simulate alike): one line on stderr, exit status 1."""

    exit_code = EXIT_FAILED


class _OneLineErrors(click.Group):
    """Every error click reports (usage errors included) is one line: ``Error: ...``.

    Click prints a usage error with the command's usage and a hint on lines of their own;
    here the message says where to look instead, so scripts and logs get one line.
    """

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command line; in standalone mode print errors as one line and exit."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            raise SystemExit(EXIT_FAILED) from None
        except click.ClickException as exc:
            message = " ".join(exc.format_message().split())
            if isinstance(exc, click.UsageError) and exc.ctx is not None:
                message += f" (see {exc.ctx.command_path} --help)"
            click.echo(f"Error: {message}", err=True)
            raise SystemExit(exc.exit_code) from None
        raise SystemExit(result if isinstance(result, int) else 0)


@contextmanager
def _config_errors() -> Iterator[None]:
    try:
        yield
    except ConfigError as exc:
        raise _UsageError(str(exc)) from None


def _option(*decls: str, envvar: str, **kwargs: Any) -> Callable[[F], F]:
    return click.option(*decls, envvar=envvar, show_envvar=True, **kwargs)


_logging_option_level = _option(
    "--log-level",
    envvar="DEVPLUGIN_LOG_LEVEL",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    help="Least severe level logged (plugins included). Default: info; warning for "
    "simulate, whose own output shows what happens.",
)
_logging_option_format = _option(
    "--log-format",
    envvar="DEVPLUGIN_LOG_FORMAT",
    type=click.Choice(LOG_FORMATS),
    show_default="text",
    help="json: one JSON object per line.",
)


def _selection_options(command: F) -> F:
    decorators = [
        _option(
            "--enable",
            envvar="DEVPLUGIN_ENABLE",
            multiple=True,
            metavar="NAMES",
            help="Only these plugins (comma-separated, repeatable). Default: every plugin.",
        ),
        _option(
            "--disable",
            envvar="DEVPLUGIN_DISABLE",
            multiple=True,
            metavar="NAMES",
            help="Never load these plugins (comma-separated, repeatable); wins over --enable.",
        ),
        _option(
            "--plugin-module",
            "plugin_modules",
            envvar="DEVPLUGIN_PLUGIN_MODULE",
            multiple=True,
            type=click.Path(path_type=Path),
            metavar="PATH",
            help="Load a .py file of hook implementations as a plugin named after the file.",
        ),
        _option(
            "--config",
            envvar="DEVPLUGIN_CONFIG",
            type=click.Path(path_type=Path),
            metavar="FILE",
            help="TOML file: top-level keys are these options without '--' (enable, "
            "plugin-dir, ...), [plugins.NAME] tables set plugin options. Command line and "
            "environment win over it.",
        ),
        _logging_option_level,
        _logging_option_format,
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def _set_option(command: F) -> F:
    # DEVPLUGIN_SET is read by _set_items, not by click: click would split it at every
    # space, and a value (JSON) may hold spaces.
    return click.option(
        "--set",
        "set_items",
        multiple=True,
        metavar="PLUGIN.KEY=VALUE",
        help="Set a plugin option (repeatable). Also DEVPLUGIN_SET: items separated by "
        "whitespace outside brackets and quotes (JSON keeps its spaces), or one a line; "
        "--set overrides it key by key. "
        "Options of a plugin that is not enabled are checked too. `devplugin-host plugins` "
        "lists the options.  [env var: DEVPLUGIN_SET]",
    )(command)


def _root_options(command: F) -> F:
    command = _option(
        "--devfs-root",
        envvar="DEVPLUGIN_DEVFS_ROOT",
        type=click.Path(path_type=Path),
        show_default="/dev",
        help="Where scanners look for device nodes.",
    )(command)
    return _option(
        "--sysfs-root",
        envvar="DEVPLUGIN_SYSFS_ROOT",
        type=click.Path(path_type=Path),
        show_default="/sys",
        help="Where scanners look for sysfs.",
    )(command)


def _finite_seconds(
    ctx: click.Context, param: click.Parameter, value: float | None
) -> float | None:
    """Refuse ``nan`` and ``inf``, which ``FloatRange`` lets through (they compare false)."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value!r} is not a finite number of seconds greater than 0")
    return value


SECONDS: dict[str, Any] = {
    "type": click.FloatRange(min=0, min_open=True),
    "callback": _finite_seconds,
}
"""How a number of seconds is declared: finite and greater than 0."""


def _timeout_option(help_text: str) -> Callable[[F], F]:
    return _option(
        "--timeout",
        envvar="DEVPLUGIN_TIMEOUT",
        **SECONDS,
        default=10.0,
        show_default=True,
        help=help_text,
    )


def _json_option(command: F) -> F:
    return _option("--json", "as_json", envvar="DEVPLUGIN_JSON", is_flag=True, help="Print JSON.")(
        command
    )


def _kubelet_options(command: F) -> F:
    decorators = [
        _option(
            "--instance-id",
            envvar="DEVPLUGIN_INSTANCE_ID",
            metavar="ID",
            help="Name this host's sockets after ID (a hash of it), so that two hosts serve "
            "the same resources side by side during a rolling update; the DaemonSet sets it "
            "to the pod UID. Default: none (sockets named <namespace>-<type>.sock).",
        ),
        _option(
            "--registration",
            envvar="DEVPLUGIN_REGISTRATION",
            type=click.Choice(REGISTRATION_MODES),
            show_default="kubelet-socket",
            help="kubelet-socket: Register on kubelet.sock; plugins-registry: put each "
            "socket in the plugins registry directory, where kubelet's plugin watcher finds it.",
        ),
        _option(
            "--plugins-registry-dir",
            envvar="DEVPLUGIN_PLUGINS_REGISTRY_DIR",
            type=click.Path(path_type=Path),
            show_default=str(DEFAULT_PLUGINS_REGISTRY_DIR),
            help="Kubelet's plugin watcher directory (with --registration plugins-registry, "
            "and for --dra drivers).",
        ),
        _option(
            "--pod-resources-socket",
            envvar="DEVPLUGIN_POD_RESOURCES_SOCKET",
            type=click.Path(path_type=Path),
            show_default=str(DEFAULT_POD_RESOURCES_SOCKET),
            help="Kubelet's PodResources API, read to learn which devices are in use "
            "(unknown while it is absent).",
        ),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


_dra_option = _option(
    "--dra",
    envvar="DEVPLUGIN_DRA",
    multiple=True,
    metavar="NAMES",
    help="Serve these enabled plugins as DRA drivers (ResourceSlices, DRA kubelet plugin; "
    "driver name = each namespace) instead of device plugins (comma-separated, repeatable).",
)


def _dra_options(command: F) -> F:
    decorators = [
        _dra_option,
        _option(
            "--node-name",
            envvar="NODE_NAME",
            help="This node's name (required with --dra; the DaemonSet sets NODE_NAME).",
        ),
        _option(
            "--kubeconfig",
            envvar="KUBECONFIG",
            type=click.Path(path_type=Path),
            metavar="FILE",
            help="The API server for --dra. Default: the in-cluster service account.",
        ),
        _option(
            "--dra-plugin-dir",
            envvar="DEVPLUGIN_DRA_PLUGIN_DIR",
            type=click.Path(path_type=Path),
            show_default=str(DEFAULT_DRA_PLUGIN_DIR),
            help="Kubelet's DRA plugin directory: DRIVER/dra.sock and its checkpoint.",
        ),
        _option(
            "--dra-cleanup-on-exit",
            envvar="DEVPLUGIN_DRA_CLEANUP_ON_EXIT",
            is_flag=True,
            default=None,
            help="Delete this node's ResourceSlices on stop. Default: they stay for the "
            "next instance to adopt.",
        ),
        _option(
            "--dra-publish-grace",
            envvar="DEVPLUGIN_DRA_PUBLISH_GRACE",
            type=float,
            metavar="SECONDS",
            show_default="60",
            help="How long publishing the ResourceSlices may keep failing (after a first "
            "success) before /readyz reports the DRA driver not ready; 0: at the first "
            "failed attempt.",
        ),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def _settings(params: dict[str, Any], **defaults: Any) -> HostSettings:
    """Resolve the command's settings: command line > environment > --config file > defaults.

    ``defaults`` replace the host's defaults for this command (simulate logs warnings only).
    """
    ctx = click.get_current_context()
    given = dict(params)
    for name in ("enable", "disable", "dra"):
        given[name] = split_names(given.get(name) or ())
    given["plugin_modules"] = tuple(given.get("plugin_modules") or ())
    config = read_config_file(given["config"]) if given.get("config") else None
    sources = _given_sources(ctx)
    checks: list[tuple[str, str, Callable[[Any], str | None]]] = [
        ("instance_id", "--instance-id", check_instance_id),
        ("node_name", "--node-name", check_node_name),
        ("dra_publish_grace", "--dra-publish-grace", check_seconds),
    ]
    for name, option, check in checks:
        if given.get(name) is not None and (problem := check(given[name])) is not None:
            raise ConfigError(
                f"{sources.get(name, option)} {given[name]!r} cannot be used: {problem}"
            )
    return resolve_settings(
        given,
        config,
        _set_items(params.get("set_items") or ()),
        defaults=defaults,
        given_sources=sources,
    )


def _given_sources(ctx: click.Context) -> dict[str, str]:
    """Each option given on the command line or in the environment, by where it came from."""
    sources = {}
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name is None:
            continue
        source = ctx.get_parameter_source(param.name)
        if source is ParameterSource.COMMANDLINE:
            sources[param.name] = max(param.opts, key=len)
        elif source is ParameterSource.ENVIRONMENT and isinstance(param.envvar, str):
            sources[param.name] = param.envvar
    return sources


def _set_items(items: Sequence[str]) -> list[OptionSetting]:
    # Each --set is its own setting, so DEVPLUGIN_SET and --set merge key by key
    # (the command line wins) instead of the command line hiding the variable.
    settings = [
        parse_set_item(item, "DEVPLUGIN_SET")
        for item in split_env_items(os.environ.get("DEVPLUGIN_SET", ""))
    ]
    return settings + [parse_set_item(item, "--set") for item in items]


def _discover(settings: HostSettings) -> list[PluginRecord]:
    from host._host import configure_logging
    from host._loader import discover_plugins

    configure_logging(settings.log_level, settings.log_format)
    return discover_plugins(
        enable=settings.enable,
        disable=settings.disable,
        plugin_modules=settings.plugin_modules,
        options_of={setting.plugin for setting in settings.options},
        sources=settings.sources,
    )


def _activate(settings: HostSettings) -> Activation:
    from host._loader import activate_plugins

    activation = activate_plugins(
        _discover(settings),
        settings.options,
        sysfs_root=settings.sysfs_root,
        devfs_root=settings.devfs_root,
    )
    for plugin in activation.failures:
        log.error("%s", plugin.describe_failure())
    return activation


def _require_scanners(activation: Activation) -> None:
    """Stop with one line and exit status 1 when there is no scanner to run."""
    if activation.scanners:
        return
    if not any(plugin.enabled for plugin in activation.plugins):
        reason = "no plugin is enabled (see --enable and --disable; `devplugin-host plugins`)"
    elif activation.failures:
        reason = "every enabled plugin failed or returned no scanner (see the errors above)"
    else:
        reason = "the enabled plugins returned no scanner"
    raise _NothingToRun(f"no scanners to run: {reason}")


@click.group(
    "devplugin-host",
    cls=_OneLineErrors,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, "--version", "-V", prog_name="devplugin-host")
def main() -> None:
    """Host any number of Kubernetes device plugins in one process.

    Plugins are Python packages registered under the `devplugin.scanners` entry
    point group (or .py files given with --plugin-module). Every option also reads
    the environment variable shown in its help (DEVPLUGIN_...).
    """


@main.command()
@_selection_options
@_json_option
def plugins(as_json: bool, **params: Any) -> None:
    """List every discovered plugin: source, version, options, load error.

    Plugins left out with --enable/--disable are listed as disabled and not imported.
    """
    with _config_errors():
        records = _discover(_settings(params))
    if as_json:
        click.echo(json.dumps([record.to_json() for record in records], indent=2))
        return
    for record in records:
        state = "" if record.enabled else "  (disabled)"
        click.echo(f"{record.name}  {record.source}{state}")
        for option in record.options:
            click.echo(f"    {option.name} ({option.type_name}, default {option.default!r})")
            if option.help:
                click.echo(f"        {option.help}")
            if option.choices:
                click.echo(f"        choices: {', '.join(option.choices)}")
        if record.error:
            click.echo(f"    error: {record.error}")


@main.command(
    epilog="Exit status: 0 when every scanner reported its devices (none found is no "
    "error); 1 when there is nothing to scan, a plugin failed to load or a scanner raised, "
    "returned without notifying or timed out; 2 for a usage or configuration error."
)
@_selection_options
@_set_option
@_root_options
@_timeout_option("Seconds to wait for each scanner's first report.")
@_json_option
def scan(timeout: float, as_json: bool, **params: Any) -> None:
    """Run the enabled scanners until each has reported once, and print their devices.

    No kubelet needed: a dry run for operators and a check of scanners against fake
    sysfs/devfs trees. --json prints one object mapping each resource name
    (namespace/type) to its devices.
    """
    import asyncio

    from host._host import scan_all, scan_report

    with _config_errors():
        activation = _activate(_settings(params))
    _require_scanners(activation)
    outcomes = asyncio.run(scan_all(activation.scanners, timeout))
    for outcome in outcomes:
        if outcome.error:
            log.error(
                "plugin %r namespace %s: %s",
                outcome.record.plugin,
                outcome.record.namespace,
                outcome.error,
            )
    report = scan_report(outcomes)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print_table(report)
        for outcome in outcomes:
            if outcome.tree is not None and not outcome.tree:
                click.echo(f"{outcome.record.namespace}: no devices found")
    if activation.failures or any(outcome.error for outcome in outcomes):
        raise SystemExit(EXIT_FAILED)


def _print_table(report: dict[str, list[dict[str, Any]]]) -> None:
    rows = [("RESOURCE", "ID", "HEALTH", "NUMA", "NODES")] + [
        (
            resource,
            device["id"],
            device["health"],
            ",".join(map(str, device["topology"])) or "-",
            " ".join(device["nodes"]) or "-",
        )
        for resource, devices in report.items()
        for device in devices
    ]
    if len(rows) == 1:
        return
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[4]]).rstrip())


@main.command(
    epilog="Exit status: 0 after SIGTERM/SIGINT; 1 when there is nothing to serve or every "
    "manager has stopped; 2 for a usage or configuration error."
)
@_selection_options
@_set_option
@_root_options
@_option(
    "--plugin-dir",
    envvar="DEVPLUGIN_PLUGIN_DIR",
    type=click.Path(path_type=Path),
    show_default=str(DEFAULT_PLUGIN_DIR),
    help="Where kubelet looks for device-plugin sockets.",
)
@_option(
    "--kubelet-socket",
    envvar="DEVPLUGIN_KUBELET_SOCKET",
    type=click.Path(path_type=Path),
    show_default="PLUGIN_DIR/kubelet.sock",
    help="Kubelet's registration socket.",
)
@_option(
    "--cdi-dir",
    envvar="DEVPLUGIN_CDI_DIR",
    type=click.Path(path_type=Path),
    show_default=str(DEFAULT_CDI_DIR),
    help="Where CDI spec files are written.",
)
@_option(
    "--metrics-address",
    envvar="DEVPLUGIN_METRICS_ADDRESS",
    metavar="HOST:PORT",
    help="Serve /metrics (Prometheus), /healthz, /readyz and /status over HTTP here, "
    "e.g. 0.0.0.0:9464. Default: off.",
)
@_kubelet_options
@_dra_options
def run(**params: Any) -> None:
    """Serve every enabled plugin's scanners to kubelet, all in one event loop.

    Each (plugin, namespace) gets its own Manager; a plugin that fails to load or
    crashes is reported and the others go on. SIGTERM or SIGINT stops every server
    cleanly (sockets and CDI specs removed).

    With --dra, those plugins are DRA drivers instead: their devices are published as
    this node's ResourceSlices and kubelet prepares claims through them.
    """
    from host._host import run_host
    from host._http import parse_address

    with _config_errors():
        settings = _settings(params)
        check_plugin_dir(
            settings.plugin_dir,
            settings.source("plugin_dir", "--plugin-dir"),
            settings.kubelet_socket,
        )
        address = None
        if settings.metrics_address is not None:
            source = settings.source("metrics_address", "--metrics-address")
            address = parse_address(settings.metrics_address, source)
        check_dra_settings(settings)
        activation = _activate(settings)
        dra = dra_options(settings, activation.plugins, activation.scanners)
    _require_scanners(activation)
    raise SystemExit(
        run_host(
            activation.scanners,
            activation.post_allocators,
            plugin_dir=settings.plugin_dir,
            kubelet_socket=settings.kubelet_socket,
            cdi_dir=settings.cdi_dir,
            plugins=activation.plugins,
            metrics_address=address,
            instance_id=settings.instance_id,
            registration=settings.registration,
            plugins_registry_dir=settings.plugins_registry_dir,
            pod_resources_socket=settings.pod_resources_socket,
            dra=dra,
        )
    )


DEFAULT_STATUS_ADDRESS = "127.0.0.1:9464"


@main.command(
    epilog="Exit status: 0 when the host answered; 1 when it cannot be reached or answers "
    "with an error; 2 for a bad address."
)
@_option(
    "--address",
    envvar="DEVPLUGIN_METRICS_ADDRESS",
    metavar="HOST:PORT",
    default=DEFAULT_STATUS_ADDRESS,
    show_default=True,
    help="The --metrics-address of the running host (0.0.0.0 or :: means this machine).",
)
@_option(
    "--all-devices",
    envvar="DEVPLUGIN_ALL_DEVICES",
    is_flag=True,
    help="With --json, list every device of every resource (default: the first 100 of each, "
    "the count of the others in more_devices).",
)
@_timeout_option("Seconds to wait for the host's answer.")
@_json_option
def status(address: str, all_devices: bool, timeout: float, as_json: bool) -> None:
    """Show a running host: its plugins, and each resource with its devices.

    Reads /status from the host's --metrics-address and prints it as `simulate` prints
    what kubelet sees (--json: the document as the host sent it).
    """
    from host._health import STATUS_DEVICES
    from host._status_client import TEXT_DEVICES, fetch_status, status_text

    devices = None if all_devices else STATUS_DEVICES if as_json else TEXT_DEVICES
    with _config_errors():
        try:
            document = fetch_status(address, timeout, devices)
        except OSError as exc:
            click.echo(f"devplugin-host status: {exc}", err=True)
            raise SystemExit(EXIT_FAILED) from None
    click.echo(json.dumps(document, indent=2) if as_json else status_text(document))


KUBELET_MODES = ("1.24", "1.25", "1.36")
"""The kubelet generations the fake kubelet reproduces (``host.testing.KubeletMode``)."""


@main.command(
    epilog="Exit status: 0 when every resource registered, every --allocate succeeded and "
    "every kubelet restart was followed by re-registration; 1 when there is nothing to "
    "simulate, a plugin failed to load, "
    "a resource did not register within --timeout (at the start or after a restart), or an "
    "allocation failed; 2 for a usage or configuration error."
)
@_selection_options
@_set_option
@_root_options
@_option(
    "--allocate",
    "allocations",
    envvar="DEVPLUGIN_ALLOCATE",
    multiple=True,
    metavar="RESOURCE=N",
    help="Once RESOURCE has registered, admit a container asking for N of its devices as "
    "kubelet does (GetPreferredAllocation first when offered, then Allocate) and print the "
    "response (repeatable).",
)
@_option(
    "--restart-kubelet-every",
    "restart_every",
    envvar="DEVPLUGIN_RESTART_KUBELET_EVERY",
    **SECONDS,
    metavar="SECONDS",
    help="Restart the fake kubelet this often (after the first registrations) to show "
    "re-registration. Not with --once.",
)
@_option(
    "--duration",
    envvar="DEVPLUGIN_DURATION",
    **SECONDS,
    metavar="SECONDS",
    help="Stop after this many seconds. Default: run until SIGINT (Ctrl-C) or SIGTERM.",
)
@_option(
    "--once",
    envvar="DEVPLUGIN_ONCE",
    is_flag=True,
    help="Stop as soon as every resource has registered and sent its devices (and the "
    "allocations are done); with --json, print one JSON document.",
)
@_timeout_option(
    "Seconds to wait for every resource to register and send its devices (and to "
    "register again after a kubelet restart)."
)
@_option(
    "--kubelet-mode",
    envvar="DEVPLUGIN_KUBELET_MODE",
    type=click.Choice(KUBELET_MODES),
    default="1.25",
    show_default=True,
    help="Kubelet generation to reproduce: 1.24 (options from Register), 1.25 (1.25-1.35), "
    "1.36 (endpoints per socket).",
)
@_option(
    "--registration",
    envvar="DEVPLUGIN_REGISTRATION",
    type=click.Choice(REGISTRATION_MODES),
    default="kubelet-socket",
    show_default=True,
    help="kubelet-socket: the plugins call Register on kubelet.sock; plugins-registry: "
    "their sockets go to the fake kubelet's plugin watcher directory.",
)
@_option(
    "--json",
    "as_json",
    envvar="DEVPLUGIN_JSON",
    is_flag=True,
    help="Print JSON: one document with --once, else one object per line.",
)
@_dra_option
def simulate(
    allocations: tuple[str, ...],
    restart_every: float | None,
    duration: float | None,
    once: bool,
    timeout: float,
    kubelet_mode: str,
    registration: str,
    as_json: bool,
    **params: Any,
) -> None:
    """Serve the enabled plugins to a built-in fake kubelet and show what kubelet sees.

    No cluster, no root: the plugin and CDI directories are in a fresh directory under
    /tmp, removed at the end. Shows each resource with its devices (health, NUMA node),
    registrations, re-registrations and rejections, as a table and timestamped event
    lines (results on stdout, logs on stderr). Example:
    devplugin-host simulate --enable generic --once

    With --dra, those plugins are DRA drivers against a built-in fake API server and
    DRA kubelet: the published ResourceSlices are shown, and --allocate DRIVER/TYPE=N
    prepares a claim of N devices and shows its CDI IDs and spec files.
    """
    from host._simulate import SimulationPlan, parse_allocation
    from host._simulate import simulate as run_simulation

    if once and duration is not None:
        raise _UsageError("--once and --duration exclude each other: pick one way to stop")
    if once and restart_every is not None:
        raise _UsageError(
            "--restart-kubelet-every needs a run that lasts (--duration, or none of "
            "--once/--duration): --once stops before the first restart"
        )
    with _config_errors():
        requests = tuple(parse_allocation(item) for item in allocations)
        settings = _settings(params, log_level="warning")
        activation = _activate(settings)
        check_dra_plugins(settings, activation.plugins, activation.scanners)
    _require_scanners(activation)
    plan = SimulationPlan(
        allocations=requests,
        restart_every=restart_every,
        duration=duration,
        once=once,
        timeout=timeout,
        kubelet_mode=cast("KubeletMode", kubelet_mode),
        registration=registration,
        dra=frozenset(settings.dra),
    )
    problems = run_simulation(
        activation.scanners, activation.post_allocators, plan, as_json=as_json, write=click.echo
    )
    if problems or activation.failures:
        raise SystemExit(EXIT_FAILED)


def _add_subcommands() -> None:
    # Commands kept in modules of their own import this module's helpers, so they are
    # added once everything above exists.
    from host._cli_dra import dra

    main.add_command(dra)


if __name__ == "__main__":
    # `python -m host.cli`: this copy is __main__; run the importable module's group,
    # which has every subcommand (theirs import host.cli, not __main__).
    from host.cli import main as _main

    _main()
else:
    _add_subcommands()
