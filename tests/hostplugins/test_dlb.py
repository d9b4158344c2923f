"""The ``dlb`` plugin: PF/VF discovery on fake trees, options, the scan loop, the CLI."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import hostplugins.dlb as dlb
from host import ConfigError, PluginConfig
from host.cli import main as cli
from host.deviceplugin import HEALTHY, DeviceTree
from host.deviceplugin._names import validate_resource_name
from host.testing._sysfs import Symlink, build_tree
from hostplugins.dlb import DlbScanner, DlbSettings, device_kind, scan_once
from tests.hostplugins.harness import QueueNotifier, ids

# --- helpers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeDlb:
    """One DLB device ``dlb<index>`` of a fake tree, on PCI function ``0000:6d:00.<index>``.

    ``numvfs`` is the PF's ``sriov_numvfs`` content; None leaves the file out (a VF).
    ``sysfs`` False leaves the ``class/dlb2`` entry out entirely; ``node`` False the node.
    """

    index: int = 0
    numvfs: str | None = "0\n"
    numa_node: str = "-1"
    sysfs: bool = True
    node: bool = True


def add_dlbs(root: Path, *dlbs: FakeDlb) -> tuple[Path, Path]:
    """Write ``dlbs`` (one PF when none) under ``root``; return (sys, dev)."""
    (root / "dev").mkdir(parents=True, exist_ok=True)
    for dev in dlbs or (FakeDlb(),):
        name = f"dlb{dev.index}"
        if dev.sysfs:
            pci = f"devices/pci0000:6d/0000:6d:00.{dev.index}"
            content: dict[str, Any] = {
                "numa_node": f"{dev.numa_node}\n",
                f"dlb2/{name}": {"dev": f"240:{dev.index}\n", "device": Symlink("../..")},
            }
            if dev.numvfs is not None:
                content["sriov_numvfs"] = dev.numvfs
            build_tree(
                root / "sys",
                {pci: content, f"class/dlb2/{name}": Symlink(f"../../{pci}/dlb2/{name}")},
            )
        if dev.node:
            build_tree(root / "dev", {name: ""})
    return root / "sys", root / "dev"


def scan(root: Path, **kwargs: Any) -> DeviceTree:
    return scan_once(DlbSettings(), sysfs_root=root / "sys", devfs_root=root / "dev", **kwargs)


# --- discovery ---------------------------------------------------------------------------


class TestDiscovery:
    def test_pf_without_vfs_is_a_pf_device(self, tmp_path: Path) -> None:
        """``sriov_numvfs`` 0: resource ``pf``, ID ``/dev/dlbN``, its node rw, Healthy."""
        add_dlbs(tmp_path)
        tree = scan(tmp_path)
        assert ids(tree) == {"pf": ["/dev/dlb0"]}
        info = tree["pf"]["/dev/dlb0"]
        assert info.state == HEALTHY
        [node] = info.nodes
        assert node.host_path == node.container_path == "/dev/dlb0"
        assert node.permissions == "rw"
        assert (info.mounts, dict(info.envs), info.cdi_spec) == ((), {}, None)

    def test_pf_with_vfs_is_replaced_by_its_vfs(self, tmp_path: Path) -> None:
        """A PF with VFs enabled is skipped; its VFs (no ``sriov_numvfs``) are ``vf`` devices."""
        add_dlbs(
            tmp_path, FakeDlb(0, numvfs="2\n"), FakeDlb(1, numvfs=None), FakeDlb(2, numvfs=None)
        )
        assert ids(scan(tmp_path)) == {"vf": ["/dev/dlb1", "/dev/dlb2"]}

    def test_pfs_and_vfs_side_by_side(self, tmp_path: Path) -> None:
        """Two resources when a node has both a plain PF and another PF's VFs."""
        add_dlbs(tmp_path, FakeDlb(0), FakeDlb(1, numvfs="1"), FakeDlb(2, numvfs=None))
        assert ids(scan(tmp_path)) == {"pf": ["/dev/dlb0"], "vf": ["/dev/dlb2"]}

    def test_no_sysfs_entry_counts_as_a_vf(self, tmp_path: Path) -> None:
        """No ``class/dlb2/dlbN`` at all: unreadable ``sriov_numvfs``, so a VF, as in Go."""
        add_dlbs(tmp_path, FakeDlb(0, sysfs=False))
        assert ids(scan(tmp_path)) == {"vf": ["/dev/dlb0"]}

    @pytest.mark.parametrize(
        ("numvfs", "kind"),
        [("0", "pf"), ("0\n", "pf"), (" 0 \n", "pf"), (None, "vf"), ("8", None), ("-1", None)],
    )
    def test_device_kind(self, tmp_path: Path, numvfs: str | None, kind: str | None) -> None:
        """Only 0 is a usable PF, only an unreadable file a VF; ``-1`` is no marker here."""
        sys_dir, _ = add_dlbs(tmp_path, FakeDlb(numvfs=numvfs))
        assert device_kind(sys_dir / "class/dlb2", "dlb0") == kind

    def test_ids_do_not_depend_on_the_devfs_root(self, tmp_path: Path) -> None:
        """IDs are the nodes' names under /dev (Go's IDs on a real host), not fake paths."""
        add_dlbs(tmp_path, FakeDlb(3))
        tree = scan(tmp_path)
        assert list(tree["pf"]) == ["/dev/dlb3"]
        assert tree["pf"]["/dev/dlb3"].nodes[0].host_path == "/dev/dlb3"

    def test_only_dlb_nodes_count(self, tmp_path: Path) -> None:
        """Other nodes of /dev (and a sysfs entry without a node) are not DLB devices."""
        _, dev_dir = add_dlbs(tmp_path, FakeDlb(0), FakeDlb(1, node=False))
        build_tree(dev_dir, {"null": "", "dri/card0": "", "xdlb0": ""})
        assert ids(scan(tmp_path)) == {"pf": ["/dev/dlb0"]}

    def test_no_dlb_nodes_give_an_empty_tree_quietly(self, tmp_path: Path) -> None:
        """A machine without DLB: empty tree, no problem."""
        (tmp_path / "dev").mkdir()
        problems: list[str] = []
        assert len(scan(tmp_path, problems=problems)) == 0
        assert problems == []

    def test_unlistable_devfs_gives_an_empty_tree_and_a_problem(self, tmp_path: Path) -> None:
        """A devfs root that does not exist is reported, not raised."""
        problems: list[str] = []
        assert len(scan(tmp_path, problems=problems)) == 0
        assert problems == [
            f"cannot list DLB nodes in {tmp_path / 'dev'}: No such file or directory"
        ]

    def test_numa_topology_from_the_pci_function(self, tmp_path: Path) -> None:
        """The DLB's PCI function tells its NUMA node; -1 means none."""
        add_dlbs(tmp_path, FakeDlb(0, numa_node="1"), FakeDlb(1))
        tree = scan(tmp_path)
        assert tree["pf"]["/dev/dlb0"].numa_nodes == (1,)
        assert tree["pf"]["/dev/dlb1"].topology is None

    def test_resource_names_are_valid_for_kubelet(self, tmp_path: Path) -> None:
        """``dlb.intel.com/pf`` and ``dlb.intel.com/vf`` pass kubelet's resource-name rules."""
        add_dlbs(tmp_path, FakeDlb(0), FakeDlb(1, numvfs=None))
        tree = scan(tmp_path)
        assert sorted(tree) == ["pf", "vf"]
        for dev_type in tree:
            validate_resource_name(f"{dlb.NAMESPACE}/{dev_type}")


