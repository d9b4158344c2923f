"""The ``generic`` plugin: configuration, scanning of fake and real device nodes, hooks."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tomllib
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

import hostplugins.generic as generic
from host import ConfigError, PluginConfig
from host._config import OptionSetting, parse_set_item, read_config_file, resolve_plugin_options
from host.deviceplugin import HEALTHY, UNHEALTHY, DeviceInfo, DeviceTree
from hostplugins.generic import (
    DeviceGroup,
    GenericConfigError,
    GenericScanner,
    MountSpec,
    UsbMatch,
    devplugin_options,
    devplugin_scanners,
    load_groups,
)
from hostplugins.generic._config import (
    default_devices,
    parse_devices,
    parse_namespace,
    parse_rescan_interval,
)

DEV_NULL = "/dev/null"


# --- helpers -----------------------------------------------------------------------------


def make_node(devfs: Path, rel: str, target: str | None = DEV_NULL) -> Path:
    """Create ``devfs/rel``: a symlink to a real char device, or a regular file (target None)."""
    path = devfs / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if target is None:
        path.write_text("")
    else:
        path.symlink_to(target)
    return path


def one_group(**entry: Any) -> DeviceGroup:
    groups, errors = load_groups([entry])
    assert errors == []
    return groups[0]


def scanner(devfs: Path, *groups: DeviceGroup, **kwargs: Any) -> GenericScanner:
    kwargs.setdefault("sysfs_root", devfs.parent / "sys")
    return GenericScanner(groups, devfs_root=devfs, **kwargs)


def ids(tree: DeviceTree, dev_type: str) -> list[str]:
    return list(tree[dev_type]) if dev_type in tree else []


def only_device(tree: DeviceTree, dev_type: str) -> DeviceInfo:
    devices = tree[dev_type]
    assert len(devices) == 1
    return next(iter(devices.values()))


def group_errors(*entries: object, namespace: str = "devices.devplugin.io") -> list[str]:
    return load_groups(list(entries), namespace=namespace)[1]


@pytest.fixture
def devfs(tmp_path: Path) -> Path:
    path = tmp_path / "dev"
    path.mkdir()
    return path


# --- options -----------------------------------------------------------------------------


class TestDevicesOption:
    def test_json_string_is_parsed(self) -> None:
        """A --set value is a JSON array of device groups."""
        value = '[{"name": "serial", "paths": ["/dev/ttyUSB*"], "count": 2}]'
        assert parse_devices(value) == ({"name": "serial", "paths": ["/dev/ttyUSB*"], "count": 2},)

    def test_toml_array_of_tables(self) -> None:
        """A [[plugins.generic.devices]] array of tables from the config file is used as is."""
        config = tomllib.loads(
            """
            [[plugins.generic.devices]]
            name = "serial"
            paths = ["/dev/ttyUSB*", "/dev/ttyACM*"]

            [[plugins.generic.devices]]
            name = "kvm"
            paths = ["/dev/kvm"]
            count = 110
            usb = [{vendor = 0x1234, product = "0x5678"}]
            mounts = [{host-path = "/lib/firmware", read-only = true}]
            """
        )
        groups, errors = load_groups(parse_devices(config["plugins"]["generic"]["devices"]))
        assert errors == []
        assert [(g.name, g.paths, g.count) for g in groups] == [
            ("serial", ("ttyUSB*", "ttyACM*"), 1),
            ("kvm", ("kvm",), 110),
        ]
        assert groups[1].usb == (UsbMatch(0x1234, 0x5678),)
        assert groups[1].mounts == (MountSpec("/lib/firmware", "/lib/firmware", True),)

    def test_toml_inline_list(self) -> None:
        """``[plugins.generic] devices = [...]`` gives the same groups as the JSON form."""
        config = tomllib.loads(
            '[plugins.generic]\ndevices = [{name = "kvm", paths = ["/dev/kvm"], count = 3}]\n'
        )
        from_toml = load_groups(parse_devices(config["plugins"]["generic"]["devices"]))
        from_json = load_groups(
            parse_devices('[{"name": "kvm", "paths": ["/dev/kvm"], "count": 3}]')
        )
        assert from_toml == from_json
        assert from_toml[0] == [DeviceGroup(name="kvm", paths=("kvm",), count=3)]

    def test_parsing_is_idempotent(self) -> None:
        """An already parsed value (a tuple) comes back unchanged."""
        parsed = parse_devices('[{"name": "kvm", "paths": "/dev/kvm"}]')
        assert parse_devices(parsed) == parsed

    def test_empty_list_means_no_groups(self) -> None:
        """``[]`` is valid: no device groups at all."""
        assert parse_devices("[]") == ()
        assert load_groups(parse_devices([])) == ([], [])

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("", "not valid JSON"),
            ("[{name: kvm}]", "not valid JSON"),
            ('{"name": "kvm", "paths": ["/dev/kvm"]}', "got dict"),
            ("42", "got int: 42"),
            (42, "got int: 42"),
            ({"name": "kvm"}, "got dict"),
            (None, "got NoneType"),
        ],
    )
    def test_structural_errors_are_config_errors(self, value: object, expected: str) -> None:
        """A value that is not JSON or not a list is a ConfigError (the host exits with 2)."""
        with pytest.raises(GenericConfigError, match=expected) as info:
            parse_devices(value)
        assert isinstance(info.value, ConfigError)
        assert isinstance(info.value, ValueError)
        assert str(info.value).startswith("plugin 'generic': option devices: ")
        assert "e.g. [{" in str(info.value)


class TestNamespaceOption:
    def test_valid(self) -> None:
        """A DNS subdomain is a namespace."""
        assert parse_namespace("example.com") == "example.com"

    @pytest.mark.parametrize("value", ["", "Example.com", "bad_domain", 3, "kubernetes.io"])
    def test_invalid(self, value: object) -> None:
        """A namespace kubelet would reject is a ConfigError saying why."""
        with pytest.raises(
            GenericConfigError,
            match=r"^plugin 'generic': option namespace: (expected a non-empty|.* is not a valid)",
        ):
            parse_namespace(value)


class TestRescanIntervalOption:
    @pytest.mark.parametrize(
        ("value", "seconds"), [("5", 5.0), (" 0.5 ", 0.5), (2, 2.0), (0.25, 0.25)]
    )
    def test_valid(self, value: object, seconds: float) -> None:
        """Seconds from a string (--set) or a number (TOML)."""
        assert parse_rescan_interval(value) == seconds

    @pytest.mark.parametrize("value", ["0", "-1", "abc", "", "inf", "nan", 0, True, None])
    def test_invalid(self, value: object) -> None:
        """Zero, negative, non-finite or non-numeric values are ConfigErrors."""
        with pytest.raises(
            GenericConfigError,
            match=r"^plugin 'generic': option rescan-interval: expected a number of seconds > 0",
        ):
            parse_rescan_interval(value)


class TestThroughHostConfig:
    """The options as the host resolves them: from a TOML config file and from --set."""

    def resolve(self, *settings: OptionSetting) -> dict[str, Any]:
        return dict(resolve_plugin_options("generic", devplugin_options(), settings))

    def test_config_file_array_of_tables(self, tmp_path: Path) -> None:
        """``[[plugins.generic.devices]]`` in the config file reaches the hook as groups."""
        path = tmp_path / "host.toml"
        path.write_text(
            "[plugins.generic]\n"
            'namespace = "example.com"\n'
            "rescan-interval = 2\n"
            "[[plugins.generic.devices]]\n"
            'name = "sink"\n'
            'paths = ["/dev/null", "/dev/zero"]\n'
            "count = 2\n"
            "bundle = true\n"
            'usb = [{vendor = 0x1234, product = "5678"}]\n'
        )
        values = self.resolve(*read_config_file(path).options)
        ((namespace, scan),) = devplugin_scanners(
            PluginConfig("generic", values, devfs_root=Path("/dev"), sysfs_root=tmp_path)
        )
        assert namespace == "example.com"
        assert scan.rescan_interval == 2.0
        assert scan.groups == (
            DeviceGroup(
                name="sink",
                namespace="example.com",
                paths=("null", "zero"),
                usb=(UsbMatch(0x1234, 0x5678),),
                count=2,
                bundle=True,
            ),
        )
        assert ids(scan.scan_once(), "sink") == ["sink-0", "sink-1"]

    def test_set_json(self, tmp_path: Path) -> None:
        """``--set generic.devices=<JSON>`` reaches the hook as groups."""
        values = self.resolve(
            parse_set_item('generic.devices=[{"name": "sink", "paths": ["/dev/null"]}]'),
            parse_set_item("generic.rescan-interval=0.5"),
        )
        ((_, scan),) = devplugin_scanners(PluginConfig("generic", values, sysfs_root=tmp_path))
        assert scan.groups == (DeviceGroup(name="sink", paths=("null",)),)
        assert scan.rescan_interval == 0.5

    def test_set_not_json(self) -> None:
        """A --set value that is not JSON is a ConfigError naming the plugin and option."""
        with pytest.raises(ConfigError) as info:
            self.resolve(parse_set_item("generic.devices=/dev/kvm"))
        assert str(info.value).startswith("plugin 'generic': option devices: not valid JSON")
        assert "(from --set)" in str(info.value)

    def test_unset_gives_defaults(self) -> None:
        """Without settings, the defaults: the built-in groups."""
        values = self.resolve()
        groups, errors = load_groups(parse_devices(values["devices"]))
        assert errors == []
        assert [g.name for g in groups] == ["kvm", "fuse", "tun", "vhost-net", "vsock"]


# --- device groups -----------------------------------------------------------------------


class TestLoadGroups:
    def test_full_group(self) -> None:
        """Every key of a group is read and normalised."""
        group = one_group(
            name="serial",
            namespace="example.com",
            paths=["/dev/ttyUSB*", "serial/by-id/*", "/dev/ttyUSB*"],
            usb=[{"vendor": "0x1A2b"}, {"vendor": "1234", "product": 0x5678}],
            count=4,
            permissions="wr",
            mounts=[{"host-path": "/lib/firmware", "container-path": "/fw", "read-only": True}],
            bundle=True,
        )
        assert group == DeviceGroup(
            name="serial",
            namespace="example.com",
            paths=("ttyUSB*", "serial/by-id/*"),
            usb=(UsbMatch(0x1A2B, None), UsbMatch(0x1234, 0x5678)),
            count=4,
            permissions="rw",
            mounts=(MountSpec("/lib/firmware", "/fw", True),),
            bundle=True,
        )
        assert group.resource_name == "example.com/serial"

    def test_defaults(self) -> None:
        """Count 1, permissions rw, no mounts, not bundled, the namespace option's namespace."""
        groups, errors = load_groups([{"name": "kvm", "paths": "/dev/kvm"}], namespace="a.example")
        assert errors == []
        assert groups == [DeviceGroup(name="kvm", namespace="a.example", paths=("kvm",))]

    def test_usb_only_group_needs_no_paths(self) -> None:
        """A group may match USB devices only."""
        assert one_group(name="dongle", usb=[{"vendor": "0x1234"}]).paths == ()

    def test_bad_groups_are_skipped_and_good_ones_kept(self) -> None:
        """One message per bad group; the valid groups are still returned, in order."""
        groups, errors = load_groups(
            [
                {"name": "a", "paths": ["/dev/a"]},
                {"name": "b", "paths": []},
                {"name": "c", "paths": ["/dev/c"], "count": 0},
                {"name": "d", "paths": ["/dev/d"]},
            ]
        )
        assert [g.name for g in groups] == ["a", "d"]
        assert len(errors) == 2
        assert errors[0].startswith("plugin 'generic': device group #2 ('b'): ")
        assert errors[1].startswith("plugin 'generic': device group #3 ('c'): ")
        assert all(e.endswith("; this group is skipped") for e in errors)

    def test_duplicate_names(self) -> None:
        """The first group with a resource name serves; later ones are reported and skipped."""
        groups, errors = load_groups(
            [
                {"name": "kvm", "paths": ["/dev/kvm"]},
                {"name": "kvm", "paths": ["/dev/kvm2"]},
                {"name": "kvm", "namespace": "other.example", "paths": ["/dev/kvm"]},
            ]
        )
        assert [(g.resource_name, g.paths) for g in groups] == [
            ("devices.devplugin.io/kvm", ("kvm",)),
            ("other.example/kvm", ("kvm",)),
        ]
        assert errors == [
            "plugin 'generic': device group #2 ('kvm'): resource devices.devplugin.io/kvm is "
            "already defined by device group #1; give each group its own name; "
            "this group is skipped"
        ]

    @pytest.mark.parametrize(
        ("entry", "message"),
        [
            pytest.param(
                {"name": "kvm", "paths": []},
                "device group #1 ('kvm'): 'paths' is empty: give at least one glob",
                id="empty-globs",
            ),
            pytest.param(
                {"name": "kvm"},
                "device group #1 ('kvm'): no device nodes to match: give 'paths'",
                id="no-globs",
            ),
            pytest.param(
                {"name": "kvm", "paths": [""]},
                "each path must be a non-empty glob string, got ''",
                id="empty-glob",
            ),
            pytest.param(
                {"name": "kvm", "paths": [3]},
                "each path must be a non-empty glob string, got 3",
                id="glob-not-string",
            ),
            pytest.param(
                {"name": "kvm", "paths": {"a": 1}},
                "'paths' must be a list of globs, got dict",
                id="paths-not-list",
            ),
            pytest.param(
                {"name": "kvm", "paths": ["/sys/class/kvm"]},
                "path '/sys/class/kvm' is outside /dev",
                id="outside-dev",
            ),
            pytest.param(
                {"name": "kvm", "paths": ["/dev/../etc/passwd"]},
                "path '/dev/../etc/passwd' must not contain '..'",
                id="dotdot",
            ),
            pytest.param(
                {"name": "kvm", "paths": ["/dev"]},
                "path '/dev' names the /dev directory itself",
                id="dev-itself",
            ),
            pytest.param(
                {"name": "Bad Name", "paths": ["/dev/kvm"]},
                "device group #1 ('Bad Name'): invalid resource name "
                "'devices.devplugin.io/Bad Name': the part after '/' must start and end",
                id="bad-resource-name",
            ),
            pytest.param(
                {"name": "kvm", "namespace": "Not_A_Domain", "paths": ["/dev/kvm"]},
                "invalid resource name 'Not_A_Domain/kvm': its domain must be",
                id="bad-group-namespace",
            ),
            pytest.param(
                {"name": "", "paths": ["/dev/kvm"]},
                "device group #1 (''): 'name' must be a non-empty string",
                id="empty-name",
            ),
            pytest.param(
                {"paths": ["/dev/kvm"]},
                "device group #1: 'name' must be a non-empty string (the resource name), got None",
                id="no-name",
            ),
            pytest.param(
                {"name": "kvm", "namespace": 7, "paths": ["/dev/kvm"]},
                "'namespace' must be a non-empty string, got 7",
                id="namespace-not-string",
            ),
            pytest.param(
                {"name": "kvm", "paths": ["/dev/kvm"], "count": 0},
                "device group #1 ('kvm'): 'count' (containers sharing each device) must be an "
                "integer >= 1, got 0",
                id="count-zero",
            ),
            pytest.param(
                {"name": "kvm", "paths": ["/dev/kvm"], "count": -3},
                "must be an integer >= 1, got -3",
                id="count-negative",
            ),
            pytest.param(
                {"name": "kvm", "paths": ["/dev/kvm"], "count": "2"},
                "must be an integer >= 1, got '2'",
                id="count-string",
            ),
            pytest.param(
                {"name": "kvm", "paths": ["/dev/kvm"], "count": True},
                "must be an integer >= 1, got True",
                id="count-bool",
            ),
            pytest.param(
                {"name": "kvm", "paths": ["/dev/kvm"], "permissions": "rx"},
                "device group #1 ('kvm'): 'permissions' must be a non-empty combination of "
                "r (read), w (write) and m (mknod), such as 'rw', got 'rx'",
                id="permissions-bad-letter",
            ),
            pytest.param(
                {"name": "kvm", "paths": ["/dev/kvm"], "permissions": ""},
                "'permissions' must be a non-empty combination",
                id="permissions-empty",
            ),
            pytest.param(
                {"name": "kvm", "paths": ["/dev/kvm"], "permissions": "rrw"},
                "'permissions' must be a non-empty combination",
                id="permissions-repeated",
            ),
            pytest.param(
                {"name": "kvm", "paths": ["/dev/kvm"], "permissions": ["r"]},
                "'permissions' must be a non-empty combination",
                id="permissions-not-string",
            ),
            pytest.param(
                {"name": "dongle", "usb": [{"vendor": "0x12345"}]},
                "device group #1 ('dongle'): usb[0].vendor must be a hexadecimal USB ID of at "
                "most 4 digits such as '0x1234', got '0x12345'",
                id="usb-vendor-too-long",
            ),
            pytest.param(
                {"name": "dongle", "usb": [{"vendor": "0x1234", "product": "xyz"}]},
                "usb[0].product must be a hexadecimal USB ID",
                id="usb-product-not-hex",
            ),
            pytest.param(
                {"name": "dongle", "usb": [{"vendor": 0x10000}]},
                "usb[0].vendor must be a hexadecimal USB ID of at most 4 digits such as "
                "'0x1234', got 65536",
                id="usb-vendor-int-too-large",
            ),
            pytest.param(
                {"name": "dongle", "usb": [{"vendor": True}]},
                "usb[0].vendor must be a hexadecimal USB ID",
                id="usb-vendor-bool",
            ),
            pytest.param(
                {"name": "dongle", "usb": [{"product": "0x1234"}]},
                "usb[0]: 'vendor' is required",
                id="usb-no-vendor",
            ),
            pytest.param(
                {"name": "dongle", "usb": [{"vendor": "0x1234", "serial": "x"}]},
                "usb[0]: unknown key(s) serial (known: vendor, product)",
                id="usb-unknown-key",
            ),
            pytest.param(
                {"name": "dongle", "usb": ["0x1234:0x5678"]},
                "usb[0] must be a table like",
                id="usb-entry-not-table",
            ),
            pytest.param(
                {"name": "dongle", "usb": {"vendor": "0x1234"}},
                "'usb' must be a list of tables",
                id="usb-not-list",
            ),
            pytest.param(
                {"name": "kvm", "paths": ["/dev/kvm"], "mounts": [{"host-path": "lib"}]},
                "mounts[0]: 'host-path' must be an absolute path, got 'lib'",
                id="mount-relative",
            ),
            pytest.param(
                {"name": "kvm", "paths": ["/dev/kvm"], "mounts": [{"container-path": "/x"}]},
                "mounts[0]: 'host-path' must be an absolute path, got None",
                id="mount-no-host-path",
            ),
            pytest.param(
                {
                    "name": "kvm",
                    "paths": ["/dev/kvm"],
                    "mounts": [{"host-path": "/x", "container-path": "y"}],
                },
                "mounts[0]: 'container-path' must be an absolute path, got 'y'",
                id="mount-relative-container-path",
            ),
            pytest.param(
                {
                    "name": "kvm",
                    "paths": ["/dev/kvm"],
                    "mounts": [{"host-path": "/x", "read-only": "yes"}],
                },
                "mounts[0]: 'read-only' must be true or false, got 'yes'",
                id="mount-read-only-not-bool",
            ),
            pytest.param(
                {"name": "kvm", "paths": ["/dev/kvm"], "mounts": [{"host_path": "/x"}]},
                "mounts[0]: unknown key(s) host_path (known: host-path, container-path, read-only)",
                id="mount-unknown-key",
            ),
            pytest.param(
                {"name": "kvm", "paths": ["/dev/kvm"], "mounts": ["/x"]},
                "mounts[0] must be a table like",
                id="mount-not-table",
            ),
            pytest.param(
                {"name": "kvm", "paths": ["/dev/kvm"], "mounts": "/x"},
                "'mounts' must be a list of tables, got str",
                id="mounts-not-list",
            ),
            pytest.param(
                {"name": "kvm", "paths": ["/dev/kvm"], "bundle": "yes"},
                "'bundle' must be true or false, got 'yes'",
                id="bundle-not-bool",
            ),
            pytest.param(
                {"name": "kvm", "path": ["/dev/kvm"]},
                "device group #1 ('kvm'): unknown key(s) path (known: name, namespace, paths, "
                "usb, count, permissions, mounts, bundle)",
                id="unknown-key",
            ),
            pytest.param(
                "kvm",
                "device group #1: expected a table (JSON object) with at least 'name' and "
                "'paths', got str: 'kvm'",
                id="not-a-table",
            ),
        ],
    )
    def test_error_message(self, entry: object, message: str) -> None:
        """Each mistake in a group gives a message naming the group and the bad value."""
        (error,) = group_errors(entry, {"name": "fine", "paths": ["/dev/null"]})
        assert error.startswith("plugin 'generic': device group #1")
        assert message in error
        assert error.endswith("; this group is skipped")

    def test_every_problem_of_a_group_is_listed(self) -> None:
        """A group with several mistakes lists all of them in its one message."""
        (error,) = group_errors({"name": "kvm", "paths": [], "count": 0, "permissions": "x"})
        assert "'paths' is empty" in error
        assert "'count'" in error
        assert "'permissions'" in error


