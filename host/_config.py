"""Plugin options, per-plugin configuration, and the host's settings.

Settings come from four places; a later one wins: defaults, the ``--config`` TOML
file, ``DEVPLUGIN_*`` environment variables, the command line. Every mistake a
person can make here raises :class:`ConfigError` with one line saying what to fix.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = [
    "DEFAULT_CDI_DIR",
    "DEFAULT_DRA_PLUGIN_DIR",
    "DEFAULT_PLUGINS_REGISTRY_DIR",
    "DEFAULT_PLUGIN_DIR",
    "DEFAULT_POD_RESOURCES_SOCKET",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MAX_CONFIG_FILE_BYTES",
    "MAX_NESTING",
    "MAX_VALUE_BYTES",
    "REGISTRATION_MODES",
    "ConfigError",
    "ConfigFile",
    "HostSettings",
    "Option",
    "OptionSetting",
    "PluginConfig",
    "check_instance_id",
    "check_node_name",
    "check_plugin_dir",
    "check_seconds",
    "parse_set_item",
    "read_config_file",
    "resolve_plugin_options",
    "resolve_settings",
    "split_env_items",
    "split_names",
]

DEFAULT_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins/")
DEFAULT_CDI_DIR = Path("/var/run/cdi")
DEFAULT_PLUGINS_REGISTRY_DIR = Path("/var/lib/kubelet/plugins_registry")
DEFAULT_POD_RESOURCES_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
DEFAULT_DRA_PLUGIN_DIR = Path("/var/lib/kubelet/plugins")
REGISTRATION_MODES = ("kubelet-socket", "plugins-registry")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")

MAX_CONFIG_FILE_BYTES = 1024 * 1024
"""The largest ``--config`` file read (1 MiB); a device-plugin host's config is a few KiB."""
MAX_VALUE_BYTES = 64 * 1024
"""The largest option value from ``--set`` or ``DEVPLUGIN_SET`` (64 KiB, UTF-8)."""
MAX_NESTING = 32
"""The deepest nesting of arrays and tables (TOML) or lists and objects (JSON) accepted."""

_OPTION_NAME = re.compile(r"[A-Za-z0-9][-A-Za-z0-9_]*")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class ConfigError(Exception):
    """A person's configuration mistake: the host prints the message and exits with 2.

    Raise it from a hook (``devplugin_scanners``) when an option value or combination is
    invalid; the message should name the option and the bad value.
    """


def _parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"expected a boolean (true/false, yes/no, on/off, 1/0), got {text!r}")


def _parse_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None


