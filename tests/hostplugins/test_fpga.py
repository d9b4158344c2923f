"""The ``fpga`` plugin: DFL and OPAE trees in af, region and regiondevel modes."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import hostplugins.fpga as fpga
from host import ConfigError, PluginConfig
from host.cli import main as cli
from host.deviceplugin import HEALTHY, UNHEALTHY, DeviceTree, pluginapi
from host.deviceplugin._names import validate_resource_name
from hostplugins._scanloop import NoHardware
from hostplugins.fpga import (
    DFL,
    OPAE,
    FpgaDriverNotLoadedError,
    FpgaScanner,
    FpgaSettings,
    afu_resource_name,
    detect_backend,
    scan_once,
)
from hostplugins.fpga.fakedev import (
    DEFAULT_AFU_ID,
    DEFAULT_INTERFACE_ID,
    FakeFpga,
    FakeFpgaTree,
    write_fpga_tree,
)
from tests.hostplugins.harness import ids, served

ALL_F = "f" * 32
OTHER_AFU = "9926ab6d6c925a68aabca7d84c545738"
AF_DEFAULT = "af-ce4.d84.zkiWk5jwXzOUbVYHCL4QithCTcSko8QT-J5DNoP5BAs"  # from the Go tests
REGION_DEFAULT = f"region-{DEFAULT_INTERFACE_ID}"

# Names per backend: FME prefix, port prefix.
NAMES = {"dfl": ("dfl-fme.", "dfl-port."), "opae": ("intel-fpga-fme.", "intel-fpga-port.")}


def fme(backend: str, n: int) -> str:
    return f"{NAMES[backend][0]}{n}"


def port(backend: str, n: int) -> str:
    return f"{NAMES[backend][1]}{n}"


def make_tree(root: Path, backend: str, *devices: FakeFpga) -> None:
    write_fpga_tree(root, FakeFpgaTree(backend=backend, devices=devices or (FakeFpga(),)))


def scan(
    root: Path, mode: str = "af", problems: list[str] | None = None, backend: Any = None
) -> DeviceTree:
    return scan_once(
        FpgaSettings(mode=mode),
        backend or detect_backend(root / "sys"),
        sysfs_root=root / "sys",
        devfs_root=root / "dev",
        problems=problems,
    )


def node_names(tree: DeviceTree, dev_type: str, dev_id: str) -> list[str]:
    return [Path(node.host_path).name for node in tree[dev_type][dev_id].nodes]


@pytest.fixture(params=["dfl", "opae"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TestBackendSelection:
    def test_opae_class_dir_selects_opae(self, tmp_path: Path) -> None:
        """/sys/class/fpga means the OPAE driver."""
        make_tree(tmp_path, "opae")
        assert detect_backend(tmp_path / "sys") is OPAE

    def test_fpga_region_class_dir_selects_dfl(self, tmp_path: Path) -> None:
        """/sys/class/fpga_region (and no /sys/class/fpga) means the DFL driver."""
        make_tree(tmp_path, "dfl")
        assert detect_backend(tmp_path / "sys") is DFL

    def test_opae_wins_when_both_exist(self, tmp_path: Path) -> None:
        """As in Go, OPAE is checked first."""
        make_tree(tmp_path, "dfl")
        (tmp_path / "sys/class/fpga").mkdir()
        assert detect_backend(tmp_path / "sys") is OPAE

    def test_no_driver_is_a_clear_error_naming_both_paths(self, tmp_path: Path) -> None:
        """Neither class directory: an error that names where it looked."""
        with pytest.raises(FpgaDriverNotLoadedError) as err:
            detect_backend(tmp_path / "sys")
        message = str(err.value)
        assert "no FPGA kernel driver is loaded" in message
        assert str(tmp_path / "sys/class/fpga") in message
        assert str(tmp_path / "sys/class/fpga_region") in message

    def test_no_driver_means_no_devices_not_a_failure(self, tmp_path: Path) -> None:
        """The hook succeeds without a driver; its scanner reports an empty tree, no problem."""
        config = PluginConfig(name="fpga", sysfs_root=tmp_path / "sys", devfs_root=tmp_path)
        [(namespace, scanner)] = fpga.devplugin_scanners(config=config)
        problems: list[str] = []
        assert namespace == "fpga.intel.com"
        assert len(scanner.scan_once(problems)) == 0
        assert [type(p) for p in problems] == [NoHardware]
        assert "no FPGA kernel driver is loaded" in problems[0]

    def test_driver_loaded_later_is_found(self, tmp_path: Path) -> None:
        """Each scan looks for the driver again until one appears."""
        config = PluginConfig(name="fpga", sysfs_root=tmp_path / "sys", devfs_root=tmp_path)
        [(_, scanner)] = fpga.devplugin_scanners(config=config)
        scanner.scan_once([])
        (tmp_path / "sys/class/fpga_region").mkdir(parents=True)
        problems: list[str] = []
        assert len(scanner.scan_once(problems)) == 0
        assert scanner.backend is DFL
        assert problems == []

    def test_class_dir_gone_after_start_gives_an_empty_tree(self, tmp_path: Path) -> None:
        """No sysfs directory to scan (driver unloaded): empty tree, a problem, no error."""
        problems: list[str] = []
        tree = scan(tmp_path, problems=problems, backend=DFL)
        assert len(tree) == 0
        assert problems == [
            f"cannot read {tmp_path / 'sys/class/fpga_region'}: No such file or directory "
            "(FPGA driver unloaded?)"
        ]


class TestAfMode:
    def test_resource_per_function_device_per_port(self, tmp_path: Path, backend: str) -> None:
        """af: ``af-`` resource per (interface, AFU) pair, device ID = port name."""
        make_tree(
            tmp_path,
            backend,
            FakeFpga(afu_ids=[DEFAULT_AFU_ID, OTHER_AFU], numa_node=1),
            FakeFpga(afu_ids=[DEFAULT_AFU_ID]),
        )
        tree = scan(tmp_path)
        other = afu_resource_name(DEFAULT_INTERFACE_ID, OTHER_AFU)
        assert ids(tree) == {
            AF_DEFAULT: [port(backend, 0), port(backend, 2)],
            other: [port(backend, 1)],
        }
        info = tree[AF_DEFAULT][port(backend, 0)]
        assert node_names(tree, AF_DEFAULT, port(backend, 0)) == [port(backend, 0)]
        node = info.nodes[0]
        assert (node.host_path, node.container_path, node.permissions) == (
            f"/dev/{port(backend, 0)}",
            f"/dev/{port(backend, 0)}",
            "rw",
        )
        assert (info.state, info.numa_nodes, info.cdi_spec) == (HEALTHY, (1,), None)
        assert tree[AF_DEFAULT][port(backend, 2)].topology is None

    def test_resource_name_encoding(self) -> None:
        """The name the Go tests pin, and the all-f one; both valid for kubelet."""
        assert afu_resource_name(DEFAULT_INTERFACE_ID, DEFAULT_AFU_ID) == AF_DEFAULT
        assert afu_resource_name(ALL_F, ALL_F) == "af-fff.fff." + "_" * 42 + "8"
        for name in (AF_DEFAULT, afu_resource_name(ALL_F, ALL_F)):
            validate_resource_name(f"{fpga.NAMESPACE}/{name}")

    def test_all_f_ids_are_unhealthy(self, tmp_path: Path, backend: str) -> None:
        """An all-f AFU ID or interface ID (crashed firmware) makes the port Unhealthy."""
        make_tree(
            tmp_path,
            backend,
            FakeFpga(afu_ids=[ALL_F, DEFAULT_AFU_ID]),
            FakeFpga(interface_id=ALL_F, afu_ids=[DEFAULT_AFU_ID]),
        )
        tree = scan(tmp_path)
        states = {dev_id: info.state for devs in tree.values() for dev_id, info in devs.items()}
        assert states == {
            port(backend, 0): UNHEALTHY,
            port(backend, 1): HEALTHY,
            port(backend, 2): UNHEALTHY,
        }
        assert afu_resource_name(ALL_F, DEFAULT_AFU_ID) in tree

    def test_missing_afu_id_or_node_skips_the_port(self, tmp_path: Path, backend: str) -> None:
        """A port without ``afu_id`` or without its /dev node is skipped, with a problem."""
        make_tree(tmp_path, backend, FakeFpga(afu_ids=[DEFAULT_AFU_ID] * 3))
        ports = sorted((tmp_path / "sys/devices").rglob(f"{NAMES[backend][1]}*"))
        (ports[0] / "afu_id").unlink()
        (tmp_path / "dev" / port(backend, 1)).unlink()
        (ports[2] / "afu_id").write_text("not-hex\n")
        problems: list[str] = []
        assert len(scan(tmp_path, problems=problems)) == 0
        assert len(problems) == 3
        assert "afu_id: AFU ID must be 32 hex digits, got None" in problems[0]
        assert f"{port(backend, 1)} does not exist" in problems[1]
        assert "got 'not-hex'" in problems[2]

    def test_vf_ports_find_their_fme_through_physfn(self, tmp_path: Path, backend: str) -> None:
        """Ports on SR-IOV VFs belong to the PF's FME and interface."""
        make_tree(tmp_path, backend, FakeFpga(afu_ids=[], vf_afu_ids=[DEFAULT_AFU_ID, OTHER_AFU]))
        tree = scan(tmp_path)
        assert ids(tree) == {
            AF_DEFAULT: [port(backend, 0)],
            afu_resource_name(DEFAULT_INTERFACE_ID, OTHER_AFU): [port(backend, 1)],
        }