# --- options and hooks -------------------------------------------------------------------


def activate(tmp_path: Path, **options: Any) -> list[tuple[str, Any]]:
    config = PluginConfig(
        name="dlb", options=options, sysfs_root=tmp_path / "sys", devfs_root=tmp_path / "dev"
    )
    return list(dlb.devplugin_scanners(config=config))


class TestOptions:
    def test_declared_options_and_defaults(self) -> None:
        """Go's DLB plugin has no options; only the scan interval is declared."""
        assert {o.name: o.default for o in dlb.devplugin_options()} == {"scan-interval": 5.0}

    def test_hook_builds_one_scanner_on_the_configured_roots(self, tmp_path: Path) -> None:
        """devplugin_scanners registers dlb.intel.com with the parsed settings."""
        [(namespace, scanner)] = activate(tmp_path, **{"scan-interval": 1})
        assert namespace == "dlb.intel.com"
        assert isinstance(scanner, DlbScanner)
        assert (scanner.sysfs_root, scanner.devfs_root) == (tmp_path / "sys", tmp_path / "dev")
        assert scanner.settings == DlbSettings(scan_interval=1.0)

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            (0, "option scan-interval must be > 0 seconds, got 0"),
            (-1.5, "option scan-interval must be > 0 seconds"),
            ("often", "option scan-interval must be a number of seconds, got 'often'"),
            (False, "option scan-interval must be a number of seconds"),
        ],
    )
    def test_invalid_values_are_config_errors(
        self, tmp_path: Path, value: object, message: str
    ) -> None:
        """Bad values fail before anything is served, naming plugin and option."""
        with pytest.raises(ConfigError, match=r"^plugin 'dlb': ") as err:
            activate(tmp_path, **{"scan-interval": value})
        assert message in str(err.value)


