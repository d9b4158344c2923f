"""The ``gpu`` plugin: discovery on fake trees, options, policies, health, the scan loop."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from click.testing import CliRunner

import hostplugins.gpu as gpu
from host import ConfigError, PluginConfig
from host.cli import main as cli
from host.deviceplugin import HEALTHY, UNHEALTHY, DeviceTree, pluginapi
from host.deviceplugin._names import validate_resource_name
from hostplugins._scanloop import NoHardware
from hostplugins.gpu import GpuCard, GpuScanner, GpuSettings, scan_once
from hostplugins.gpu._options import OPTIONS
from hostplugins.gpu._policies import balanced_policy, none_policy, packed_policy
from hostplugins.gpu.fakedev import (
    MARKER,
    FakeGpu,
    FakeGpuTree,
    main,
    pci_address,
    tree_from_gen_options,
    write_gpu_tree,
)
from tests.hostplugins.harness import QueueNotifier, ids, served

# --- helpers -----------------------------------------------------------------------------


def make_tree(root: Path, *cards: FakeGpu, **tree: Any) -> tuple[Path, Path]:
    """Write a fake tree of ``cards`` (one default card when none) and return (sys, dev)."""
    write_gpu_tree(root, FakeGpuTree(cards=cards or (FakeGpu(),), **tree))
    return root / "sys", root / "dev"


def scan(root: Path, settings: GpuSettings | None = None, **kwargs: Any) -> DeviceTree:
    return scan_once(
        settings or GpuSettings(), sysfs_root=root / "sys", devfs_root=root / "dev", **kwargs
    )


def node_paths(tree: DeviceTree, dev_type: str, dev_id: str) -> list[str]:
    return [node.host_path for node in tree[dev_type][dev_id].nodes]


def preferred(
    available: list[str], size: int, policy: str, must: tuple[str, ...] = ()
) -> list[str]:
    request = pluginapi.PreferredAllocationRequest(
        container_requests=[
            pluginapi.ContainerPreferredAllocationRequest(
                available_deviceIDs=available, must_include_deviceIDs=must, allocation_size=size
            )
        ]
    )
    scanner = GpuScanner(GpuSettings(allocation_policy=policy))
    response = scanner.get_preferred_allocation(request)
    return list(response.container_responses[0].deviceIDs)


class FlippableHealth:
    """A health source a test controls: cards named in ``unhealthy`` are Unhealthy."""

    def __init__(self) -> None:
        self.unhealthy: set[str] = set()
        self.seen: list[GpuCard] = []

    def health(self, card: GpuCard) -> str:
        self.seen.append(card)
        return UNHEALTHY if card.name in self.unhealthy else HEALTHY


# --- discovery ---------------------------------------------------------------------------


class TestDiscovery:
    def test_cards_become_shares_of_the_driver_resource(self, tmp_path: Path) -> None:
        """Each Intel card with nodes is one device ``cardN-0`` of its driver's resource."""
        make_tree(tmp_path, FakeGpu(), FakeGpu())
        tree = scan(tmp_path)
        assert ids(tree) == {"i915": ["card0-0", "card1-0"]}
        assert node_paths(tree, "i915", "card1-0") == [
            "/dev/dri/card1",
            "/dev/dri/renderD129",
        ]
        node = tree["i915"]["card0-0"].nodes[0]
        assert (node.container_path, node.permissions) == (node.host_path, "rw")

    def test_missing_driver_link_means_i915_and_two_drivers_two_resources(
        self, tmp_path: Path
    ) -> None:
        """The driver link names the resource; without one the card counts as i915."""
        make_tree(tmp_path, FakeGpu(driver="xe"), FakeGpu(), FakeGpu(driver="i915"))
        assert ids(scan(tmp_path)) == {"xe": ["card0-0"], "i915": ["card1-0", "card2-0"]}

    def test_other_vendors_are_ignored(self, tmp_path: Path) -> None:
        """Only vendor 0x8086 counts."""
        make_tree(tmp_path, FakeGpu(vendor="0x1002"), FakeGpu(vendor="0x10de"), FakeGpu())
        assert ids(scan(tmp_path)) == {"i915": ["card2-0"]}

    def test_card_without_device_drm_is_ignored(self, tmp_path: Path) -> None:
        """A card whose PCI device has no ``drm`` directory is not a usable GPU."""
        sys_dir, _ = make_tree(tmp_path, FakeGpu(), FakeGpu())
        pci = sys_dir / "devices/pci0000:00" / pci_address(0)
        for child in (pci / "drm").rglob("*"):
            if child.is_symlink() or child.is_file():
                child.unlink()
        for child in sorted((pci / "drm").rglob("*"), reverse=True):
            child.rmdir()
        (pci / "drm").rmdir()
        assert ids(scan(tmp_path)) == {"i915": ["card1-0"]}

    def test_only_cardN_entries_are_cards(self, tmp_path: Path) -> None:
        """Connectors (``card0-HDMI-A-1``), render nodes and ``version`` are not cards."""
        sys_dir, _ = make_tree(tmp_path)
        (sys_dir / "class/drm/card0-HDMI-A-1").symlink_to("card0")
        assert ids(scan(tmp_path)) == {"i915": ["card0-0"]}

    def test_missing_device_node_is_left_out(self, tmp_path: Path) -> None:
        """A node missing from /dev/dri is not exposed; a card with no node left is skipped."""
        _, dev_dir = make_tree(tmp_path, FakeGpu(), FakeGpu(dev_nodes=False))
        (dev_dir / "dri/renderD128").unlink()
        problems: list[str] = []
        tree = scan(tmp_path, problems=problems)
        assert ids(tree) == {"i915": ["card0-0"]}
        assert node_paths(tree, "i915", "card0-0") == ["/dev/dri/card0"]
        assert any("renderD128" in p and "does not exist" in p for p in problems)
        assert any("/dev/dri/card1" in p for p in problems)

    def test_control_nodes_are_skipped(self, tmp_path: Path) -> None:
        """Legacy ``controlD*`` minors are never handed to containers."""
        make_tree(tmp_path, FakeGpu(control_node=True))
        assert (tmp_path / "dev/dri/controlD64").exists()
        paths = node_paths(scan(tmp_path), "i915", "card0-0")
        assert [Path(p).name for p in paths] == ["card0", "renderD128"]

    def test_sriov_pf_with_vfs_is_skipped_and_its_vfs_used(self, tmp_path: Path) -> None:
        """A PF with VFs enabled is skipped; its VFs are the cards (``VfsPerPf`` layout)."""
        write_gpu_tree(tmp_path, tree_from_gen_options({"DevCount": 6, "VfsPerPf": 2}))
        settings = GpuSettings(enable_monitoring=True)
        tree = scan(tmp_path, settings)
        assert ids(tree) == {
            "i915": ["card1-0", "card2-0", "card4-0", "card5-0"],
            "monitoring": ["all"],
        }
        monitored = {Path(p).name for p in node_paths(tree, "monitoring", "all")}
        assert "card0" not in monitored
        assert "card3" not in monitored

    def test_sriov_numvfs_zero_is_an_ordinary_card(self, tmp_path: Path) -> None:
        """``sriov_numvfs`` 0 means no VFs: the PF itself is the card."""
        sys_dir, _ = make_tree(tmp_path)
        (sys_dir / "devices/pci0000:00" / pci_address(0) / "sriov_numvfs").write_text("0\n")
        assert ids(scan(tmp_path)) == {"i915": ["card0-0"]}

    def test_no_drm_class_gives_an_empty_tree(self, tmp_path: Path) -> None:
        """No /sys/class/drm (no GPU driver): an empty tree and a no-hardware note, no error."""
        problems: list[str] = []
        tree = scan(tmp_path, problems=problems)
        assert len(tree) == 0
        assert problems == [f"no DRM driver loaded ({tmp_path / 'sys/class/drm'} does not exist)"]
        assert isinstance(problems[0], NoHardware)

    def test_shares(self, tmp_path: Path) -> None:
        """``shared-dev-num`` N gives IDs cardX-0..N-1, all describing the same card."""
        make_tree(tmp_path, FakeGpu(), FakeGpu())
        tree = scan(tmp_path, GpuSettings(shared_dev_num=3))
        assert ids(tree) == {"i915": [f"card{c}-{s}" for c in (0, 1) for s in range(3)]}
        assert tree["i915"]["card0-0"] == tree["i915"]["card0-2"]
        assert tree["i915"]["card0-0"] != tree["i915"]["card1-0"]

    def test_numa_topology_from_the_pci_device(self, tmp_path: Path) -> None:
        """The card's PCI ``numa_node`` becomes its topology; -1 means none."""
        make_tree(tmp_path, FakeGpu(numa_node=1), FakeGpu(numa_node=-1))
        tree = scan(tmp_path)
        assert tree["i915"]["card0-0"].numa_nodes == (1,)
        assert tree["i915"]["card1-0"].topology is None

    def test_resource_names_are_valid_for_kubelet(self, tmp_path: Path) -> None:
        """Every device type (drivers, monitoring) forms a valid resource name."""
        make_tree(tmp_path, FakeGpu(driver="xe"), FakeGpu(driver="i915"))
        tree = scan(tmp_path, GpuSettings(enable_monitoring=True, monitoring_mode="split"))
        for dev_type in tree:
            validate_resource_name(f"{gpu.NAMESPACE}/{dev_type}")


