from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import host
from host import _host
from host.cli import main
from tests.fixtures.builtins import BUILTIN_PLUGINS
from tests.fixtures.plugin_dists import LOCAL_HOOKS
from tests.fixtures.plugin_site import PluginSite, make_plugin_site

BUILTINS = ",".join(BUILTIN_PLUGINS)


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PluginSite]:
    for name in [key for key in os.environ if key.startswith("DEVPLUGIN_")]:
        monkeypatch.delenv(name)
    for site in make_plugin_site(tmp_path, monkeypatch):
        site.add_acme()
        yield site


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    for handler in list(root.handlers):
        if isinstance(handler, _host._StderrHandler):
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def devfs(tmp_path: Path) -> Path:
    path = tmp_path / "dev"
    path.mkdir()
    for index in range(3):
        (path / f"acme{index}").touch()
    return path


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def scan_json(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = invoke("scan", "--json", *args, env=env)
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def one_line_error(result: Result, code: int = 2) -> str:
    """The usage error: exit status ``code`` and a single 'Error: ...' line on stderr."""
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0][len("Error: ") :]


class TestVersionAndHelp:
    def test_version(self) -> None:
        """--version prints the package version."""
        result = invoke("--version")
        assert result.exit_code == 0
        assert result.stdout == f"devplugin-host, version {host.__version__}\n"

    def test_version_does_not_import_grpc(self) -> None:
        """--version stays fast: neither grpc nor any plugin is imported."""
        code = (
            "import sys\n"
            "from host.cli import main\n"
            "try:\n"
            "    main(['--version'])\n"
            "except SystemExit:\n"
            "    pass\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('grpc', 'hostplugins', 'google', 'host._loader'))\n"
            "print(heavy)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        assert out.splitlines()[-1] == "[]"

    def test_help_names_env_vars_and_exit_codes(self) -> None:
        """Every option shows its environment variable; scan documents its exit status."""
        result = invoke("scan", "--help")
        assert result.exit_code == 0
        for var in ("DEVPLUGIN_ENABLE", "DEVPLUGIN_SET", "DEVPLUGIN_CONFIG", "DEVPLUGIN_TIMEOUT"):
            assert var in result.stdout
        assert "Exit status: 0" in result.stdout
        run_help = invoke("run", "--help").stdout
        for var in ("DEVPLUGIN_PLUGIN_DIR", "DEVPLUGIN_KUBELET_SOCKET", "DEVPLUGIN_LOG_FORMAT"):
            assert var in run_help


class TestPlugins:
    def test_json(self, plugin_site: PluginSite) -> None:
        """`plugins --json`: every plugin with source, options and load error."""
        result = invoke("plugins", "--json", "--plugin-module", str(LOCAL_HOOKS))
        assert result.exit_code == 0, result.output
        plugins = {p["name"]: p for p in json.loads(result.stdout)}
        assert {"acme", "broken-import", "local_hooks", "gpu"} <= set(plugins)
        local = plugins["local_hooks"]
        assert local == {
            "name": "local_hooks",
            "source": f"module {LOCAL_HOOKS}",
            "distribution": None,
            "version": None,
            "module": str(LOCAL_HOOKS),
            "enabled": True,
            "options": [
                {
                    "name": "things",
                    "type": "int",
                    "default": 1,
                    "help": "things to expose",
                    "choices": None,
                }
            ],
            "error": None,
        }
        assert plugins["raising-hook"]["error"] is None  # its hook runs only with scan/run
        assert plugins["duplicate-ns"]["source"] == "devplugin-acme 1.2.3"

    def test_text(self, plugin_site: PluginSite) -> None:
        """The text listing shows source, options with type and default, and errors."""
        result = invoke("plugins", "--disable", BUILTINS)
        assert result.exit_code == 0, result.output
        out = result.stdout
        assert "acme  devplugin-acme 1.2.3\n    count (int, default 2)\n" in out
        assert "        choices: plain, shiny\n" in out
        assert (
            "broken-import  devplugin-acme 1.2.3\n    error: failed to import: "
            "ModuleNotFoundError: No module named 'devplugin_acme_missing_dependency'\n"
        ) in out
        assert "gpu  devplugin-host 0.1.0  (disabled)\n" in out


class TestScan:
    def test_json(self, plugin_site: PluginSite, devfs: Path) -> None:
        """`scan --json`: one object mapping resource names to devices."""
        report = scan_json(
            "--enable", "acme,local_hooks", "--plugin-module", str(LOCAL_HOOKS),
            "--devfs-root", str(devfs), "--set", "local_hooks.things=2", "--set", "acme.count=1",
        )  # fmt: skip
        assert report == {
            "acme.example.com/widget": [
                {
                    "id": "acme0",
                    "health": "Healthy",
                    "nodes": [str(devfs / "acme0")],
                    "topology": [0],
                    "envs": {"ACME_WIDGET": "acme0"},
                }
            ],
            "gadgets.acme.example.com/gadget": [
                {
                    "id": "gadget0",
                    "health": "Healthy",
                    "nodes": [],
                    "topology": [],
                    "annotations": {"acme/label": "plain"},
                }
            ],
            "local.example.com/thing": [
                {"id": f"thing{i}", "health": "Healthy", "nodes": [], "topology": []}
                for i in range(2)
            ],
        }

    def test_table(self, plugin_site: PluginSite, devfs: Path) -> None:
        """Without --json, a table of resources and devices."""
        result = invoke("scan", "--enable", "acme", "--devfs-root", str(devfs))
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert lines[0].split() == ["RESOURCE", "ID", "HEALTH", "NUMA", "NODES"]
        assert lines[1].split() == [
            "acme.example.com/widget",
            "acme0",
            "Healthy",
            "0",
            str(devfs / "acme0"),
        ]
        assert lines[3].split() == [
            "gadgets.acme.example.com/gadget",
            "gadget0",
            "Healthy",
            "-",
            "-",
        ]

    def test_empty_tree(self, plugin_site: PluginSite, tmp_path: Path) -> None:
        """A scanner that finds nothing is said so."""
        result = invoke("scan", "--enable", "acme", "--devfs-root", str(tmp_path))
        assert result.exit_code == 0, result.output
        assert "acme.example.com: no devices found" in result.stdout

    def test_broken_plugin_exits_1(self, plugin_site: PluginSite, devfs: Path) -> None:
        """A plugin that fails makes scan exit 1; the good one's devices are still printed."""
        result = invoke(
            "scan", "--json", "--enable", "acme,raising-hook", "--devfs-root", str(devfs)
        )
        assert result.exit_code == 1
        assert "acme.example.com/widget" in json.loads(result.stdout)
        assert (
            "plugin 'raising-hook' (devplugin-acme 1.2.3) is left out: devplugin_scanners "
            "raised RuntimeError: license server unreachable"
        ) in result.stderr

    def test_failing_scanner_exits_1(self, plugin_site: PluginSite, tmp_path: Path) -> None:
        """A scanner that raises is reported with plugin and namespace; exit 1."""
        module = tmp_path / "failing.py"
        module.write_text(
            "from host import hookimpl\n"
            "class S:\n"
            "    def scan(self, notifier):\n"
            "        raise OSError('no sysfs')\n"
            "@hookimpl\n"
            "def devplugin_scanners(config):\n"
            "    return [('fail.example.com', S())]\n",
            encoding="utf-8",
        )
        result = invoke("scan", "--enable", "failing", "--plugin-module", str(module))
        assert result.exit_code == 1
        assert (
            "plugin 'failing' namespace fail.example.com: scan raised OSError: no sysfs"
            in result.stderr
        )


class TestUsageErrors:
    @pytest.mark.parametrize(
        ("args", "shown"),
        [
            (["scan", "--timeout", "nan"], "nan is not a finite number of seconds greater than 0"),
            (["scan", "--timeout", "inf"], "inf is not a finite number of seconds greater than 0"),
            (["scan", "--timeout", "0"], "0.0 is not in the range x>0"),
            (["status", "--timeout", "soon"], "'soon' is not a valid float"),
            (["simulate", "--duration", "-1"], "-1.0 is not in the range x>0"),
            (["simulate", "--restart-kubelet-every", "nan"], "nan is not a finite number"),
        ],
    )
    def test_seconds_must_be_finite_and_positive(self, args: list[str], shown: str) -> None:
        """A number of seconds that is nan, inf, 0, negative or no number: exit 2, one line."""
        result = invoke(*args)
        assert result.exit_code == 2
        assert shown in result.output
        assert "Traceback" not in result.output

    @pytest.mark.parametrize("command", ["plugins", "scan", "run"])
    def test_unknown_enable(self, plugin_site: PluginSite, command: str) -> None:
        """--enable nosuch: exit 2, listing the available plugins."""
        message = one_line_error(invoke(command, "--enable", "nosuch"))
        assert message.startswith("unknown plugin 'nosuch' in --enable; available plugins: ")
        available = message.split("available plugins: ", 1)[1].split(", ")
        assert available == sorted(available)
        assert {"acme", "broken-import", "fpga", "generic", "gpu"} <= set(available)

    @pytest.mark.parametrize(
        ("args", "expected"),
        [
            (
                ["--set", "acme.nosuch=1"],
                "plugin 'acme' has no option 'nosuch' (from --set); its options: count, label",
            ),
            (
                ["--set", "acme.count=abc"],
                "plugin 'acme': option count (from --set): expected an integer, got 'abc'",
            ),
            (
                ["--set", "acme.label=dull"],
                "plugin 'acme': option label (from --set): expected one of plain, shiny; "
                "got 'dull'",
            ),
            (
                ["--set", "acme-count=1"],
                "--set expects PLUGIN.KEY=VALUE (e.g. gpu.shared-dev-num=2), got 'acme-count=1'",
            ),
            (["--set", "nosuch.x=1"], "unknown plugin 'nosuch' in --set; available plugins: "),
            (["--set", "acme.count=0"], "plugin 'acme': option count must be >= 1, got 0"),
        ],
    )
    @pytest.mark.parametrize("command", ["scan", "run"])
    def test_bad_option(
        self, plugin_site: PluginSite, short_dir: Path, command: str, args: list[str], expected: str
    ) -> None:
        """Bad --set values and a plugin's ConfigError: one line, exit 2, nothing served."""
        extra = ["--plugin-dir", str(short_dir / "plugins")] if command == "run" else []
        message = one_line_error(invoke(command, "--enable", "acme", *args, *extra))
        assert message.startswith(expected)
        assert not (short_dir / "plugins").exists()

    def test_bad_instance_id(self, plugin_site: PluginSite, short_dir: Path) -> None:
        """An unusable --instance-id: one line naming the option, exit 2, nothing served."""
        result = invoke(
            "run", "--enable", "acme", "--plugin-dir", str(short_dir / "p"), "--instance-id", "a b"
        )
        assert one_line_error(result) == (
            "--instance-id 'a b' cannot be used: it must be printable "
            "text without whitespace (e.g. the pod UID)"
        )
        assert not (short_dir / "p").exists()

    def test_bad_instance_id_in_config_file(self, plugin_site: PluginSite, tmp_path: Path) -> None:
        """instance-id in the config file is checked the same way."""
        config = tmp_path / "host.toml"
        config.write_text('instance-id = ""\n', encoding="utf-8")
        message = one_line_error(invoke("run", "--config", str(config)))
        assert message == f"config file {config}: instance-id '' cannot be used: it is empty"

    def test_kubelet_options_are_documented_with_their_variables(self) -> None:
        """run --help names --instance-id, --registration and the PodResources socket."""
        result = invoke("run", "--help")
        for text in (
            "--instance-id",
            "DEVPLUGIN_INSTANCE_ID",
            "--registration",
            "DEVPLUGIN_REGISTRATION",
            "--plugins-registry-dir",
            "--pod-resources-socket",
            "DEVPLUGIN_POD_RESOURCES_SOCKET",
        ):
            assert text in result.output

    def test_bad_registration_in_config_file(self, plugin_site: PluginSite, tmp_path: Path) -> None:
        """registration in the config file must be one of the two ways."""
        config = tmp_path / "host.toml"
        config.write_text('registration = "carrier-pigeon"\n', encoding="utf-8")
        message = one_line_error(invoke("run", "--config", str(config)))
        assert message == (
            f"config file {config}: registration must be one of kubelet-socket, "
            "plugins-registry, got 'carrier-pigeon'"
        )

    def test_malformed_config_file(self, plugin_site: PluginSite, tmp_path: Path) -> None:
        """A malformed TOML file: its path and line, exit 2."""
        config = tmp_path / "host.toml"
        config.write_text('enable = ["acme"]\n\n[plugins.acme\ncount = 1\n', encoding="utf-8")
        message = one_line_error(invoke("scan", "--config", str(config)))
        assert message.startswith(f"config file {config}: invalid TOML: ")
        assert "line 3" in message

    def test_missing_config_file(self, plugin_site: PluginSite, tmp_path: Path) -> None:
        """A missing config file: exit 2."""
        message = one_line_error(invoke("run", "--config", str(tmp_path / "none.toml")))
        assert (
            message
            == f"cannot read config file {tmp_path / 'none.toml'}: No such file or directory"
        )

    def test_unreadable_plugin_module(self, plugin_site: PluginSite, tmp_path: Path) -> None:
        """An unreadable --plugin-module: exit 2."""
        missing = tmp_path / "nope.py"
        message = one_line_error(invoke("run", "--plugin-module", str(missing)))
        assert message == f"cannot read --plugin-module {missing}: No such file or directory"

    def test_bad_log_level(self) -> None:
        """An invalid choice is click's usage error, exit 2."""
        result = invoke("run", "--log-level", "loud")
        assert result.exit_code == 2
        assert "Invalid value for '--log-level'" in result.stderr

    def test_run_without_scanners_exits_1(self, plugin_site: PluginSite, short_dir: Path) -> None:
        """run with nothing to serve (every enabled plugin failed) exits 1 and says why."""
        result = invoke("run", "--enable", "raising-hook", "--plugin-dir", str(short_dir))
        assert result.exit_code == 1
        assert "plugin 'raising-hook' (devplugin-acme 1.2.3) is left out" in result.stderr
        assert "no scanners to run" in result.stderr


class TestSettingSources:
    def test_environment_variables(self, plugin_site: PluginSite, devfs: Path) -> None:
        """DEVPLUGIN_ENABLE, DEVPLUGIN_SET, DEVPLUGIN_DEVFS_ROOT configure like the options."""
        report = scan_json(
            env={
                "DEVPLUGIN_ENABLE": "acme",
                "DEVPLUGIN_SET": "acme.count=1 acme.label=shiny",
                "DEVPLUGIN_DEVFS_ROOT": str(devfs),
            }
        )
        assert [d["id"] for d in report["acme.example.com/widget"]] == ["acme0"]
        assert report["gadgets.acme.example.com/gadget"][0]["annotations"] == {
            "acme/label": "shiny"
        }

    def test_env_error_names_the_variable(self, plugin_site: PluginSite) -> None:
        """A bad value from DEVPLUGIN_SET names the variable as its source."""
        result = invoke("scan", env={"DEVPLUGIN_ENABLE": "acme", "DEVPLUGIN_SET": "acme.count=x"})
        assert one_line_error(result) == (
            "plugin 'acme': option count (from DEVPLUGIN_SET): expected an integer, got 'x'"
        )

    def test_precedence_cli_env_file_default(
        self, plugin_site: PluginSite, devfs: Path, tmp_path: Path
    ) -> None:
        """Command line > environment > config file > defaults, setting by setting."""
        config = tmp_path / "host.toml"
        config.write_text(
            'enable = ["acme", "gpu"]\n'
            f'devfs-root = "{tmp_path / "nowhere"}"\n'
            "[plugins.acme]\n"
            "count = 3\n"
            'label = "shiny"\n',
            encoding="utf-8",
        )
        report = scan_json(
            "--enable", "acme", "--set", "acme.count=2",
            env={
                "DEVPLUGIN_CONFIG": str(config),
                "DEVPLUGIN_DEVFS_ROOT": str(devfs),
                "DEVPLUGIN_SET": "acme.count=1",
            },
        )  # fmt: skip
        # --enable beats the file's list (no gpu); the env's devfs beats the file's;
        # --set count=2 beats DEVPLUGIN_SET count=1 beats the file's 3; label from the file.
        assert sorted(report) == ["acme.example.com/widget", "gadgets.acme.example.com/gadget"]
        assert len(report["acme.example.com/widget"]) == 2
        assert report["gadgets.acme.example.com/gadget"][0]["annotations"]["acme/label"] == "shiny"

    def test_config_file_alone(self, plugin_site: PluginSite, devfs: Path, tmp_path: Path) -> None:
        """The config file's settings and plugin tables apply without any option."""
        config = tmp_path / "host.toml"
        config.write_text(
            f'enable = "acme"\ndevfs-root = "{devfs}"\n[plugins.acme]\ncount = 3\n',
            encoding="utf-8",
        )
        report = scan_json("--config", str(config))
        assert len(report["acme.example.com/widget"]) == 3

    def test_config_file_bad_option_value(self, plugin_site: PluginSite, tmp_path: Path) -> None:
        """A bad value in the file names the file as its source."""
        config = tmp_path / "host.toml"
        config.write_text('[plugins.acme]\ncount = "many"\n', encoding="utf-8")
        message = one_line_error(invoke("scan", "--enable", "acme", "--config", str(config)))
        assert message == (
            f"plugin 'acme': option count (from config file {config}): "
            "expected an integer, got 'many'"
        )

    def test_json_log_format(self, plugin_site: PluginSite, devfs: Path) -> None:
        """--log-format json: every log line on stderr is a JSON object."""
        result = invoke(
            "scan", "--enable", "acme,broken-import", "--devfs-root", str(devfs),
            "--log-format", "json",
        )  # fmt: skip
        assert result.exit_code == 1
        entries = [json.loads(line) for line in result.stderr.splitlines()]
        assert entries[0]["level"] == "error"
        assert entries[0]["logger"] == "host"
        assert entries[0]["message"].startswith("plugin 'broken-import' (devplugin-acme 1.2.3)")
