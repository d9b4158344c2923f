"""contrib/devplugin-example-color, installed as a plugin author would, and its own tests.

The package is built into a real wheel and installed into a target directory (on
PYTHONPATH for the subprocesses), so its entry point is found the way an installed
plugin's is. Offline: the build uses the running environment's hatchling (the ``test``
extra), without build isolation.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from host.cli import main as cli

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "contrib" / "devplugin-example-color"
YELLOW = "color.example.com/yellow"
GREEN = "color.example.com/green"


@pytest.fixture(scope="module")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example package, built and installed into a fresh target directory."""
    if importlib.util.find_spec("hatchling") is None:
        pytest.fail(
            "building contrib/devplugin-example-color needs hatchling in this environment: "
            "pip install -e '.[test]'"
        )
    workdir = tmp_path_factory.mktemp("example")
    source = workdir / "src"
    # Built from a copy: nothing the build leaves behind lands in the checkout.
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    site = workdir / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
         "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(site), str(source)],
        check=True,
    )  # fmt: skip
    return site


def run(site: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DEVPLUGIN_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class TestExamplePackage:
    def test_its_own_tests_pass(self, example_site: Path) -> None:
        """The example's tests, written with host.testing's fixtures only, pass."""
        result = run(
            example_site,
            "-m", "pytest", "contrib/devplugin-example-color/tests", "-q", "-p", "no:cacheprovider",
            timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert " passed" in result.stdout
        assert "skipped" not in result.stdout

    def test_installed_entry_point(self, example_site: Path) -> None:
        """`devplugin-host plugins` lists it as plugin color of its distribution."""
        result = run(example_site, "-m", "host.cli", "plugins", "--json", "--enable", "color")
        assert result.returncode == 0, result.stderr
        (color,) = [plugin for plugin in json.loads(result.stdout) if plugin["name"] == "color"]
        assert color["source"] == "devplugin-example-color 0.1.0"
        assert [option["name"] for option in color["options"]] == ["count", "interval"]
        assert color["error"] is None

    def test_scan(self, example_site: Path) -> None:
        """`devplugin-host scan --enable color` reports both colors, backed by /dev/null."""
        result = run(
            example_site, "-m", "host.cli", "scan", "--enable", "color", "--json",
            "--devfs-root", "/dev", "--set", "color.count=3",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert sorted(report) == [GREEN, YELLOW]
        assert [device["id"] for device in report[YELLOW]] == ["yellow-0", "yellow-1", "yellow-2"]
        assert {tuple(device["nodes"]) for device in report[GREEN]} == {("/dev/null",)}

    def test_simulate_with_allocation(self, example_site: Path) -> None:
        """`simulate --enable color --once --json --allocate ...` shows the painted allocation."""
        if "simulate" not in cli.commands:
            pytest.skip("this devplugin-host has no simulate command")
        result = run(
            example_site, "-m", "host.cli", "simulate", "--enable", "color", "--once",
            "--json", "--allocate", f"{YELLOW}=1",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        document = json.loads(result.stdout)
        assert sorted(document["resources"]) == [GREEN, YELLOW]
        assert '"color.example.com/painted": "yellow"' in result.stdout

    def test_served_as_a_dra_driver(self, example_site: Path) -> None:
        """`simulate --dra color`: the unchanged plugin as DRA driver color.example.com, its
        devices published as slices and a claim prepared with the scanner's COLOR env."""
        result = run(
            example_site, "-m", "host.cli", "simulate", "--enable", "color", "--dra", "color",
            "--once", "--json", "--devfs-root", "/dev", "--allocate", f"{YELLOW}=1",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        document = json.loads(result.stdout)
        assert document["resources"] == {}  # a DRA driver only: no device-plugin resource
        published = document["dra"]["color.example.com"]
        assert [d["id"] for d in published["devices"]] == [
            "green-0", "green-1", "yellow-0", "yellow-1",
        ]  # fmt: skip
        [claim] = document["allocations"]
        assert (claim["error"], claim["devices"]) == (None, ["yellow-yellow-0"])
        # post_allocate shaped the claim's CDI device: the scanner's env, its device node.
        [cdi] = claim["cdi"]
        assert cdi["id"] == f"color.example.com/dra=claim-{claim['uid']}-yellow"
        assert (cdi["device_nodes"], cdi["env"]) == (["/dev/null"], ["COLOR=yellow"])