def _parse_float(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None


def split_env_items(text: str) -> list[str]:
    """Split a list-valued environment variable such as ``DEVPLUGIN_SET`` into items.

    With several non-blank lines, each line is one item (a value may then hold any
    spaces). Otherwise items are separated by whitespace outside brackets and quotes,
    so a JSON value keeps its spaces::

        DEVPLUGIN_SET='gpu.shared-dev-num=2 gpu.allocation-policy=balanced'
        DEVPLUGIN_SET='generic.devices=[{"name": "kvm", "paths": ["/dev/kvm"]}] gpu.bypath=all'
        DEVPLUGIN_SET='generic.devices=[{"name": "kvm", "paths": ["/dev/kvm"]}]
        gpu.shared-dev-num=2'
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1:
        return lines
    items: list[str] = []
    current: list[str] = []
    depth = 0
    quote: str | None = None
    escaped = False
    for char in text:
        if quote is not None:
            if escaped:
                escaped = False
            elif char == "\\" and quote == '"':
                escaped = True
            elif char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth = max(depth - 1, 0)
        elif char.isspace() and depth == 0:
            if current:
                items.append("".join(current))
                current = []
            continue
        current.append(char)
    if current:
        items.append("".join(current))
    return items


def nesting_depth(value: Any) -> int:
    """How deeply lists/tuples and dicts nest in ``value`` (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, depth + 1)
        if depth + 1 > MAX_NESTING:
            break  # deep enough to refuse: no need to walk the rest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def text_nesting_depth(text: str) -> int:
    """How deeply ``[``/``{`` brackets nest in JSON or TOML ``text``, outside strings.

    TOML comments (``#`` to the end of the line) are skipped too.
    """
    deepest = depth = 0
    quote: str | None = None
    escaped = comment = False
    for char in text:
        if comment:
            comment = char != "\n"
        elif quote is not None:
            if escaped:
                escaped = False
            elif char == "\\" and quote == '"':
                escaped = True
            elif char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "#":
            comment = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(depth - 1, 0)
    return deepest


def check_value_limits(value: Any, source: str, what: str) -> None:
    """Raise ConfigError when ``value`` from ``source`` is too big or nested too deeply.

    Strings (command line, environment) are measured as text: at most
    :data:`MAX_VALUE_BYTES` and :data:`MAX_NESTING` levels of brackets; parsed values
    (a TOML file) by their structure.
    """
    if isinstance(value, str):
        size = len(value.encode("utf-8", errors="surrogatepass"))
        if size > MAX_VALUE_BYTES:
            raise ConfigError(
                f"{what} (from {source}) is {size} bytes long; at most {MAX_VALUE_BYTES} are "
                "accepted (use a --config file for large settings)"
            )
        depth = text_nesting_depth(value)
    else:
        depth = nesting_depth(value)
    if depth > MAX_NESTING:
        raise ConfigError(
            f"{what} (from {source}) nests lists or tables more than {MAX_NESTING} levels deep"
        )


def split_names(values: Iterable[str]) -> tuple[str, ...]:
    """Split comma- or space-separated names (``--enable a,b --enable c``) into a tuple."""
    return tuple(name for value in values for name in re.split(r"[,\s]+", value) if name)


@dataclass(frozen=True)
class Option:
    """One option a plugin accepts, set with ``--set PLUGIN.NAME=VALUE`` or the config file.

    Without ``type`` the value follows the default's type (bool, int, float, str, list
    of str): strings from the command line or environment are parsed, config-file
    values are checked; a list option takes a comma-separated string and its value is
    a tuple of str. A ``type`` callable receives the raw value (a string, or the value
    as the TOML file has it) and returns the converted one, raising ValueError (or
    :class:`ConfigError`, with the plugin's own message) when it is invalid. ``choices``
    limits the accepted values (each item, for a list option)::

        Option("shared-dev-num", default=1, help="containers sharing one device")
        Option("policy", default="none", choices=["none", "balanced", "packed"])
    """

    name: str
    default: Any = None
    help: str = ""
    type: Callable[[Any], Any] | None = None
    choices: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _OPTION_NAME.fullmatch(self.name):
            raise ValueError(f"option name must be letters, digits, '-' and '_', got {self.name!r}")
        if isinstance(self.default, list):
            object.__setattr__(self, "default", tuple(self.default))
        if self.choices is not None:
            choices = tuple(self.choices)
            if not choices or not all(isinstance(choice, str) for choice in choices):
                raise ValueError(f"option {self.name}: choices must be non-empty strings")
            object.__setattr__(self, "choices", choices)
            if self.default is not None:
                self._check_choices(self.default)

    @property
    def type_name(self) -> str:
        """The value type as shown to people: bool, int, float, str, list, or the type's name."""
        kind = self._kind() if self.type is None or self.default is None else _kind_of(self.default)
        if kind is tuple:
            return "list"
        return getattr(kind, "__name__", repr(kind))

    def convert(self, value: Any) -> Any:
        """Return ``value`` as this option's type, or raise ValueError saying what was expected.

        Strings (command line, environment, or a quoted TOML value) are parsed; other
        values (TOML integers, booleans, arrays) are checked against the type.
        """
        kind = self._kind()
        result: Any
        if self.type is not None:
            try:
                result = self.type(value)
            except ConfigError:
                raise
            except (ValueError, TypeError) as exc:
                raise ValueError(f"invalid value {value!r}: {exc}") from None
        elif isinstance(value, str):
            result = self._parse(kind, value)
        elif kind in (bool, int) and type(value) is kind:  # not bool for int: TOML keeps them apart
            result = value
        elif kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            result = float(value)
        elif kind is tuple and isinstance(value, list | tuple):
            if not all(isinstance(item, str) for item in value):
                raise ValueError(f"expected a list of strings, got {value!r}")
            result = tuple(value)
        else:
            raise ValueError(f"expected {_EXPECTED[kind]}, got {value!r}")
        self._check_choices(result)
        return result

    def _kind(self) -> Callable[[Any], Any]:
        return self.type if self.type is not None else _kind_of(self.default)

    @staticmethod
    def _parse(kind: Callable[[Any], Any], text: str) -> Any:
        if kind is bool:
            return _parse_bool(text)
        if kind is int:
            return _parse_int(text)
        if kind is float:
            return _parse_float(text)
        if kind is tuple:
            return split_names([text])
        return text

    def _check_choices(self, value: Any) -> None:
        if self.choices is None:
            return
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            if item not in self.choices:
                raise ValueError(f"expected one of {', '.join(self.choices)}; got {item!r}")


def _kind_of(default: Any) -> type:
    for kind in (bool, int, float, tuple):  # bool first: it is an int subclass
        if isinstance(default, kind):
            return kind
    return str


_EXPECTED: dict[Callable[[Any], Any], str] = {
    bool: "a boolean (true/false)",
    int: "an integer",
    float: "a number",
    tuple: "a list of strings",
    str: "a string",
}


@dataclass(frozen=True)
class PluginConfig:
    """What one plugin's hooks receive: its own option values and the host's roots."""

    name: str
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    sysfs_root: Path = Path("/sys")
    devfs_root: Path = Path("/dev")


@dataclass(frozen=True)
class OptionSetting:
    """One ``PLUGIN.KEY = VALUE`` setting, with where it came from for error messages."""

    plugin: str
    key: str
    value: Any
    source: str


def parse_set_item(text: str, source: str = "--set") -> OptionSetting:
    """Parse ``PLUGIN.KEY=VALUE`` (the value stays a string, parsed later by its Option)."""
    target, equals, value = text.partition("=")
    plugin, dot, key = target.strip().partition(".")
    if not equals or not dot or not plugin or not key:
        raise ConfigError(
            f"{source} expects PLUGIN.KEY=VALUE (e.g. gpu.shared-dev-num=2), got {text!r}"
        )
    return OptionSetting(plugin, key.strip(), value, source)


def resolve_plugin_options(
    plugin: str, declared: Sequence[Option], settings: Iterable[OptionSetting]
) -> Mapping[str, Any]:
    """Return ``plugin``'s option values: defaults, then each of its settings in order.

    Raises ConfigError for an option the plugin does not declare (listing those it
    does) or a value its Option rejects.
    """
    by_name = {option.name: option for option in declared}
    values = {option.name: option.default for option in declared}
    for setting in settings:
        if setting.plugin != plugin:
            continue
        check_value_limits(
            setting.value, setting.source, f"plugin {plugin!r}: option {setting.key}"
        )
        option = by_name.get(setting.key)
        if option is None:
            known = ", ".join(sorted(by_name)) if by_name else "it has no options"
            raise ConfigError(
                f"plugin {plugin!r} has no option {setting.key!r} (from {setting.source}); "
                f"its options: {known}"
            )
        try:
            values[option.name] = option.convert(setting.value)
        except ConfigError as exc:  # the plugin's own message, from its Option.type
            raise ConfigError(f"{exc} (from {setting.source})") from None
        except ValueError as exc:
            raise ConfigError(
                f"plugin {plugin!r}: option {option.name} (from {setting.source}): {exc}"
            ) from None
    return MappingProxyType(values)


# Host settings in the config file: TOML key -> (field name, kind). A kind of "names"
# takes a list of strings or one comma-separated string.
_FILE_SETTINGS: dict[str, tuple[str, str]] = {
    "enable": ("enable", "names"),
    "disable": ("disable", "names"),
    "plugin-module": ("plugin_modules", "paths"),
    "plugin-dir": ("plugin_dir", "path"),
    "kubelet-socket": ("kubelet_socket", "path"),
    "cdi-dir": ("cdi_dir", "path"),
    "sysfs-root": ("sysfs_root", "path"),
    "devfs-root": ("devfs_root", "path"),
    "log-level": ("log_level", "level"),
    "log-format": ("log_format", "format"),
    "metrics-address": ("metrics_address", "address"),
    "instance-id": ("instance_id", "instance"),
    "registration": ("registration", "registration"),
    "plugins-registry-dir": ("plugins_registry_dir", "path"),
    "pod-resources-socket": ("pod_resources_socket", "path"),
    "dra": ("dra", "names"),
    "node-name": ("node_name", "text"),
    "kubeconfig": ("kubeconfig", "path"),
    "dra-plugin-dir": ("dra_plugin_dir", "path"),
    "dra-cleanup-on-exit": ("dra_cleanup_on_exit", "bool"),
    "dra-publish-grace": ("dra_publish_grace", "seconds"),
}


@dataclass(frozen=True)
class ConfigFile:
    """A parsed ``--config`` file: host settings by field name, option settings in order."""

    path: Path | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    options: tuple[OptionSetting, ...] = ()


def read_config_file(path: str | Path) -> ConfigFile:
    """Read and check a TOML config file; any problem is a ConfigError naming the file.

    Top-level keys are the host's settings (``enable = ["gpu"]``, ``plugin-dir = ...``);
    the ``[plugins.NAME]`` tables hold each plugin's options::

        enable = ["gpu", "fpga"]
        [plugins.gpu]
        shared-dev-num = 2
    """
    path = Path(path)
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_CONFIG_FILE_BYTES + 1)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {_reason(exc)}") from None
    if len(raw) > MAX_CONFIG_FILE_BYTES:
        raise ConfigError(
            f"config file {path} is larger than {MAX_CONFIG_FILE_BYTES // 1024} KiB; "
            "a config file this big is a mistake"
        )
    # tomllib parses nested arrays and inline tables recursively: refuse deep nesting
    # before parsing, not with a RecursionError from deep inside it.
    if text_nesting_depth(text) > MAX_NESTING:
        raise ConfigError(
            f"config file {path}: arrays or inline tables nest more than {MAX_NESTING} levels deep"
        )
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None
    except RecursionError:  # a nesting the bracket count above does not see
        raise ConfigError(f"config file {path}: nested too deeply to read") from None
    if nesting_depth(data) > MAX_NESTING:
        raise ConfigError(
            f"config file {path}: tables or arrays nest more than {MAX_NESTING} levels deep"
        )
    settings: dict[str, Any] = {}
    options: list[OptionSetting] = []
    for key, value in data.items():
        if key == "plugins":
            options.extend(_file_plugin_tables(path, value))
            continue
        if key not in _FILE_SETTINGS:
            known = ", ".join(sorted([*_FILE_SETTINGS, "plugins"]))
            raise ConfigError(
                f"config file {path}: unknown setting {key!r}; known settings: {known}"
            )
        name, kind = _FILE_SETTINGS[key]
        settings[name] = _file_value(path, key, kind, value)
    return ConfigFile(path, MappingProxyType(settings), tuple(options))


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def _file_plugin_tables(path: Path, value: Any) -> list[OptionSetting]:
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ConfigError(
            f"config file {path}: 'plugins' must hold one table per plugin, e.g. [plugins.gpu]"
        )
    return [
        OptionSetting(plugin, key, item, f"config file {path}")
        for plugin, table in value.items()
        for key, item in table.items()
    ]


