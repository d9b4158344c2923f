"""One rule for every built-in plugin: read under the roots, report the node's own paths.

The per-plugin tests scan trees under a temporary devfs root and check that kubelet and
the CDI specs get ``/dev/...``; these check the shared helpers and that no plugin
builds a DeviceSpec by itself.
"""

from __future__ import annotations

import re
from pathlib import Path

import hostplugins
from hostplugins._sysfs import dev_path, device_spec, sys_path

PLUGINS = Path(hostplugins.__file__).parent


class TestHelpers:
    def test_node_under_a_moved_devfs_root_is_reported_under_dev(self) -> None:
        """/host/dev/dri/card0 is the node's /dev/dri/card0."""
        assert dev_path(Path("/host/dev/dri/card0"), Path("/host/dev")) == "/dev/dri/card0"
        assert dev_path(Path("/host/dev"), Path("/host/dev")) == "/dev"

    def test_default_root_changes_nothing(self) -> None:
        """With devfs root /dev the path is unchanged."""
        assert dev_path(Path("/dev/vfio/7"), Path("/dev")) == "/dev/vfio/7"

    def test_path_outside_the_root_is_kept(self) -> None:
        """A path not under the root is already the node's (e.g. a configured mount)."""
        assert dev_path(Path("/opt/x"), Path("/host/dev")) == "/opt/x"

    def test_sysfs_entries(self) -> None:
        """/host/sys/class/uio/uio3/device is /sys/class/uio/uio3/device."""
        path = Path("/host/sys/class/uio/uio3/device")
        assert sys_path(path, Path("/host/sys")) == "/sys/class/uio/uio3/device"

    def test_device_spec_uses_the_node_path_on_both_sides(self) -> None:
        """Host and container path are both /dev/...; permissions default to rw."""
        spec = device_spec(Path("/host/dev/accel/accel0"), Path("/host/dev"))
        assert (spec.host_path, spec.container_path, spec.permissions) == (
            "/dev/accel/accel0",
            "/dev/accel/accel0",
            "rw",
        )


class TestEveryPluginUsesTheRule:
    def test_no_plugin_builds_device_specs_of_its_own(self) -> None:
        """Only the shared helper (and generic, which builds /dev/<relative>) make DeviceSpecs."""
        allowed = {PLUGINS / "_sysfs.py", PLUGINS / "generic" / "_scanner.py"}
        offenders = [
            str(path.relative_to(PLUGINS))
            for path in sorted(PLUGINS.rglob("*.py"))
            if path.name != "fakedev.py"
            and path not in allowed
            and re.search(r"DeviceSpec\(", path.read_text(encoding="utf-8"))
        ]
        assert offenders == []