class TestRegionMode:
    def test_device_per_region_with_its_ports(self, tmp_path: Path, backend: str) -> None:
        """region: ``region-<interface id>``, device ID = FME name, nodes = its ports."""
        make_tree(
            tmp_path,
            backend,
            FakeFpga(afu_ids=[DEFAULT_AFU_ID, OTHER_AFU], numa_node=0),
            FakeFpga(afu_ids=[OTHER_AFU], vf_afu_ids=[DEFAULT_AFU_ID]),
        )
        tree = scan(tmp_path, "region")
        assert ids(tree) == {REGION_DEFAULT: [fme(backend, 0), fme(backend, 1)]}
        assert node_names(tree, REGION_DEFAULT, fme(backend, 0)) == [
            port(backend, 0),
            port(backend, 1),
        ]
        assert node_names(tree, REGION_DEFAULT, fme(backend, 1)) == [
            port(backend, 2),
            port(backend, 3),
        ]
        assert tree[REGION_DEFAULT][fme(backend, 0)].numa_nodes == (0,)

    def test_cdi_spec_runs_the_cri_hook(self, tmp_path: Path, backend: str) -> None:
        """region: the CDI spec (kind intel.cdi.k8s.io/fpga) adds the createRuntime hook."""
        make_tree(tmp_path, backend)
        info = scan(tmp_path, "region")[REGION_DEFAULT][fme(backend, 0)]
        assert info.cdi_spec == {
            "cdiVersion": "0.5.0",
            "kind": "intel.cdi.k8s.io/fpga",
            "devices": [
                {
                    "name": fme(backend, 0),
                    "containerEdits": {
                        "hooks": [
                            {
                                "hookName": "createRuntime",
                                "path": "/opt/intel/fpga-sw/intel-fpga-crihook",
                            }
                        ]
                    },
                }
            ],
        }

    def test_afu_ids_are_not_needed(self, tmp_path: Path, backend: str) -> None:
        """Region modes never read ``afu_id`` (the region is reprogrammed anyway)."""
        make_tree(tmp_path, backend)
        for afu_id in (tmp_path / "sys/devices").rglob("afu_id"):
            afu_id.unlink()
        assert ids(scan(tmp_path, "region")) == {REGION_DEFAULT: [fme(backend, 0)]}

    def test_all_f_interface_is_unhealthy(self, tmp_path: Path, backend: str) -> None:
        """An all-f interface ID makes the region Unhealthy."""
        make_tree(tmp_path, backend, FakeFpga(interface_id=ALL_F))
        tree = scan(tmp_path, "region")
        assert tree[f"region-{ALL_F}"][fme(backend, 0)].state == UNHEALTHY

    def test_region_without_ports_is_not_exposed(self, tmp_path: Path, backend: str) -> None:
        """A region with no usable port would give a container nothing: left out."""
        make_tree(tmp_path, backend, FakeFpga(afu_ids=[]), FakeFpga())
        problems: list[str] = []
        assert ids(scan(tmp_path, "region", problems)) == {REGION_DEFAULT: [fme(backend, 1)]}
        assert problems == [f"region {fme(backend, 0)}: no usable AFU port; not exposed"]

    def test_post_allocate_sets_the_mode_annotation(self, tmp_path: Path) -> None:
        """region: every container response gets ``com.intel.fpga.mode``; others keep theirs."""
        make_tree(tmp_path, "dfl")
        response = pluginapi.AllocateResponse(
            container_responses=[
                pluginapi.ContainerAllocateResponse(annotations={"other": "kept"}),
                pluginapi.ContainerAllocateResponse(),
            ]
        )
        scanner = FpgaScanner(FpgaSettings(mode="region"), sysfs_root=tmp_path / "sys")
        scanner.post_allocate(response)
        assert [dict(c.annotations) for c in response.container_responses] == [
            {"other": "kept", "com.intel.fpga.mode": "fpga.intel.com/region"},
            {"com.intel.fpga.mode": "fpga.intel.com/region"},
        ]

    @pytest.mark.parametrize("mode", ["af", "regiondevel"])
    def test_no_annotation_in_other_modes(self, tmp_path: Path, mode: str) -> None:
        """af and regiondevel leave the response alone."""
        make_tree(tmp_path, "dfl")
        response = pluginapi.AllocateResponse(
            container_responses=[pluginapi.ContainerAllocateResponse()]
        )
        FpgaScanner(FpgaSettings(mode=mode), sysfs_root=tmp_path / "sys").post_allocate(response)
        assert dict(response.container_responses[0].annotations) == {}


