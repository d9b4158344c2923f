"""The ``sgx`` plugin: node checks, limits, DCAP resources, options, scan loop, kubelet, CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import hostplugins.sgx as sgx
from host import ConfigError, PluginConfig
from host.cli import main as cli
from host.deviceplugin import HEALTHY, DeviceTree, Manager
from host.deviceplugin._names import validate_resource_name
from host.testing import FakeKubelet
from hostplugins._scanloop import NoHardware
from hostplugins.sgx import (
    DEFAULT_POD_COUNT,
    EFIVARFS_CDI_SPEC,
    SgxScanner,
    SgxSettings,
    default_pod_count,
    scan_once,
)
from tests.hostplugins.harness import ids, scanning

# --- helpers -----------------------------------------------------------------------------


def add_nodes(devfs: Path, *names: str) -> Path:
    """Create regular files standing for SGX nodes (both when no names); return ``devfs``."""
    devfs.mkdir(parents=True, exist_ok=True)
    for name in names or ("sgx_enclave", "sgx_provision"):
        (devfs / name).write_text("")
    return devfs


def settings(**kwargs: Any) -> SgxSettings:
    kwargs.setdefault("enclave_limit", 3)
    kwargs.setdefault("provision_limit", 2)
    return SgxSettings(**kwargs)


def scan(devfs: Path, config: SgxSettings | None = None, **kwargs: Any) -> DeviceTree:
    return scan_once(config or settings(), devfs_root=devfs, **kwargs)


def node_paths(tree: DeviceTree, dev_type: str, dev_id: str) -> list[str]:
    return [node.host_path for node in tree[dev_type][dev_id].nodes]


# --- discovery ---------------------------------------------------------------------------


class TestDiscovery:
    def test_limits_give_enclave_and_provision_devices(self, tmp_path: Path) -> None:
        """``enclave-limit`` x sgx-enclave-<i>, ``provision-limit`` x sgx-provision-<i>."""
        devfs = add_nodes(tmp_path / "dev")
        tree = scan(devfs)
        assert ids(tree) == {
            "enclave": ["sgx-enclave-0", "sgx-enclave-1", "sgx-enclave-2"],
            "provision": ["sgx-provision-0", "sgx-provision-1"],
        }
        assert node_paths(tree, "enclave", "sgx-enclave-2") == ["/dev/sgx_enclave"]
        assert node_paths(tree, "provision", "sgx-provision-0") == ["/dev/sgx_provision"]
        for dev_type in tree:
            for info in tree[dev_type].values():
                assert info.state == HEALTHY
                assert info.topology is None
                assert (info.mounts, info.cdi_spec) == ((), None)
                [node] = info.nodes
                assert (node.container_path, node.permissions) == (node.host_path, "rw")

    @pytest.mark.parametrize("missing", ["sgx_enclave", "sgx_provision"])
    def test_either_node_missing_gives_an_empty_tree(self, tmp_path: Path, missing: str) -> None:
        """Both nodes must exist; without one nothing is exposed and a problem names it."""
        present = {"sgx_enclave", "sgx_provision"} - {missing}
        devfs = add_nodes(tmp_path / "dev", *present)
        problems: list[str] = []
        tree = scan(devfs, settings(dcap_infra_resources=True), problems=problems)
        assert len(tree) == 0
        if missing == "sgx_enclave":  # no SGX at all: noted, no warning
            assert problems == [f"no SGX on this node ({devfs / missing} does not exist)"]
            assert isinstance(problems[0], NoHardware)
        else:
            assert problems == [
                f"SGX node {devfs / missing}: No such file or directory; no SGX resources"
            ]

    def test_no_devfs_at_all_gives_an_empty_tree(self, tmp_path: Path) -> None:
        """A machine without SGX: empty tree, a warning, no exception."""
        assert len(scan(tmp_path / "nowhere")) == 0

    def test_nodes_may_be_any_file_type(self, tmp_path: Path) -> None:
        """Only existence is checked: a real char device (via a symlink) or a directory."""
        devfs = tmp_path / "dev"
        devfs.mkdir()
        (devfs / "sgx_enclave").symlink_to("/dev/null")
        (devfs / "sgx_provision").mkdir()
        assert sorted(scan(devfs)) == ["enclave", "provision"]

    def test_dangling_symlink_is_a_missing_node(self, tmp_path: Path) -> None:
        """A node whose symlink points nowhere does not stat: nothing is exposed."""
        devfs = add_nodes(tmp_path / "dev", "sgx_provision")
        (devfs / "sgx_enclave").symlink_to(tmp_path / "gone")
        assert len(scan(devfs)) == 0

    def test_limit_zero_leaves_the_resource_out(self, tmp_path: Path) -> None:
        """A limit of 0 means no devices, hence no resource registered."""
        devfs = add_nodes(tmp_path / "dev")
        assert ids(scan(devfs, settings(provision_limit=0, enclave_limit=1))) == {
            "enclave": ["sgx-enclave-0"]
        }

    def test_dcap_infra_resources(self, tmp_path: Path) -> None:
        """``qe-1`` and ``registration-1`` carry both nodes; registration also efivarfs by CDI."""
        devfs = add_nodes(tmp_path / "dev")
        tree = scan(devfs, settings(dcap_infra_resources=True))
        assert ids(tree) == {
            "enclave": ["sgx-enclave-0", "sgx-enclave-1", "sgx-enclave-2"],
            "provision": ["sgx-provision-0", "sgx-provision-1"],
            "qe": ["qe-1"],
            "registration": ["registration-1"],
        }
        both = ["/dev/sgx_enclave", "/dev/sgx_provision"]
        assert node_paths(tree, "qe", "qe-1") == both
        assert node_paths(tree, "registration", "registration-1") == both
        assert tree["qe"]["qe-1"].cdi_spec is None
        assert tree["registration"]["registration-1"].cdi_spec == {
            "cdiVersion": "0.4.0",
            "kind": "intel.cdi.k8s.io/sgx",
            "devices": [
                {
                    "name": "efivarfs",
                    "containerEdits": {
                        "mounts": [
                            {
                                "hostPath": "efivarfs",
                                "containerPath": "/run/efivars",
                                "type": "efivarfs",
                                "options": ["rw", "nosuid", "nodev", "noexec", "relatime"],
                            }
                        ]
                    },
                }
            ],
        }

    def test_dcap_resources_are_off_by_default(self, tmp_path: Path) -> None:
        """Without ``dcap-infra-resources`` only enclave and provision exist."""
        assert sorted(scan(add_nodes(tmp_path / "dev"))) == ["enclave", "provision"]

    def test_resource_names_are_valid_for_kubelet(self, tmp_path: Path) -> None:
        """All four resource names pass kubelet's rules."""
        tree = scan(add_nodes(tmp_path / "dev"), settings(dcap_infra_resources=True))
        for dev_type in tree:
            validate_resource_name(f"{sgx.NAMESPACE}/{dev_type}")


