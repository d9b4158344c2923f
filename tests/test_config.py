from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import host
from host._config import (
    ConfigError,
    ConfigFile,
    HostSettings,
    Option,
    OptionSetting,
    parse_set_item,
    read_config_file,
    resolve_plugin_options,
    resolve_settings,
    split_names,
)


class TestPublicSurface:
    def test_all_is_pinned(self) -> None:
        """The package exports exactly the names plugin authors are promised."""
        assert sorted(host.__all__) == [
            "ConfigError",
            "Option",
            "PluginConfig",
            "__version__",
            "hookimpl",
        ]
        for name in host.__all__:
            assert getattr(host, name) is not None


class TestOptionConvert:
    @pytest.mark.parametrize(
        ("default", "given", "expected"),
        [
            (1, "42", 42),
            (1, " 7 ", 7),
            (1, 3, 3),
            (0.5, "2.5", 2.5),
            (0.5, 2, 2.0),
            (False, "yes", True),
            (True, "off", False),
            (True, "0", False),
            (False, True, True),
            ("x", "hello", "hello"),
            (None, "hello", "hello"),
            (["a"], "b, c", ("b", "c")),
            (["a"], ["b", "c"], ("b", "c")),
            ((), "", ()),
        ],
    )
    def test_type_follows_default(self, default: Any, given: Any, expected: Any) -> None:
        """Without type=, strings are parsed and TOML values checked by the default's type."""
        value = Option("opt", default=default).convert(given)
        assert value == expected
        assert type(value) is type(expected)

    @pytest.mark.parametrize(
        ("default", "given", "message"),
        [
            (1, "abc", "expected an integer, got 'abc'"),
            (1, True, "expected an integer, got True"),
            (1, 1.5, "expected an integer, got 1.5"),
            (0.5, "fast", "expected a number, got 'fast'"),
            (False, "maybe", "expected a boolean"),
            (False, 1, "expected a boolean (true/false), got 1"),
            ("x", 5, "expected a string, got 5"),
            (["a"], [1], "expected a list of strings, got [1]"),
        ],
    )
    def test_rejects_wrong_type(self, default: Any, given: Any, message: str) -> None:
        """A value of the wrong type says what was expected and what came."""
        with pytest.raises(ValueError, match="^" + re.escape(message)):
            Option("opt", default=default).convert(given)

    def test_choices(self) -> None:
        """Choices limit the value (each item of a list); the error lists them."""
        option = Option("policy", default="none", choices=["none", "packed"])
        assert option.convert("packed") == "packed"
        with pytest.raises(ValueError, match="expected one of none, packed; got 'wild'"):
            option.convert("wild")
        listed = Option("modes", default=["a"], choices=["a", "b"])
        assert listed.convert("a,b") == ("a", "b")
        with pytest.raises(ValueError, match="got 'c'"):
            listed.convert("a,c")

    def test_custom_type_gets_raw_value(self) -> None:
        """A type= callable receives the raw value: a string, or what TOML produced."""
        seen: list[Any] = []

        def parse(value: Any) -> Any:
            seen.append(value)
            if value == "bad":
                raise ValueError("not acceptable")
            return value

        option = Option("custom", type=parse)
        assert option.convert([{"a": 1}]) == [{"a": 1}]
        assert option.convert("ok") == "ok"
        assert seen == [[{"a": 1}], "ok"]
        with pytest.raises(ValueError, match="invalid value 'bad': not acceptable"):
            option.convert("bad")

    def test_custom_type_config_error_passes_through(self) -> None:
        """A ConfigError from type= keeps the plugin's own message."""

        def parse(value: Any) -> Any:
            raise ConfigError("plugin 'x': option custom must be shiny")

        with pytest.raises(ConfigError, match=r"^plugin 'x': option custom must be shiny$"):
            Option("custom", type=parse).convert("dull")

    @pytest.mark.parametrize(
        ("option", "name"),
        [
            (Option("a", default=True), "bool"),
            (Option("a", default=1), "int"),
            (Option("a", default=1.0), "float"),
            (Option("a", default="s"), "str"),
            (Option("a"), "str"),
            (Option("a", default=["x"]), "list"),
            (Option("a", type=Path), "Path"),
            (Option("a", type=Path, default=1.5), "float"),
        ],
    )
    def test_type_name(self, option: Option, name: str) -> None:
        """The type shown by `plugins` is the default's kind, or the type= callable's name."""
        assert option.type_name == name

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"name": ""}, "option name must be"),
            ({"name": "a b"}, "option name must be"),
            ({"name": "a", "choices": []}, "choices must be non-empty strings"),
            ({"name": "a", "default": "z", "choices": ["x"]}, "expected one of x; got 'z'"),
        ],
    )
    def test_invalid_declaration(self, kwargs: dict[str, Any], message: str) -> None:
        """A malformed Option fails when the plugin declares it."""
        with pytest.raises(ValueError, match=message):
            Option(**kwargs)

    def test_list_default_is_frozen(self) -> None:
        """A list default is stored as a tuple, so the frozen Option stays immutable."""
        assert Option("a", default=["x", "y"]).default == ("x", "y")