class TestAllowDenyIds:
    @pytest.fixture
    def tree_root(self, tmp_path: Path) -> Path:
        make_tree(
            tmp_path,
            FakeGpu(device_id="0x56a0"),
            FakeGpu(device_id="0x4905"),
            FakeGpu(device_id="0x490"),  # malformed: a substring of 0x4905
        )
        return tmp_path

    def test_allow_ids_keeps_only_listed_cards_by_exact_match(self, tree_root: Path) -> None:
        """allow-ids matches whole IDs: ``0x490`` is not allowed by ``0x4905``."""
        tree = scan(tree_root, GpuSettings(allow_ids=frozenset({"0x4905"})))
        assert ids(tree) == {"i915": ["card1-0"]}

    def test_deny_ids_drops_listed_cards_by_exact_match(self, tree_root: Path) -> None:
        """deny-ids matches whole IDs: ``0x490`` is not denied by ``0x4905``."""
        tree = scan(tree_root, GpuSettings(deny_ids=frozenset({"0x4905", "0x1234"})))
        assert ids(tree) == {"i915": ["card0-0", "card2-0"]}

    def test_only_the_first_line_of_the_device_file_counts(self, tree_root: Path) -> None:
        """The PCI ID is the first line of ``device/device``."""
        device = tree_root / "sys/class/drm/card0/device/device"
        device.write_text("0x4905\nsomething else\n")
        tree = scan(tree_root, GpuSettings(allow_ids=frozenset({"0x4905"})))
        assert ids(tree) == {"i915": ["card0-0", "card1-0"]}