# --- scanning ----------------------------------------------------------------------------


class TestDefaults:
    def test_only_existing_nodes_are_shown(self, devfs: Path) -> None:
        """The built-in groups appear only for nodes that exist under the devfs root."""
        make_node(devfs, "kvm")
        make_node(devfs, "net/tun")
        groups, errors = load_groups(default_devices())
        assert errors == []
        tree = scanner(devfs, *groups).scan_once()
        assert sorted(tree) == ["kvm", "tun"]
        assert ids(tree, "kvm") == [f"kvm-{i}" for i in range(110)]
        assert ids(tree, "tun") == [f"net_tun-{i}" for i in range(110)]
        (node,) = tree["tun"]["net_tun-0"].nodes
        assert (node.host_path, node.container_path, node.permissions) == (
            "/dev/net/tun",
            "/dev/net/tun",
            "rw",
        )

    def test_all_defaults(self, devfs: Path) -> None:
        """kvm, fuse, tun, vhost-net and vsock, from their usual nodes."""
        for rel in ("kvm", "fuse", "net/tun", "vhost-net", "vhost-vsock"):
            make_node(devfs, rel)
        groups, _ = load_groups(default_devices())
        tree = scanner(devfs, *groups).scan_once()
        assert {t: tree.device_type_count(t) for t in tree} == {
            "kvm": 110,
            "fuse": 110,
            "tun": 110,
            "vhost-net": 110,
            "vsock": 110,
        }
        assert all(info.state == HEALTHY for t in tree for info in tree[t].values())

    def test_nothing_when_no_node_exists(self, devfs: Path) -> None:
        """An empty devfs gives an empty tree, not an error."""
        groups, _ = load_groups(default_devices())
        assert len(scanner(devfs, *groups).scan_once()) == 0

    def test_missing_devfs_root(self, tmp_path: Path) -> None:
        """A devfs root that does not exist gives an empty tree too."""
        groups, _ = load_groups(default_devices())
        assert len(scanner(tmp_path / "nosuch", *groups).scan_once()) == 0


