"""Plugin discovery and activation, with isolation: one broken plugin never stops the rest.

Discovery (:func:`discover_plugins`) finds the ``devplugin.scanners`` entry points
and ``--plugin-module`` files, imports the selected ones one by one (blocked names are
never imported) and registers each with a pluggy PluginManager of its own.
Activation (:func:`activate_plugins`) resolves each plugin's options, calls its
``devplugin_scanners`` hook with its own config, and validates what comes back. A
plugin that fails anywhere is reported with its name and distribution and left out.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import importlib.util
import inspect
import logging
import sys
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from host import _hookspecs
from host._config import ConfigError, Option, OptionSetting, PluginConfig, resolve_plugin_options
from host.deviceplugin._guard import PluginCaller, PluginError, call_hook, describe

if TYPE_CHECKING:
    from host._api.api_pb2 import AllocateResponse
    from host.deviceplugin._types import Scanner

__all__ = [
    "ENTRY_POINT_GROUP",
    "Activation",
    "PluginHookError",
    "PluginHooks",
    "PluginRecord",
    "PostAllocateHook",
    "ScannerRecord",
    "activate_plugins",
    "discover_plugins",
]

log = logging.getLogger("host.loader")

ENTRY_POINT_GROUP = "devplugin.scanners"
"""The entry-point group plugins register under; the entry-point name is the plugin name."""

_HOOK_NAMES = ("devplugin_options", "devplugin_scanners", "devplugin_post_allocate")

PostAllocateHook = Callable[[str, "AllocateResponse"], Awaitable[None]]
"""A plugin's ``devplugin_post_allocate`` as the Manager calls it."""


class PluginHookError(Exception):
    """A plugin's hook raised, or returned something the host cannot use."""


class PluginHooks:
    """Typed calls into one plugin's hook implementations (its own PluginManager).

    Every failure except :class:`ConfigError` comes out as :class:`PluginHookError`
    with a message that says which hook failed and how.
    """

    def __init__(self, name: str, manager: pluggy.PluginManager) -> None:
        self.name = name
        self._manager = manager
        self._caller: PluginCaller | None = None  # made on first use, on the loop

    def implements(self, hook_name: str) -> bool:
        """Tell whether the plugin implements the hook ``hook_name``."""
        caller = getattr(self._manager.hook, hook_name, None)
        return caller is not None and bool(caller.get_hookimpls())

    def options(self) -> tuple[Option, ...]:
        """Call ``devplugin_options``: the plugin's declared options, names unique."""
        options: list[Option] = []
        try:
            results = call_hook(
                self.name, "devplugin_options", self._manager.hook.devplugin_options
            )
            for result in results:
                options.extend(_items(result, "devplugin_options", "a list of Option"))
        except PluginHookError:
            raise
        except PluginError as exc:
            raise _hook_failed("devplugin_options", exc.__cause__ or exc) from exc.__cause__
        except Exception as exc:
            raise _hook_failed("devplugin_options", exc) from exc
        seen: set[str] = set()
        for option in options:
            if not isinstance(option, Option):
                raise PluginHookError(
                    f"devplugin_options must return host.Option objects, got {option!r}"
                )
            if option.name in seen:
                raise PluginHookError(f"devplugin_options declares option {option.name!r} twice")
            seen.add(option.name)
        return tuple(options)

    def scanners(self, config: PluginConfig) -> list[tuple[str, Scanner]]:
        """Call ``devplugin_scanners(config)``: its ``(namespace, scanner)`` pairs, shape-checked.

        A :class:`ConfigError` from the hook passes through unchanged.
        """
        pairs: list[tuple[str, Scanner]] = []
        try:
            results = call_hook(
                self.name,
                "devplugin_scanners",
                self._manager.hook.devplugin_scanners,
                config=config,
            )
            for result in results:
                for item in _items(result, "devplugin_scanners", "(namespace, scanner) pairs"):
                    pairs.append(_scanner_pair(item))
        except (PluginHookError, ConfigError):
            raise
        except PluginError as exc:
            if isinstance(exc.__cause__, ConfigError):
                raise exc.__cause__ from None
            raise _hook_failed("devplugin_scanners", exc.__cause__ or exc) from exc.__cause__
        except Exception as exc:
            raise _hook_failed("devplugin_scanners", exc) from exc
        return pairs

    async def post_allocate(self, resource_name: str, response: AllocateResponse) -> None:
        """Call ``devplugin_post_allocate`` behind the plugin's wall, with a deadline.

        Plain implementations run in the plugin's worker threads, coroutines on the
        loop. Any failure comes out as a PluginError naming the plugin, for the
        Allocate's error status.
        """
        if self._caller is None:
            self._caller = PluginCaller(self.name)
        await self._caller.call(
            f"devplugin_post_allocate for {resource_name}",
            self._post_allocate_results,
            resource_name,
            response,
        )

    def _post_allocate_results(
        self, resource_name: str, response: AllocateResponse
    ) -> Awaitable[None] | None:
        results = self._manager.hook.devplugin_post_allocate(
            resource_name=resource_name, response=response
        )
        pending = [result for result in results if inspect.isawaitable(result)]
        return _await_all(pending) if pending else None