class TestByPath:
    def by_path(self, root: Path, name: str) -> str:
        del root  # found under the devfs root, reported as the node's own path
        return f"/dev/dri/by-path/{name}"

    def test_single_mounts_the_cards_own_entries_read_only(self, tmp_path: Path) -> None:
        """bypath=single: the ``pci-<address>-*`` entries of the card, read-only."""
        make_tree(tmp_path, FakeGpu(), FakeGpu())
        mounts = scan(tmp_path)["i915"]["card1-0"].mounts
        addr = pci_address(1)
        assert [(m.host_path, m.container_path, m.read_only) for m in mounts] == [
            (self.by_path(tmp_path, f"pci-{addr}-{kind}"),) * 2 + (True,)
            for kind in ("card", "render")
        ]

    def test_all_mounts_the_whole_directory(self, tmp_path: Path) -> None:
        """bypath=all: one read-only mount of /dev/dri/by-path."""
        make_tree(tmp_path, FakeGpu(), FakeGpu())
        mounts = scan(tmp_path, GpuSettings(bypath="all"))["i915"]["card0-0"].mounts
        directory = "/dev/dri/by-path"
        assert [(m.host_path, m.container_path, m.read_only) for m in mounts] == [
            (directory, directory, True)
        ]

    def test_none_mounts_nothing(self, tmp_path: Path) -> None:
        """bypath=none: no mounts."""
        make_tree(tmp_path)
        assert scan(tmp_path, GpuSettings(bypath="none"))["i915"]["card0-0"].mounts == ()

    def test_no_by_path_directory_means_no_mounts(self, tmp_path: Path) -> None:
        """Without /dev/dri/by-path (no udev), no mode mounts anything."""
        make_tree(tmp_path, bypath=False)
        for mode in ("single", "all"):
            assert scan(tmp_path, GpuSettings(bypath=mode))["i915"]["card0-0"].mounts == ()

    def test_address_from_the_device_link_when_the_card_is_no_link(self, tmp_path: Path) -> None:
        """A card directory that is not a sysfs link still finds its address via ``device``."""
        sys_dir, _ = make_tree(tmp_path)
        card = sys_dir / "class/drm/card0"
        real = card.resolve()
        card.unlink()
        card.mkdir()
        (card / "device").symlink_to(real / "device")
        mounts = scan(tmp_path)["i915"]["card0-0"].mounts
        assert [Path(m.host_path).name for m in mounts] == [
            f"pci-{pci_address(0)}-card",
            f"pci-{pci_address(0)}-render",
        ]


class TestCdi:
    def test_spec_describes_the_card_nodes_and_mounts(self, tmp_path: Path) -> None:
        """One CDI spec per card (kind intel.cdi.k8s.io/gpu), shared by its shares."""
        make_tree(tmp_path, FakeGpu(), FakeGpu())
        tree = scan(tmp_path, GpuSettings(shared_dev_num=2))
        dev = "/dev/dri"
        addr = pci_address(1)
        assert tree["i915"]["card1-0"].cdi_spec == {
            "cdiVersion": "0.5.0",
            "kind": "intel.cdi.k8s.io/gpu",
            "devices": [
                {
                    "name": "card1",
                    "containerEdits": {
                        "deviceNodes": [
                            {
                                "path": f"{dev}/card1",
                                "hostPath": f"{dev}/card1",
                                "permissions": "rw",
                            },
                            {
                                "path": f"{dev}/renderD129",
                                "hostPath": f"{dev}/renderD129",
                                "permissions": "rw",
                            },
                        ],
                        "mounts": [
                            {
                                "hostPath": f"{dev}/by-path/pci-{addr}-{kind}",
                                "containerPath": f"{dev}/by-path/pci-{addr}-{kind}",
                                "type": "none",
                                "options": ["bind", "ro"],
                            }
                            for kind in ("card", "render")
                        ],
                    },
                }
            ],
        }
        assert tree["i915"]["card1-1"].cdi_spec == tree["i915"]["card1-0"].cdi_spec

    def test_spec_without_mounts_has_no_mounts_key(self, tmp_path: Path) -> None:
        """bypath=none: the spec carries device nodes only."""
        make_tree(tmp_path)
        spec = scan(tmp_path, GpuSettings(bypath="none"))["i915"]["card0-0"].cdi_spec
        assert spec is not None
        assert set(spec["devices"][0]["containerEdits"]) == {"deviceNodes"}


