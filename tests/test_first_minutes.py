"""What a new operator or plugin author meets first: no hardware, nothing enabled, typos.

Each test here is a mistake or a bare machine that once gave a traceback, a silent
success or a misleading message.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from host import _host
from host._config import MAX_CONFIG_FILE_BYTES, MAX_NESTING, MAX_VALUE_BYTES, split_env_items
from host.cli import main
from tests.fixtures.builtins import BUILTIN_PLUGINS

DEEP = 5000


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in [key for key in os.environ if key.startswith("DEVPLUGIN_")]:
        monkeypatch.delenv(name)
    root = logging.getLogger()
    level = root.level
    yield
    for handler in list(root.handlers):
        if isinstance(handler, _host._StderrHandler):
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def bare(tmp_path: Path) -> list[str]:
    """Root options of a machine without any device: empty sysfs and devfs."""
    (tmp_path / "sys").mkdir()
    (tmp_path / "dev").mkdir()
    return ["--sysfs-root", str(tmp_path / "sys"), "--devfs-root", str(tmp_path / "dev")]


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def one_line_error(result: Result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0][len("Error: ") :]


def levels(stderr: str) -> set[str]:
    """The log levels of the text log lines in ``stderr``."""
    return {line.split()[2] for line in stderr.splitlines() if len(line.split()) > 2}


class TestNoHardware:
    def test_scan_with_every_builtin_plugin_finds_nothing_and_exits_0(
        self, bare: list[str]
    ) -> None:
        """No hardware: no devices, exit 0, no warning; each plugin says so once at INFO."""
        result = invoke("scan", "--json", *bare)
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout) == {}
        assert levels(result.stderr) == {"INFO"}
        for plugin in BUILTIN_PLUGINS:
            logger = f"hostplugins.{plugin}:"
            assert logger in result.stderr, f"plugin {plugin} logged nothing"

    def test_simulate_with_every_builtin_plugin_exits_0(self, bare: list[str]) -> None:
        """simulate --once on a bare machine: every namespace reports no devices, exit 0."""
        result = invoke("simulate", "--once", *bare)
        assert result.exit_code == 0, result.stderr
        for plugin in ("fpga", "gpu", "generic"):
            assert f"plugin {plugin!r} namespace" in result.stdout
        assert result.stderr == ""


class TestNothingToRun:
    @pytest.mark.parametrize("command", ["scan", "run", "simulate"])
    def test_every_plugin_disabled(self, command: str, short_dir: Path) -> None:
        """scan, run and simulate agree: one line saying why, exit status 1."""
        extra = ["--plugin-dir", str(short_dir)] if command == "run" else []
        result = invoke(command, "--disable", ",".join(BUILTIN_PLUGINS), *extra)
        message = one_line_error(result, code=1)
        assert message.startswith("no scanners to run: no plugin is enabled")


class TestSetForPluginsNotEnabled:
    def test_unknown_key_is_an_error(self, bare: list[str]) -> None:
        """--set gpu.nosuch while only generic runs: exit 2, naming the option."""
        result = invoke("scan", "--enable", "generic", "--set", "gpu.nosuch=1", *bare)
        assert one_line_error(result).startswith("plugin 'gpu' has no option 'nosuch' (from --set)")

    def test_bad_value_is_an_error(self, bare: list[str]) -> None:
        """A value of the wrong type for a disabled plugin: exit 2."""
        result = invoke("scan", "--disable", "gpu", "--set", "gpu.shared-dev-num=two", *bare)
        message = one_line_error(result)
        assert message.startswith("plugin 'gpu': option shared-dev-num (from --set)")

    def test_good_value_leaves_the_plugin_disabled(self, bare: list[str]) -> None:
        """A valid setting for a disabled plugin is accepted and the plugin stays out."""
        result = invoke("scan", "--enable", "generic", "--set", "gpu.shared-dev-num=2", *bare)
        assert result.exit_code == 0, result.stderr
        assert "gpu.intel.com" not in result.stdout


class TestDevpluginSet:
    def test_one_item_a_line_holds_json_with_spaces(self, tmp_path: Path) -> None:
        """DEVPLUGIN_SET with newlines: each line one item, values may hold spaces."""
        devfs = tmp_path / "dev"
        devfs.mkdir()
        (devfs / "widget").symlink_to("/dev/null")
        items = [
            'generic.devices=[{"name": "widget", "paths": ["widget"], "count": 2}]',
            "generic.rescan-interval=7",
        ]
        env = {"DEVPLUGIN_SET": "\n".join(items) + "\n", "DEVPLUGIN_ENABLE": "generic"}
        result = invoke("scan", "--json", "--devfs-root", str(devfs), env=env)
        assert result.exit_code == 0, result.stderr
        report = json.loads(result.stdout)
        assert [d["id"] for d in report["devices.devplugin.io/widget"]] == ["widget-0", "widget-1"]

    @pytest.mark.parametrize(
        ("text", "items"),
        [
            ("a.x=1 a.y=2", ["a.x=1", "a.y=2"]),
            ("a.x=1 a.y=2\n", ["a.x=1", "a.y=2"]),  # a YAML block scalar's final newline
            (
                'g.devices=[{"name": "k", "paths": ["k"]}] a.y=2',
                ['g.devices=[{"name": "k", "paths": ["k"]}]', "a.y=2"],
            ),
            ('a.label="two words" a.y=2', ['a.label="two words"', "a.y=2"]),
            ("a.label=two words\na.y=2\n", ["a.label=two words", "a.y=2"]),
            ("  \n ", []),
        ],
    )
    def test_splitting(self, text: str, items: list[str]) -> None:
        """Whitespace outside brackets and quotes separates items; several lines, one a line."""
        assert split_env_items(text) == items

    def test_one_line_holds_json_with_spaces(self, tmp_path: Path) -> None:
        """A single-line DEVPLUGIN_SET keeps a JSON value's spaces."""
        devfs = tmp_path / "dev"
        devfs.mkdir()
        (devfs / "widget").symlink_to("/dev/null")
        env = {
            "DEVPLUGIN_SET": 'generic.devices=[{"name": "widget", "paths": ["widget"]}] '
            "generic.rescan-interval=7",
            "DEVPLUGIN_ENABLE": "generic",
        }
        result = invoke("scan", "--json", "--devfs-root", str(devfs), env=env)
        assert result.exit_code == 0, result.stderr
        assert [d["id"] for d in json.loads(result.stdout)["devices.devplugin.io/widget"]] == [
            "widget"
        ]

    def test_space_separated_items_still_work(self, bare: list[str]) -> None:
        """Without a newline, items are separated by whitespace as before."""
        env = {"DEVPLUGIN_SET": "gpu.shared-dev-num=2 gpu.nosuch=1"}
        message = one_line_error(invoke("scan", "--enable", "gpu", *bare, env=env))
        assert message.startswith("plugin 'gpu' has no option 'nosuch' (from DEVPLUGIN_SET)")