async def _await_all(awaitables: Sequence[Awaitable[Any]]) -> None:
    for awaitable in awaitables:
        await awaitable


def _hook_failed(hook: str, exc: BaseException) -> PluginHookError:
    return PluginHookError(f"{hook} raised {describe(exc)}")


def _items(result: Any, hook: str, expected: str) -> Iterable[Any]:
    if isinstance(result, str | bytes | Mapping) or not isinstance(result, Iterable):
        raise PluginHookError(f"{hook} must return {expected}, got {result!r}")
    return result


def _scanner_pair(item: Any) -> tuple[str, Scanner]:
    if isinstance(item, str | bytes) or not isinstance(item, Sequence) or len(item) != 2:
        raise PluginHookError(
            f"devplugin_scanners must yield (namespace, scanner) pairs, got {item!r}"
        )
    namespace, scanner = item
    if not isinstance(namespace, str):
        raise PluginHookError(f"devplugin_scanners: namespace must be a string, got {namespace!r}")
    if not callable(getattr(scanner, "scan", None)):
        raise PluginHookError(
            f"devplugin_scanners: scanner for {namespace!r} has no scan method: {scanner!r}"
        )
    return namespace, scanner


@dataclass(frozen=True)
class PluginRecord:
    """One discovered plugin: where it comes from, whether it loaded, what it declares."""

    name: str
    distribution: str | None = None
    version: str | None = None
    module_path: Path | None = None
    enabled: bool = True
    error: str | None = None
    options: tuple[Option, ...] = ()
    hooks: PluginHooks | None = None
    options_known: bool = False
    """A disabled plugin imported only to check the settings given for it."""

    @property
    def source(self) -> str:
        """Where the plugin comes from: ``devplugin-acme 1.2.3`` or ``module ./hooks.py``."""
        if self.module_path is not None:
            return f"module {self.module_path}"
        if self.distribution is None:
            return "unknown distribution"
        return f"{self.distribution} {self.version}"

    @property
    def active(self) -> bool:
        """Enabled and loaded without error: its hooks may be called."""
        return self.enabled and self.error is None and self.hooks is not None

    def failed(self, error: str) -> PluginRecord:
        """Return this record marked as failed with ``error`` (its hooks are dropped)."""
        return replace(self, error=error, hooks=None)

    def describe_failure(self) -> str:
        """One line for the log: which plugin, from where, what went wrong."""
        return f"plugin {self.name!r} ({self.source}) is left out: {self.error}"

    def to_json(self) -> dict[str, Any]:
        """Return the record as ``devplugin-host plugins --json`` prints it."""
        return {
            "name": self.name,
            "source": self.source,
            "distribution": self.distribution,
            "version": self.version,
            "module": None if self.module_path is None else str(self.module_path),
            "enabled": self.enabled,
            "options": [
                {
                    "name": option.name,
                    "type": option.type_name,
                    "default": _jsonable(option.default),
                    "help": option.help,
                    "choices": None if option.choices is None else list(option.choices),
                }
                for option in self.options
            ],
            "error": self.error,
        }


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tuple | list):
        return [_jsonable(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    return str(value)


@dataclass(frozen=True)
class _Candidate:
    name: str
    load: Callable[[], object]
    distribution: str | None = None
    version: str | None = None
    module_path: Path | None = None

    def record(self, **changes: Any) -> PluginRecord:
        return PluginRecord(self.name, self.distribution, self.version, self.module_path, **changes)


def discover_plugins(
    *,
    enable: Sequence[str] = (),
    disable: Sequence[str] = (),
    plugin_modules: Sequence[str | Path] = (),
    group: str = ENTRY_POINT_GROUP,
    options_of: Collection[str] = (),
    sources: Mapping[str, str] | None = None,
) -> list[PluginRecord]:
    """Find every plugin and load the selected ones; return one record each, in load order.

    Entry points come first, sorted by name, then ``plugin_modules`` in the order
    given (plugin name = file stem). Without ``enable`` every plugin is selected;
    ``disable`` wins over ``enable``. Unselected plugins are never imported, except
    those named in ``options_of`` (plugins that settings are given for): they are
    imported for their declared options only, so those settings can be checked, and
    stay disabled. An unknown name in ``enable``/``disable`` or an unreadable module
    file is a ConfigError naming where it came from (``sources``: ``enable``,
    ``disable``, ``plugin_modules`` → a label such as ``config file h.toml (enable)``);
    any failure of a plugin itself ends up in its record's ``error``.
    """
    sources = sources or {}
    module_source = sources.get("plugin_modules", "--plugin-module")
    candidates = _entry_point_candidates(group) + [
        _module_candidate(Path(path), module_source) for path in plugin_modules
    ]
    names = {candidate.name for candidate in candidates}
    for option, wanted in (
        (sources.get("enable", "--enable"), enable),
        (sources.get("disable", "--disable"), disable),
    ):
        unknown = [name for name in wanted if name not in names]
        if unknown:
            available = ", ".join(sorted(names)) or "none are installed"
            raise ConfigError(
                f"unknown plugin {unknown[0]!r} in {option}; available plugins: {available}"
            )
    records: list[PluginRecord] = []
    loaded_from: dict[str, str] = {}
    for candidate in candidates:
        selected = (not enable or candidate.name in enable) and candidate.name not in disable
        if not selected and candidate.name in options_of:
            loaded = _load(candidate)
            records.append(replace(loaded, enabled=False, hooks=None, options_known=True))
        elif not selected:
            records.append(candidate.record(enabled=False))
        elif candidate.name in loaded_from:
            records.append(
                candidate.record(
                    error=f"plugin name {candidate.name!r} is already used by "
                    f"{loaded_from[candidate.name]}"
                )
            )
        else:
            record = _load(candidate)
            loaded_from[candidate.name] = record.source
            records.append(record)
    return records


def _entry_point_candidates(group: str) -> list[_Candidate]:
    candidates = []
    for entry_point in importlib.metadata.entry_points(group=group):
        dist = entry_point.dist
        candidates.append(
            _Candidate(
                entry_point.name,
                entry_point.load,
                distribution=None if dist is None else dist.name,
                version=None if dist is None else dist.version,
            )
        )
    return sorted(candidates, key=lambda candidate: candidate.name)


def _module_candidate(path: Path, source: str = "--plugin-module") -> _Candidate:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"cannot read {source} {path}: {reason}") from None
    return _Candidate(path.stem, lambda: _import_file(path), module_path=path)


def _import_file(path: Path) -> ModuleType:
    module_name = f"_devplugin_module_{path.stem}"
    loader = importlib.machinery.SourceFileLoader(module_name, str(path))
    spec = importlib.util.spec_from_loader(module_name, loader)
    assert spec is not None  # a SourceFileLoader always makes a spec
    module = importlib.util.module_from_spec(spec)
    # Registered before running, as an import would: dataclasses and pickling look it up.
    sys.modules[module_name] = module
    try:
        loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def _load(candidate: _Candidate) -> PluginRecord:
    try:
        # Any BaseException: a plugin calling sys.exit() at import must not end the host.
        plugin = call_hook(candidate.name, "import", candidate.load)
    except PluginError as exc:
        cause = exc.__cause__ or exc
        log.debug("plugin %r failed to import", candidate.name, exc_info=cause)
        return candidate.record(error=f"failed to import: {describe(cause)}")
    manager = pluggy.PluginManager(_hookspecs.PROJECT_NAME)
    manager.add_hookspecs(_hookspecs)
    try:
        manager.register(plugin, name=candidate.name)
        manager.check_pending()  # hook names no spec knows: devplugin_scaners
    except pluggy.PluginValidationError as exc:
        return candidate.record(error=f"invalid hook implementation: {exc}")
    hooks = PluginHooks(candidate.name, manager)
    # pluggy only sees marked functions: catch a forgotten @hookimpl or a misspelt
    # unmarked hook here, or the plugin would load and silently do nothing.
    for attribute in sorted(dir(plugin)):
        if not attribute.startswith("devplugin_") or not callable(getattr(plugin, attribute, None)):
            continue
        if attribute not in _HOOK_NAMES:
            return candidate.record(
                error=f"unknown hook {attribute!r}; the hooks are {', '.join(_HOOK_NAMES)}"
            )
        if not hooks.implements(attribute):
            return candidate.record(
                error=f"{attribute} is not marked with @host.hookimpl, so it is never called"
            )
    if not any(hooks.implements(name) for name in _HOOK_NAMES):
        return candidate.record(error="it implements no devplugin_* hook")
    try:
        options = hooks.options()
    except PluginHookError as exc:
        log.debug("plugin %r failed", candidate.name, exc_info=exc.__cause__ or exc)
        return candidate.record(error=str(exc))
    return candidate.record(options=options, hooks=hooks)


@dataclass(frozen=True)
class ScannerRecord:
    """One scanner to run: the plugin that registered it, its namespace, the scanner."""

    plugin: str
    namespace: str
    scanner: Scanner


@dataclass(frozen=True)
class Activation:
    """The outcome of activating plugins: what to run, and every plugin's final record."""

    plugins: tuple[PluginRecord, ...]
    scanners: tuple[ScannerRecord, ...]
    post_allocators: tuple[PostAllocateHook, ...]

    @property
    def failures(self) -> tuple[PluginRecord, ...]:
        """The enabled plugins left out, each with its error."""
        return tuple(plugin for plugin in self.plugins if plugin.enabled and plugin.error)


def activate_plugins(
    plugins: Sequence[PluginRecord],
    options: Sequence[OptionSetting] = (),
    *,
    sysfs_root: Path = Path("/sys"),
    devfs_root: Path = Path("/dev"),
) -> Activation:
    """Resolve options, call each active plugin's ``devplugin_scanners``, validate the result.

    Person's errors raise ConfigError before any scanner hook runs: a setting for a
    plugin that does not exist, an unknown option, a bad value (also for a disabled
    plugin whose options discovery read, see ``options_of``). A ConfigError raised
    by a hook is re-raised with the plugin's name. Any other failure (the hook raises,
    returns garbage, an invalid or already used namespace) leaves that plugin out.
    """
    known = {plugin.name: plugin for plugin in plugins}
    for setting in options:
        if setting.plugin not in known:
            available = ", ".join(sorted(known)) or "none are installed"
            raise ConfigError(
                f"unknown plugin {setting.plugin!r} in {setting.source}; "
                f"available plugins: {available}"
            )
    targeted = {setting.plugin for setting in options}
    for plugin in plugins:
        if plugin.active or plugin.name not in targeted:
            continue
        if plugin.options_known and plugin.error is None:
            resolve_plugin_options(plugin.name, plugin.options, options)  # raises if wrong
        elif plugin.error is not None:
            log.warning(
                "settings for plugin %r are not checked: it failed to load (%s)",
                plugin.name,
                plugin.error,
            )
    configs = {
        plugin.name: PluginConfig(
            plugin.name,
            resolve_plugin_options(plugin.name, plugin.options, options),
            sysfs_root=sysfs_root,
            devfs_root=devfs_root,
        )
        for plugin in plugins
        if plugin.active
    }
    records: list[PluginRecord] = []
    scanners: list[ScannerRecord] = []
    owners: dict[str, str] = {}
    for plugin in plugins:
        if not plugin.active:
            records.append(plugin)
            continue
        try:
            found = _checked_scanners(plugin, configs[plugin.name], owners)
        except PluginHookError as exc:
            log.debug("plugin %r failed", plugin.name, exc_info=exc.__cause__ or exc)
            records.append(plugin.failed(str(exc)))
            continue
        owners.update((record.namespace, plugin.name) for record in found)
        scanners.extend(found)
        records.append(plugin)
    post_allocators = tuple(
        plugin.hooks.post_allocate
        for plugin in records
        if plugin.active
        and plugin.hooks is not None
        and plugin.hooks.implements("devplugin_post_allocate")
    )
    return Activation(tuple(records), tuple(scanners), post_allocators)


def _checked_scanners(
    plugin: PluginRecord, config: PluginConfig, owners: Mapping[str, str]
) -> list[ScannerRecord]:
    from host.deviceplugin._names import resource_name_error

    assert plugin.hooks is not None
    try:
        pairs = plugin.hooks.scanners(config)
    except ConfigError as exc:
        message = str(exc)
        if f"plugin {plugin.name!r}" not in message:  # most plugins name themselves
            message = f"plugin {plugin.name!r}: {message}"
        raise ConfigError(message) from None
    found: list[ScannerRecord] = []
    for namespace, scanner in pairs:
        reason = resource_name_error(f"{namespace}/x")
        if reason is not None:
            raise PluginHookError(f"namespace {namespace!r} cannot form resource names: {reason}")
        if namespace in owners:
            raise PluginHookError(
                f"namespace {namespace!r} is already used by plugin {owners[namespace]!r}"
            )
        if any(record.namespace == namespace for record in found):
            raise PluginHookError(f"namespace {namespace!r} is returned twice")
        found.append(ScannerRecord(plugin.name, namespace, scanner))
    if not found and not plugin.hooks.implements("devplugin_post_allocate"):
        log.warning("plugin %r (%s) returned no scanners", plugin.name, plugin.source)
    return found
