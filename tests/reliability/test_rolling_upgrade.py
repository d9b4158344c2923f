"""Rolling updates: hosts with distinct instance ids replace each other without a gap.

Three rolls under continuous Allocate load against the fake kubelet of each generation;
the 20-roll version with its figures is ``tests/bench/rolling_upgrade.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from host.deviceplugin._names import socket_name
from host.testing import FakeKubelet, KubeletMode
from tests.reliability.rolling import RESOURCE, roll_hosts, start_host

pytestmark = pytest.mark.asyncio

ROLLS = 3


class TestRollingUpdate:
    @pytest.mark.parametrize("mode", ["1.24", "1.36"])
    async def test_no_gap_where_kubelet_keeps_the_newer_endpoint(
        self, short_dir: Path, mode: KubeletMode
    ) -> None:
        """Kubelets that track the newer endpoint never see allocatable 0 and no Allocate fails."""
        async with FakeKubelet(short_dir, mode=mode) as kubelet:
            figures = await roll_hosts(kubelet, short_dir, ROLLS)
        assert figures.exit_codes == [0] * ROLLS
        assert figures.gaps == []
        assert figures.failed == []
        assert figures.refused == []
        assert figures.admitted > 0

    async def test_new_host_recovers_when_kubelet_drops_it_for_the_old(
        self, short_dir: Path
    ) -> None:
        """Kubelet 1.25-1.35 disconnects the new host when the old one ends: it registers again."""
        async with FakeKubelet(short_dir, mode="1.25") as kubelet:
            figures = await roll_hosts(kubelet, short_dir, ROLLS)
            registered = [r.socket_path for r in kubelet.registrations]
        assert figures.exit_codes == [0] * ROLLS
        # Every roll: one span at 0, ended by the new host's second registration.
        assert len(figures.gaps) == ROLLS
        for index in range(1, ROLLS + 1):
            socket = str(short_dir / socket_name(*RESOURCE.split("/"), f"pod-{index}"))
            assert registered.count(socket) == 2
        assert figures.failed == []  # kubelet refused some admissions, no plugin failed one
        assert figures.admitted > 0


class TestRollingUpdateThroughThePluginWatcher:
    @pytest.mark.parametrize("mode", ["1.25", "1.36"])
    async def test_rolls_with_registration_by_the_plugin_watcher(
        self, short_dir: Path, mode: KubeletMode
    ) -> None:
        """Hosts in plugins-registry mode roll; 1.36 without a gap, 1.25 back through Register."""
        registry = short_dir / "reg"
        async with FakeKubelet(
            short_dir / "dp", mode=mode, registry_dir=registry, reconcile_interval=0.05
        ) as kubelet:
            figures = await roll_hosts(kubelet, short_dir / "dp", 2)
            registrations = kubelet.registrations
        assert figures.exit_codes == [0, 0]
        assert figures.failed == []
        # The plugin watcher registers with the socket's absolute path; Register on
        # kubelet.sock names it relative to the device-plugin directory.
        by_register = {
            r.socket_path for r in registrations if not r.request.endpoint.startswith("/")
        }
        if mode == "1.25":
            # Each new host, dropped when the older one went, registered again at once.
            new_sockets = {
                str(registry / socket_name(*RESOURCE.split("/"), f"pod-{i}")) for i in (1, 2)
            }
            assert by_register == new_sockets
            assert len(figures.gaps) >= 2
        else:
            assert by_register == set()
            assert figures.gaps == []


class TestInstanceSockets:
    async def test_two_instances_serve_side_by_side_and_each_removes_only_its_own(
        self, short_dir: Path
    ) -> None:
        """Both hosts listen on their own socket; the stopped one leaves the other's in place."""
        async with FakeKubelet(short_dir, mode="1.36") as kubelet:
            first = await start_host(short_dir, "pod-a")
            second = await start_host(short_dir, "pod-b")
            sockets = [short_dir / socket_name(*RESOURCE.split("/"), i) for i in ("pod-a", "pod-b")]
            try:
                await kubelet.wait_for(
                    lambda: (
                        set(kubelet.resources.get(RESOURCE, _NONE).endpoints)
                        == {str(s) for s in sockets}
                    ),
                    timeout=30,
                    what="both instances connected",
                )
                assert sockets[0] != sockets[1]
                assert await first.stop() == 0
                assert not sockets[0].exists()
                assert sockets[1].is_socket()
                await kubelet.wait_for(
                    lambda: kubelet.resources[RESOURCE].endpoints == (str(sockets[1]),),
                    timeout=30,
                    what="the first instance gone",
                )
                assert kubelet.resources[RESOURCE].allocatable == 2
            finally:
                await first.stop()
                await second.stop()


class _NoResource:
    endpoints: tuple[str, ...] = ()


_NONE = _NoResource()