class TestMonitoring:
    def test_disabled_by_default(self, tmp_path: Path) -> None:
        """No monitoring resource unless enable-monitoring is set."""
        make_tree(tmp_path, FakeGpu(mei=True))
        assert list(scan(tmp_path)) == ["i915"]

    def test_single_mode_one_resource_with_every_card_and_mei_node(self, tmp_path: Path) -> None:
        """monitoring-mode=single: ``monitoring``/``all`` holds every card node plus MEI nodes."""
        make_tree(tmp_path, FakeGpu(driver="i915", mei=True), FakeGpu(driver="xe"))
        tree = scan(tmp_path, GpuSettings(enable_monitoring=True, shared_dev_num=2))
        assert ids(tree) == {
            "i915": ["card0-0", "card0-1"],
            "xe": ["card1-0", "card1-1"],
            "monitoring": ["all"],
        }
        names = [Path(p).name for p in node_paths(tree, "monitoring", "all")]
        assert names == ["card0", "renderD128", "mei0", "card1", "renderD129"]
        info = tree["monitoring"]["all"]
        assert (info.state, info.topology, info.cdi_spec) == (HEALTHY, None, None)

    def test_split_mode_one_resource_per_driver(self, tmp_path: Path) -> None:
        """monitoring-mode=split: ``<driver>_monitoring`` per driver, each with its cards."""
        make_tree(tmp_path, FakeGpu(driver="i915"), FakeGpu(driver="xe"), FakeGpu(driver="xe"))
        settings = GpuSettings(enable_monitoring=True, monitoring_mode="split")
        tree = scan(tmp_path, settings)
        assert ids(tree) == {
            "i915": ["card0-0"],
            "xe": ["card1-0", "card2-0"],
            "i915_monitoring": ["all"],
            "xe_monitoring": ["all"],
        }
        names = [Path(p).name for p in node_paths(tree, "xe_monitoring", "all")]
        assert names == ["card1", "renderD129", "card2", "renderD130"]

    def test_monitoring_stays_healthy_when_a_card_is_not(self, tmp_path: Path) -> None:
        """The monitoring device is always Healthy: it is for watching broken cards too."""
        make_tree(tmp_path)
        health = FlippableHealth()
        health.unhealthy.add("card0")
        tree = scan(tmp_path, GpuSettings(enable_monitoring=True), health_source=health)
        assert tree["i915"]["card0-0"].state == UNHEALTHY
        assert tree["monitoring"]["all"].state == HEALTHY


class TestHealth:
    def test_healthy_by_default(self, tmp_path: Path) -> None:
        """Without a health source every card is Healthy."""
        make_tree(tmp_path, FakeGpu(), FakeGpu())
        assert {d.state for d in scan(tmp_path)["i915"].values()} == {HEALTHY}

    def test_health_source_marks_a_card_unhealthy_and_recovers_it(self, tmp_path: Path) -> None:
        """A health source's answer is the state of every share of the card, scan by scan."""
        make_tree(tmp_path, FakeGpu(), FakeGpu())
        health = FlippableHealth()
        scanner = GpuScanner(
            GpuSettings(shared_dev_num=2),
            sysfs_root=tmp_path / "sys",
            devfs_root=tmp_path / "dev",
            health_source=health,
        )
        health.unhealthy.add("card1")
        tree = scanner.scan_once()
        assert {i: d.state for i, d in tree["i915"].items()} == {
            "card0-0": HEALTHY,
            "card0-1": HEALTHY,
            "card1-0": UNHEALTHY,
            "card1-1": UNHEALTHY,
        }
        health.unhealthy.clear()
        assert {d.state for d in scanner.scan_once()["i915"].values()} == {HEALTHY}
        card = health.seen[0]
        assert (card.name, card.driver, card.pci_address, card.pci_device_id) == (
            "card0",
            "i915",
            pci_address(0),
            "0x4905",
        )
        assert card.sysfs_dir == tmp_path / "sys/class/drm/card0"

    def test_failing_health_source_counts_as_healthy(self, tmp_path: Path) -> None:
        """An exception or a bad answer from the health source leaves the card Healthy."""

        class Broken:
            def health(self, card: GpuCard) -> str:
                if card.name == "card0":
                    raise OSError("service down")
                return "Sick"

        make_tree(tmp_path, FakeGpu(), FakeGpu())
        problems: list[str] = []
        tree = scan(tmp_path, health_source=Broken(), problems=problems)
        assert {d.state for d in tree["i915"].values()} == {HEALTHY}
        assert len(problems) == 2
        assert "service down" in problems[0]
        assert "'Sick'" in problems[1]


