"""The README's commands and snippets work as written.

The plugin author's quick start is run verbatim on a machine without any of the
built-in plugins' hardware (empty sysfs and devfs roots): the hooks file with
``simulate --plugin-module``, and the pyproject snippet built into a real wheel
(offline: hatchling from the ``test`` extra, no build isolation).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import click
import pytest

from tests.fixtures.builtins import BUILTIN_PLUGINS

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")


def fenced_block(language: str, first_line: str) -> str:
    """The README's fenced ``language`` block whose first line starts with ``first_line``."""
    for match in re.finditer(rf"```{language}\n(.*?)```", README, re.DOTALL):
        if match.group(1).startswith(first_line):
            return match.group(1)
    raise AssertionError(f"README has no {language} block starting with {first_line!r}")


def host_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a machine with none of the built-in plugins' hardware."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DEVPLUGIN_")}
    for name in ("sys", "dev"):
        (tmp_path / f"empty-{name}").mkdir(exist_ok=True)
    env["DEVPLUGIN_SYSFS_ROOT"] = str(tmp_path / "empty-sys")
    env["DEVPLUGIN_DEVFS_ROOT"] = str(tmp_path / "empty-dev")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env | extra


def devplugin_host() -> list[str]:
    """The command that runs ``devplugin-host`` from this environment."""
    return [sys.executable, "-m", "host.cli"]


def write_acme_package(directory: Path) -> None:
    """The README's plugin module, as ``devplugin_acme/__init__.py`` under ``directory``."""
    package = directory / "devplugin_acme"
    package.mkdir(parents=True)
    source = fenced_block("python", "# devplugin_acme/__init__.py")
    (package / "__init__.py").write_text(source, encoding="utf-8")


class TestPluginAuthorQuickStart:
    def test_hooks_file_command_runs_on_a_machine_without_hardware(self, tmp_path: Path) -> None:
        """The README's `cp ...; devplugin-host simulate --plugin-module ./my_hooks.py --once`."""
        write_acme_package(tmp_path)
        block = fenced_block("sh", "cp devplugin_acme/__init__.py my_hooks.py")
        copy, command = block.strip().splitlines()
        source, target = shlex.split(copy)[1:]
        (tmp_path / target).write_text((tmp_path / source).read_text(encoding="utf-8"))
        argv = shlex.split(command)
        assert argv[0] == "devplugin-host"
        result = subprocess.run(
            [*devplugin_host(), *argv[1:], "--json"],
            cwd=tmp_path,
            env=host_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        document = json.loads(result.stdout)
        widget = document["resources"]["acme.example.com/widget"]
        assert (widget["capacity"], widget["allocatable"]) == (2, 2)
        assert "ERROR" not in result.stderr
        assert "ListAndWatch ended unexpectedly" not in result.stderr

    def test_pyproject_snippet_builds_an_installable_plugin(self, tmp_path: Path) -> None:
        """The pyproject snippet beside the module builds a wheel whose entry point loads."""
        if importlib.util.find_spec("hatchling") is None:
            pytest.fail("building the README's plugin needs hatchling: pip install -e '.[test]'")
        source = tmp_path / "src"
        write_acme_package(source)
        pyproject = fenced_block("toml", "# pyproject.toml")
        (source / "pyproject.toml").write_text(pyproject, encoding="utf-8")
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
        wheels, site = tmp_path / "wheels", tmp_path / "site"
        subprocess.run(
            [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index",
             "-w", str(wheels), str(source)],
            check=True,
        )  # fmt: skip
        (wheel,) = wheels.glob("devplugin_acme-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            names = archive.namelist()
            (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
            text = archive.read(entry_points).decode()
        assert "devplugin_acme/__init__.py" in names
        assert "[devplugin.scanners]\nacme = devplugin_acme" in text
        subprocess.run(
            [*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
            check=True,
        )
        env = host_env(tmp_path, PYTHONPATH=os.pathsep.join([str(site), *sys.path]))
        result = subprocess.run(
            [*devplugin_host(), "simulate", "--enable", "acme", "--once", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert "acme.example.com/widget" in json.loads(result.stdout)["resources"]


class TestCitations:
    def test_every_markdown_file_the_code_cites_is_in_the_repository(self) -> None:
        """Docstrings cite only documents a reader of the repository can open."""
        shipped = {path.name for path in REPO.rglob("*.md") if ".venv" not in path.parts}
        cited: dict[str, list[str]] = {}
        for folder in ("host", "hostplugins", "tests", "contrib"):
            for path in (REPO / folder).rglob("*.py"):
                for name in re.findall(r"[\w.-]+\.md\b", path.read_text(encoding="utf-8")):
                    cited.setdefault(name, []).append(str(path.relative_to(REPO)))
        missing = {name: files for name, files in cited.items() if name not in shipped}
        assert missing == {}


def documented_commands(text: str) -> list[list[str]]:
    """Every ``devplugin-host ...`` command of ``text``: in shell blocks and inline code."""
    candidates: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.DOTALL):
        for line in block.splitlines():
            for part in line.split("#", 1)[0].split("&&"):
                candidates.append(part.strip().removeprefix("sudo ").strip())
    candidates += re.findall(r"`(devplugin-host [^`]*)`", text)
    commands = []
    for candidate in candidates:
        if not candidate.startswith("devplugin-host ") or "..." in candidate:
            continue
        commands.append(shlex.split(candidate)[1:])
    return commands


DOCUMENTS = {
    "README.md": REPO / "README.md",
    "contrib example README": REPO / "contrib/devplugin-example-color/README.md",
}


class TestDocumentedCommands:
    @pytest.mark.parametrize("document", sorted(DOCUMENTS))
    def test_every_documented_command_parses(self, document: str) -> None:
        """Each documented command names a real subcommand and only its own options."""
        from host.cli import main

        commands = documented_commands(DOCUMENTS[document].read_text(encoding="utf-8"))
        assert len(commands) >= 5
        for args in commands:
            if args[0] in ("--version", "-V", "--help") or args[0].isupper():  # COMMAND --help
                continue
            command = main.get_command(click.Context(main), args[0])
            assert command is not None, f"{document}: no command {args[0]!r} in {args}"
            # Parses and checks every option (unknown ones, choices) without running it.
            with command.make_context(args[0], list(args[1:]), parent=click.Context(main)):
                pass

    def test_the_built_in_plugins_the_example_lists_are_the_installed_ones(self) -> None:
        """The example README's list of built-in plugins is the entry points' list."""
        text = DOCUMENTS["contrib example README"].read_text(encoding="utf-8")
        [listed] = re.findall(r"# the built-in plugins: (.*)", text)
        assert tuple(name.strip() for name in listed.split(",")) == BUILTIN_PLUGINS