def _file_value(path: Path, key: str, kind: str, value: Any) -> Any:
    if kind == "names" and isinstance(value, str):
        return split_names([value])
    if kind in ("names", "paths"):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"config file {path}: {key} must be a list of strings, got {value!r}")
        return split_names(value) if kind == "names" else tuple(Path(item) for item in value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"config file {path}: {key} must be true or false, got {value!r}")
        return value
    if kind == "seconds":
        problem = "it is no number" if isinstance(value, bool | str) else check_seconds(value)
        if problem is not None:
            raise ConfigError(f"config file {path}: {key} {value!r} cannot be used: {problem}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"config file {path}: {key} must be a string, got {value!r}")
    if kind == "path":
        return Path(value)
    if kind == "instance":
        problem = check_instance_id(value)
        if problem is not None:
            raise ConfigError(f"config file {path}: {key} {value!r} cannot be used: {problem}")
        return value
    if kind == "text":
        problem = check_node_name(value)
        if problem is not None:
            raise ConfigError(f"config file {path}: {key} {value!r} cannot be used: {problem}")
        return value
    if kind == "address":
        return value
    allowed = {"level": LOG_LEVELS, "format": LOG_FORMATS}.get(kind, REGISTRATION_MODES)
    if value.lower() not in allowed:
        raise ConfigError(
            f"config file {path}: {key} must be one of {', '.join(allowed)}, got {value!r}"
        )
    return value.lower()


def check_instance_id(value: str) -> str | None:
    """Return why ``value`` cannot be an instance id, or None (see ``--instance-id``)."""
    # Imported here: host.deviceplugin pulls in grpc, and --help must stay fast.
    from host.deviceplugin._names import instance_id_error

    return instance_id_error(value)


def check_seconds(value: Any) -> str | None:
    """Return why ``value`` cannot be a duration in seconds (a finite number >= 0), or None."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "it is no number"
    if not math.isfinite(value) or value < 0:
        return "a duration is a finite number of seconds, 0 or more"
    return None


_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_SUBDOMAIN_MAX = 253


def check_node_name(value: str) -> str | None:
    """Return why ``value`` cannot be a Node's name, or None (see ``--node-name``).

    A Node's name is a DNS subdomain: lower-case letters, digits, '-' and '.', at most
    253 characters (Kubernetes object name validation).
    """
    if not value:
        return "it is empty"
    if len(value) > _DNS_SUBDOMAIN_MAX or not _DNS_SUBDOMAIN.fullmatch(value):
        return (
            "a node name is a lower-case DNS subdomain (letters a-z, digits, '-' and '.') "
            f"of at most {_DNS_SUBDOMAIN_MAX} characters"
        )
    return None


@dataclass(frozen=True)
class HostSettings:
    """The host's resolved settings, whichever source each came from."""

    enable: tuple[str, ...] = ()
    disable: tuple[str, ...] = ()
    plugin_modules: tuple[Path, ...] = ()
    options: tuple[OptionSetting, ...] = ()
    plugin_dir: Path = DEFAULT_PLUGIN_DIR
    kubelet_socket: Path | None = None
    cdi_dir: Path = DEFAULT_CDI_DIR
    sysfs_root: Path = Path("/sys")
    devfs_root: Path = Path("/dev")
    log_level: str = "info"
    log_format: str = "text"
    metrics_address: str | None = None
    instance_id: str | None = None
    """Distinguishes this host's sockets from another host's (a rolling update's old pod)."""
    registration: str = "kubelet-socket"
    """How kubelet learns about the resources: Register on kubelet.sock, or the plugin watcher."""
    plugins_registry_dir: Path = DEFAULT_PLUGINS_REGISTRY_DIR
    pod_resources_socket: Path = DEFAULT_POD_RESOURCES_SOCKET
    dra: tuple[str, ...] = ()
    """Plugins served as DRA drivers instead of device plugins."""
    node_name: str | None = None
    """This node's name (required with ``dra``)."""
    kubeconfig: Path | None = None
    """The API server's kubeconfig for DRA; None: the in-cluster service account."""
    dra_plugin_dir: Path = DEFAULT_DRA_PLUGIN_DIR
    dra_cleanup_on_exit: bool = False
    """Delete the node's ResourceSlices when the host stops."""
    dra_publish_grace: float | None = None
    """Seconds publishing may keep failing before a DRA driver is not ready; None: 60."""
    sources: Mapping[str, str] = field(default_factory=dict)
    """Where each setting not left at its default came from, for error messages:
    ``{"enable": "config file host.toml (enable)"}``, ``{"enable": "DEVPLUGIN_ENABLE"}``."""

    def source(self, name: str, default: str) -> str:
        """Where setting ``name`` came from, or ``default`` (the option's own name)."""
        return self.sources.get(name, default)


def resolve_settings(
    given: Mapping[str, Any],
    config: ConfigFile | None = None,
    options: Sequence[OptionSetting] = (),
    *,
    defaults: Mapping[str, Any] | None = None,
    given_sources: Mapping[str, str] | None = None,
) -> HostSettings:
    """Merge the host's settings from every source into one HostSettings.

    ``given`` (command line or environment; None = not given) wins over the config
    file, which wins over ``defaults``, which win over HostSettings' own defaults.
    Option settings are applied in order: the config file's first, then ``options``.
    ``given_sources`` names where each given setting came from (``--enable``,
    ``DEVPLUGIN_ENABLE``); settings from the file are named after it and its key.
    """
    config = config or ConfigFile()
    values: dict[str, Any] = dict(defaults or {})
    sources: dict[str, str] = {}
    file_keys = {field_name: key for key, (field_name, _kind) in _FILE_SETTINGS.items()}
    for name in HostSettings.__dataclass_fields__:
        if name in ("options", "sources"):
            continue
        value = given.get(name)
        if value is None or (isinstance(value, tuple) and not value):
            value = config.settings.get(name)
            if value is not None and name in file_keys:
                sources[name] = f"config file {config.path} ({file_keys[name]})"
        elif given_sources and name in given_sources:
            sources[name] = given_sources[name]
        if value is not None:
            values[name] = value
    return HostSettings(
        **values, options=(*config.options, *options), sources=MappingProxyType(sources)
    )


_SHORTEST_SOCKET = "/x.sock"
_MAX_SOCKET_PATH = 107  # bytes in sun_path, without its final NUL


def check_plugin_dir(path: Path, source: str, kubelet_socket: Path | None = None) -> None:
    """Raise ConfigError unless plugin sockets can be created in ``path`` (from ``source``).

    The directory must be a directory (or creatable: its nearest existing parent a
    directory this process may write), writable, and short enough for a socket path in
    it to fit the Unix limit of 107 bytes; the same limit applies to ``kubelet_socket``.
    """
    length = len(os.fsencode(path))
    if length + len(_SHORTEST_SOCKET) > _MAX_SOCKET_PATH:
        raise ConfigError(
            f"{source} {path} is {length} bytes long: no socket path in it fits the Unix "
            f"limit of {_MAX_SOCKET_PATH} bytes; choose a shorter directory"
        )
    if kubelet_socket is not None and len(os.fsencode(kubelet_socket)) > _MAX_SOCKET_PATH:
        raise ConfigError(
            f"kubelet socket {kubelet_socket} is {len(os.fsencode(kubelet_socket))} bytes "
            f"long; Unix socket paths have at most {_MAX_SOCKET_PATH}"
        )
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is not a directory" if existing == path else f"is under {existing}, a file"
        raise ConfigError(f"{source} {path} {where}; plugin sockets need a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        action = "create sockets in it" if existing == path else f"create it in {existing}"
        raise ConfigError(
            f"{source} {path}: no permission to {action} (run as root, or choose a "
            "directory this user may write)"
        )