# --- allocation policies -----------------------------------------------------------------


class TestPreferredAllocation:
    TWO_CARDS: ClassVar[list[str]] = [
        "card0-0",
        "card0-1",
        "card0-2",
        "card1-0",
        "card1-1",
        "card1-2",
    ]

    def test_balanced_takes_one_share_of_each_card_first(self) -> None:
        """A.1's example: balanced spreads a request over the cards."""
        assert preferred(self.TWO_CARDS, 2, "balanced") == ["card0-0", "card1-0"]
        assert preferred(self.TWO_CARDS, 4, "balanced") == [
            "card0-0",
            "card1-0",
            "card0-1",
            "card1-1",
        ]

    def test_packed_fills_card0_first(self) -> None:
        """A.1's example: packed fills one card before the next."""
        assert preferred(self.TWO_CARDS, 2, "packed") == ["card0-0", "card0-1"]
        assert preferred(list(reversed(self.TWO_CARDS)), 4, "packed") == [
            "card0-0",
            "card0-1",
            "card0-2",
            "card1-0",
        ]

    def test_none_takes_one_share_per_card_in_offered_order_then_the_rest(self) -> None:
        """none: first share of each distinct card as offered, then the others as offered."""
        offered = ["card1-2", "card0-1", "card1-0", "card0-0"]
        assert preferred(offered, 3, "none") == ["card1-2", "card0-1", "card1-0"]

    def test_balanced_prefers_the_card_with_most_free_shares(self) -> None:
        """A card with more free shares (less used) is chosen before a busier one."""
        offered = ["card0-2", "card1-0", "card1-1", "card1-2"]
        assert preferred(offered, 2, "balanced") == ["card1-0", "card1-1"]

    def test_natural_order_puts_card2_before_card10(self) -> None:
        """Cards and shares sort by number, not by text."""
        offered = ["card10-0", "card2-10", "card2-9"]
        assert packed_policy(offered, 3) == ["card2-9", "card2-10", "card10-0"]
        offered = ["card10-1", "card10-0", "card2-1", "card2-0"]
        assert balanced_policy(offered, 2) == ["card2-0", "card10-0"]

    def test_must_include_ids_come_first(self) -> None:
        """kubelet's must-include IDs are always part of the answer."""
        assert preferred(self.TWO_CARDS, 2, "packed", must=("card1-2",)) == ["card1-2", "card0-0"]

    def test_asking_for_more_than_available_is_a_clear_error(self) -> None:
        """allocation_size > available: ValueError naming the counts and the IDs."""
        with pytest.raises(ValueError, match=r"cannot choose 3 devices out of the 2 available"):
            preferred(["card0-0", "card1-0"], 3, "balanced")

    def test_each_container_request_gets_its_answer(self) -> None:
        """One response per container request, in order."""
        request = pluginapi.PreferredAllocationRequest(
            container_requests=[
                pluginapi.ContainerPreferredAllocationRequest(
                    available_deviceIDs=self.TWO_CARDS, allocation_size=size
                )
                for size in (1, 2)
            ]
        )
        response = GpuScanner(GpuSettings(allocation_policy="packed")).get_preferred_allocation(
            request
        )
        assert [list(c.deviceIDs) for c in response.container_responses] == [
            ["card0-0"],
            ["card0-0", "card0-1"],
        ]

    @pytest.mark.parametrize("policy", [none_policy, balanced_policy, packed_policy])
    def test_policies_return_exactly_the_requested_number(
        self, policy: Callable[[list[str], int], list[str]]
    ) -> None:
        """Every policy returns ``size`` distinct offered IDs."""
        for size in range(len(self.TWO_CARDS) + 1):
            chosen = policy(self.TWO_CARDS, size)
            assert len(chosen) == len(set(chosen)) == size
            assert set(chosen) <= set(self.TWO_CARDS)


# --- options and hooks -------------------------------------------------------------------


def activate(tmp_path: Path, **options: Any) -> list[tuple[str, Any]]:
    config = PluginConfig(
        name="gpu", options=options, sysfs_root=tmp_path / "sys", devfs_root=tmp_path / "dev"
    )
    return list(gpu.devplugin_scanners(config=config))


