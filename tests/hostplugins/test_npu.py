"""The ``npu`` plugin: discovery on fake trees, options, the scan loop, kubelet, the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import hostplugins.npu as npu
from host import ConfigError, PluginConfig
from host.cli import main as cli
from host.deviceplugin import HEALTHY, DeviceTree, Manager
from host.deviceplugin._names import validate_resource_name
from host.testing import FakeKubelet
from host.testing._sysfs import Symlink, build_tree
from hostplugins._scanloop import NoHardware
from hostplugins.npu import NPU_DEVICE_IDS, NpuScanner, NpuSettings, scan_once
from tests.hostplugins.harness import ids, scanning

# --- helpers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeNpu:
    """One accel device of a fake tree: ``accel<index>`` on PCI function ``0000:00:0b.<index>``."""

    index: int = 0
    vendor: str = "0x8086\n"
    device: str = "0x7d1d\n"
    node: bool = True
    numa_node: str = "-1"


def pci_address(index: int) -> str:
    return f"0000:00:{0x0B + index:02x}.0"


def add_npus(root: Path, *npus: FakeNpu) -> tuple[Path, Path]:
    """Write ``npus`` (one default NPU when none) under ``root``; return (sys, dev)."""
    for npu_ in npus or (FakeNpu(),):
        name = f"accel{npu_.index}"
        pci = f"devices/pci0000:00/{pci_address(npu_.index)}"
        build_tree(
            root / "sys",
            {
                pci: {
                    "vendor": npu_.vendor,
                    "device": npu_.device,
                    "numa_node": f"{npu_.numa_node}\n",
                    f"accel/{name}": {"dev": f"261:{npu_.index}\n", "device": Symlink("../..")},
                },
                f"class/accel/{name}": Symlink(f"../../{pci}/accel/{name}"),
            },
        )
        if npu_.node:
            build_tree(root / "dev", {f"accel/{name}": ""})
    return root / "sys", root / "dev"


def scan(root: Path, settings: NpuSettings | None = None, **kwargs: Any) -> DeviceTree:
    return scan_once(
        settings or NpuSettings(), sysfs_root=root / "sys", devfs_root=root / "dev", **kwargs
    )


# --- discovery ---------------------------------------------------------------------------


class TestDiscovery:
    def test_intel_npus_become_accel_devices(self, tmp_path: Path) -> None:
        """Each Intel NPU with a node is one device ``accelN-0`` holding its node, rw."""
        add_npus(tmp_path, FakeNpu(0), FakeNpu(1))
        tree = scan(tmp_path)
        assert ids(tree) == {"accel": ["accel0-0", "accel1-0"]}
        info = tree["accel"]["accel1-0"]
        assert info.state == HEALTHY
        [node] = info.nodes
        assert node.host_path == node.container_path == "/dev/accel/accel1"
        assert node.permissions == "rw"
        assert (info.mounts, dict(info.envs), info.cdi_spec) == ((), {}, None)

    @pytest.mark.parametrize("device_id", sorted(NPU_DEVICE_IDS))
    def test_every_known_npu_id_is_exposed(self, tmp_path: Path, device_id: str) -> None:
        """The seven NPU generations Go knows are all exposed."""
        add_npus(tmp_path, FakeNpu(device=f"{device_id}\n"))
        assert ids(scan(tmp_path)) == {"accel": ["accel0-0"]}

    def test_the_known_ids_are_gos(self) -> None:
        """The ID list is exactly the Go plugin's."""
        assert {"0x7e4c", "0x643e", "0xad1d", "0x7d1d", "0xb03e", "0xfd3e", "0xd71d"} == (
            NPU_DEVICE_IDS
        )

    def test_other_intel_accel_devices_are_ignored(self, tmp_path: Path) -> None:
        """An Intel accel device whose ID is no NPU (e.g. a Gaudi, 0x1020) is not exposed."""
        add_npus(tmp_path, FakeNpu(0, device="0x1020\n"), FakeNpu(1), FakeNpu(2, device=""))
        assert ids(scan(tmp_path)) == {"accel": ["accel1-0"]}

    def test_other_vendors_are_ignored(self, tmp_path: Path) -> None:
        """Only vendor 0x8086 counts, whatever the device ID says."""
        add_npus(tmp_path, FakeNpu(0, vendor="0x1002\n"), FakeNpu(1), FakeNpu(2, vendor=""))
        assert ids(scan(tmp_path)) == {"accel": ["accel1-0"]}

    def test_only_the_first_line_of_the_device_file_counts(self, tmp_path: Path) -> None:
        """``device`` is compared by its first line, as in Go."""
        add_npus(
            tmp_path,
            FakeNpu(0, device="0x7d1d\nsomething else\n"),
            FakeNpu(1, device="junk\n0x7d1d\n"),
        )
        assert ids(scan(tmp_path)) == {"accel": ["accel0-0"]}

    def test_only_accelN_entries_are_npus(self, tmp_path: Path) -> None:
        """Names other than ``accel`` + digits are skipped, even pointing at an NPU."""
        sys_dir, _ = add_npus(tmp_path)
        for name in ("accel0a", "accel", "card0", "accel_0"):
            (sys_dir / "class/accel" / name).symlink_to("accel0")
        assert ids(scan(tmp_path)) == {"accel": ["accel0-0"]}

    def test_missing_device_node_is_a_problem_not_a_device(self, tmp_path: Path) -> None:
        """An NPU without ``/dev/accel/accelN`` is skipped, with a problem naming the node."""
        add_npus(tmp_path, FakeNpu(0, node=False), FakeNpu(1))
        problems: list[str] = []
        assert ids(scan(tmp_path, problems=problems)) == {"accel": ["accel1-0"]}
        assert problems == [
            f"accel0: device node {tmp_path / 'dev/accel/accel0'} does not exist; not exposed"
        ]

    def test_no_accel_class_gives_an_empty_tree_and_a_problem(self, tmp_path: Path) -> None:
        """No /sys/class/accel (no accel driver): an empty tree and a no-hardware note."""
        problems: list[str] = []
        assert len(scan(tmp_path, problems=problems)) == 0
        class_dir = tmp_path / "sys/class/accel"
        assert problems == [f"no accel driver loaded ({class_dir} does not exist)"]
        assert isinstance(problems[0], NoHardware)

    def test_empty_accel_class_gives_an_empty_tree_quietly(self, tmp_path: Path) -> None:
        """An accel driver without devices is no problem."""
        (tmp_path / "sys/class/accel").mkdir(parents=True)
        problems: list[str] = []
        assert len(scan(tmp_path, problems=problems)) == 0
        assert problems == []

    def test_problems_are_logged_without_a_list(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Called without ``problems``, scan_once logs them: no driver at INFO, not WARNING."""
        with caplog.at_level(logging.INFO, logger="hostplugins.npu"):
            scan(tmp_path)
        assert [(r.levelname, "no accel driver loaded" in r.message) for r in caplog.records] == [
            ("INFO", True)
        ]

    def test_shares(self, tmp_path: Path) -> None:
        """``shared-dev-num`` N gives IDs accelX-0..N-1, all describing the same NPU."""
        add_npus(tmp_path, FakeNpu(0), FakeNpu(1))
        tree = scan(tmp_path, NpuSettings(shared_dev_num=3))
        assert ids(tree) == {"accel": [f"accel{n}-{s}" for n in (0, 1) for s in range(3)]}
        assert tree["accel"]["accel0-0"] == tree["accel"]["accel0-2"]
        assert tree["accel"]["accel0-0"] != tree["accel"]["accel1-0"]

    def test_numa_topology_from_the_pci_device(self, tmp_path: Path) -> None:
        """The NPU's PCI function tells its NUMA node; -1 means none."""
        add_npus(tmp_path, FakeNpu(0, numa_node="1"), FakeNpu(1))
        tree = scan(tmp_path)
        assert tree["accel"]["accel0-0"].numa_nodes == (1,)
        assert tree["accel"]["accel1-0"].topology is None

    def test_resource_name_is_valid_for_kubelet(self, tmp_path: Path) -> None:
        """``npu.intel.com/accel`` passes kubelet's resource-name rules."""
        add_npus(tmp_path)
        for dev_type in scan(tmp_path):
            validate_resource_name(f"{npu.NAMESPACE}/{dev_type}")


# --- options and hooks -------------------------------------------------------------------


def activate(tmp_path: Path, **options: Any) -> list[tuple[str, Any]]:
    config = PluginConfig(
        name="npu", options=options, sysfs_root=tmp_path / "sys", devfs_root=tmp_path / "dev"
    )
    return list(npu.devplugin_scanners(config=config))


class TestOptions:
    def test_declared_options_and_defaults(self) -> None:
        """shared-dev-num as in Go, and the scan interval."""
        assert {o.name: o.default for o in npu.devplugin_options()} == {
            "shared-dev-num": 1,
            "scan-interval": 5.0,
        }

    def test_hook_builds_one_scanner_on_the_configured_roots(self, tmp_path: Path) -> None:
        """devplugin_scanners registers npu.intel.com with the parsed settings."""
        [(namespace, scanner)] = activate(
            tmp_path, **{"shared-dev-num": "4", "scan-interval": "2.5"}
        )
        assert namespace == "npu.intel.com"
        assert isinstance(scanner, NpuScanner)
        assert (scanner.sysfs_root, scanner.devfs_root) == (tmp_path / "sys", tmp_path / "dev")
        assert scanner.settings == NpuSettings(shared_dev_num=4, scan_interval=2.5)

    def test_missing_options_take_defaults(self, tmp_path: Path) -> None:
        """A config without values (a plugin's own test, say) gets the defaults."""
        [(_, scanner)] = activate(tmp_path)
        assert scanner.settings == NpuSettings()

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"shared-dev-num": 0}, "option shared-dev-num must be >= 1"),
            ({"shared-dev-num": -2}, "option shared-dev-num must be >= 1"),
            ({"shared-dev-num": "two"}, "option shared-dev-num must be an integer, got 'two'"),
            ({"shared-dev-num": True}, "option shared-dev-num must be an integer"),
            ({"scan-interval": 0}, "option scan-interval must be > 0 seconds"),
            ({"scan-interval": "soon"}, "option scan-interval must be a number of seconds"),
            ({"scan-interval": "inf"}, "option scan-interval must be a number of seconds"),
            ({"scan-interval": "nan"}, "option scan-interval must be a number of seconds"),
        ],
    )
    def test_invalid_values_are_config_errors(
        self, tmp_path: Path, options: dict[str, Any], message: str
    ) -> None:
        """Bad values fail before anything is served, naming plugin and option."""
        with pytest.raises(ConfigError, match=r"^plugin 'npu': ") as err:
            activate(tmp_path, **options)
        assert message in str(err.value)