class TestRegionDevelMode:
    def test_fme_node_comes_last_and_there_is_no_hook(self, tmp_path: Path, backend: str) -> None:
        """regiondevel: the ports, then the FME node (for programming); no CDI spec."""
        make_tree(tmp_path, backend, FakeFpga(afu_ids=[DEFAULT_AFU_ID] * 2))
        tree = scan(tmp_path, "regiondevel")
        assert node_names(tree, REGION_DEFAULT, fme(backend, 0)) == [
            port(backend, 0),
            port(backend, 1),
            fme(backend, 0),
        ]
        assert tree[REGION_DEFAULT][fme(backend, 0)].cdi_spec is None

    def test_missing_fme_node_skips_the_region(self, tmp_path: Path, backend: str) -> None:
        """Without the FME node regiondevel cannot offer the region; region mode still can."""
        make_tree(tmp_path, backend)
        (tmp_path / "dev" / fme(backend, 0)).unlink()
        problems: list[str] = []
        assert len(scan(tmp_path, "regiondevel", problems)) == 0
        assert "FME device node" in problems[0]
        assert ids(scan(tmp_path, "region")) == {REGION_DEFAULT: [fme(backend, 0)]}


class TestBrokenLayouts:
    def test_device_with_two_fmes_is_skipped(self, tmp_path: Path) -> None:
        """Only one region per FPGA device is supported: such a device is skipped."""
        make_tree(tmp_path, "opae", FakeFpga(), FakeFpga())
        device = (tmp_path / "sys/class/fpga/intel-fpga-dev.0").resolve()
        shutil.copytree(device / "intel-fpga-fme.0", device / "intel-fpga-fme.9")
        problems: list[str] = []
        assert ids(scan(tmp_path, problems=problems)) == {AF_DEFAULT: ["intel-fpga-port.1"]}
        assert "more than one FME (intel-fpga-fme.0, intel-fpga-fme.9)" in problems[0]

    def test_ports_without_any_fme_are_skipped(self, tmp_path: Path) -> None:
        """Ports with no FME beside them and no PF to ask: skipped, with a problem."""
        make_tree(tmp_path, "dfl")
        shutil.rmtree((tmp_path / "sys/class/fpga_region/region0").resolve() / "dfl-fme.0")
        problems: list[str] = []
        assert len(scan(tmp_path, problems=problems)) == 0
        assert "AFU ports without a corresponding FME" in problems[0]

    def test_ambiguous_interface_id_skips_the_device(self, tmp_path: Path) -> None:
        """The DFL compat_id glob must match exactly one file."""
        make_tree(tmp_path, "dfl")
        fme_dir = (tmp_path / "sys/class/fpga_region/region0").resolve() / "dfl-fme.0"
        shutil.copytree(fme_dir / "dfl-fme-region.0", fme_dir / "dfl-fme-region.7")
        problems: list[str] = []
        assert len(scan(tmp_path, problems=problems)) == 0
        assert "expected exactly one interface ID file" in problems[0]

    def test_dfl_pr_regions_in_the_class_are_ignored(self, tmp_path: Path) -> None:
        """DFL lists each FME's PR region in the class too: no FME or port, no device."""
        make_tree(tmp_path, "dfl")
        assert sorted(p.name for p in (tmp_path / "sys/class/fpga_region").iterdir()) == [
            "region0",
            "region1",
        ]
        problems: list[str] = []
        assert ids(scan(tmp_path, problems=problems)) == {AF_DEFAULT: ["dfl-port.0"]}
        assert problems == []


