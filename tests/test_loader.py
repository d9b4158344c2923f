from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from host import ConfigError
from host._api import api_pb2
from host._config import OptionSetting
from host._loader import (
    Activation,
    PluginRecord,
    activate_plugins,
    discover_plugins,
)
from host.deviceplugin._guard import PluginError
from tests.fixtures.builtins import BUILTIN_PLUGINS
from tests.fixtures.plugin_dists import LOCAL_HOOKS
from tests.fixtures.plugin_site import PluginSite, make_plugin_site

GOOD = """
class Scanner:
    def __init__(self, config):
        self.config = config

    async def scan(self, notifier):
        notifier.notify(DeviceTree())

@hookimpl
def devplugin_options():
    return [Option("count", default=1, help="how many")]

@hookimpl
def devplugin_scanners(config):
    yield "{namespace}", Scanner(config)
"""


def good(namespace: str = "good.example.com") -> str:
    return GOOD.replace("{namespace}", namespace)


def by_name(records: list[PluginRecord] | tuple[PluginRecord, ...]) -> dict[str, PluginRecord]:
    return {record.name: record for record in records}


BUILTINS = BUILTIN_PLUGINS


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PluginSite]:
    yield from make_plugin_site(tmp_path, monkeypatch)


def discover(
    *, disable: tuple[str, ...] = (), plugin_modules: tuple[Path, ...] = ()
) -> dict[str, PluginRecord]:
    """Discover, leaving out the built-in plugins (installed beside the test plugins)."""
    records = discover_plugins(disable=BUILTINS + disable, plugin_modules=plugin_modules)
    return by_name([r for r in records if r.name not in BUILTINS])


def activate(site_records: dict[str, PluginRecord], *settings: OptionSetting) -> Activation:
    return activate_plugins(list(site_records.values()), settings)


