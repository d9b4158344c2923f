"""The color plugin as kubelet sees it, through devplugin-host's fixtures only.

The plugin is found through its installed entry point (``enable=["color"]``), exactly
as ``devplugin-host run --enable color`` finds it.
"""

from __future__ import annotations

from pathlib import Path

import devplugin_example_color
import pytest

from host import ConfigError
from host.testing import (
    ClaimMaker,
    FakeDraKubelet,
    FakeKubelet,
    FakeSysfsFactory,
    KubeletError,
    RunHost,
)

pytestmark = pytest.mark.asyncio

YELLOW = "color.example.com/yellow"
GREEN = "color.example.com/green"


@pytest.fixture
def devfs(fake_sysfs: FakeSysfsFactory) -> Path:
    """A devfs root holding the node the devices need (a plain file does in a test)."""
    return fake_sysfs({"null": ""}, name="dev")


class TestDevices:
    async def test_both_colors_are_served(
        self, kubelet: FakeKubelet, run_host: RunHost, devfs: Path
    ) -> None:
        """Yellow and green are two resources of two healthy devices each."""
        host = await run_host(enable=["color"], devfs_root=devfs)
        yellow = await kubelet.wait_for_resource(YELLOW, count=2, healthy=2)
        green = await kubelet.wait_for_resource(GREEN, count=2, healthy=2)
        assert sorted(yellow.devices) == ["yellow-0", "yellow-1"]
        assert sorted(green.devices) == ["green-0", "green-1"]
        assert sorted(host.resources) == [GREEN, YELLOW]

    async def test_count_option(self, kubelet: FakeKubelet, run_host: RunHost, devfs: Path) -> None:
        """--set color.count=3 gives three devices of each color."""
        await run_host(enable=["color"], options={"color": {"count": "3"}}, devfs_root=devfs)
        await kubelet.wait_for_resource(YELLOW, count=3, healthy=3)
        await kubelet.wait_for_resource(GREEN, count=3, healthy=3)

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"count": 0}, "plugin 'color': option count must be >= 1, got 0"),
            ({"interval": 0}, "plugin 'color': option interval must be > 0 seconds"),
            ({"count": "two"}, "expected an integer"),
        ],
    )
    async def test_bad_options(
        self, run_host: RunHost, devfs: Path, options: dict[str, object], message: str
    ) -> None:
        """A bad value is a configuration error naming the plugin and the option."""
        with pytest.raises(ConfigError, match=message):
            await run_host(enable=["color"], options={"color": options}, devfs_root=devfs)

    async def test_health_follows_the_node(
        self,
        kubelet: FakeKubelet,
        run_host: RunHost,
        fake_sysfs: FakeSysfsFactory,
        devfs: Path,
    ) -> None:
        """Without the device node the devices turn Unhealthy, and back when it returns."""
        await run_host(enable=["color"], options={"color": {"interval": 0.02}}, devfs_root=devfs)
        await kubelet.wait_for_resource(YELLOW, count=2, healthy=2)
        (devfs / "null").unlink()
        await kubelet.wait_for_resource(YELLOW, count=2, healthy=0)
        with pytest.raises(KubeletError, match="no healthy devices"):
            await kubelet.allocate_like_kubelet(YELLOW, 1)
        fake_sysfs({"null": ""}, name="dev")
        await kubelet.wait_for_resource(YELLOW, count=2, healthy=2)