class TestRealDeviceNodes:
    def test_dev_null_and_zero(self) -> None:
        """The machine's real /dev/null and /dev/zero, matched by globs, are Healthy."""
        group = one_group(name="sink", paths=["/dev/nul[l]", "/dev/zer?"])
        tree = GenericScanner([group], devfs_root="/dev", sysfs_root="/sys").scan_once()
        assert ids(tree, "sink") == ["null", "zero"]
        for dev_id, path in (("null", "/dev/null"), ("zero", "/dev/zero")):
            info = tree["sink"][dev_id]
            assert info.state == HEALTHY
            (node,) = info.nodes
            assert (node.host_path, node.container_path) == (path, path)

    def test_symlinked_fake_devfs(self, devfs: Path) -> None:
        """A fake devfs entry linking to /dev/null is Healthy, re-rooted at /dev in containers."""
        make_node(devfs, "null")
        tree = scanner(devfs, one_group(name="sink", paths="/dev/null")).scan_once()
        (node,) = only_device(tree, "sink").nodes
        assert (node.host_path, node.container_path) == ("/dev/null", "/dev/null")
        assert only_device(tree, "sink").state == HEALTHY


class TestHealth:
    def test_regular_file_is_unhealthy(self, devfs: Path) -> None:
        """A node that exists but is a regular file is Unhealthy."""
        make_node(devfs, "kvm", target=None)
        tree = scanner(devfs, one_group(name="kvm", paths="/dev/kvm")).scan_once()
        assert only_device(tree, "kvm").state == UNHEALTHY

    def test_directory_is_unhealthy(self, devfs: Path) -> None:
        """A glob that matches a directory gives an Unhealthy device."""
        (devfs / "net").mkdir()
        tree = scanner(devfs, one_group(name="net", paths="/dev/net")).scan_once()
        assert only_device(tree, "net").state == UNHEALTHY

    def test_dangling_symlink_is_absent(self, devfs: Path, tmp_path: Path) -> None:
        """A symlink to nothing is no device at all (udev removes such links with the device)."""
        make_node(devfs, "serial/by-id/usb-x", target=str(tmp_path / "gone"))
        tree = scanner(devfs, one_group(name="serial", paths="/dev/serial/by-id/*")).scan_once()
        assert len(tree) == 0

    @pytest.mark.parametrize(
        ("permissions", "mode"),
        [("rw", os.R_OK | os.W_OK), ("r", os.R_OK), ("w", os.W_OK), ("rwm", os.R_OK | os.W_OK)],
    )
    def test_access_checked_for_permissions(self, devfs: Path, permissions: str, mode: int) -> None:
        """Read/write access is checked with access(2) for exactly the configured permissions."""
        make_node(devfs, "ttyS0")
        calls: list[tuple[str, int]] = []

        def access(path: str, wanted: int) -> bool:
            calls.append((path, wanted))
            return True

        group = one_group(name="serial", paths="/dev/ttyS0", permissions=permissions)
        tree = scanner(devfs, group, access=access).scan_once()
        assert only_device(tree, "serial").state == HEALTHY
        assert only_device(tree, "serial").nodes[0].permissions == permissions
        assert calls == [(str(devfs / "ttyS0"), mode)]  # checked where it is found

    def test_mknod_only_needs_no_access(self, devfs: Path) -> None:
        """Permissions 'm' alone asks access(2) nothing."""
        make_node(devfs, "ttyS0")

        def access(path: str, wanted: int) -> bool:
            raise AssertionError("access() must not be called")

        group = one_group(name="serial", paths="/dev/ttyS0", permissions="m")
        assert only_device(scanner(devfs, group, access=access).scan_once(), "serial").state == (
            HEALTHY
        )

    def test_no_access_is_unhealthy(self, devfs: Path) -> None:
        """A node this process may not open for the configured permissions is Unhealthy."""
        make_node(devfs, "ttyS0")
        group = one_group(name="serial", paths="/dev/ttyS0")
        tree = scanner(devfs, group, access=lambda path, mode: False).scan_once()
        assert only_device(tree, "serial").state == UNHEALTHY

    def test_recovers(self, devfs: Path) -> None:
        """A node that becomes a device node again is Healthy at the next scan."""
        node = make_node(devfs, "kvm", target=None)
        scan = scanner(devfs, one_group(name="kvm", paths="/dev/kvm"))
        assert only_device(scan.scan_once(), "kvm").state == UNHEALTHY
        node.unlink()
        make_node(devfs, "kvm")
        assert only_device(scan.scan_once(), "kvm").state == HEALTHY