# --- the default limits ------------------------------------------------------------------


class TestDefaultPodCount:
    def test_unset_is_kubelets_max_pods(self) -> None:
        """No PODS_PER_CORE: 110."""
        assert default_pod_count({}, cpus=8) == DEFAULT_POD_COUNT == 110

    @pytest.mark.parametrize(("value", "expected"), [("10", 40), (" 3\n", 12), ("1", 4)])
    def test_pods_per_core_times_cpus(self, value: str, expected: int) -> None:
        """PODS_PER_CORE x CPUs."""
        assert default_pod_count({"PODS_PER_CORE": value}, cpus=4) == expected

    @pytest.mark.parametrize("value", ["0", "-3", "many", "1.5", "+2", "٣"])
    def test_unusable_values_fall_back_to_110_with_a_warning(
        self, value: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """0 (kubelet: no per-core limit), negatives and non-integers mean 110."""
        with caplog.at_level(logging.WARNING, logger="hostplugins.sgx"):
            assert default_pod_count({"PODS_PER_CORE": value}, cpus=4) == 110
        assert f"PODS_PER_CORE={value!r} is not a positive integer" in caplog.text

    def test_cpus_are_those_the_process_may_use(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without ``cpus``, the CPUs of the process's affinity mask count (Go's NumCPU)."""
        monkeypatch.setenv("PODS_PER_CORE", "2")
        assert default_pod_count() == 2 * len(os.sched_getaffinity(0))

    def test_settings_default_to_it(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """SgxSettings() and missing limit options take the environment's default."""
        monkeypatch.setenv("PODS_PER_CORE", "5")
        expected = 5 * len(os.sched_getaffinity(0))
        assert SgxSettings().enclave_limit == SgxSettings().provision_limit == expected
        assert SgxSettings.from_options({"enclave-limit": 1}).provision_limit == expected


# --- options and hooks -------------------------------------------------------------------


def activate(tmp_path: Path, **options: Any) -> list[tuple[str, Any]]:
    config = PluginConfig(
        name="sgx", options=options, sysfs_root=tmp_path / "sys", devfs_root=tmp_path / "dev"
    )
    return list(sgx.devplugin_scanners(config=config))


class TestOptions:
    def test_declared_options_and_defaults(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Go's flags, the limits defaulting to PODS_PER_CORE x CPUs as declared now."""
        monkeypatch.delenv("PODS_PER_CORE", raising=False)
        assert {o.name: o.default for o in sgx.devplugin_options()} == {
            "enclave-limit": 110,
            "provision-limit": 110,
            "dcap-infra-resources": False,
            "scan-interval": 0.0,
        }
        monkeypatch.setenv("PODS_PER_CORE", "3")
        limits = {o.name: o.default for o in sgx.devplugin_options() if "limit" in o.name}
        assert set(limits.values()) == {3 * len(os.sched_getaffinity(0))}

    def test_hook_builds_one_scanner_on_the_devfs_root(self, tmp_path: Path) -> None:
        """devplugin_scanners registers sgx.intel.com with the parsed settings."""
        [(namespace, scanner)] = activate(
            tmp_path,
            **{
                "enclave-limit": "20",
                "provision-limit": 0,
                "dcap-infra-resources": "yes",
                "scan-interval": 30,
            },
        )
        assert namespace == "sgx.intel.com"
        assert isinstance(scanner, SgxScanner)
        assert scanner.devfs_root == tmp_path / "dev"
        assert scanner.settings == SgxSettings(
            enclave_limit=20, provision_limit=0, dcap_infra_resources=True, scan_interval=30.0
        )

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"enclave-limit": -1}, "option enclave-limit must be >= 0, got -1"),
            ({"provision-limit": "-5"}, "option provision-limit must be >= 0, got -5"),
            ({"enclave-limit": "lots"}, "option enclave-limit must be an integer, got 'lots'"),
            ({"dcap-infra-resources": "maybe"}, "option dcap-infra-resources must be true or"),
            ({"scan-interval": -1}, "option scan-interval must be >= 0 seconds (0: check once)"),
            ({"scan-interval": "nan"}, "option scan-interval must be a number of seconds"),
        ],
    )
    def test_invalid_values_are_config_errors(
        self, tmp_path: Path, options: dict[str, Any], message: str
    ) -> None:
        """Bad values fail before anything is served, naming plugin and option."""
        with pytest.raises(ConfigError, match=r"^plugin 'sgx': ") as err:
            activate(tmp_path, **options)
        assert message in str(err.value)