class TestSetItems:
    def test_parse(self) -> None:
        """PLUGIN.KEY=VALUE splits at the first '.' and the first '='."""
        assert parse_set_item("gpu.shared-dev-num=2") == OptionSetting(
            "gpu", "shared-dev-num", "2", "--set"
        )
        assert parse_set_item("g.k=a=b.c").value == "a=b.c"
        assert parse_set_item("g.k=").value == ""

    @pytest.mark.parametrize("text", ["gpu", "gpu=1", ".k=1", "gpu.=1", "gpu.k"])
    def test_malformed(self, text: str) -> None:
        """A malformed --set says what form it expects."""
        with pytest.raises(ConfigError, match=r"--set expects PLUGIN\.KEY=VALUE"):
            parse_set_item(text)

    def test_split_names(self) -> None:
        """Names split on commas and whitespace, across repeated values."""
        assert split_names(["a,b", " c  d ", ""]) == ("a", "b", "c", "d")


class TestResolvePluginOptions:
    OPTIONS = (Option("count", default=2), Option("label", default="x"))

    def test_defaults_then_settings_in_order(self) -> None:
        """Later settings win; settings of other plugins are ignored."""
        values = resolve_plugin_options(
            "acme",
            self.OPTIONS,
            [
                OptionSetting("acme", "count", 5, "config file c.toml"),
                OptionSetting("other", "count", "x", "--set"),
                OptionSetting("acme", "count", "7", "--set"),
            ],
        )
        assert dict(values) == {"count": 7, "label": "x"}

    def test_unknown_option_lists_known(self) -> None:
        """An unknown option names the plugin and lists its options."""
        with pytest.raises(ConfigError) as info:
            resolve_plugin_options(
                "acme", self.OPTIONS, [OptionSetting("acme", "nosuch", "1", "--set")]
            )
        assert str(info.value) == (
            "plugin 'acme' has no option 'nosuch' (from --set); its options: count, label"
        )

    def test_unknown_option_without_options(self) -> None:
        """A plugin without options says so."""
        with pytest.raises(ConfigError, match="its options: it has no options"):
            resolve_plugin_options("acme", (), [OptionSetting("acme", "x", "1", "--set")])

    def test_bad_value_names_source(self) -> None:
        """A bad value names plugin, option, source and what was expected."""
        with pytest.raises(ConfigError) as info:
            resolve_plugin_options(
                "acme", self.OPTIONS, [OptionSetting("acme", "count", "abc", "DEVPLUGIN_SET")]
            )
        assert str(info.value) == (
            "plugin 'acme': option count (from DEVPLUGIN_SET): expected an integer, got 'abc'"
        )

    def test_plugin_config_error_gets_source(self) -> None:
        """A ConfigError from a type= callable keeps its message and gains the source."""

        def strict(value: Any) -> Any:
            raise ConfigError("plugin 'acme': option mode must be fast")

        with pytest.raises(ConfigError) as info:
            resolve_plugin_options(
                "acme",
                [Option("mode", type=strict)],
                [OptionSetting("acme", "mode", "slow", "--set")],
            )
        assert str(info.value) == "plugin 'acme': option mode must be fast (from --set)"