class TestDiscovery:
    def test_entry_point_with_distribution(self, plugin_site: PluginSite) -> None:
        """An entry point becomes a loaded plugin with its distribution, version and options."""
        plugin_site.add("good", good(), version="2.5")
        record = discover()["good"]
        assert record.active
        assert (record.distribution, record.version) == ("dpt-good", "2.5")
        assert record.source == "dpt-good 2.5"
        assert [option.name for option in record.options] == ["count"]

    def test_order_entry_points_sorted_then_modules(self, plugin_site: PluginSite) -> None:
        """Entry points load sorted by name, --plugin-module files after them."""
        plugin_site.add("zeta", good("z.example.com"))
        plugin_site.add("alpha", good("a.example.com"))
        names = list(discover(plugin_modules=(LOCAL_HOOKS,)))
        assert names.index("alpha") < names.index("zeta") < names.index("local_hooks")

    def test_disabled_plugin_is_never_imported(self, plugin_site: PluginSite) -> None:
        """A disabled plugin is listed as disabled and its module is never imported."""
        module = plugin_site.add("bomb", "raise RuntimeError('imported!')\n")
        plugin_site.add("good", good())
        records = discover(disable=("bomb",))
        assert not records["bomb"].enabled
        assert records["bomb"].error is None
        assert module not in sys.modules
        assert records["good"].active

    def test_enable_selects_and_blocks_the_rest(self, plugin_site: PluginSite) -> None:
        """With --enable only the named plugins are imported."""
        module = plugin_site.add("bomb", "raise RuntimeError('imported!')\n")
        plugin_site.add("good", good())
        records = by_name(discover_plugins(enable=("good",)))
        assert records["good"].active
        assert not records["bomb"].enabled
        assert not records["gpu"].enabled
        assert module not in sys.modules

    @pytest.mark.parametrize("option", ["enable", "disable"])
    def test_unknown_name_lists_available(self, plugin_site: PluginSite, option: str) -> None:
        """An unknown name in --enable/--disable is a ConfigError listing the plugins."""
        plugin_site.add("good", good())
        with pytest.raises(ConfigError) as info:
            discover_plugins(**{option: ("nosuch",)})  # type: ignore[arg-type]
        message = str(info.value)
        assert message.startswith(f"unknown plugin 'nosuch' in --{option}; available plugins: ")
        assert "good" in message
        assert "gpu" in message

    def test_import_error_is_isolated(self, plugin_site: PluginSite) -> None:
        """A plugin failing to import is reported with its error; the others load."""
        plugin_site.add("broken", "import dpt_missing_dependency\n", version="0.3")
        plugin_site.add("good", good())
        records = discover()
        assert records["good"].active
        broken = records["broken"]
        assert not broken.active
        assert broken.error == (
            "failed to import: ModuleNotFoundError: No module named 'dpt_missing_dependency'"
        )
        assert broken.describe_failure().startswith("plugin 'broken' (dpt-broken 0.3) is left out")

    def test_sys_exit_at_import_is_isolated(self, plugin_site: PluginSite) -> None:
        """A plugin calling sys.exit() while imported does not end the host."""
        plugin_site.add("quitter", "import sys\nsys.exit(3)\n")
        assert discover()["quitter"].error == "failed to import: SystemExit: 3"

    def test_misspelt_hook(self, plugin_site: PluginSite) -> None:
        """A marked hook no spec knows (devplugin_scaners) fails only that plugin."""
        plugin_site.add(
            "misspelt",
            """
            @hookimpl
            def devplugin_scaners(config):
                return []
            """,
        )
        plugin_site.add("good", good())
        records = discover()
        assert records["good"].active
        error = records["misspelt"].error
        assert error is not None
        assert error.startswith("invalid hook implementation: unknown hook 'devplugin_scaners'")

    def test_unmarked_hook(self, plugin_site: PluginSite) -> None:
        """A hook function without @hookimpl is reported, not silently ignored."""
        plugin_site.add("unmarked", "def devplugin_scanners(config):\n    return []\n")
        assert discover()["unmarked"].error == (
            "devplugin_scanners is not marked with @host.hookimpl, so it is never called"
        )

    def test_unmarked_unknown_hook(self, plugin_site: PluginSite) -> None:
        """An unmarked devplugin_* function that is no hook is reported by name."""
        plugin_site.add(
            "typo",
            """
            @hookimpl
            def devplugin_options():
                return []

            def devplugin_scaners(config):
                return []
            """,
        )
        error = discover()["typo"].error
        assert error is not None
        assert error.startswith("unknown hook 'devplugin_scaners'; the hooks are devplugin_options")

    def test_wrong_hook_arguments(self, plugin_site: PluginSite) -> None:
        """A hook taking arguments its spec does not offer fails at registration."""
        plugin_site.add(
            "args",
            """
            @hookimpl
            def devplugin_scanners(cfg):
                return []
            """,
        )
        error = discover()["args"].error
        assert error is not None
        assert error.startswith("invalid hook implementation:")
        assert "cfg" in error

    def test_no_hooks(self, plugin_site: PluginSite) -> None:
        """A module implementing no hook is reported."""
        plugin_site.add("empty", "VALUE = 1\n")
        assert discover()["empty"].error == "it implements no devplugin_* hook"

    @pytest.mark.parametrize(
        ("body", "error"),
        [
            ("raise KeyError('x')", "devplugin_options raised KeyError: 'x'"),
            ("return 5", "devplugin_options must return a list of Option, got 5"),
            ("return ['count']", "devplugin_options must return host.Option objects, got 'count'"),
            (
                "return [Option('a'), Option('a')]",
                "devplugin_options declares option 'a' twice",
            ),
            ("return [Option('bad name')]", "devplugin_options raised ValueError: option name"),
        ],
    )
    def test_bad_options_hook(self, plugin_site: PluginSite, body: str, error: str) -> None:
        """A devplugin_options hook that raises or returns garbage fails only its plugin."""
        plugin_site.add("opts", f"@hookimpl\ndef devplugin_options():\n    {body}\n")
        plugin_site.add("good", good())
        records = discover()
        assert records["good"].active
        assert (records["opts"].error or "").startswith(error)

    def test_object_entry_point(self, plugin_site: PluginSite) -> None:
        """An entry point may name an object (module:attr) holding the hook methods."""
        plugin_site.add(
            "obj",
            """
            class Hooks:
                @hookimpl
                def devplugin_options(self):
                    return [Option("size", default=3)]

            plugin = Hooks()
            """,
            target=":plugin",
        )
        record = discover()["obj"]
        assert record.active
        assert record.options[0].name == "size"

    def test_duplicate_plugin_name(self, plugin_site: PluginSite) -> None:
        """Two distributions registering one name: the first (by dist) loads, the other fails."""
        module = plugin_site.add("twice", good())
        plugin_site.add_dist("dpt-other", "9.9", {"twice": module})
        records = [r for r in discover_plugins(disable=BUILTINS) if r.name == "twice"]
        assert len(records) == 2
        assert sum(r.active for r in records) == 1
        failed = next(r for r in records if not r.active)
        assert failed.error is not None
        assert failed.error.startswith("plugin name 'twice' is already used by dpt-")


