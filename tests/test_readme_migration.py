"""The README's migration guide (device plugin -> DRA -> device plugin) runs as written.

The fenced block is run line by line in one shell, in a fresh directory, with
``devplugin-host`` and ``python3`` being this environment's; every command must succeed
and show what the guide says it shows.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from host.dra._deviceclasses import device_class
from tests.test_readme import fenced_block

FIRST_LINE = "# migrate gpu.intel.com/i915"
STEP = "@@ step done: "


def guide_script() -> tuple[str, list[str]]:
    """The guide's block as a shell script marking each command's end; the commands."""
    block = fenced_block("sh", FIRST_LINE)
    commands = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    python = shlex.quote(sys.executable)
    lines = [
        "set -euo pipefail",
        f'devplugin-host() {{ {python} -m host.cli "$@"; }}',
        f'python3() {{ {python} "$@"; }}',
    ]
    for index, command in enumerate(commands):
        lines += [command, f"echo '{STEP}{index}'"]
    return "\n".join(lines) + "\n", commands


def steps(output: str) -> list[str]:
    """The output of each command, split at the markers."""
    parts = re.split(rf"^{re.escape(STEP)}\d+$", output, flags=re.MULTILINE)
    return parts[:-1]


class TestMigrationGuide:
    def test_every_step_runs_and_shows_the_devices(self, tmp_path: Path) -> None:
        """Device plugin, classes, DRA through the class, device plugin again."""
        script, commands = guide_script()
        simulate = [c for c in commands if c.startswith("devplugin-host simulate")]
        assert len(simulate) == 3
        assert "--dra gpu" in simulate[1]
        assert simulate[0] == simulate[2]  # back: exactly the command of before
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEVPLUGIN_")}
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        outputs = steps(result.stdout)
        assert len(outputs) == len(commands), result.stdout
        by_command = dict(zip(commands, outputs, strict=True))
        before, after = by_command[simulate[0]], outputs[-1]
        for output in (before, after):  # the device plugin's answer
            assert re.search(r"allocate gpu\.intel\.com/i915=1: card\d-0", output), output
            assert re.search(r"devices +/dev/dri/card\d -> /dev/dri/card\d \(rw\)", output)
        dra = by_command[simulate[1]]  # the same request, through the DeviceClass
        assert (
            "allocate gpu.intel.com/i915=1 (pod default/simulate-1, DeviceClass "
            "i915.gpu.intel.com, claim default/simulate-1-extended-resources-"
        ) in dra, dra
        assert re.search(r"device /dev/dri/card\d\n", dra)
        classes = [d for d in yaml.safe_load_all((tmp_path / "gpu-classes.yaml").read_text()) if d]
        assert classes == [
            device_class("gpu.intel.com", "i915"),
            device_class("gpu.intel.com", "xe"),
        ]
