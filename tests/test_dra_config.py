"""`--dra` and the options beside it: sources (flag, environment, TOML) and mistakes (exit 2)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from host import _host
from host._config import ConfigError, read_config_file, resolve_settings
from host._dra_config import dra_options
from host._loader import PluginRecord, ScannerRecord
from host.cli import main
from host.dra import DraOptions
from host.dra._serving import PUBLISH_GRACE
from host.testing import write_kubeconfig

LONG_NAMESPACE = "a" * 40 + "." + "b" * 30 + ".example.com"  # a resource prefix, no driver name

BAD_DRIVER_HOOKS = f'''
from host import hookimpl


class Scanner:
    async def scan(self, notifier):
        pass


@hookimpl
def devplugin_scanners(config):
    return [("{LONG_NAMESPACE}", Scanner())]
'''


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in [k for k in os.environ if k.startswith("DEVPLUGIN_")] + ["NODE_NAME", "KUBECONFIG"]:
        monkeypatch.delenv(name, raising=False)
    root = logging.getLogger()
    level = root.level
    yield
    for handler in list(root.handlers):
        if isinstance(handler, _host._StderrHandler):
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def dirs(short_dir: Path) -> list[str]:
    """The directories `run` needs, all writable, and a kubeconfig that parses."""
    kubeconfig = write_kubeconfig(short_dir / "kubeconfig", "http://127.0.0.1:1")
    return [
        "--plugin-dir", str(short_dir / "dp"),
        "--dra-plugin-dir", str(short_dir / "plugins"),
        "--plugins-registry-dir", str(short_dir / "reg"),
        "--kubeconfig", str(kubeconfig),
    ]  # fmt: skip


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def one_line_error(result: Result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0][len("Error: ") :]


class TestMistakes:
    def test_plugin_not_enabled(self, dirs: list[str]) -> None:
        """A --dra plugin that is not enabled: one line listing the enabled ones, exit 2."""
        result = invoke("run", "--enable", "generic", "--dra", "gpu", "--node-name", "n1", *dirs)
        assert one_line_error(result).startswith(
            "--dra names plugin 'gpu', which is not enabled (enabled: generic;"
        )

    def test_unknown_plugin_from_the_environment(self, dirs: list[str]) -> None:
        """The message names the variable the mistake came from."""
        env = {"DEVPLUGIN_DRA": "generic,nosuch", "NODE_NAME": "n1"}
        result = invoke("run", "--enable", "generic", *dirs, env=env)
        assert "DEVPLUGIN_DRA names plugin 'nosuch', which is not enabled" in one_line_error(result)

    def test_node_name_required(self, dirs: list[str]) -> None:
        """--dra without --node-name (or NODE_NAME): one line, exit 2, before any plugin loads."""
        result = invoke("run", "--enable", "generic", "--dra", "generic", *dirs)
        assert one_line_error(result) == (
            "--dra needs this node's name: give --node-name (NODE_NAME; the DaemonSet sets it "
            "from the pod's spec.nodeName)"
        )

    def test_bad_node_name(self, dirs: list[str]) -> None:
        """A node name that is no DNS subdomain is refused with its source."""
        result = invoke("run", "--dra", "generic", *dirs, env={"NODE_NAME": "Node_1"})
        assert one_line_error(result).startswith("NODE_NAME 'Node_1' cannot be used: ")

    def test_missing_kubeconfig(self, dirs: list[str], short_dir: Path) -> None:
        """A kubeconfig that does not exist is named; exit 2."""
        missing = short_dir / "none"
        result = invoke(
            "run", "--dra", "generic", "--node-name", "n1", *dirs, "--kubeconfig", str(missing)
        )
        assert one_line_error(result) == (
            f"--kubeconfig {missing}: Configuration file {missing} not found"
        )

    def test_namespace_that_is_no_driver_name(self, dirs: list[str], tmp_path: Path) -> None:
        """A namespace too long for a DRA driver name is refused for --dra (exit 2)."""
        hooks = tmp_path / "longns.py"
        hooks.write_text(BAD_DRIVER_HOOKS)
        result = invoke(
            "run", "--enable", "longns", "--plugin-module", str(hooks), "--dra", "longns",
            "--node-name", "n1", *dirs,
        )  # fmt: skip
        assert one_line_error(result).startswith(
            f"--dra: plugin 'longns' cannot be served as a DRA driver: invalid DRA driver name "
            f"'{LONG_NAMESPACE}'"
        )

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("-1", "--dra-publish-grace -1.0 cannot be used: a duration is a finite number"),
            ("nan", "--dra-publish-grace nan cannot be used: a duration is a finite number"),
            ("inf", "--dra-publish-grace inf cannot be used: a duration is a finite number"),
            ("soon", "Invalid value for '--dra-publish-grace'"),
        ],
    )
    def test_bad_publish_grace(self, dirs: list[str], value: str, message: str) -> None:
        """A publish grace that is no finite number of seconds >= 0: one line, exit 2."""
        result = invoke(
            "run", "--dra", "generic", "--node-name", "n1", *dirs, "--dra-publish-grace", value
        )
        assert one_line_error(result).startswith(message)

    def test_bad_publish_grace_from_the_environment(self, dirs: list[str]) -> None:
        """The message names the variable the value came from."""
        env = {"DEVPLUGIN_DRA_PUBLISH_GRACE": "-5"}
        result = invoke("run", "--dra", "generic", "--node-name", "n1", *dirs, env=env)
        assert one_line_error(result).startswith("DEVPLUGIN_DRA_PUBLISH_GRACE -5.0 cannot be used")


class TestSources:
    def test_config_file(self, tmp_path: Path) -> None:
        """Every DRA setting has a TOML key; dra_options turns them into DraOptions."""
        config = tmp_path / "host.toml"
        config.write_text(
            'dra = ["gpu"]\nnode-name = "node-a"\nkubeconfig = "/etc/kc"\n'
            'dra-plugin-dir = "/k/plugins"\nplugins-registry-dir = "/k/reg"\n'
            "dra-cleanup-on-exit = true\ndra-publish-grace = 15\n"
        )
        settings = resolve_settings({}, read_config_file(config))
        plugins = [PluginRecord(name="gpu")]
        scanners = [ScannerRecord("gpu", "gpu.intel.com", object())]  # type: ignore[arg-type]
        options = dra_options(settings, plugins, scanners)
        assert options is not None
        assert (options.plugins, options.node_name) == (frozenset({"gpu"}), "node-a")
        assert (options.kubeconfig, options.plugin_dir, options.registry_dir) == (
            Path("/etc/kc"),
            Path("/k/plugins"),
            Path("/k/reg"),
        )
        assert options.cleanup_on_exit is True
        assert options.publish_grace == 15.0

    def test_publish_grace_defaults_to_the_drivers(self) -> None:
        """Without a publish grace anywhere the driver's own default (60 s) holds."""
        settings = resolve_settings({"dra": ("gpu",), "node_name": "node-a"})
        plugins = [PluginRecord(name="gpu")]
        scanners = [ScannerRecord("gpu", "gpu.intel.com", object())]  # type: ignore[arg-type]
        options = dra_options(settings, plugins, scanners)
        assert options is not None
        assert options.publish_grace == PUBLISH_GRACE == 60.0

    def test_command_line_wins_over_the_file(self, tmp_path: Path) -> None:
        """Given values (flag or environment) win; a flag left out keeps the file's value."""
        config = tmp_path / "host.toml"
        config.write_text('node-name = "from-file"\ndra-cleanup-on-exit = true\n')
        given = {"node_name": "from-env", "dra_cleanup_on_exit": None}
        settings = resolve_settings(given, read_config_file(config))
        assert (settings.node_name, settings.dra_cleanup_on_exit) == ("from-env", True)
        assert dra_options(settings, [], []) is None  # no --dra: nothing served as DRA

    @pytest.mark.parametrize(
        ("line", "message"),
        [
            ('dra-cleanup-on-exit = "yes"', "dra-cleanup-on-exit must be true or false, got 'yes'"),
            ('node-name = "A B"', "node-name 'A B' cannot be used: a node name is a lower-case"),
            ("dra = 3", "dra must be a list of strings, got 3"),
            ('dra-publish-grace = "60"', "dra-publish-grace '60' cannot be used: it is no number"),
            ("dra-publish-grace = true", "dra-publish-grace True cannot be used: it is no number"),
            ("dra-publish-grace = -0.5", "dra-publish-grace -0.5 cannot be used: a duration is"),
            ("dra-publish-grace = nan", "dra-publish-grace nan cannot be used: a duration is"),
        ],
    )
    def test_config_file_mistakes(self, tmp_path: Path, line: str, message: str) -> None:
        """A wrong value in the file is a ConfigError naming the file and the key."""
        config = tmp_path / "host.toml"
        config.write_text(line + "\n")
        with pytest.raises(ConfigError, match=r"^config file .*host\.toml: ") as info:
            read_config_file(config)
        assert message in str(info.value)