class TestAllocation:
    @pytest.mark.parametrize("color", ["yellow", "green"])
    async def test_painted_annotation(
        self, kubelet: FakeKubelet, run_host: RunHost, devfs: Path, color: str
    ) -> None:
        """Allocate gives the node, COLOR, and the PostAllocator's painted annotation."""
        await run_host(enable=["color"], devfs_root=devfs)
        resource = f"color.example.com/{color}"
        await kubelet.wait_for_resource(resource, healthy=2)
        allocation = await kubelet.allocate_like_kubelet(resource, 2)
        response = allocation.response
        assert sorted(allocation.device_ids) == [f"{color}-0", f"{color}-1"]
        assert {(d.host_path, d.container_path) for d in response.devices} == {
            ("/dev/null", "/dev/null")  # found under the devfs root, reported as the node's
        }
        assert response.envs["COLOR"] == color
        assert response.annotations[devplugin_example_color.PAINTED] == color

    async def test_after_kubelet_restart(
        self, kubelet: FakeKubelet, run_host: RunHost, devfs: Path
    ) -> None:
        """After kubelet restarts, both resources register again and still allocate."""
        await run_host(enable=["color"], devfs_root=devfs)
        await kubelet.wait_for_registrations(1, YELLOW)
        await kubelet.wait_for_registrations(1, GREEN)
        await kubelet.restart()
        # A Register the old kubelet accepted just before it stopped opens no device list
        # stream: the host registers again once its stream wait (5 s) finds none.
        await kubelet.wait_for_registrations(2, YELLOW, timeout=30)
        await kubelet.wait_for_registrations(2, GREEN, timeout=30)
        await kubelet.wait_for_resource(GREEN, healthy=2)
        allocation = await kubelet.allocate_like_kubelet(GREEN, 1)
        assert allocation.response.annotations["color.example.com/painted"] == "green"


class TestWithoutEntryPoint:
    async def test_module_object(
        self, kubelet: FakeKubelet, run_host: RunHost, devfs: Path
    ) -> None:
        """The hook module itself can be handed over, e.g. before the package is installed."""
        host = await run_host(plugins={"color": devplugin_example_color}, devfs_root=devfs)
        assert host.plugins == ("color",)
        await kubelet.wait_for_resource(YELLOW, healthy=2)


class TestAsDraDriver:
    """The same plugin, unchanged, served as DRA driver color.example.com (``--dra color``)."""

    async def test_claim_gets_the_node_and_color(
        self, run_host: RunHost, dra_claim: ClaimMaker, devfs: Path
    ) -> None:
        """Two yellow devices: one CDI device (post_allocate shapes it) with both nodes, COLOR."""
        host = await run_host(enable=["color"], dra=["color"], devfs_root=devfs)
        assert not host.resources  # one API or the other: no device-plugin resource
        claim = await dra_claim(YELLOW, 2)
        assert claim.devices == ("yellow-yellow-0", "yellow-yellow-1")
        # A plugin with post_allocate is asked once per device type, as Allocate would be.
        (cdi_id,) = claim.cdi_ids
        assert cdi_id == f"color.example.com/dra=claim-{claim.uid}-yellow"
        assert claim.device_nodes == ["/dev/null", "/dev/null"]
        assert claim.env == {"COLOR": "yellow"}

    async def test_devices_are_not_handed_out_twice(
        self, run_host: RunHost, dra_claim: ClaimMaker, devfs: Path
    ) -> None:
        """A second claim gets the other green device; a third finds none left."""
        await run_host(enable=["color"], dra=["color"], devfs_root=devfs)
        first, second = await dra_claim(GREEN), await dra_claim(GREEN)
        assert {*first.devices, *second.devices} == {"green-green-0", "green-green-1"}
        with pytest.raises(KubeletError, match="only 0 untainted device"):
            await dra_claim(GREEN)

    async def test_unprepare(
        self, run_host: RunHost, dra_claim: ClaimMaker, dra_kubelet: FakeDraKubelet, devfs: Path
    ) -> None:
        """Kubelet's unprepare removes the claim's CDI spec; a repeat is fine."""
        host = await run_host(enable=["color"], dra=["color"], devfs_root=devfs)
        claim = await dra_claim(YELLOW)
        assert all(path.exists() for path in claim.spec_files.values())
        assert await dra_kubelet.unprepare("color.example.com", [claim.ref]) == {claim.uid: ""}
        assert not any(path.exists() for path in claim.spec_files.values())
        assert await dra_kubelet.unprepare("color.example.com", [claim.ref]) == {claim.uid: ""}
        assert host.dra_plugins["color.example.com"].driver.prepared_claims == {}