class TestOptions:
    def test_declared_options(self) -> None:
        """mode (af by default) and the scan interval."""
        assert {o.name: o.default for o in fpga.devplugin_options()} == {
            "mode": "af",
            "scan-interval": 5.0,
        }

    def test_hook_builds_a_scanner_for_the_detected_backend(self, tmp_path: Path) -> None:
        """devplugin_scanners registers fpga.intel.com with the mode and backend."""
        make_tree(tmp_path, "opae")
        config = PluginConfig(
            name="fpga",
            options={"mode": "regiondevel"},
            sysfs_root=tmp_path / "sys",
            devfs_root=tmp_path / "dev",
        )
        [(namespace, scanner)] = fpga.devplugin_scanners(config=config)
        assert namespace == "fpga.intel.com"
        assert isinstance(scanner, FpgaScanner)
        assert (scanner.settings.mode, scanner.backend) == ("regiondevel", OPAE)

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"mode": "wrong"}, "invalid value for option mode: 'wrong'; valid values: af,"),
            ({"scan-interval": -1.0}, "option scan-interval must be > 0 seconds"),
            ({"scan-interval": "soon"}, "option scan-interval must be a number of seconds"),
        ],
    )
    def test_invalid_values_are_config_errors(
        self, tmp_path: Path, options: dict[str, Any], message: str
    ) -> None:
        """A bad mode or interval fails before anything is served."""
        make_tree(tmp_path, "dfl")
        config = PluginConfig(name="fpga", options=options, sysfs_root=tmp_path / "sys")
        with pytest.raises(ConfigError, match=r"^plugin 'fpga': ") as err:
            fpga.devplugin_scanners(config=config)
        assert message in str(err.value)