# --- the scan loop -----------------------------------------------------------------------


class CountingScanner(SgxScanner):
    """Counts its scans."""

    scans = 0

    def scan_once(self, problems: list[str] | None = None) -> DeviceTree:
        self.scans += 1
        return super().scan_once(problems)


class TestScanLoop:
    @pytest.mark.asyncio
    async def test_interval_zero_scans_once_then_only_on_rescan(self, tmp_path: Path) -> None:
        """As in Go, one scan; nodes that appear later count only after rescan()."""
        devfs = tmp_path / "dev"
        scanner = CountingScanner(settings(scan_interval=0), devfs_root=devfs)
        async with scanning(scanner) as notifier:
            assert len(await notifier.next_matching(lambda t: True)) == 0
            add_nodes(devfs)
            scanner.rescan()
            tree = await notifier.next_matching(lambda t: True)
            assert sorted(tree) == ["enclave", "provision"]
            # A loop that treated 0 as "no wait" would have scanned many times by now.
            assert scanner.scans == 2
            assert notifier.trees.empty()

    @pytest.mark.asyncio
    async def test_positive_interval_picks_up_late_nodes(self, tmp_path: Path) -> None:
        """With ``scan-interval`` > 0, nodes that appear after start are found unasked."""
        devfs = tmp_path / "dev"
        scanner = SgxScanner(settings(scan_interval=0.01), devfs_root=devfs)
        async with scanning(scanner) as notifier:
            await notifier.next_matching(lambda t: len(t) == 0)
            add_nodes(devfs)
            await notifier.next_matching(lambda t: sorted(t) == ["enclave", "provision"])