class TestCommandLine:
    def test_help_names_every_option_with_its_variable(self) -> None:
        """`run --help` documents each DRA option with its environment variable."""
        out = " ".join(invoke("run", "--help").stdout.split())
        for option, variable in [
            ("--dra", "DEVPLUGIN_DRA"),
            ("--node-name", "NODE_NAME"),
            ("--kubeconfig", "KUBECONFIG"),
            ("--dra-plugin-dir", "DEVPLUGIN_DRA_PLUGIN_DIR"),
            ("--plugins-registry-dir", "DEVPLUGIN_PLUGINS_REGISTRY_DIR"),
            ("--dra-cleanup-on-exit", "DEVPLUGIN_DRA_CLEANUP_ON_EXIT"),
            ("--dra-publish-grace", "DEVPLUGIN_DRA_PUBLISH_GRACE"),
        ]:
            assert option in out
            assert f"env var: {variable}" in out

    def test_environment_reaches_the_host(
        self, dirs: list[str], short_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """DEVPLUGIN_DRA, NODE_NAME and the DRA options' variables reach run_host as DraOptions."""
        given: dict[str, object] = {}

        def fake_run_host(*args: object, **kwargs: object) -> int:
            given.update(kwargs)
            return 0

        monkeypatch.setattr(_host, "run_host", fake_run_host)
        env = {"DEVPLUGIN_DRA": "generic", "NODE_NAME": "node-a"}
        env["DEVPLUGIN_DRA_CLEANUP_ON_EXIT"] = "1"
        env["DEVPLUGIN_DRA_PUBLISH_GRACE"] = "7.5"
        result = invoke("run", "--enable", "generic,gpu", *dirs, env=env)
        assert result.exit_code == 0, result.output
        options = given["dra"]
        assert options == DraOptions(
            plugins=frozenset({"generic"}),
            node_name="node-a",
            kubeconfig=short_dir / "kubeconfig",
            plugin_dir=short_dir / "plugins",
            registry_dir=short_dir / "reg",
            cleanup_on_exit=True,
            publish_grace=7.5,
        )