class TestScanLoop:
    @pytest.mark.asyncio
    async def test_rescan_reflects_a_new_port(self, tmp_path: Path) -> None:
        """rescan() scans now: a reprogrammed tree shows at once."""
        make_tree(tmp_path, "dfl")
        scanner = FpgaScanner(
            FpgaSettings(scan_interval=3600),
            sysfs_root=tmp_path / "sys",
            devfs_root=tmp_path / "dev",
        )
        trees: asyncio.Queue[DeviceTree] = asyncio.Queue()

        class Notifier:
            def notify(self, tree: DeviceTree) -> None:
                trees.put_nowait(tree)

        task = asyncio.create_task(scanner.scan(Notifier()))
        try:
            async with asyncio.timeout(5):
                assert ids(await trees.get()) == {AF_DEFAULT: ["dfl-port.0"]}
                make_tree(tmp_path, "dfl", FakeFpga(afu_ids=[OTHER_AFU]))
                scanner.rescan()
                assert list(await trees.get()) == [
                    afu_resource_name(DEFAULT_INTERFACE_ID, OTHER_AFU)
                ]
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


# --- through the framework and the command line --------------------------------------------


class TestEndToEnd:
    @pytest.mark.asyncio
    async def test_region_allocation_carries_cdi_name_and_annotation(
        self, tmp_path: Path, short_dir: Path
    ) -> None:
        """region mode through a fake kubelet: the port node, the CDI device, the annotation."""
        make_tree(tmp_path, "dfl")
        scanner = FpgaScanner(
            FpgaSettings(mode="region"), sysfs_root=tmp_path / "sys", devfs_root=tmp_path / "dev"
        )
        resource = f"fpga.intel.com/{REGION_DEFAULT}"
        async with served(short_dir, fpga.NAMESPACE, scanner) as kubelet:
            await kubelet.wait_for_resource(resource, count=1, healthy=1)
            allocation = await kubelet.allocate_like_kubelet(resource, 1)
        response = allocation.response
        assert [d.host_path for d in response.devices] == ["/dev/dfl-port.0"]
        assert [c.name for c in response.cdi_devices] == ["intel.cdi.k8s.io/fpga=dfl-fme.0"]
        assert dict(response.annotations) == {"com.intel.fpga.mode": "fpga.intel.com/region"}


