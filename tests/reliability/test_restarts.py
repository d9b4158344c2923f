"""Kubelet restarts, absence and return: every resource registers again, and nothing leaks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from host.deviceplugin import Manager, PluginDirWatcher
from host.testing import FakeKubelet

from .conftest import ProcessCounts, ServeFn, SteadyScanner, info, socket_files, tree_of

pytestmark = pytest.mark.asyncio

NAMESPACES = {"alpha.example.com": 6, "beta.example.com": 4}
"""Two plugins (managers sharing one watcher, as in the host) with 10 resources in all."""


async def serve_ten(serve: ServeFn, short_dir: Path) -> tuple[list[Manager], list[str]]:
    watcher = PluginDirWatcher(short_dir)
    managers, names = [], []
    for namespace, types in NAMESPACES.items():
        tree = tree_of(
            {f"t{t}": {f"{namespace}-{t}-{i}": info() for i in range(2)} for t in range(types)}
        )
        managers.append(await serve(namespace, SteadyScanner(tree), watcher=watcher))
        names += [f"{namespace}/t{t}" for t in range(types)]
    return managers, names


def registered_everywhere(
    kubelet: FakeKubelet, managers: list[Manager], names: list[str], registrations: int
) -> bool:
    """Kubelet has every resource from exactly ``registrations`` registrations, all ready."""
    resources = kubelet.resources
    statuses = {name: s for m in managers for name, s in m.resources.items()}
    return all(
        name in resources
        and resources[name].registrations == registrations
        and resources[name].connected
        and resources[name].allocatable == 2
        and statuses[name].ready
        for name in names
    )


class TestHundredRestarts:
    async def test_every_resource_registers_once_per_restart_and_nothing_leaks(
        self, kubelet: FakeKubelet, serve: ServeFn, short_dir: Path
    ) -> None:
        """100 restarts, 10 resources: one registration each per restart; no fd/task/socket leak."""
        managers, names = await serve_ten(serve, short_dir)
        assert len(names) == 10
        await kubelet.wait_for(
            lambda: registered_everywhere(kubelet, managers, names, 1), timeout=10
        )
        before = ProcessCounts.now()
        sockets_before = socket_files(short_dir)

        for restart in range(1, 101):
            await kubelet.restart()
            await kubelet.wait_for(
                lambda r=restart: registered_everywhere(kubelet, managers, names, r + 1),
                timeout=10,
                what=f"every resource registered exactly {restart + 1} times",
            )

        # Closed channels and finished handlers are released asynchronously: wait for the
        # counts to come back rather than compare at one arbitrary instant.
        await kubelet.wait_for(
            lambda: ProcessCounts.now().at_most(before),
            timeout=10,
            what=f"fds/sockets/tasks back to {before} (now {ProcessCounts.now()})",
        )
        assert registered_everywhere(kubelet, managers, names, 101)
        assert kubelet.rejected == ()
        assert socket_files(short_dir) == sockets_before
        assert len(sockets_before) == 11  # kubelet.sock and one per resource


class TestKubeletAbsence:
    async def test_absent_for_ten_seconds_at_start(self, serve: ServeFn, short_dir: Path) -> None:
        """Kubelet appearing 10 s after the host: every resource registers once it is there."""
        managers, names = await serve_ten(serve, short_dir)
        await asyncio.sleep(10)  # the scenario itself: no kubelet for 10 s
        assert not any(s.registered for m in managers for s in m.resources.values())
        kubelet = FakeKubelet(short_dir)
        await kubelet.start()
        try:
            await kubelet.wait_for(
                lambda: registered_everywhere(kubelet, managers, names, 1), timeout=10
            )
            assert kubelet.rejected == ()
        finally:
            await kubelet.stop()

    async def test_gone_for_ten_seconds_mid_run(
        self, kubelet: FakeKubelet, serve: ServeFn, short_dir: Path
    ) -> None:
        """Kubelet gone for 10 s: readiness drops and stays down; all re-register on its return."""
        managers, names = await serve_ten(serve, short_dir)
        await kubelet.wait_for(lambda: registered_everywhere(kubelet, managers, names, 1))

        await kubelet.stop()
        await kubelet.wait_for(
            lambda: not any(s.ready for m in managers for s in m.resources.values()),
            what="readiness to drop on every resource",
        )
        await asyncio.sleep(10)  # the scenario itself: kubelet away for 10 s
        statuses = [s for m in managers for s in m.resources.values()]
        assert not any(s.ready or s.registered for s in statuses)
        assert all(s.healthy == 2 for s in statuses)  # the devices are fine; kubelet is not

        await kubelet.start()
        await kubelet.wait_for(
            lambda: registered_everywhere(kubelet, managers, names, 2), timeout=10
        )
        assert kubelet.rejected == ()