class TestDeviceIds:
    def test_one_device_per_node(self, devfs: Path) -> None:
        """With count 1, each node is one device whose ID is its path with / as _."""
        for rel in ("ttyUSB0", "ttyUSB1", "serial/by-id/usb-FTDI_x-if00"):
            make_node(devfs, rel)
        group = one_group(name="serial", paths=["/dev/ttyUSB*", "/dev/serial/by-id/*"])
        tree = scanner(devfs, group).scan_once()
        assert ids(tree, "serial") == ["ttyUSB0", "ttyUSB1", "serial_by-id_usb-FTDI_x-if00"]

    def test_shares(self, devfs: Path) -> None:
        """With count N, each node is advertised N times as <id>-0 … <id>-(N-1), one info."""
        make_node(devfs, "fuse")
        make_node(devfs, "net/tun")
        group = one_group(name="shared", paths=["/dev/fuse", "/dev/net/tun"], count=3)
        tree = scanner(devfs, group).scan_once()
        assert ids(tree, "shared") == [
            "fuse-0",
            "fuse-1",
            "fuse-2",
            "net_tun-0",
            "net_tun-1",
            "net_tun-2",
        ]
        assert tree["shared"]["fuse-0"] is tree["shared"]["fuse-2"]
        assert tree["shared"]["fuse-0"] != tree["shared"]["net_tun-0"]

    def test_ids_are_stable(self, devfs: Path) -> None:
        """Two scans of the same tree give equal trees (so kubelet is not re-notified)."""
        make_node(devfs, "kvm")
        scan = scanner(devfs, one_group(name="kvm", paths="/dev/kvm", count=2))
        assert scan.scan_once() == scan.scan_once()

    def test_bundle(self, devfs: Path) -> None:
        """A bundled group is one device, named after the group, holding every node."""
        for rel in ("dri/card0", "dri/renderD128"):
            make_node(devfs, rel)
        group = one_group(name="gpu", paths=["/dev/dri/card*", "/dev/dri/renderD*"], bundle=True)
        info = only_device(scanner(devfs, group).scan_once(), "gpu")
        assert [n.container_path for n in info.nodes] == ["/dev/dri/card0", "/dev/dri/renderD128"]
        assert info.state == HEALTHY
        assert list(scanner(devfs, group).scan_once()["gpu"]) == ["gpu"]

    def test_bundle_shares(self, devfs: Path) -> None:
        """A bundled group with count N is advertised as <name>-0 … <name>-(N-1)."""
        make_node(devfs, "a")
        group = one_group(name="ab", paths=["/dev/a", "/dev/b"], bundle=True, count=2)
        assert ids(scanner(devfs, group).scan_once(), "ab") == ["ab-0", "ab-1"]

    def test_bundle_unhealthy_when_one_node_is(self, devfs: Path) -> None:
        """A bundle is Unhealthy when any of its nodes is."""
        make_node(devfs, "a")
        make_node(devfs, "b", target=None)
        group = one_group(name="ab", paths=["/dev/a", "/dev/b"], bundle=True)
        assert only_device(scanner(devfs, group).scan_once(), "ab").state == UNHEALTHY

    def test_bundle_absent_without_nodes(self, devfs: Path) -> None:
        """A bundle with no matching node is not advertised."""
        group = one_group(name="ab", paths=["/dev/a", "/dev/b"], bundle=True)
        assert len(scanner(devfs, group).scan_once()) == 0

    def test_colliding_ids_keep_the_first(
        self, devfs: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """'a/b' and 'a_b' would share an ID: the first keeps it; the clash is logged once."""
        make_node(devfs, "a/b")
        make_node(devfs, "a_b")
        group = one_group(name="ab", paths=["/dev/a/b", "/dev/a_b"])
        scan = scanner(devfs, group)
        with caplog.at_level(logging.WARNING, logger="hostplugins.generic"):
            tree = scan.scan_once()
            assert scan.scan_once() == tree
        assert [n.host_path for n in only_device(tree, "ab").nodes] == ["/dev/a/b"]
        assert caplog.text.count("has the same device ID 'a_b'") == 1  # once, not every scan


class TestGlobs:
    def test_relative_and_absolute_globs(self, devfs: Path) -> None:
        """'/dev/x*' and 'x*' are the same glob under the devfs root."""
        make_node(devfs, "x1")
        for paths in (["/dev/x*"], ["x*"]):
            tree = scanner(devfs, one_group(name="x", paths=paths)).scan_once()
            assert ids(tree, "x") == ["x1"]

    def test_node_matched_twice_is_one_device(self, devfs: Path) -> None:
        """Overlapping globs give each node once."""
        make_node(devfs, "ttyUSB0")
        group = one_group(name="serial", paths=["/dev/ttyUSB*", "/dev/ttyUSB0", "/dev/tty*"])
        assert ids(scanner(devfs, group).scan_once(), "serial") == ["ttyUSB0"]

    def test_same_node_in_two_groups(self, devfs: Path) -> None:
        """Two groups may expose the same node as two resources."""
        make_node(devfs, "kvm")
        tree = scanner(
            devfs, one_group(name="kvm", paths="/dev/kvm"), one_group(name="vm", paths="/dev/kvm")
        ).scan_once()
        assert (ids(tree, "kvm"), ids(tree, "vm")) == (["kvm"], ["kvm"])

    def test_hot_plug(self, devfs: Path) -> None:
        """Between two scans, a new node appears and a vanished one disappears."""
        make_node(devfs, "ttyUSB0")
        scan = scanner(devfs, one_group(name="serial", paths="/dev/ttyUSB*"))
        assert ids(scan.scan_once(), "serial") == ["ttyUSB0"]
        make_node(devfs, "ttyUSB1")
        assert ids(scan.scan_once(), "serial") == ["ttyUSB0", "ttyUSB1"]
        (devfs / "ttyUSB0").unlink()
        assert ids(scan.scan_once(), "serial") == ["ttyUSB1"]
        (devfs / "ttyUSB1").unlink()
        assert len(scan.scan_once()) == 0

    def test_mounts(self, devfs: Path) -> None:
        """A group's mounts go with each of its devices."""
        make_node(devfs, "kvm")
        group = one_group(
            name="kvm",
            paths="/dev/kvm",
            mounts=[
                {"host-path": "/lib/firmware", "read-only": True},
                {"host-path": "/var/run/x", "container-path": "/run/x"},
            ],
        )
        (first, second) = only_device(scanner(devfs, group).scan_once(), "kvm").mounts
        assert (first.host_path, first.container_path, first.read_only) == (
            "/lib/firmware",
            "/lib/firmware",
            True,
        )
        assert (second.host_path, second.container_path, second.read_only) == (
            "/var/run/x",
            "/run/x",
            False,
        )


def make_usb_device(
    sysfs: Path, name: str, *, vendor: str, product: str, busnum: int, devnum: int
) -> None:
    device = sysfs / "bus/usb/devices" / name
    device.mkdir(parents=True)
    for attr, value in (
        ("idVendor", vendor),
        ("idProduct", product),
        ("busnum", str(busnum)),
        ("devnum", str(devnum)),
    ):
        (device / attr).write_text(value + "\n")


class TestUsb:
    @pytest.fixture
    def sysfs(self, tmp_path: Path) -> Path:
        sysfs = tmp_path / "sys"
        make_usb_device(sysfs, "usb1", vendor="1d6b", product="0002", busnum=1, devnum=1)
        make_usb_device(sysfs, "1-1", vendor="1234", product="5678", busnum=1, devnum=4)
        make_usb_device(sysfs, "1-2", vendor="1234", product="9999", busnum=1, devnum=5)
        make_usb_device(sysfs, "2-1", vendor="abcd", product="5678", busnum=2, devnum=12)
        # An interface has no idVendor; a half-written device no busnum.
        (sysfs / "bus/usb/devices/1-1:1.0").mkdir()
        (sysfs / "bus/usb/devices/1-1:1.0/bInterfaceClass").write_text("ff\n")
        (sysfs / "bus/usb/devices/3-1").mkdir()
        (sysfs / "bus/usb/devices/3-1/idVendor").write_text("1234\n")
        (sysfs / "bus/usb/devices/3-1/idProduct").write_text("5678\n")
        return sysfs

    @pytest.fixture
    def usb_devfs(self, devfs: Path) -> Path:
        for rel in ("bus/usb/001/001", "bus/usb/001/004", "bus/usb/001/005", "bus/usb/002/012"):
            make_node(devfs, rel)
        return devfs

    def scan(self, devfs: Path, sysfs: Path, usb: list[dict[str, Any]]) -> DeviceTree:
        group = one_group(name="dongle", usb=usb)
        return GenericScanner([group], devfs_root=devfs, sysfs_root=sysfs).scan_once()

    def test_vendor_and_product(self, usb_devfs: Path, sysfs: Path) -> None:
        """vendor+product selects one device, exposed as /dev/bus/usb/BBB/DDD."""
        tree = self.scan(usb_devfs, sysfs, [{"vendor": "0x1234", "product": "0x5678"}])
        assert ids(tree, "dongle") == ["bus_usb_001_004"]
        (node,) = tree["dongle"]["bus_usb_001_004"].nodes
        assert (node.host_path, node.container_path) == (
            "/dev/bus/usb/001/004",
            "/dev/bus/usb/001/004",
        )
        assert tree["dongle"]["bus_usb_001_004"].state == HEALTHY

    def test_vendor_only(self, usb_devfs: Path, sysfs: Path) -> None:
        """vendor alone matches every product of that vendor."""
        tree = self.scan(usb_devfs, sysfs, [{"vendor": "1234"}])
        assert ids(tree, "dongle") == ["bus_usb_001_004", "bus_usb_001_005"]

    def test_several_matchers(self, usb_devfs: Path, sysfs: Path) -> None:
        """Any matcher of the list selects a device; integer IDs work too."""
        tree = self.scan(
            usb_devfs, sysfs, [{"vendor": 0xABCD}, {"vendor": "0x1234", "product": "0x9999"}]
        )
        assert ids(tree, "dongle") == ["bus_usb_001_005", "bus_usb_002_012"]

    def test_no_match(self, usb_devfs: Path, sysfs: Path) -> None:
        """No matching device, no devices."""
        assert len(self.scan(usb_devfs, sysfs, [{"vendor": "0xffff"}])) == 0

    def test_missing_device_node(self, devfs: Path, sysfs: Path) -> None:
        """A USB device without its /dev/bus/usb node is not advertised."""
        assert len(self.scan(devfs, sysfs, [{"vendor": "0x1234"}])) == 0

    def test_no_usb_in_sysfs(self, usb_devfs: Path, tmp_path: Path) -> None:
        """A sysfs without bus/usb gives no USB devices, not an error."""
        assert len(self.scan(usb_devfs, tmp_path / "empty", [{"vendor": "0x1234"}])) == 0

    def test_usb_hot_plug(self, usb_devfs: Path, sysfs: Path) -> None:
        """A USB device plugged in between two scans appears; one unplugged disappears."""
        group = one_group(name="dongle", usb=[{"vendor": "0xabcd"}])
        scan = GenericScanner([group], devfs_root=usb_devfs, sysfs_root=sysfs)
        assert ids(scan.scan_once(), "dongle") == ["bus_usb_002_012"]
        make_usb_device(sysfs, "2-2", vendor="abcd", product="0001", busnum=2, devnum=13)
        make_node(usb_devfs, "bus/usb/002/013")
        assert ids(scan.scan_once(), "dongle") == ["bus_usb_002_012", "bus_usb_002_013"]
        (usb_devfs / "bus/usb/002/012").unlink()
        assert ids(scan.scan_once(), "dongle") == ["bus_usb_002_013"]

    def test_globs_and_usb_together(self, usb_devfs: Path, sysfs: Path) -> None:
        """A group may combine globs and USB matchers."""
        make_node(usb_devfs, "ttyUSB0")
        group = one_group(name="dongle", paths="/dev/ttyUSB*", usb=[{"vendor": "0xabcd"}])
        tree = GenericScanner([group], devfs_root=usb_devfs, sysfs_root=sysfs).scan_once()
        assert ids(tree, "dongle") == ["ttyUSB0", "bus_usb_002_012"]


class TestTopology:
    def test_numa_node_from_sysfs(self, devfs: Path, tmp_path: Path) -> None:
        """The NUMA node of a node's sysfs device is the device's topology."""
        sysfs = tmp_path / "sys"
        pci = sysfs / "devices/pci0000:00/0000:00:01.0"
        (pci / "null").mkdir(parents=True)
        (pci / "numa_node").write_text("1\n")
        (pci / "local_cpulist").write_text("4-7\n")
        st = os.stat(DEV_NULL)
        (sysfs / "dev/char").mkdir(parents=True)
        (sysfs / f"dev/char/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}").symlink_to(pci / "null")
        make_node(devfs, "null")
        group = one_group(name="sink", paths="/dev/null")
        tree = GenericScanner([group], devfs_root=devfs, sysfs_root=sysfs).scan_once()
        assert only_device(tree, "sink").numa_nodes == (1,)

    def test_no_topology_without_sysfs_entry(self, devfs: Path) -> None:
        """Without a sysfs entry the device simply has no topology."""
        make_node(devfs, "null")
        tree = scanner(devfs, one_group(name="sink", paths="/dev/null")).scan_once()
        assert only_device(tree, "sink").topology is None


# --- the scan loop -----------------------------------------------------------------------


class RecordingNotifier:
    def __init__(self) -> None:
        self.trees: list[DeviceTree] = []

    def notify(self, tree: DeviceTree) -> None:
        self.trees.append(tree)


class SteppedSleep:
    """Stands in for asyncio.sleep: reports each wait and blocks until the test resumes it."""

    def __init__(self) -> None:
        self.waits: asyncio.Queue[float] = asyncio.Queue()
        self._resume: asyncio.Queue[None] = asyncio.Queue()

    async def __call__(self, seconds: float) -> None:
        await self.waits.put(seconds)
        await self._resume.get()

    async def next_scan(self) -> float:
        """Wait until the loop has finished one scan; return the interval it asked for."""
        return await asyncio.wait_for(self.waits.get(), timeout=10)

    def resume(self) -> None:
        self._resume.put_nowait(None)


class TestScanLoop:
    @pytest.mark.asyncio
    async def test_notifies_first_tree_and_changes_only(
        self, devfs: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The first tree (even empty) is notified, then a tree only when it changed."""
        scan = scanner(devfs, one_group(name="serial", paths="/dev/ttyUSB*"), rescan_interval=2.5)
        sleep = SteppedSleep()
        scan._sleep = sleep
        notifier = RecordingNotifier()
        caplog.set_level(logging.INFO, logger="hostplugins.generic")
        task = asyncio.create_task(scan.scan(notifier))
        try:
            assert await sleep.next_scan() == 2.5
            assert [len(t) for t in notifier.trees] == [0]

            make_node(devfs, "ttyUSB0")
            sleep.resume()
            await sleep.next_scan()
            assert len(notifier.trees) == 2
            assert ids(notifier.trees[-1], "serial") == ["ttyUSB0"]
            assert f"{devfs / 'ttyUSB0'} (serial) found" in caplog.text

            sleep.resume()  # nothing changed: no notification
            await sleep.next_scan()
            assert len(notifier.trees) == 2

            (devfs / "ttyUSB0").unlink()
            make_node(devfs, "ttyUSB0", target=None)
            sleep.resume()
            await sleep.next_scan()
            assert only_device(notifier.trees[-1], "serial").state == UNHEALTHY
            assert "is Unhealthy: it is not a character or block device (a regular file)" in (
                caplog.text
            )

            (devfs / "ttyUSB0").unlink()
            sleep.resume()
            await sleep.next_scan()
            assert len(notifier.trees) == 4
            assert len(notifier.trees[-1]) == 0
            assert f"{devfs / 'ttyUSB0'} (serial) is gone" in caplog.text
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    @pytest.mark.asyncio
    async def test_cancel_stops_the_loop(self, devfs: Path) -> None:
        """Cancelling the scan task ends it with CancelledError."""
        scan = scanner(devfs, one_group(name="kvm", paths="/dev/kvm"), rescan_interval=3600)
        notifier = RecordingNotifier()
        sleep = SteppedSleep()
        scan._sleep = sleep
        task = asyncio.create_task(scan.scan(notifier))
        await sleep.next_scan()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()


# --- hooks -------------------------------------------------------------------------------


def plugin_config(tmp_path: Path, **options: Any) -> PluginConfig:
    return PluginConfig(
        name="generic", options=options, sysfs_root=tmp_path / "sys", devfs_root=tmp_path / "dev"
    )


class TestHooks:
    def test_entry_point(self) -> None:
        """The host finds this module through the devplugin.scanners entry point 'generic'."""
        (ep,) = entry_points(group="devplugin.scanners", name="generic")
        assert ep.load() is generic

    def test_hooks_are_marked(self) -> None:
        """Both hooks carry the devplugin hookimpl marker."""
        assert hasattr(devplugin_options, "devplugin_impl")
        assert hasattr(devplugin_scanners, "devplugin_impl")

    def test_options(self) -> None:
        """devices, namespace and rescan-interval, each with a parser for str and TOML values."""
        options = {o.name: o for o in devplugin_options()}
        assert list(options) == ["devices", "namespace", "rescan-interval"]
        assert list(options["devices"].default) == default_devices()
        json.dumps(options["devices"].default)  # shown by `devplugin-host plugins --json`
        assert options["namespace"].default == "devices.devplugin.io"
        assert options["rescan-interval"].default == 5.0
        for option in options.values():
            assert option.type is not None
            assert option.help
        devices_type = options["devices"].type
        assert devices_type is not None
        assert devices_type('[{"name": "kvm", "paths": "/dev/kvm"}]') == devices_type(
            [{"name": "kvm", "paths": "/dev/kvm"}]
        )

    def test_defaults_when_nothing_configured(self, tmp_path: Path) -> None:
        """No options: one scanner in devices.devplugin.io with the built-in groups and roots."""
        ((namespace, scan),) = devplugin_scanners(plugin_config(tmp_path))
        assert namespace == "devices.devplugin.io"
        assert isinstance(scan, GenericScanner)
        assert [g.name for g in scan.groups] == ["kvm", "fuse", "tun", "vhost-net", "vsock"]
        assert scan.devfs_root == tmp_path / "dev"
        assert scan.sysfs_root == tmp_path / "sys"
        assert scan.rescan_interval == 5.0

    def test_option_values(self, tmp_path: Path) -> None:
        """Raw --set strings for every option are parsed in the hook too."""
        config = plugin_config(
            tmp_path,
            devices='[{"name": "kvm", "paths": "/dev/kvm"}, '
            '{"name": "fw", "namespace": "other.example", "paths": "/dev/fw*"}]',
            namespace="example.com",
            **{"rescan-interval": "0.5"},
        )
        pairs = devplugin_scanners(config)
        assert [(ns, [g.name for g in s.groups]) for ns, s in pairs] == [
            ("example.com", ["kvm"]),
            ("other.example", ["fw"]),
        ]
        assert all(s.rescan_interval == 0.5 for _, s in pairs)

    def test_parsed_option_values(self, tmp_path: Path) -> None:
        """Values the host already ran through Option.type are accepted as they are."""
        options = {o.name: o for o in devplugin_options()}
        values = {
            "devices": parse_devices('[{"name": "kvm", "paths": "/dev/kvm"}]'),
            "namespace": parse_namespace("example.com"),
            "rescan-interval": parse_rescan_interval("1"),
        }
        assert set(values) == set(options)
        ((namespace, scan),) = devplugin_scanners(plugin_config(tmp_path, **values))
        assert namespace == "example.com"
        assert [g.resource_name for g in scan.groups] == ["example.com/kvm"]

    def test_bad_group_is_logged_and_others_serve(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A bad group is logged with its name; the valid groups still get a scanner."""
        devices = [{"name": "kvm", "paths": ["/dev/kvm"]}, {"name": "bad", "paths": []}]
        with caplog.at_level(logging.ERROR, logger="hostplugins.generic"):
            ((_, scan),) = devplugin_scanners(plugin_config(tmp_path, devices=devices))
        assert [g.name for g in scan.groups] == ["kvm"]
        assert "plugin 'generic': device group #2 ('bad'): 'paths' is empty" in caplog.text

    def test_only_bad_groups(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        """With no valid group left the hook registers nothing and says so."""
        with caplog.at_level(logging.WARNING, logger="hostplugins.generic"):
            assert devplugin_scanners(plugin_config(tmp_path, devices=[{"name": "x"}])) == []
        assert "no valid device groups configured" in caplog.text

    def test_empty_devices(self, tmp_path: Path) -> None:
        """``devices = []`` registers nothing, without an error."""
        assert devplugin_scanners(plugin_config(tmp_path, devices=[])) == []

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"devices": "not json"}, "option devices: not valid JSON"),
            ({"devices": {"name": "kvm"}}, "option devices: expected a list of device groups"),
            ({"namespace": "Bad_NS"}, "option namespace: 'Bad_NS' is not a valid"),
            ({"rescan-interval": "-1"}, "option rescan-interval: expected a number"),
        ],
    )
    def test_unreadable_option_is_config_error(
        self, tmp_path: Path, options: dict[str, Any], message: str
    ) -> None:
        """An option that cannot be read at all raises ConfigError from the hook."""
        with pytest.raises(ConfigError, match=f"^plugin 'generic': {message}"):
            devplugin_scanners(plugin_config(tmp_path, **options))

    def test_end_to_end_with_real_nodes(self, tmp_path: Path) -> None:
        """Configured globs over the real /dev give Healthy devices for /dev/null and /dev/zero."""
        config = PluginConfig(
            name="generic",
            options={
                "devices": '[{"name": "sink", "paths": ["/dev/null", "/dev/zero"], "count": 2}]'
            },
            devfs_root=Path("/dev"),
            sysfs_root=tmp_path,
        )
        ((_, scan),) = devplugin_scanners(config)
        tree = scan.scan_once()
        assert ids(tree, "sink") == ["null-0", "null-1", "zero-0", "zero-1"]
        assert {info.state for info in tree["sink"].values()} == {HEALTHY}