class TestPluginModule:
    def test_loads_file_as_plugin(self, plugin_site: PluginSite) -> None:
        """--plugin-module loads a .py file as a plugin named after the file."""
        record = discover(plugin_modules=(LOCAL_HOOKS,))["local_hooks"]
        assert record.active
        assert record.module_path == LOCAL_HOOKS
        assert record.source == f"module {LOCAL_HOOKS}"
        assert record.distribution is None

    @pytest.mark.parametrize("kind", ["missing", "directory"])
    def test_unreadable_is_config_error(self, tmp_path: Path, kind: str) -> None:
        """An unreadable --plugin-module is a person's error: one line, before any import."""
        path = tmp_path / "hooks.py"
        if kind == "directory":
            path.mkdir()
        with pytest.raises(ConfigError, match=f"^cannot read --plugin-module {path}: "):
            discover_plugins(plugin_modules=[path])

    def test_failing_module_is_isolated(self, plugin_site: PluginSite, tmp_path: Path) -> None:
        """A module raising at import is reported like any plugin."""
        path = tmp_path / "bad_hooks.py"
        path.write_text("raise ValueError('boom')\n", encoding="utf-8")
        records = discover(plugin_modules=(path, LOCAL_HOOKS))
        assert records["bad_hooks"].error == "failed to import: ValueError: boom"
        assert records["local_hooks"].active
        assert "_devplugin_module_bad_hooks" not in sys.modules

    def test_same_name_as_entry_point(self, plugin_site: PluginSite, tmp_path: Path) -> None:
        """A module whose stem is an installed plugin's name is reported, the installed one runs."""
        plugin_site.add("local_hooks", good())
        records = [
            r
            for r in discover_plugins(plugin_modules=[LOCAL_HOOKS], disable=("gpu",))
            if r.name == "local_hooks"
        ]
        assert records[0].active
        assert records[0].module_path is None
        assert (
            records[1].error == "plugin name 'local_hooks' is already used by dpt-local_hooks 1.0"
        )