class TestErrorsNameTheirSource:
    def test_enable_from_the_config_file(self, tmp_path: Path) -> None:
        """`enable = [...]` in the TOML file is reported as the file's key, not --enable."""
        config = tmp_path / "host.toml"
        config.write_text('enable = ["nosuch"]\n', encoding="utf-8")
        message = one_line_error(invoke("scan", "--config", str(config)))
        assert message.startswith(f"unknown plugin 'nosuch' in config file {config} (enable);")

    def test_enable_from_the_environment(self) -> None:
        """DEVPLUGIN_ENABLE is named as such."""
        message = one_line_error(invoke("scan", env={"DEVPLUGIN_ENABLE": "nosuch"}))
        assert message.startswith("unknown plugin 'nosuch' in DEVPLUGIN_ENABLE;")

    def test_plugin_module_from_the_config_file(self, tmp_path: Path) -> None:
        """An unreadable plugin module named in the file names the file."""
        config = tmp_path / "host.toml"
        config.write_text(f'plugin-module = ["{tmp_path}/none.py"]\n', encoding="utf-8")
        message = one_line_error(invoke("scan", "--config", str(config)))
        assert message == (
            f"cannot read config file {config} (plugin-module) {tmp_path}/none.py: "
            "No such file or directory"
        )

    @pytest.mark.parametrize(
        "args",
        [["run", "--log-level", "loud"], ["scan", "--nosuch"], ["simulate", "--plugin-dir", "x"]],
    )
    def test_click_usage_errors_are_one_line(self, args: list[str]) -> None:
        """Click's own usage errors: one line pointing at --help, exit 2."""
        message = one_line_error(invoke(*args))
        assert message.endswith(f"(see devplugin-host {args[0]} --help)")