class TestCommandLine:
    def test_scan_json_lists_region_devices(self, tmp_path: Path) -> None:
        """``devplugin-host scan --enable fpga --set fpga.mode=region --json`` on a DFL tree."""
        make_tree(tmp_path, "dfl", FakeFpga(afu_ids=[DEFAULT_AFU_ID] * 2), FakeFpga())
        result = CliRunner().invoke(
            cli,
            [
                "scan",
                "--enable",
                "fpga",
                "--set",
                "fpga.mode=region",
                "--sysfs-root",
                str(tmp_path / "sys"),
                "--devfs-root",
                str(tmp_path / "dev"),
                "--json",
            ],
        )
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        devices = report[f"fpga.intel.com/{REGION_DEFAULT}"]
        assert [(d["id"], d["health"]) for d in devices] == [
            ("dfl-fme.0", HEALTHY),
            ("dfl-fme.1", HEALTHY),
        ]
        assert devices[0]["nodes"] == [
            "/dev/dfl-port.0",
            "/dev/dfl-port.1",
        ]

    def test_scan_without_fpga_driver_finds_no_devices(self, tmp_path: Path) -> None:
        """No FPGA class directory: no devices, exit status 0, the paths logged at INFO."""
        result = CliRunner().invoke(
            cli, ["scan", "--enable", "fpga", "--sysfs-root", str(tmp_path / "sys"), "--json"]
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == {}
        assert "WARNING" not in result.stderr
        assert "ERROR" not in result.stderr
        [line] = [line for line in result.stderr.splitlines() if "fpga_region" in line]
        assert " INFO " in line
        assert str(tmp_path / "sys/class/fpga_region") in line
