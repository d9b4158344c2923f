"""The public surface of host.deviceplugin is deliberate: nothing becomes public by accident."""

from __future__ import annotations

import host.deviceplugin as dp


class TestPublicNames:
    def test_all_is_pinned(self) -> None:
        """__all__ lists exactly the names the issue fixed, plus the documented extras."""
        assert sorted(dp.__all__) == sorted(
            [
                "DEFAULT_CDI_DIR",
                "DEFAULT_PLUGIN_DIR",
                "DEFAULT_POD_RESOURCES_SOCKET",
                "DeviceHolder",
                "HeldDevices",
                "PodResourcesClient",
                "configure_pod_resources",
                "pod_resources",
                "HEALTHY",
                "UNHEALTHY",
                "Allocator",
                "ContainerPreStarter",
                "DeviceInfo",
                "DeviceSpec",
                "DeviceTree",
                "DeviceTypeDeclarer",
                "Manager",
                "Mount",
                "NUMANode",
                "Notifier",
                "Observer",
                "PeriodicScanner",
                "PluginDirWatcher",
                "PostAllocator",
                "PreferredAllocator",
                "ResourceStatus",
                "DevicesInUse",
                "InUse",
                "Scanner",
                "SemVer",
                "TopologyInfo",
                "UseDefaultMethodError",
                "pluginapi",
            ]
        )

    def test_every_public_name_is_documented(self) -> None:
        """Every exported class and function carries a docstring (wire messages: the proto)."""
        for name in dp.__all__:
            obj = getattr(dp, name)
            if callable(obj) and not isinstance(obj, type(dp)):
                assert obj.__doc__, name

    def test_constants_and_value_types(self) -> None:
        """HEALTHY/UNHEALTHY are kubelet's exact strings; DeviceSpec is a frozen value."""
        assert (dp.HEALTHY, dp.UNHEALTHY) == ("Healthy", "Unhealthy")
        spec = dp.DeviceSpec(host_path="/dev/x", container_path="/dev/y", permissions="rw")
        assert spec.permissions == "rw"
        wire = dp.pluginapi.DeviceSpec(
            host_path="/dev/x", container_path="/dev/y", permissions="rw"
        )
        assert dp.DeviceSpec.of(wire) == spec
        assert dp.DEFAULT_PLUGIN_DIR == "/var/lib/kubelet/device-plugins/"