class TestSimulateOutput:
    def test_events_are_not_logged_twice(self, bare: list[str], tmp_path: Path) -> None:
        """By default simulate logs warnings only: its own lines tell what happens."""
        hooks = tmp_path / "hooks.py"
        hooks.write_text(
            "from host import hookimpl\n"
            "from host.deviceplugin import DeviceInfo, DeviceTree\n"
            "class S:\n"
            "    def scan(self, notifier):\n"
            "        tree = DeviceTree()\n"
            "        tree.add_device('w', 'w0', DeviceInfo())\n"
            "        notifier.notify(tree)\n"
            "@hookimpl\n"
            "def devplugin_scanners(config):\n"
            "    return [('x.example.com', S())]\n",
            encoding="utf-8",
        )
        args = ["simulate", "--once", "--plugin-module", str(hooks), "--enable", "hooks", *bare]
        quiet = invoke(*args)
        assert quiet.exit_code == 0, quiet.stderr
        assert "x.example.com/w: registered" in quiet.stdout
        assert quiet.stderr == ""
        loud = invoke(*args, "--log-level", "info")
        assert loud.exit_code == 0, loud.stderr
        assert "registered with kubelet" in loud.stderr
        assert "ended unexpectedly" not in loud.stderr
        assert levels(loud.stderr) <= {"INFO"}


