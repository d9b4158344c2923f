"""The ``dsa`` and ``iaa`` plugins (pkg/idxd, pkg/vfio): fake trees, options, loop, kubelet, CLI."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import hostplugins.dsa as dsa
import hostplugins.iaa as iaa
from host import ConfigError, PluginConfig
from host.cli import main as cli
from host.deviceplugin import HEALTHY, DeviceTree, Scanner, pluginapi
from host.deviceplugin._names import validate_resource_name
from host.testing._sysfs import FakeSysfs, Symlink, build_tree
from hostplugins.idxd import (
    DSA,
    DSA_VFIO_IDS,
    IAA,
    CharDeviceNodes,
    IdxdKind,
    IdxdScanner,
    IdxdSettings,
    VfioScanner,
    WqNodeError,
    renumber_envs,
    scan_once,
    scan_vfio_once,
)
from tests.hostplugins.harness import QueueNotifier, ids, plugin_stub, served

# --- fake trees --------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeWq:
    """One work queue of a fake idxd device (``dsa0``, ``iax1``)."""

    device: str = "dsa0"
    name: str = "wq0.0"
    state: str | None = "enabled"
    mode: str | None = "dedicated"
    type: str | None = "user"
    node: bool = True
    """Write ``dev/<prefix>/<wq>`` and its ``dev/char/<M:m>`` link."""


def _prefix(device: str) -> str:
    return device.rstrip("0123456789")


def make_wqs(root: Path, *wqs: FakeWq, numa_node: int = 1) -> tuple[Path, Path]:
    """Write fake idxd devices holding ``wqs`` under root/sys and root/dev; return both.

    Each device is PCI function ``0000:6a:0N.0`` on ``numa_node``, linked from
    ``bus/dsa/devices``; a node is a regular file with a ``dev/char/240:N`` link.
    """
    sys_dir, dev_dir = root / "sys", root / "dev"
    devices = list(dict.fromkeys(wq.device for wq in wqs))
    for index, device in enumerate(devices):
        pci = f"devices/pci0000:6a/0000:6a:{index + 1:02x}.0"
        build_tree(
            sys_dir,
            {
                f"{pci}/numa_node": f"{numa_node}\n",
                f"{pci}/{device}": None,
                f"bus/dsa/devices/{device}": Symlink(f"../../../{pci}/{device}"),
            },
        )
    for minor, wq in enumerate(wqs):
        pci = f"devices/pci0000:6a/0000:6a:{devices.index(wq.device) + 1:02x}.0"
        attrs = {"state": wq.state, "mode": wq.mode, "type": wq.type}
        build_tree(
            sys_dir / pci / wq.device / wq.name,
            {name: f"{value}\n" for name, value in attrs.items() if value is not None},
        )
        if wq.node:
            prefix = _prefix(wq.device)
            build_tree(
                dev_dir,
                {
                    f"{prefix}/{wq.name}": "",
                    f"char/240:{minor}": Symlink(f"../{prefix}/{wq.name}"),
                },
            )
    return sys_dir, dev_dir


class LinkedFileNodes:
    """A WqNodeLookup for fake trees: CharDeviceNodes' rules on regular files.

    ``<dev_dir>/<wq>`` must be a file and some ``<char_dir>`` entry a symlink to it.
    """

    def nodes(self, dev_dir: Path, char_dir: Path, wq_name: str) -> Sequence[Path]:
        dev_path = dev_dir / wq_name
        if not dev_path.is_file():
            raise WqNodeError(f"{dev_path} does not exist")
        links = sorted(char_dir.iterdir()) if char_dir.is_dir() else []
        for link in links:
            if link.is_symlink() and link.resolve() == dev_path.resolve():
                return (dev_path, link)
        raise WqNodeError(f"no {char_dir} link to {dev_path}")


NODES = LinkedFileNodes()


def scan(
    root: Path,
    kind: IdxdKind = DSA,
    problems: list[str] | None = None,
    **settings: Any,
) -> DeviceTree:
    return scan_once(
        kind,
        IdxdSettings(plugin=kind.plugin, **settings),
        sysfs_root=root / "sys",
        devfs_root=root / "dev",
        node_lookup=NODES,
        problems=problems,
    )


def add_dsa_pci(
    sysfs: FakeSysfs, address: str, *, device: str = "0x0b25", driver: str | None = "vfio-pci"
) -> Path:
    return sysfs.add_pci_device(address, numa_node=0, driver=driver, attrs={"device": device})


# --- work queues ---------------------------------------------------------------------------


class TestWorkQueues:
    def test_enabled_user_queue_is_a_device_with_its_nodes(self, tmp_path: Path) -> None:
        """wq0.0 (user, dedicated) is wq-user-dedicated-wq0.0-0 with /dev/dsa and /dev/char."""
        make_wqs(tmp_path, FakeWq())
        tree = scan(tmp_path)
        assert ids(tree) == {"wq-user-dedicated": ["wq-user-dedicated-wq0.0-0"]}
        info = tree["wq-user-dedicated"]["wq-user-dedicated-wq0.0-0"]
        assert [(n.host_path, n.container_path, n.permissions) for n in info.nodes] == [
            ("/dev/dsa/wq0.0", "/dev/dsa/wq0.0", "rw"),
            ("/dev/char/240:0", "/dev/char/240:0", "rw"),
        ]
        assert info.state == HEALTHY
        assert info.numa_nodes == (1,)
        assert (info.mounts, dict(info.envs), info.cdi_spec) == ((), {}, None)

    def test_shared_queue_is_offered_shared_dev_num_times(self, tmp_path: Path) -> None:
        """A shared queue gets IDs -0..-(n-1); a dedicated one stays single."""
        make_wqs(
            tmp_path,
            FakeWq(name="wq0.0", mode="shared"),
            FakeWq(name="wq0.1", mode="dedicated"),
        )
        tree = scan(tmp_path, shared_dev_num=3)
        assert ids(tree) == {
            "wq-user-shared": [f"wq-user-shared-wq0.0-{i}" for i in range(3)],
            "wq-user-dedicated": ["wq-user-dedicated-wq0.1-0"],
        }
        shared = tree["wq-user-shared"]
        assert shared["wq-user-shared-wq0.0-0"] == shared["wq-user-shared-wq0.0-2"]

    def test_only_enabled_queues_count(self, tmp_path: Path) -> None:
        """state ``disabled`` (or anything but ``enabled``) is skipped silently."""
        make_wqs(
            tmp_path,
            FakeWq(name="wq0.0", state="disabled"),
            FakeWq(name="wq0.1", state="enabled\n\n"),
            FakeWq(name="wq0.2", state="enabling"),
        )
        problems: list[str] = []
        assert ids(scan(tmp_path, problems=problems)) == {
            "wq-user-dedicated": ["wq-user-dedicated-wq0.1-0"]
        }
        assert problems == []

    def test_kernel_and_mdev_queues_have_no_nodes(self, tmp_path: Path) -> None:
        """Only ``user`` queues carry device nodes; other types are nodeless devices."""
        make_wqs(
            tmp_path,
            FakeWq(name="wq0.0", type="kernel", node=False),
            FakeWq(name="wq0.1", type="mdev", mode="shared", node=False),
        )
        tree = scan(tmp_path, shared_dev_num=2)
        assert ids(tree) == {
            "wq-kernel-dedicated": ["wq-kernel-dedicated-wq0.0-0"],
            "wq-mdev-shared": ["wq-mdev-shared-wq0.1-0", "wq-mdev-shared-wq0.1-1"],
        }
        assert tree["wq-kernel-dedicated"]["wq-kernel-dedicated-wq0.0-0"].nodes == ()

    def test_queues_of_several_devices(self, tmp_path: Path) -> None:
        """Queues of dsa0 and dsa1 are all found, wq1.0 among them."""
        make_wqs(tmp_path, FakeWq(device="dsa0", name="wq0.0"), FakeWq(device="dsa1", name="wq1.0"))
        assert ids(scan(tmp_path)) == {
            "wq-user-dedicated": ["wq-user-dedicated-wq0.0-0", "wq-user-dedicated-wq1.0-0"]
        }

    def test_unreadable_queue_is_skipped_and_the_others_served(self, tmp_path: Path) -> None:
        """Missing mode/type skips that queue with a problem (Go failed the whole scan)."""
        make_wqs(
            tmp_path,
            FakeWq(name="wq0.0", mode=None),
            FakeWq(name="wq0.1", type=None),
            FakeWq(name="wq0.2"),
        )
        problems: list[str] = []
        assert ids(scan(tmp_path, problems=problems)) == {
            "wq-user-dedicated": ["wq-user-dedicated-wq0.2-0"]
        }
        assert len(problems) == 2
        assert "dsa0/wq0.0" in problems[0]
        assert "mode" in problems[0]
        assert "type" in problems[1]

    def test_unreadable_state_is_a_problem(self, tmp_path: Path) -> None:
        """A ``state`` that is not a readable file skips the queue."""
        sys_dir, _ = make_wqs(tmp_path, FakeWq())
        state = next(sys_dir.glob("bus/dsa/devices/dsa0/wq0.0/state"))
        state.unlink()
        state.mkdir()
        problems: list[str] = []
        assert ids(scan(tmp_path, problems=problems)) == {}
        assert problems
        assert "cannot read" in problems[0]

    def test_queue_whose_nodes_fail_the_lookup_is_skipped(self, tmp_path: Path) -> None:
        """A user queue without its node (or /dev/char link) is left out with a problem."""
        make_wqs(tmp_path, FakeWq(name="wq0.0", node=False), FakeWq(name="wq0.1"))
        problems: list[str] = []
        assert ids(scan(tmp_path, problems=problems)) == {
            "wq-user-dedicated": ["wq-user-dedicated-wq0.1-0"]
        }
        assert problems == [
            f"work queue dsa0/wq0.0: {tmp_path / 'dev/dsa/wq0.0'} does not exist; skipped"
        ]

    def test_odd_type_or_mode_never_makes_an_invalid_resource(self, tmp_path: Path) -> None:
        """A type kubelet could not take as a resource name is skipped with a problem."""
        make_wqs(tmp_path, FakeWq(name="wq0.0", type="user space", node=False))
        problems: list[str] = []
        assert ids(scan(tmp_path, problems=problems)) == {}
        assert "no valid resource name" in problems[0]

    def test_dsa_and_iaa_see_only_their_own_devices(self, tmp_path: Path) -> None:
        """dsa* queues are DSA's (nodes in /dev/dsa), iax* queues IAA's (/dev/iax)."""
        make_wqs(
            tmp_path,
            FakeWq(device="dsa0", name="wq0.0"),
            FakeWq(device="iax1", name="wq1.0", mode="shared"),
        )
        assert ids(scan(tmp_path, DSA)) == {"wq-user-dedicated": ["wq-user-dedicated-wq0.0-0"]}
        tree = scan(tmp_path, IAA)
        assert ids(tree) == {"wq-user-shared": ["wq-user-shared-wq1.0-0"]}
        nodes = tree["wq-user-shared"]["wq-user-shared-wq1.0-0"].nodes
        assert [n.container_path for n in nodes] == ["/dev/iax/wq1.0", "/dev/char/240:1"]

    def test_no_idxd_devices_is_an_empty_tree(self, tmp_path: Path) -> None:
        """No /sys/bus/dsa (no idxd driver): an empty tree, no problem, no exception."""
        problems: list[str] = []
        assert len(scan(tmp_path, problems=problems)) == 0
        assert problems == []

    def test_resource_names_are_valid_for_kubelet(self, tmp_path: Path) -> None:
        """Every wq-<type>-<mode> forms a valid resource name under both namespaces."""
        make_wqs(
            tmp_path,
            FakeWq(name="wq0.0", mode="shared"),
            FakeWq(name="wq0.1", type="kernel", node=False),
        )
        for dev_type in scan(tmp_path):
            validate_resource_name(f"{DSA.namespace}/{dev_type}")
            validate_resource_name(f"{IAA.namespace}/{dev_type}")


# --- the real device-node check ----------------------------------------------------------------


@pytest.fixture
def real_char_device() -> Path:
    if not stat.S_ISCHR(os.stat("/dev/null").st_mode):
        pytest.skip("/dev/null is not a character device here")
    return Path("/dev/null")


class TestCharDeviceNodes:
    def test_char_device_and_its_dev_char_link(
        self, tmp_path: Path, real_char_device: Path
    ) -> None:
        """A character device (here /dev/null via a symlink) and /dev/char/1:3 pointing to it."""
        dev = build_tree(
            tmp_path / "dev",
            {"dsa/wq0.0": Symlink(str(real_char_device)), "char/1:3": Symlink("../dsa/wq0.0")},
        )
        nodes = CharDeviceNodes().nodes(dev / "dsa", dev / "char", "wq0.0")
        assert list(nodes) == [dev / "dsa/wq0.0", dev / "char/1:3"]

    @pytest.mark.parametrize(
        ("spec", "message"),
        [
            ({}, "cannot stat"),
            ({"dsa/wq0.0": ""}, "is not a character device"),
            ({"dsa/wq0.0": Symlink("/dev/null")}, "char/1:3: No such file"),
            ({"dsa/wq0.0": Symlink("/dev/null"), "char/1:3": ""}, "is not a symbolic link"),
            (
                {"dsa/wq0.0": Symlink("/dev/null"), "char/1:3": Symlink("/dev/zero")},
                "points to /dev/zero",
            ),
        ],
    )
    def test_anything_else_is_an_error(
        self, tmp_path: Path, real_char_device: Path, spec: dict[str, Any], message: str
    ) -> None:
        """Not a char device, no /dev/char entry, not a link, a link elsewhere: WqNodeError."""
        dev = build_tree(tmp_path / "dev", {"dsa": None, "char": None, **spec})
        with pytest.raises(WqNodeError, match=message):
            CharDeviceNodes().nodes(dev / "dsa", dev / "char", "wq0.0")

    def test_scanner_uses_the_real_check_by_default(
        self, tmp_path: Path, real_char_device: Path
    ) -> None:
        """IdxdScanner without a lookup applies CharDeviceNodes: regular files fail it."""
        make_wqs(tmp_path, FakeWq(name="wq0.0"))
        build_tree(
            tmp_path / "dev",
            {"dsa/wq0.1": Symlink("/dev/zero"), "char/1:5": Symlink("../dsa/wq0.1")},
        )
        build_tree(
            next((tmp_path / "sys").glob("bus/dsa/devices/dsa0")),
            {"wq0.1": {"state": "enabled", "mode": "dedicated", "type": "user"}},
        )
        scanner = IdxdScanner(DSA, sysfs_root=tmp_path / "sys", devfs_root=tmp_path / "dev")
        problems: list[str] = []
        assert ids(scanner.scan_once(problems)) == {
            "wq-user-dedicated": ["wq-user-dedicated-wq0.1-0"]
        }
        assert "is not a character device" in problems[0]


# --- DSA through vfio-pci --------------------------------------------------------------------


class TestVfio:
    def test_dsa_devices_on_vfio_pci_are_vfio_devices(self, tmp_path: Path) -> None:
        """Each DSA PCI function on vfio-pci: vfio/<BDF>, its group node, VFIO_BDF<n>."""
        sysfs = FakeSysfs(tmp_path / "sys")
        first = add_dsa_pci(sysfs, "0000:6a:01.0")
        second = add_dsa_pci(sysfs, "0000:e7:01.0", device="0x11fb")
        sysfs.add_iommu_group(12, [first])
        sysfs.add_iommu_group(40, [second])
        tree = scan_vfio_once(
            DSA_VFIO_IDS, sysfs_root=tmp_path / "sys", devfs_root=tmp_path / "dev"
        )
        assert ids(tree) == {"vfio": ["0000:6a:01.0", "0000:e7:01.0"]}
        info = tree["vfio"]["0000:e7:01.0"]
        assert [(n.host_path, n.container_path) for n in info.nodes] == [
            ("/dev/vfio/40", "/dev/vfio/40"),
            ("/dev/vfio/vfio", "/dev/vfio/vfio"),
        ]
        assert dict(info.envs) == {"VFIO_BDF2": "0000:e7:01.0"}
        assert info.numa_nodes == (0,)

    def test_other_devices_and_drivers_are_left_out(self, tmp_path: Path) -> None:
        """Other IDs are ignored; a DSA on idxd or on no driver is a problem, not exposed."""
        sysfs = FakeSysfs(tmp_path / "sys")
        add_dsa_pci(sysfs, "0000:00:02.0", device="0x4905")
        add_dsa_pci(sysfs, "0000:6a:01.0", driver="idxd")
        add_dsa_pci(sysfs, "0000:6b:01.0", driver=None)
        problems: list[str] = []
        tree = scan_vfio_once(
            DSA_VFIO_IDS,
            sysfs_root=tmp_path / "sys",
            devfs_root=tmp_path / "dev",
            problems=problems,
        )
        assert len(tree) == 0
        assert problems == [
            "PCI device 0000:6a:01.0 (0x0b25) is bound to idxd, not vfio-pci; not exposed",
            "PCI device 0000:6b:01.0 (0x0b25) is bound to no driver, not vfio-pci; not exposed",
        ]

    def test_missing_iommu_group_skips_the_device(self, tmp_path: Path) -> None:
        """A vfio-pci device without iommu_group cannot be handed out: a problem."""
        sysfs = FakeSysfs(tmp_path / "sys")
        add_dsa_pci(sysfs, "0000:6a:01.0")
        problems: list[str] = []
        tree = scan_vfio_once(
            DSA_VFIO_IDS,
            sysfs_root=tmp_path / "sys",
            devfs_root=tmp_path / "dev",
            problems=problems,
        )
        assert len(tree) == 0
        assert "no IOMMU group" in problems[0]

    def test_noiommu_group_node_is_prefixed(self, tmp_path: Path) -> None:
        """A group named vfio-noiommu is /dev/vfio/noiommu-<group>."""
        sysfs = FakeSysfs(tmp_path / "sys")
        device = add_dsa_pci(sysfs, "0000:6a:01.0")
        sysfs.add_iommu_group(3, [device])
        sysfs.add({"kernel/iommu_groups/3/name": "vfio-noiommu\n"})
        tree = scan_vfio_once(
            DSA_VFIO_IDS, sysfs_root=tmp_path / "sys", devfs_root=tmp_path / "dev"
        )
        assert tree["vfio"]["0000:6a:01.0"].nodes[0].container_path == "/dev/vfio/noiommu-3"

    def test_post_allocate_numbers_each_container_from_zero(self) -> None:
        """Two containers: each gets VFIO_BDF0.. of its own devices only; other envs stay."""
        response = pluginapi.AllocateResponse(
            container_responses=[
                pluginapi.ContainerAllocateResponse(
                    envs={"VFIO_BDF3": "0000:e7:01.0", "VFIO_BDF1": "0000:6a:01.0", "X": "y"}
                ),
                pluginapi.ContainerAllocateResponse(envs={"VFIO_BDF2": "0000:6b:01.0"}),
            ]
        )
        VfioScanner().post_allocate(response)
        assert [dict(c.envs) for c in response.container_responses] == [
            {"VFIO_BDF0": "0000:6a:01.0", "VFIO_BDF1": "0000:e7:01.0", "X": "y"},
            {"VFIO_BDF0": "0000:6b:01.0"},
        ]

    def test_renumbering_ignores_lookalike_keys(self) -> None:
        """Only <prefix><digits> keys are renumbered."""
        response = pluginapi.AllocateResponse(
            container_responses=[
                pluginapi.ContainerAllocateResponse(
                    envs={"VFIO_BDF": "a", "VFIO_BDFX1": "b", "VFIO_BDF7": "c"}
                )
            ]
        )
        renumber_envs(response, "VFIO_BDF")
        assert dict(response.container_responses[0].envs) == {
            "VFIO_BDF": "a",
            "VFIO_BDFX1": "b",
            "VFIO_BDF0": "c",
        }


# --- options and hooks -------------------------------------------------------------------------


def activate(plugin: Any, tmp_path: Path, **options: Any) -> list[tuple[str, Scanner]]:
    config = PluginConfig(
        name=plugin.__name__.rsplit(".", 1)[-1],
        options=options,
        sysfs_root=tmp_path / "sys",
        devfs_root=tmp_path / "dev",
    )
    return list(plugin.devplugin_scanners(config=config))


class TestOptions:
    def test_declared_options_and_defaults(self) -> None:
        """DSA: shared-dev-num, driver, scan-interval; IAA has no driver option."""
        assert {o.name: o.default for o in dsa.devplugin_options()} == {
            "shared-dev-num": 1,
            "driver": "idxd",
            "scan-interval": 5.0,
        }
        assert {o.name: o.default for o in iaa.devplugin_options()} == {
            "shared-dev-num": 1,
            "scan-interval": 5.0,
        }

    def test_hooks_build_one_scanner_each_on_the_configured_roots(self, tmp_path: Path) -> None:
        """dsa.intel.com and iaa.intel.com, each an IdxdScanner with its kind and settings."""
        [(namespace, scanner)] = activate(dsa, tmp_path, **{"shared-dev-num": 4})
        assert namespace == "dsa.intel.com"
        assert isinstance(scanner, IdxdScanner)
        assert scanner.kind == DSA
        assert scanner.settings == IdxdSettings(plugin="dsa", shared_dev_num=4)
        assert (scanner.sysfs_root, scanner.devfs_root) == (tmp_path / "sys", tmp_path / "dev")
        assert isinstance(scanner.node_lookup, CharDeviceNodes)
        [(namespace, scanner)] = activate(iaa, tmp_path, **{"scan-interval": 0.5})
        assert namespace == "iaa.intel.com"
        assert isinstance(scanner, IdxdScanner)
        assert (scanner.kind, scanner.settings.scan_interval) == (IAA, 0.5)

    def test_dsa_driver_vfio_pci_builds_the_vfio_scanner_and_warns_about_sharing(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """driver=vfio-pci: a VfioScanner for the DSA IDs; shared-dev-num is ignored (warned)."""
        with caplog.at_level(logging.WARNING):
            [(namespace, scanner)] = activate(
                dsa, tmp_path, driver="vfio-pci", **{"shared-dev-num": 2}
            )
        assert namespace == "dsa.intel.com"
        assert isinstance(scanner, VfioScanner)
        assert scanner.device_ids == DSA_VFIO_IDS
        assert "shared-dev-num=2 is ignored with driver vfio-pci" in caplog.text

    @pytest.mark.parametrize(
        ("plugin", "options", "message"),
        [
            (dsa, {"shared-dev-num": 0}, "option shared-dev-num must be >= 1"),
            (iaa, {"shared-dev-num": -3}, "option shared-dev-num must be >= 1"),
            (dsa, {"shared-dev-num": "two"}, "option shared-dev-num must be an integer"),
            (iaa, {"shared-dev-num": True}, "option shared-dev-num must be an integer"),
            (dsa, {"driver": "uio"}, "invalid value for option driver: 'uio'"),
            (iaa, {"driver": "vfio-pci"}, "only driver 'idxd' is supported"),
            (dsa, {"scan-interval": 0}, "option scan-interval must be > 0 seconds"),
            (iaa, {"scan-interval": "soon"}, "option scan-interval must be a number"),
        ],
    )
    def test_invalid_values_are_config_errors(
        self, tmp_path: Path, plugin: Any, options: dict[str, Any], message: str
    ) -> None:
        """Bad values fail before anything is served, naming plugin and option."""
        name = plugin.__name__.rsplit(".", 1)[-1]
        with pytest.raises(ConfigError, match=rf"^plugin '{name}': ") as err:
            activate(plugin, tmp_path, **options)
        assert message in str(err.value)


# --- the scan loop -----------------------------------------------------------------------------


class TestScanLoop:
    @pytest.mark.asyncio
    async def test_rescan_reflects_a_newly_enabled_queue(self, tmp_path: Path) -> None:
        """rescan() scans now: a queue enabled meanwhile is notified at once."""
        sys_dir, _ = make_wqs(
            tmp_path, FakeWq(name="wq0.0"), FakeWq(name="wq0.1", state="disabled")
        )
        scanner = IdxdScanner(
            DSA,
            IdxdSettings(scan_interval=3600),
            sysfs_root=sys_dir,
            devfs_root=tmp_path / "dev",
            node_lookup=NODES,
        )
        notifier = QueueNotifier()
        task = asyncio.create_task(scanner.scan(notifier))
        try:
            first = await notifier.next_matching(lambda tree: True)
            assert ids(first) == {"wq-user-dedicated": ["wq-user-dedicated-wq0.0-0"]}
            (sys_dir / "bus/dsa/devices/dsa0/wq0.1/state").write_text("enabled\n")
            scanner.rescan()
            second = await notifier.next_matching(lambda tree: True)
            assert len(second["wq-user-dedicated"]) == 2
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    @pytest.mark.asyncio
    async def test_problems_are_logged_once(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A queue that stays broken is warned about once, not every interval."""
        make_wqs(tmp_path, FakeWq(node=False))
        scanner = IdxdScanner(
            DSA,
            IdxdSettings(scan_interval=0.01),
            sysfs_root=tmp_path / "sys",
            devfs_root=tmp_path / "dev",
            node_lookup=NODES,
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
        warnings = [r for r in caplog.records if "work queue dsa0/wq0.0" in r.getMessage()]
        assert len(warnings) == 1
        assert warnings[0].name == "hostplugins.dsa"

    def test_rescan_before_scanning_is_harmless(self) -> None:
        """rescan() on a scanner that is not running does nothing."""
        IdxdScanner(IAA).rescan()
        VfioScanner().rescan()


# --- through the framework and the command line ------------------------------------------------


class TestEndToEnd:
    @pytest.mark.asyncio
    async def test_kubelet_allocates_a_shared_work_queue(
        self, tmp_path: Path, short_dir: Path
    ) -> None:
        """A shared wq offered twice: kubelet allocates one share and gets both nodes."""
        make_wqs(tmp_path, FakeWq(name="wq0.0", mode="shared"), FakeWq(name="wq0.1"))
        scanner = IdxdScanner(
            DSA,
            IdxdSettings(shared_dev_num=2),
            sysfs_root=tmp_path / "sys",
            devfs_root=tmp_path / "dev",
            node_lookup=NODES,
        )
        async with served(short_dir, DSA.namespace, scanner) as kubelet:
            state = await kubelet.wait_for_resource("dsa.intel.com/wq-user-shared", healthy=2)
            await kubelet.wait_for_resource("dsa.intel.com/wq-user-dedicated", healthy=1)
            allocation = await kubelet.allocate_like_kubelet("dsa.intel.com/wq-user-shared", 1)
        assert state.devices["wq-user-shared-wq0.0-1"].numa_nodes == (1,)
        assert allocation.device_ids == ("wq-user-shared-wq0.0-0",)
        assert [(d.host_path, d.container_path) for d in allocation.response.devices] == [
            ("/dev/dsa/wq0.0", "/dev/dsa/wq0.0"),
            ("/dev/char/240:0", "/dev/char/240:0"),
        ]

    @pytest.mark.asyncio
    async def test_vfio_envs_are_numbered_per_container_in_one_allocate(
        self, tmp_path: Path, short_dir: Path
    ) -> None:
        """One Allocate with two container requests: each container's envs start at 0."""
        sysfs = FakeSysfs(tmp_path / "sys")
        for group, address in enumerate(("0000:6a:01.0", "0000:6b:01.0", "0000:6c:01.0")):
            sysfs.add_iommu_group(group, [add_dsa_pci(sysfs, address)])
        scanner = VfioScanner(sysfs_root=tmp_path / "sys", devfs_root=tmp_path / "dev")
        request = pluginapi.AllocateRequest(
            container_requests=[
                pluginapi.ContainerAllocateRequest(devices_ids=["0000:6c:01.0", "0000:6a:01.0"]),
                pluginapi.ContainerAllocateRequest(devices_ids=["0000:6b:01.0"]),
            ]
        )
        async with served(short_dir, DSA.namespace, scanner) as kubelet:
            await kubelet.wait_for_resource("dsa.intel.com/vfio", healthy=3)
            async with plugin_stub(kubelet, "dsa.intel.com/vfio") as stub:
                response = await stub.Allocate(request)
        assert [dict(c.envs) for c in response.container_responses] == [
            {"VFIO_BDF0": "0000:6a:01.0", "VFIO_BDF1": "0000:6c:01.0"},
            {"VFIO_BDF0": "0000:6b:01.0"},
        ]
        assert [d.container_path for d in response.container_responses[1].devices] == [
            "/dev/vfio/1",
            "/dev/vfio/vfio",
        ]


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(cli, ["scan", *args])


class TestCommandLine:
    def test_dsa_scan_json(self, tmp_path: Path, real_char_device: Path) -> None:
        """``devplugin-host scan --enable dsa ... --json``: the real node check, shares."""
        make_wqs(
            tmp_path,
            FakeWq(name="wq0.0", mode="shared", node=False),
            FakeWq(name="wq0.1", type="kernel", node=False),
        )
        build_tree(
            tmp_path / "dev",
            {"dsa/wq0.0": Symlink(str(real_char_device)), "char/1:3": Symlink("../dsa/wq0.0")},
        )
        result = run_cli(
            "--enable",
            "dsa",
            "--set",
            "dsa.shared-dev-num=2",
            "--sysfs-root",
            str(tmp_path / "sys"),
            "--devfs-root",
            str(tmp_path / "dev"),
            "--json",
        )
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert sorted(report) == [
            "dsa.intel.com/wq-kernel-dedicated",
            "dsa.intel.com/wq-user-shared",
        ]
        shared = report["dsa.intel.com/wq-user-shared"]
        assert [d["id"] for d in shared] == ["wq-user-shared-wq0.0-0", "wq-user-shared-wq0.0-1"]
        assert shared[0]["nodes"] == [
            "/dev/dsa/wq0.0",
            "/dev/char/1:3",
        ]
        assert shared[0]["topology"] == [1]
        assert report["dsa.intel.com/wq-kernel-dedicated"][0]["nodes"] == []

    def test_dsa_vfio_scan_json(self, tmp_path: Path) -> None:
        """``--set dsa.driver=vfio-pci``: dsa.intel.com/vfio with the VFIO_BDF env."""
        sysfs = FakeSysfs(tmp_path / "sys")
        sysfs.add_iommu_group(7, [add_dsa_pci(sysfs, "0000:6a:01.0", device="0x1212")])
        result = run_cli(
            "--enable",
            "dsa",
            "--set",
            "dsa.driver=vfio-pci",
            "--sysfs-root",
            str(tmp_path / "sys"),
            "--devfs-root",
            str(tmp_path / "dev"),
            "--json",
        )
        assert result.exit_code == 0, result.output
        [device] = json.loads(result.stdout)["dsa.intel.com/vfio"]
        assert device["id"] == "0000:6a:01.0"
        assert device["envs"] == {"VFIO_BDF1": "0000:6a:01.0"}
        assert device["nodes"] == ["/dev/vfio/7", "/dev/vfio/vfio"]

    def test_iaa_scan_json_and_no_devices(self, tmp_path: Path, real_char_device: Path) -> None:
        """``--enable iaa``: its iax queue; an empty tree is no error."""
        make_wqs(tmp_path, FakeWq(device="iax1", name="wq1.0", node=False))
        build_tree(
            tmp_path / "dev",
            {"iax/wq1.0": Symlink(str(real_char_device)), "char/1:3": Symlink("../iax/wq1.0")},
        )
        args = ["--sysfs-root", str(tmp_path / "sys"), "--devfs-root", str(tmp_path / "dev")]
        result = run_cli("--enable", "iaa", *args, "--json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert [d["id"] for d in report["iaa.intel.com/wq-user-dedicated"]] == [
            "wq-user-dedicated-wq1.0-0"
        ]
        empty = tmp_path / "empty"
        result = run_cli(
            "--enable", "iaa", "--sysfs-root", str(empty), "--devfs-root", str(empty), "--json"
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == {}

    def test_invalid_option_exits_2_with_the_plugins_message(self, tmp_path: Path) -> None:
        """A rejected option value is a configuration error: exit 2, nothing scanned."""
        result = run_cli(
            "--enable", "dsa", "--set", "dsa.shared-dev-num=0", "--sysfs-root", str(tmp_path)
        )
        assert result.exit_code == 2
        assert "plugin 'dsa': option shared-dev-num must be >= 1" in result.output
        result = run_cli(
            "--enable", "iaa", "--set", "iaa.driver=vfio-pci", "--sysfs-root", str(tmp_path)
        )
        assert result.exit_code == 2
        assert "plugin 'iaa' has no option 'driver'" in result.output