class TestConfigFile:
    def write(self, tmp_path: Path, text: str) -> Path:
        path = tmp_path / "host.toml"
        path.write_text(text, encoding="utf-8")
        return path

    def test_settings_and_plugin_tables(self, tmp_path: Path) -> None:
        """Top-level keys are host settings; [plugins.NAME] tables are option settings."""
        path = self.write(
            tmp_path,
            'enable = ["gpu", "fpga"]\n'
            'disable = "generic"\n'
            'plugin-dir = "/tmp/dp"\n'
            'plugin-module = "hooks.py"\n'
            'log-level = "DEBUG"\n'
            "[plugins.gpu]\n"
            "shared-dev-num = 2\n"
            "[plugins.fpga]\n"
            'mode = "region"\n',
        )
        config = read_config_file(path)
        assert dict(config.settings) == {
            "enable": ("gpu", "fpga"),
            "disable": ("generic",),
            "plugin_dir": Path("/tmp/dp"),
            "plugin_modules": (Path("hooks.py"),),
            "log_level": "debug",
        }
        source = f"config file {path}"
        assert config.options == (
            OptionSetting("gpu", "shared-dev-num", 2, source),
            OptionSetting("fpga", "mode", "region", source),
        )

    def test_malformed_toml_names_file_and_line(self, tmp_path: Path) -> None:
        """Invalid TOML names the file and the line."""
        path = self.write(tmp_path, 'enable = ["gpu"]\n[plugins.gpu\nx = 1\n')
        with pytest.raises(ConfigError, match=rf"^config file {path}: invalid TOML: .*line 2"):
            read_config_file(path)

    def test_missing_file(self, tmp_path: Path) -> None:
        """An unreadable file is one line naming it."""
        with pytest.raises(
            ConfigError, match=r"cannot read config file .*nope\.toml: No such file"
        ):
            read_config_file(tmp_path / "nope.toml")

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("enabled = []", "unknown setting 'enabled'; known settings: cdi-dir, "),
            ("enable = 3", "enable must be a list of strings, got 3"),
            ("plugin-dir = 3", "plugin-dir must be a string, got 3"),
            ('log-format = "xml"', "log-format must be one of text, json, got 'xml'"),
            ("plugins = 1", "'plugins' must hold one table per plugin"),
            ("[plugins]\ngpu = 1", "'plugins' must hold one table per plugin"),
        ],
    )
    def test_invalid_settings(self, tmp_path: Path, text: str, message: str) -> None:
        """Each invalid setting is one line with the file and the key."""
        path = self.write(tmp_path, text)
        with pytest.raises(ConfigError, match=re.escape(f"config file {path}: {message}")):
            read_config_file(path)


class TestResolveSettings:
    def test_precedence(self) -> None:
        """Given (command line or environment) > config file > defaults."""
        config = ConfigFile(
            Path("c.toml"),
            {"plugin_dir": Path("/file"), "cdi_dir": Path("/file-cdi"), "enable": ("a",)},
            (OptionSetting("a", "k", 1, "config file c.toml"),),
        )
        settings = resolve_settings(
            {"plugin_dir": Path("/cli"), "cdi_dir": None, "enable": ()},
            config,
            [OptionSetting("a", "k", "2", "--set")],
        )
        assert settings.plugin_dir == Path("/cli")
        assert settings.cdi_dir == Path("/file-cdi")
        assert settings.enable == ("a",)
        assert settings.sysfs_root == Path("/sys")
        assert [s.value for s in settings.options] == [1, "2"]

    def test_defaults(self) -> None:
        """Without any source, the defaults apply."""
        assert resolve_settings({}) == HostSettings()
        assert HostSettings().plugin_dir == Path("/var/lib/kubelet/device-plugins/")