# --- the scan loop -----------------------------------------------------------------------


class TestScanLoop:
    @pytest.mark.asyncio
    async def test_periodic_scan_reflects_added_and_removed_npus(self, tmp_path: Path) -> None:
        """Each interval scans again: NPUs that appear or vanish show in later trees."""
        add_npus(tmp_path)
        scanner = NpuScanner(
            NpuSettings(scan_interval=0.01),
            sysfs_root=tmp_path / "sys",
            devfs_root=tmp_path / "dev",
        )
        async with scanning(scanner) as notifier:
            await notifier.next_matching(lambda t: ids(t) == {"accel": ["accel0-0"]})
            add_npus(tmp_path, FakeNpu(1))
            await notifier.next_matching(lambda t: ids(t) == {"accel": ["accel0-0", "accel1-0"]})
            (tmp_path / "dev/accel/accel0").unlink()
            await notifier.next_matching(lambda t: ids(t) == {"accel": ["accel1-0"]})

    @pytest.mark.asyncio
    async def test_rescan_scans_at_once(self, tmp_path: Path) -> None:
        """rescan() does not wait for the interval."""
        scanner = NpuScanner(
            NpuSettings(scan_interval=3600),
            sysfs_root=tmp_path / "sys",
            devfs_root=tmp_path / "dev",
        )
        async with scanning(scanner) as notifier:
            assert len(await notifier.next_matching(lambda t: True)) == 0
            add_npus(tmp_path)
            scanner.rescan()
            assert ids(await notifier.next_matching(lambda t: True)) == {"accel": ["accel0-0"]}

    def test_rescan_before_scanning_is_harmless(self) -> None:
        """rescan() on a scanner that is not running does nothing."""
        NpuScanner().rescan()

    @pytest.mark.asyncio
    async def test_problems_and_counts_are_logged_once(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A lasting problem is logged when it appears; the device count when it changes."""
        add_npus(tmp_path, FakeNpu(0), FakeNpu(1, node=False))
        scanner = NpuScanner(
            NpuSettings(scan_interval=0.01, shared_dev_num=2),
            sysfs_root=tmp_path / "sys",
            devfs_root=tmp_path / "dev",
        )
        with caplog.at_level(logging.INFO, logger="hostplugins.npu"):
            async with scanning(scanner) as notifier:
                for _ in range(3):
                    await notifier.next_matching(lambda t: True)
        messages = [r.getMessage() for r in caplog.records]
        assert sum("accel1: device node" in m for m in messages) == 1
        # Go logs DeviceTypeCount("npu.intel.com/accel"), always 0; this is the real count.
        assert messages.count("npu.intel.com devices: npu.intel.com/accel: 2") == 1


# --- through the framework and the command line --------------------------------------------


class TestEndToEnd:
    @pytest.mark.asyncio
    async def test_kubelet_allocates_shares_of_an_npu(
        self, tmp_path: Path, short_dir: Path
    ) -> None:
        """2 NPUs x 2 shares reach kubelet as 4 devices; Allocate hands out the NPU's node."""
        add_npus(tmp_path, FakeNpu(0), FakeNpu(1))
        scanner = NpuScanner(
            NpuSettings(shared_dev_num=2), sysfs_root=tmp_path / "sys", devfs_root=tmp_path / "dev"
        )
        async with FakeKubelet(short_dir) as kubelet:
            manager = Manager(npu.NAMESPACE, scanner, plugin_dir=short_dir, cdi_dir=short_dir)
            task = asyncio.create_task(manager.serve())
            try:
                state = await kubelet.wait_for_resource("npu.intel.com/accel", count=4, healthy=4)
                assert sorted(state.devices) == ["accel0-0", "accel0-1", "accel1-0", "accel1-1"]
                options = kubelet.options("npu.intel.com/accel")
                assert not options.get_preferred_allocation_available
                response = await kubelet.allocate("npu.intel.com/accel", ["accel1-1"])
                allocation = await kubelet.allocate_like_kubelet("npu.intel.com/accel", 2)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        [container] = response.container_responses
        [device] = container.devices
        node = "/dev/accel/accel1"
        assert (device.host_path, device.container_path, device.permissions) == (node, node, "rw")
        assert (list(container.mounts), dict(container.envs), list(container.cdi_devices)) == (
            [],
            {},
            [],
        )
        assert len(allocation.device_ids) == 2
        assert len(allocation.response.devices) == 2


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(cli, ["scan", "--enable", "npu", *args])


class TestCommandLine:
    """Needs the ``npu`` entry point of the ``devplugin.scanners`` group (pyproject.toml)."""

    def test_scan_json_lists_the_npus(self, tmp_path: Path) -> None:
        """``devplugin-host scan --enable npu --sysfs-root T/sys --devfs-root T/dev --json``."""
        add_npus(tmp_path, FakeNpu(0, numa_node="0"), FakeNpu(1, device="0x1020\n"), FakeNpu(2))
        result = run_cli(
            "--set",
            "npu.shared-dev-num=2",
            "--sysfs-root",
            str(tmp_path / "sys"),
            "--devfs-root",
            str(tmp_path / "dev"),
            "--json",
        )
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert list(report) == ["npu.intel.com/accel"]
        devices = report["npu.intel.com/accel"]
        assert [d["id"] for d in devices] == ["accel0-0", "accel0-1", "accel2-0", "accel2-1"]
        assert {d["health"] for d in devices} == {HEALTHY}
        assert devices[0]["nodes"] == ["/dev/accel/accel0"]
        assert [d["topology"] for d in devices] == [[0], [0], [], []]

    def test_no_npu_is_an_empty_report(self, tmp_path: Path) -> None:
        """A machine without NPUs scans fine and reports nothing."""
        result = run_cli("--sysfs-root", str(tmp_path), "--devfs-root", str(tmp_path), "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == {}

    def test_invalid_option_exits_2_with_the_plugins_message(self, tmp_path: Path) -> None:
        """A rejected option value is a configuration error: exit 2, nothing scanned."""
        result = run_cli("--set", "npu.shared-dev-num=0", "--sysfs-root", str(tmp_path))
        assert result.exit_code == 2
        assert "plugin 'npu': option shared-dev-num must be >= 1" in result.output