class TestOptions:
    def test_declared_options_and_defaults(self) -> None:
        """The options a person can set, with Go's defaults."""
        assert {o.name: o.default for o in gpu.devplugin_options()} == {
            "shared-dev-num": 1,
            "allocation-policy": "none",
            "enable-monitoring": False,
            "monitoring-mode": "single",
            "bypath": "single",
            "allow-ids": (),
            "deny-ids": (),
            "scan-interval": 5.0,
        }

    def test_hook_builds_one_scanner_on_the_configured_roots(self, tmp_path: Path) -> None:
        """devplugin_scanners registers gpu.intel.com with the parsed settings."""
        [(namespace, scanner)] = activate(
            tmp_path, **{"shared-dev-num": 2, "allocation-policy": "packed", "allow-ids": "0x56a0"}
        )
        assert namespace == "gpu.intel.com"
        assert isinstance(scanner, GpuScanner)
        assert (scanner.sysfs_root, scanner.devfs_root) == (tmp_path / "sys", tmp_path / "dev")
        assert scanner.settings == GpuSettings(
            shared_dev_num=2, allocation_policy="packed", allow_ids=frozenset({"0x56a0"})
        )

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"shared-dev-num": 0}, "option shared-dev-num must be >= 1"),
            ({"shared-dev-num": "abc"}, "option shared-dev-num must be an integer"),
            ({"allocation-policy": "spread"}, "invalid value for option allocation-policy"),
            ({"monitoring-mode": "both"}, "invalid value for option monitoring-mode"),
            ({"bypath": "some"}, "invalid value for option bypath"),
            (
                {"allow-ids": "0x56a0", "deny-ids": "0x4905"},
                "cannot use both allow-ids and deny-ids options at the same time",
            ),
            ({"allow-ids": "0x56a0,,0x4905"}, "option allow-ids: empty PCI ID"),
            ({"deny-ids": "0x56A0"}, "option deny-ids: invalid PCI ID: '0x56A0'"),
            ({"deny-ids": "0x56a0x"}, "invalid PCI ID: '0x56a0x'"),
            ({"allow-ids": "4905"}, "invalid PCI ID: '4905'"),
            ({"scan-interval": 0}, "option scan-interval must be > 0 seconds"),
            ({"enable-monitoring": "maybe"}, "option enable-monitoring must be true or false"),
        ],
    )
    def test_invalid_values_are_config_errors(
        self, tmp_path: Path, options: dict[str, Any], message: str
    ) -> None:
        """Go checkArgs' cases fail before anything is served, naming plugin and option."""
        with pytest.raises(ConfigError, match=r"^plugin 'gpu': ") as err:
            activate(tmp_path, **options)
        assert message in str(err.value)

    def test_id_lists_parse_through_the_option_type(self) -> None:
        """--set gpu.allow-ids=... and a TOML list both give a tuple of IDs."""
        option = next(o for o in OPTIONS if o.name == "allow-ids")
        assert option.convert("0x56a0, 0x4905") == ("0x4905", "0x56a0")
        assert option.convert(["0x56a0"]) == ("0x56a0",)
        with pytest.raises(ConfigError, match="empty PCI ID"):
            option.convert("0x56a0,")

    def test_settings_accept_the_hosts_parsed_types(self) -> None:
        """Values as the host parses them (bool, int, float, tuple) are taken as they are."""
        settings = GpuSettings.from_options(
            {"enable-monitoring": True, "scan-interval": 0.5, "deny-ids": ("0x4905",)}
        )
        assert settings.enable_monitoring is True
        assert settings.scan_interval == 0.5
        assert settings.deny_ids == frozenset({"0x4905"})


# --- the scan loop -----------------------------------------------------------------------


@pytest.fixture
def running() -> Iterator[list[asyncio.Task[None]]]:
    tasks: list[asyncio.Task[None]] = []
    yield tasks
    for task in tasks:
        task.cancel()