# --- through the framework and the command line --------------------------------------------


class TestEndToEnd:
    @pytest.mark.asyncio
    async def test_kubelet_allocates_registration_with_its_cdi_device(
        self, tmp_path: Path, short_dir: Path
    ) -> None:
        """All four resources reach kubelet; registration-1 brings both nodes and efivarfs."""
        devfs = add_nodes(tmp_path / "dev")
        scanner = SgxScanner(settings(dcap_infra_resources=True), devfs_root=devfs)
        cdi_dir = short_dir / "cdi"
        async with FakeKubelet(short_dir) as kubelet:
            manager = Manager(sgx.NAMESPACE, scanner, plugin_dir=short_dir, cdi_dir=cdi_dir)
            task = asyncio.create_task(manager.serve())
            try:
                for resource, count in (("enclave", 3), ("provision", 2), ("qe", 1)):
                    await kubelet.wait_for_resource(f"sgx.intel.com/{resource}", count=count)
                await kubelet.wait_for_resource("sgx.intel.com/registration", healthy=1)
                registration = await kubelet.allocate_like_kubelet("sgx.intel.com/registration", 1)
                enclaves = await kubelet.allocate_like_kubelet("sgx.intel.com/enclave", 2)
                cdi_files = {p.name: json.loads(p.read_text()) for p in cdi_dir.glob("*.json")}
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        assert registration.device_ids == ("registration-1",)
        assert [d.host_path for d in registration.response.devices] == [
            "/dev/sgx_enclave",
            "/dev/sgx_provision",
        ]
        assert [c.name for c in registration.response.cdi_devices] == [
            "intel.cdi.k8s.io/sgx=efivarfs"
        ]
        assert list(cdi_files.values()) == [EFIVARFS_CDI_SPEC]
        assert len(enclaves.device_ids) == 2
        assert [d.host_path for d in enclaves.response.devices] == ["/dev/sgx_enclave"] * 2
        assert list(enclaves.response.cdi_devices) == []


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(cli, ["scan", "--enable", "sgx", *args])


class TestCommandLine:
    """Needs the ``sgx`` entry point of the ``devplugin.scanners`` group (pyproject.toml)."""

    def test_scan_json_lists_all_four_resources(self, tmp_path: Path) -> None:
        """``devplugin-host scan --enable sgx --sysfs-root T/sys --devfs-root T/dev --json``."""
        devfs = add_nodes(tmp_path / "dev")
        result = run_cli(
            "--set",
            "sgx.enclave-limit=2",
            "--set",
            "sgx.provision-limit=1",
            "--set",
            "sgx.dcap-infra-resources=true",
            "--sysfs-root",
            str(tmp_path / "sys"),
            "--devfs-root",
            str(devfs),
            "--json",
        )
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        enclave, provision = "/dev/sgx_enclave", "/dev/sgx_provision"
        assert report == {
            "sgx.intel.com/enclave": [
                {"id": f"sgx-enclave-{i}", "health": HEALTHY, "nodes": [enclave], "topology": []}
                for i in range(2)
            ],
            "sgx.intel.com/provision": [
                {"id": "sgx-provision-0", "health": HEALTHY, "nodes": [provision], "topology": []}
            ],
            "sgx.intel.com/qe": [
                {"id": "qe-1", "health": HEALTHY, "nodes": [enclave, provision], "topology": []}
            ],
            "sgx.intel.com/registration": [
                {
                    "id": "registration-1",
                    "health": HEALTHY,
                    "nodes": [enclave, provision],
                    "topology": [],
                    "cdi": "intel.cdi.k8s.io/sgx=efivarfs",
                }
            ],
        }

    def test_no_sgx_nodes_is_an_empty_report(self, tmp_path: Path) -> None:
        """A machine without SGX scans fine and reports nothing."""
        result = run_cli("--devfs-root", str(tmp_path), "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == {}

    def test_invalid_option_exits_2_with_the_plugins_message(self, tmp_path: Path) -> None:
        """A rejected option value is a configuration error: exit 2, nothing scanned."""
        result = run_cli("--set", "sgx.scan-interval=-1", "--devfs-root", str(tmp_path))
        assert result.exit_code == 2
        assert "plugin 'sgx': option scan-interval must be >= 0 seconds" in result.output