class TestActivation:
    def test_each_plugin_gets_its_own_config(self, plugin_site: PluginSite) -> None:
        """Each plugin's hook sees its own option values and the host's roots."""
        plugin_site.add("one", good("one.example.com"))
        plugin_site.add("two", good("two.example.com"))
        activation = activate_plugins(
            list(discover().values()),
            [OptionSetting("one", "count", "5", "--set")],
            sysfs_root=Path("/fake/sys"),
            devfs_root=Path("/fake/dev"),
        )
        configs = {r.plugin: r.scanner.config for r in activation.scanners}  # type: ignore[attr-defined]
        assert configs["one"].name == "one"
        assert configs["one"].options == {"count": 5}
        assert configs["two"].options == {"count": 1}
        assert configs["two"].sysfs_root == Path("/fake/sys")
        assert configs["two"].devfs_root == Path("/fake/dev")
        assert [(r.plugin, r.namespace) for r in activation.scanners] == [
            ("one", "one.example.com"),
            ("two", "two.example.com"),
        ]
        assert activation.failures == ()

    def test_raising_hook_is_isolated(self, plugin_site: PluginSite) -> None:
        """A scanners hook raising anything but ConfigError leaves only that plugin out."""
        plugin_site.add(
            "raising",
            """
            @hookimpl
            def devplugin_scanners(config):
                raise RuntimeError("license server unreachable")
            """,
        )
        plugin_site.add("good", good())
        activation = activate(discover())
        assert [r.plugin for r in activation.scanners] == ["good"]
        (failure,) = activation.failures
        assert failure.name == "raising"
        assert failure.error == "devplugin_scanners raised RuntimeError: license server unreachable"

    def test_generator_failing_midway_contributes_nothing(self, plugin_site: PluginSite) -> None:
        """A generator raising after a first pair leaves the whole plugin out."""
        plugin_site.add(
            "half",
            """
            class S:
                def scan(self, notifier):
                    pass

            @hookimpl
            def devplugin_scanners(config):
                yield "half.example.com", S()
                raise OSError("second device class unreadable")
            """,
        )
        activation = activate(discover())
        assert activation.scanners == ()
        assert activation.failures[0].error == (
            "devplugin_scanners raised OSError: second device class unreadable"
        )

    @pytest.mark.parametrize(
        ("returns", "error"),
        [
            ("42", "devplugin_scanners must return (namespace, scanner) pairs, got 42"),
            ("'x.example.com'", "devplugin_scanners must return (namespace, scanner) pairs"),
            ("[('x.example.com',)]", "devplugin_scanners must yield (namespace, scanner) pairs"),
            ("[(1, S())]", "devplugin_scanners: namespace must be a string, got 1"),
            (
                "[('x.example.com', object())]",
                "devplugin_scanners: scanner for 'x.example.com' has no scan method",
            ),
            (
                "[('Bad_NS', S())]",
                "namespace 'Bad_NS' cannot form resource names: its domain must be",
            ),
            ("[('nodomain/', S())]", "namespace 'nodomain/' cannot form resource names"),
            (
                "[('x.example.com', S()), ('x.example.com', S())]",
                "namespace 'x.example.com' is returned twice",
            ),
        ],
    )
    def test_garbage_is_isolated(self, plugin_site: PluginSite, returns: str, error: str) -> None:
        """Garbage, invalid namespaces and in-plugin duplicates leave that plugin out."""
        plugin_site.add(
            "garbage",
            f"""
            class S:
                def scan(self, notifier):
                    pass

            @hookimpl
            def devplugin_scanners(config):
                return {returns}
            """,
        )
        plugin_site.add("good", good())
        activation = activate(discover())
        assert [r.plugin for r in activation.scanners] == ["good"]
        (failure,) = activation.failures
        assert failure.name == "garbage"
        assert (failure.error or "").startswith(error)

    def test_duplicate_namespace_across_plugins(self, plugin_site: PluginSite) -> None:
        """The second plugin claiming a namespace is left out, naming the first."""
        plugin_site.add("first", good("shared.example.com"))
        plugin_site.add("second", good("shared.example.com"))
        activation = activate(discover())
        assert [r.plugin for r in activation.scanners] == ["first"]
        assert activation.failures[0].name == "second"
        assert activation.failures[0].error == (
            "namespace 'shared.example.com' is already used by plugin 'first'"
        )

    def test_config_error_from_hook_propagates(self, plugin_site: PluginSite) -> None:
        """A ConfigError from a hook is a person's error: re-raised with the plugin's name."""
        plugin_site.add(
            "strict",
            """
            @hookimpl
            def devplugin_scanners(config):
                raise ConfigError("option count must be >= 1, got 0")
            """,
        )
        with pytest.raises(
            ConfigError, match=r"^plugin 'strict': option count must be >= 1, got 0$"
        ):
            activate(discover())

    def test_config_error_naming_plugin_is_not_prefixed_twice(
        self, plugin_site: PluginSite
    ) -> None:
        """A message that already names the plugin is printed as it is."""
        plugin_site.add(
            "strict",
            """
            @hookimpl
            def devplugin_scanners(config):
                raise ConfigError("plugin 'strict': option count must be >= 1")
            """,
        )
        with pytest.raises(ConfigError, match=r"^plugin 'strict': option count must be >= 1$"):
            activate(discover())

    def test_option_errors_come_before_any_scanner_hook(self, plugin_site: PluginSite) -> None:
        """Option values are checked for every plugin before any scanners hook runs."""
        plugin_site.add(
            "early",
            """
            CALLED = []

            @hookimpl
            def devplugin_scanners(config):
                CALLED.append(config)
                return []
            """,
        )
        plugin_site.add("good", good())
        with pytest.raises(ConfigError, match="expected an integer, got 'abc'"):
            activate(discover(), OptionSetting("good", "count", "abc", "--set"))
        assert sys.modules["dpt_early"].CALLED == []

    def test_setting_for_unknown_plugin(self, plugin_site: PluginSite) -> None:
        """A setting for a plugin that does not exist lists the available ones."""
        plugin_site.add("good", good())
        with pytest.raises(ConfigError) as info:
            activate_plugins(
                discover_plugins(), [OptionSetting("nosuch", "x", "1", "config file c.toml")]
            )
        assert str(info.value).startswith(
            "unknown plugin 'nosuch' in config file c.toml; available plugins: "
        )

    def test_settings_for_disabled_or_failed_plugins_are_ignored(
        self, plugin_site: PluginSite
    ) -> None:
        """Options of a plugin that is disabled or failed cannot be checked and are ignored."""
        plugin_site.add("broken", "import dpt_missing\n")
        plugin_site.add("good", good())
        records = discover_plugins(disable=(*BUILTINS, "good"))
        activation = activate_plugins(
            records,
            [
                OptionSetting("good", "nosuch", "1", "--set"),
                OptionSetting("broken", "nosuch", "1", "--set"),
            ],
        )
        assert activation.scanners == ()

    def test_no_scanners_is_logged(
        self, plugin_site: PluginSite, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A plugin that returns no scanners (and no post-allocate hook) is warned about."""
        plugin_site.add("idle", "@hookimpl\ndef devplugin_scanners(config):\n    return []\n")
        with caplog.at_level(logging.WARNING, "host.loader"):
            activation = activate(discover())
        assert activation.failures == ()
        assert "plugin 'idle' (dpt-idle 1.0) returned no scanners" in caplog.text


POST_ALLOCATE = """
@hookimpl
{prefix}def devplugin_post_allocate(resource_name, response):
    for container in response.container_responses:
        container.envs["{name}"] = resource_name
"""


class TestPostAllocate:
    def test_hooks_of_active_plugins_only(self, plugin_site: PluginSite) -> None:
        """Post-allocate hooks come from every active plugin, sync or async, not failed ones."""
        plugin_site.add("sync", POST_ALLOCATE.format(prefix="", name="SYNC"))
        plugin_site.add("coro", POST_ALLOCATE.format(prefix="async ", name="CORO"))
        plugin_site.add(
            "failing",
            POST_ALLOCATE.format(prefix="", name="FAILED")
            + "\n@hookimpl\ndef devplugin_scanners(config):\n    raise RuntimeError('x')\n",
        )
        activation = activate(discover())
        assert len(activation.post_allocators) == 2
        response = api_pb2.AllocateResponse(
            container_responses=[api_pb2.ContainerAllocateResponse()]
        )

        async def call_all() -> None:
            for hook in activation.post_allocators:
                await hook("acme.example.com/widget", response)

        asyncio.run(call_all())
        assert dict(response.container_responses[0].envs) == {
            "SYNC": "acme.example.com/widget",
            "CORO": "acme.example.com/widget",
        }

    def test_exception_names_plugin(self, plugin_site: PluginSite) -> None:
        """A post-allocate exception is re-raised naming the plugin and the resource."""
        plugin_site.add(
            "angry",
            "@hookimpl\nasync def devplugin_post_allocate(resource_name, response):\n"
            "    raise PermissionError('quota exceeded')\n",
        )
        (hook,) = activate(discover()).post_allocators
        with pytest.raises(PluginError) as info:
            asyncio.run(hook("a.example.com/x", api_pb2.AllocateResponse()))
        assert str(info.value) == (
            "plugin 'angry': devplugin_post_allocate for a.example.com/x raised "
            "PermissionError: quota exceeded"
        )


class TestAcmeFixture:
    def test_broken_plugins_beside_a_good_one(self, plugin_site: PluginSite) -> None:
        """The acme distribution: the good plugin activates, each broken one is reported."""
        plugin_site.add_acme()
        activation = activate(discover())
        assert {(r.plugin, r.namespace) for r in activation.scanners} == {
            ("acme", "acme.example.com"),
            ("acme", "gadgets.acme.example.com"),
        }
        failures = {r.name: r for r in activation.failures}
        assert sorted(failures) == [
            "broken-import",
            "duplicate-ns",
            "misspelt-hook",
            "raising-hook",
        ]
        assert all(r.source == "devplugin-acme 1.2.3" for r in failures.values())