class TestScanLoop:
    @pytest.mark.asyncio
    async def test_rescan_reflects_a_new_card_at_once(self, tmp_path: Path) -> None:
        """rescan() scans now: a card that appears is notified without waiting the interval."""
        make_tree(tmp_path, FakeGpu())
        scanner = GpuScanner(
            GpuSettings(scan_interval=3600),
            sysfs_root=tmp_path / "sys",
            devfs_root=tmp_path / "dev",
        )
        notifier = QueueNotifier()
        task = asyncio.create_task(scanner.scan(notifier))
        try:
            first = await notifier.next_matching(lambda tree: True)
            assert ids(first) == {"i915": ["card0-0"]}
            make_tree(tmp_path, FakeGpu(), FakeGpu())
            scanner.rescan()
            second = await notifier.next_matching(lambda tree: True)
            assert ids(second) == {"i915": ["card0-0", "card1-0"]}
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    @pytest.mark.asyncio
    async def test_periodic_scan_reflects_a_vanished_card(self, tmp_path: Path) -> None:
        """Each interval scans again: a card that vanishes is gone from a later tree."""
        make_tree(tmp_path, FakeGpu(), FakeGpu())
        scanner = GpuScanner(
            GpuSettings(scan_interval=0.01),
            sysfs_root=tmp_path / "sys",
            devfs_root=tmp_path / "dev",
        )
        notifier = QueueNotifier()
        task = asyncio.create_task(scanner.scan(notifier))
        try:
            await notifier.next_matching(lambda tree: len(tree.get("i915", {})) == 2)
            (tmp_path / "sys/class/drm/card1").unlink()
            tree = await notifier.next_matching(lambda tree: len(tree.get("i915", {})) == 1)
            assert ids(tree) == {"i915": ["card0-0"]}
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    def test_rescan_before_scanning_is_harmless(self) -> None:
        """rescan() on a scanner that is not running does nothing."""
        GpuScanner().rescan()

    @pytest.mark.asyncio
    async def test_problems_are_logged_once(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A problem that persists is logged when it appears, not on every scan."""
        make_tree(tmp_path, FakeGpu(dev_nodes=False))
        scanner = GpuScanner(
            GpuSettings(scan_interval=0.01),
            sysfs_root=tmp_path / "sys",
            devfs_root=tmp_path / "dev",
        )
        notifier = QueueNotifier()
        task = asyncio.create_task(scanner.scan(notifier))
        try:
            for _ in range(3):
                await notifier.next_matching(lambda tree: True)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        warnings = [
            r.getMessage() for r in caplog.records if "card0 does not exist" in r.getMessage()
        ]
        assert len(warnings) == 1


# --- the fake-tree generator -------------------------------------------------------------


class TestFakedev:
    def test_gen_options_like_gpu_fakedev(self, tmp_path: Path) -> None:
        """DevsPerNode spreads cards over NUMA nodes; tiles and memory are written."""
        tree = tree_from_gen_options(
            {"DevCount": 4, "DevsPerNode": 2, "TilesPerDev": 2, "DevMemSize": 4 << 30}
        )
        write_gpu_tree(tmp_path, tree)
        result = scan(tmp_path)
        assert [result["i915"][f"card{i}-0"].numa_nodes for i in range(4)] == [
            (0,),
            (0,),
            (1,),
            (1,),
        ]
        card3 = (tmp_path / "sys/class/drm/card3").resolve()
        assert (card3 / "lmem_total_bytes").read_text() == f"{4 << 30}\n"
        assert sorted(p.name for p in (card3 / "gt").iterdir()) == ["gt0", "gt1"]

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"DevCount": 0}, "DevCount must be in 1..128"),
            ({"DevCount": 129}, "DevCount must be in 1..128"),
            ({"DevCount": 1, "DevMemSize": 1000}, "multiple of 1048576"),
            ({"DevCount": 2, "DevsPerNode": 3}, "must not exceed DevCount"),
            ({"DevCount": 4, "VfsPerPf": 2}, r"a multiple of VfsPerPf\+1"),
            ({"DevCount": 3, "VfsPerPf": 2, "TilesPerDev": 1}, "TilesPerDev and DevsPerNode"),
        ],
    )
    def test_invalid_gen_options(self, options: dict[str, Any], message: str) -> None:
        """gpu_fakedev's option checks, with the offending key named."""
        with pytest.raises(ValueError, match=message):
            tree_from_gen_options(options)

    def test_pci_addresses_stay_well_formed_past_ten_cards(self) -> None:
        """Unlike gpu_fakedev, card 10 gets a valid BDF (the by-path lookup needs one)."""
        assert pci_address(10) == "0000:03:0a.0"
        assert pci_address(127) == "0000:06:1f.0"

    def test_refuses_to_overwrite_a_tree_it_did_not_write(self, tmp_path: Path) -> None:
        """An existing sys/ or dev/ without the marker is never deleted."""
        (tmp_path / "dev").mkdir()
        (tmp_path / "dev/precious").write_text("keep")
        with pytest.raises(FileExistsError, match="refusing to overwrite"):
            make_tree(tmp_path)
        assert (tmp_path / "dev/precious").read_text() == "keep"

    def test_regenerating_replaces_the_previous_tree(self, tmp_path: Path) -> None:
        """A generated tree is replaced as a whole by the next one."""
        make_tree(tmp_path, FakeGpu(), FakeGpu(), FakeGpu())
        make_tree(tmp_path, FakeGpu())
        assert (tmp_path / MARKER).exists()
        assert ids(scan(tmp_path)) == {"i915": ["card0-0"]}

    def test_command_line(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """``python -m hostplugins.gpu.fakedev --json FILE --root DIR`` writes a tree."""
        config = tmp_path / "8x-DG1.json"
        config.write_text(
            json.dumps(
                {
                    "Info": "8x DG1",
                    "DevCount": 8,
                    "DevMemSize": 4294967296,
                    "Capabilities": {"platform": "fake_DG1"},
                }
            )
        )
        assert main(["--json", str(config), "--root", str(tmp_path / "t")]) == 0
        assert "wrote 8 fake GPU(s)" in capsys.readouterr().out
        caps = tmp_path / "t/sys/kernel/debug/dri/7/i915_capabilities"
        assert caps.read_text() == "platform: fake_DG1\n"
        assert len(scan(tmp_path / "t")["i915"]) == 8
        config.write_text('{"DevCount": 0}')
        assert main(["--json", str(config), "--root", str(tmp_path / "t")]) == 2
        assert "DevCount must be in 1..128" in capsys.readouterr().err

    def test_device_nodes_are_regular_files(self, tmp_path: Path) -> None:
        """No mknod: the nodes are plain files, so the generator needs no privileges."""
        _, dev_dir = make_tree(tmp_path)
        assert (dev_dir / "dri/card0").is_file()
        assert os.readlink(dev_dir / "dri/by-path" / f"pci-{pci_address(0)}-card") == "../card0"


# --- through the framework and the command line --------------------------------------------


class TestEndToEnd:
    @pytest.mark.asyncio
    async def test_kubelet_allocation_follows_the_balanced_policy(
        self, tmp_path: Path, short_dir: Path
    ) -> None:
        """4 cards x 2 shares, balanced: kubelet's 2-device request gets two cards' nodes."""
        write_gpu_tree(tmp_path, tree_from_gen_options({"DevCount": 4, "DevsPerNode": 2}))
        scanner = GpuScanner(
            GpuSettings(shared_dev_num=2, allocation_policy="balanced"),
            sysfs_root=tmp_path / "sys",
            devfs_root=tmp_path / "dev",
        )
        async with served(short_dir, gpu.NAMESPACE, scanner) as kubelet:
            await kubelet.wait_for_resource("gpu.intel.com/i915", count=8, healthy=8)
            assert kubelet.options("gpu.intel.com/i915").get_preferred_allocation_available
            first = await kubelet.allocate_like_kubelet("gpu.intel.com/i915", 2)
            second = await kubelet.allocate_like_kubelet("gpu.intel.com/i915", 1)
            cdi_files = sorted(p.name for p in (short_dir / "cdi").glob("*.json"))
        assert sorted(first.device_ids) == ["card0-0", "card1-0"]
        assert [Path(d.host_path).name for d in first.response.devices] == [
            "card0",
            "renderD128",
            "card1",
            "renderD129",
        ]
        assert sorted(c.name for c in first.response.cdi_devices) == [
            "intel.cdi.k8s.io/gpu=card0",
            "intel.cdi.k8s.io/gpu=card1",
        ]
        assert second.device_ids == ("card2-0",)
        assert "intel.cdi.k8s.io-gpu-card0.json" in cdi_files


class TestCommandLine:
    def test_scan_json_lists_the_generated_cards(self, tmp_path: Path) -> None:
        """``devplugin-host scan --enable gpu --sysfs-root T/sys --devfs-root T/dev --json``."""
        write_gpu_tree(tmp_path, tree_from_gen_options({"DevCount": 4, "DevsPerNode": 2}))
        result = CliRunner().invoke(
            cli,
            [
                "scan",
                "--enable",
                "gpu",
                "--set",
                "gpu.shared-dev-num=2",
                "--set",
                "gpu.enable-monitoring=true",
                "--sysfs-root",
                str(tmp_path / "sys"),
                "--devfs-root",
                str(tmp_path / "dev"),
                "--json",
            ],
        )
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert sorted(report) == ["gpu.intel.com/i915", "gpu.intel.com/monitoring"]
        devices = report["gpu.intel.com/i915"]
        assert [d["id"] for d in devices] == [f"card{c}-{s}" for c in range(4) for s in range(2)]
        assert {d["health"] for d in devices} == {HEALTHY}
        assert [d["topology"] for d in devices[::2]] == [[0], [0], [1], [1]]
        assert devices[6]["nodes"] == [
            "/dev/dri/card3",
            "/dev/dri/renderD131",
        ]
        assert [d["id"] for d in report["gpu.intel.com/monitoring"]] == ["all"]

    def test_invalid_option_exits_2_with_the_plugins_message(self, tmp_path: Path) -> None:
        """A rejected option value is a configuration error: exit 2, nothing scanned."""
        result = CliRunner().invoke(
            cli,
            [
                "scan",
                "--enable",
                "gpu",
                "--set",
                "gpu.allow-ids=0x56a0,0xZZZZ",
                "--sysfs-root",
                str(tmp_path),
            ],
        )
        assert result.exit_code == 2
        assert "plugin 'gpu': option allow-ids: invalid PCI ID: '0xZZZZ'" in result.output