# --- the scan loop -----------------------------------------------------------------------


class TestScanLoop:
    @pytest.mark.asyncio
    async def test_periodic_scan_follows_sriov_changes(self, tmp_path: Path) -> None:
        """Enabling VFs on a PF turns its ``pf`` device into the VFs' ``vf`` devices."""
        sys_dir, _ = add_dlbs(tmp_path)
        scanner = DlbScanner(
            DlbSettings(scan_interval=0.01), sysfs_root=sys_dir, devfs_root=tmp_path / "dev"
        )
        notifier = QueueNotifier()
        task = asyncio.create_task(scanner.scan(notifier))
        try:
            await notifier.next_matching(lambda t: ids(t) == {"pf": ["/dev/dlb0"]})
            (sys_dir / "class/dlb2/dlb0/device/sriov_numvfs").write_text("1\n")
            add_dlbs(tmp_path, FakeDlb(1, numvfs=None))
            await notifier.next_matching(lambda t: ids(t) == {"vf": ["/dev/dlb1"]})
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


# --- the command line ----------------------------------------------------------------------


class TestCommandLine:
    """Needs the ``dlb`` entry point of the ``devplugin.scanners`` group (pyproject.toml)."""

    def test_scan_json_lists_pfs_and_vfs(self, tmp_path: Path) -> None:
        """``devplugin-host scan --enable dlb --sysfs-root T/sys --devfs-root T/dev --json``."""
        add_dlbs(
            tmp_path,
            FakeDlb(0, numa_node="0"),
            FakeDlb(1, numvfs="2"),
            FakeDlb(2, numvfs=None),
            FakeDlb(3, numvfs=None),
        )
        result = CliRunner().invoke(
            cli,
            [
                "scan",
                "--enable",
                "dlb",
                "--sysfs-root",
                str(tmp_path / "sys"),
                "--devfs-root",
                str(tmp_path / "dev"),
                "--json",
            ],
        )
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report == {
            "dlb.intel.com/pf": [
                {
                    "id": "/dev/dlb0",
                    "health": HEALTHY,
                    "nodes": ["/dev/dlb0"],
                    "topology": [0],
                }
            ],
            "dlb.intel.com/vf": [
                {
                    "id": f"/dev/dlb{n}",
                    "health": HEALTHY,
                    "nodes": [f"/dev/dlb{n}"],
                    "topology": [],
                }
                for n in (2, 3)
            ],
        }

    def test_invalid_option_exits_2_with_the_plugins_message(self, tmp_path: Path) -> None:
        """A rejected option value is a configuration error: exit 2, nothing scanned."""
        result = CliRunner().invoke(
            cli,
            [
                "scan",
                "--enable",
                "dlb",
                "--set",
                "dlb.scan-interval=0",
                "--devfs-root",
                str(tmp_path),
            ],
        )
        assert result.exit_code == 2
        assert "plugin 'dlb': option scan-interval must be > 0 seconds" in result.output