class TestConfigLimits:
    def test_deep_toml_file(self, tmp_path: Path) -> None:
        """A TOML file nested 5,000 levels: one line naming the file, exit 2."""
        config = tmp_path / "deep.toml"
        config.write_text("x = " + "[" * DEEP + "]" * DEEP + "\n", encoding="utf-8")
        message = one_line_error(invoke("scan", "--config", str(config)))
        assert message == (
            f"config file {config}: arrays or inline tables nest more than {MAX_NESTING} "
            "levels deep"
        )

    def test_deep_inline_tables_in_a_plugin_table(self, tmp_path: Path) -> None:
        """Deep inline tables as a plugin option's value: refused the same way."""
        config = tmp_path / "deep.toml"
        value = "{a = " * DEEP + "1" + "}" * DEEP
        config.write_text(f"[plugins.generic]\ndevices = {value}\n", encoding="utf-8")
        message = one_line_error(invoke("scan", "--config", str(config)))
        assert message.startswith(f"config file {config}: ")
        assert "nest more than" in message

    def test_big_toml_file(self, tmp_path: Path) -> None:
        """A config file over 1 MiB: exit 2 before parsing it."""
        config = tmp_path / "big.toml"
        config.write_text("# padding\n" * (MAX_CONFIG_FILE_BYTES // 10 + 1), encoding="utf-8")
        message = one_line_error(invoke("scan", "--config", str(config)))
        assert message.startswith(f"config file {config} is larger than 1024 KiB")

    def test_deep_json_in_set(self, bare: list[str]) -> None:
        """--set with JSON nested 5,000 levels: one line, exit 2, no RecursionError."""
        value = "[" * DEEP + "]" * DEEP
        result = invoke("scan", "--enable", "generic", "--set", f"generic.devices={value}", *bare)
        assert one_line_error(result) == (
            f"plugin 'generic': option devices (from --set) nests lists or tables more than "
            f"{MAX_NESTING} levels deep"
        )

    def test_deep_json_in_the_environment(self, bare: list[str]) -> None:
        """The same in DEVPLUGIN_SET names the variable."""
        env = {"DEVPLUGIN_SET": "generic.devices=" + "{" * DEEP}
        message = one_line_error(invoke("scan", "--enable", "generic", *bare, env=env))
        assert message.startswith("plugin 'generic': option devices (from DEVPLUGIN_SET) nests")

    def test_big_set_value(self, bare: list[str]) -> None:
        """A --set value over 64 KiB: exit 2 naming the size."""
        value = "x" * (MAX_VALUE_BYTES + 1)
        result = invoke("scan", "--enable", "gpu", "--set", f"gpu.allow-ids={value}", *bare)
        message = one_line_error(result)
        assert message.startswith(
            f"plugin 'gpu': option allow-ids (from --set) is {MAX_VALUE_BYTES + 1} bytes long"
        )

    def test_nesting_at_the_limit_is_accepted(self, bare: list[str]) -> None:
        """32 levels are fine (the value is then judged by the plugin alone)."""
        value = "[" * MAX_NESTING + "]" * MAX_NESTING
        result = invoke("scan", "--enable", "generic", "--set", f"generic.devices={value}", *bare)
        assert result.exit_code != 2
        assert "nests" not in result.stderr
        assert "device group #1: expected a table" in result.stderr  # the plugin's own check


class TestPluginDirAtStart:
    def test_a_file(self, tmp_path: Path, bare: list[str]) -> None:
        """--plugin-dir naming a file: one line, exit 2, before anything is served."""
        target = tmp_path / "plugins"
        target.write_text("not a directory")
        message = one_line_error(invoke("run", "--plugin-dir", str(target), *bare))
        assert message == (
            f"--plugin-dir {target} is not a directory; plugin sockets need a directory"
        )

    def test_under_a_file(self, tmp_path: Path, bare: list[str]) -> None:
        """A directory that cannot be created because a parent is a file."""
        (tmp_path / "file").write_text("")
        target = tmp_path / "file" / "plugins"
        message = one_line_error(invoke("run", "--plugin-dir", str(target), *bare))
        assert message.startswith(f"--plugin-dir {target} is under {tmp_path / 'file'}, a file")

    def test_too_long_for_any_socket(self, short_dir: Path, bare: list[str]) -> None:
        """A directory whose path leaves no room for a socket name: exit 2 with its length."""
        target = short_dir / ("d" * 120)
        message = one_line_error(invoke("run", "--plugin-dir", str(target), *bare))
        length = len(str(target))
        assert message.startswith(f"--plugin-dir {target} is {length} bytes long: no socket")
        assert not target.exists()

    def test_from_the_environment_names_the_variable(self, tmp_path: Path, bare: list[str]) -> None:
        """The same mistake in DEVPLUGIN_PLUGIN_DIR names the variable."""
        target = tmp_path / "plugins"
        target.write_text("")
        result = invoke("run", *bare, env={"DEVPLUGIN_PLUGIN_DIR": str(target)})
        assert one_line_error(result).startswith(f"DEVPLUGIN_PLUGIN_DIR {target} is not")

    @pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any directory")
    def test_no_permission(self, tmp_path: Path, bare: list[str]) -> None:
        """A directory this user may not write: exit 2, saying so."""
        target = tmp_path / "plugins"
        target.mkdir(mode=0o500)
        message = one_line_error(invoke("run", "--plugin-dir", str(target), *bare))
        assert message.startswith(f"--plugin-dir {target}: no permission to create sockets")
