"""Rolling updates under Allocate load: ``python tests/bench/rolling_upgrade.py``.

Replaces the host ``--rolls`` times (default 20) against the fake kubelet of each
generation (``--modes``, default 1.24,1.25,1.36; ``--plugins-registry`` to register
through its plugin watcher): start the new host with another
``--instance-id``, wait until kubelet uses it, SIGTERM the old one, wait until kubelet
has settled. A load task admits and releases containers as kubelet does, back to back.
Prints, per mode: the longest span with allocatable 0 (exact: the fake kubelet records
every change), how many admissions kubelet refused and how many Allocate calls failed
at a plugin, and the time from SIGTERM to kubelet settled on the new host. Target: no
span longer than 100 ms and no failed Allocate. Hosts are real subprocesses; the fake
kubelet and the load run in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for tests.*

from report import Row, format_table

from host.testing import FakeKubelet, KubeletMode
from tests.reliability.rolling import RollFigures, roll_hosts

GAP_TARGET = 0.100


async def measure(mode: KubeletMode, rolls: int, registry: bool) -> RollFigures:
    """Roll ``rolls`` times against a fresh fake kubelet of ``mode``.

    ``registry``: the hosts register through the plugin watcher, whose reconciler looks
    every second as kubelet's does.
    """
    work = Path(tempfile.mkdtemp(prefix="dproll", dir="/tmp"))
    try:
        registry_dir = work / "reg" if registry else None
        async with FakeKubelet(work / "dp", mode=mode, registry_dir=registry_dir) as kubelet:
            figures = await roll_hosts(kubelet, work / "dp", rolls)
            if registry:
                figures.mode += " watcher"
            return figures
    finally:
        shutil.rmtree(work, ignore_errors=True)


def rows(figures: RollFigures) -> list[Row]:
    """The table rows of one mode."""
    mode, n = figures.mode, figures.rolls
    gap = figures.max_gap
    recovery = sorted(figures.recovery)
    p50 = recovery[len(recovery) // 2] if recovery else 0.0
    return [
        Row(
            mode,
            f"longest span at allocatable 0 over {n} rolls ({len(figures.gaps)} spans)",
            f"{gap * 1000:.1f} ms",
            "<= 100 ms",
            gap <= GAP_TARGET,
        ),
        Row(
            mode,
            f"Allocate failed at a plugin / admissions ({figures.admitted:,} admitted)",
            f"{len(figures.failed)}",
            "0",
            not figures.failed,
        ),
        Row(
            mode,
            "admissions kubelet refused (no healthy device during a span)",
            f"{len(figures.refused)}",
            "-",
            None,
        ),
        Row(
            mode,
            "SIGTERM of the old host -> kubelet settled on the new, p50 / max",
            f"{p50 * 1000:.0f} / {max(recovery, default=0.0) * 1000:.0f} ms",
            "-",
            None,
        ),
        Row(
            mode,
            "slowest admission (GetPreferredAllocation + Allocate)",
            f"{figures.slowest_admission * 1000:.1f} ms",
            "-",
            None,
        ),
        Row(
            mode,
            "old hosts exiting 0",
            f"{figures.exit_codes.count(0)} / {n}",
            f"{n} / {n}",
            figures.exit_codes.count(0) == n,
        ),
    ]


async def main(modes: list[KubeletMode], rolls: int, registry: bool) -> None:
    started = time.monotonic()
    table: list[Row] = []
    every = []
    for mode in modes:
        every.append(await measure(mode, rolls, registry))
        table += rows(every[-1])
    elapsed = time.monotonic() - started
    for figures in every:
        for text in figures.failed[:3]:
            print(f"{figures.mode}: Allocate failed: {text}")
    print(format_table(table, f"Rolling updates, {rolls} rolls per kubelet mode ({elapsed:.0f} s)"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rolls", type=int, default=20)
    parser.add_argument("--modes", default="1.24,1.25,1.36")
    parser.add_argument(
        "--plugins-registry",
        action="store_true",
        help="register through the plugin watcher (--registration plugins-registry)",
    )
    args = parser.parse_args()
    chosen: list[KubeletMode] = [m for m in args.modes.split(",") if m]  # type: ignore[misc]
    asyncio.run(main(chosen, args.rolls, args.plugins_registry))
