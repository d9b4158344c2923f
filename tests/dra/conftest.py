"""Fixtures of the DRA tests: fake API server, drivers served in the test's loop, fake kubelet."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import lightkube
import pytest
import pytest_asyncio

from host.testing import FakeClaims, FakeDraKubelet
from host.testing._apiserver_fixtures import apiserver, apiserver_kubeconfig
from tests.dra.helpers import Dirs, DriverRunner, PluginRunner, client


@pytest.fixture
def dirs(short_dir: Path) -> Dirs:
    return Dirs(short_dir)


@pytest.fixture
def claims() -> FakeClaims:
    return FakeClaims()


@pytest_asyncio.fixture
async def dra_kubelet(dirs: Dirs) -> AsyncIterator[FakeDraKubelet]:
    async with FakeDraKubelet(dirs.registry) as kubelet:
        yield kubelet


@pytest_asyncio.fixture
async def drivers(dirs: Dirs, claims: FakeClaims) -> AsyncIterator[DriverRunner]:
    runner = DriverRunner(dirs, claims)
    yield runner
    await runner.stop_all()


@pytest_asyncio.fixture
async def dra_plugins(dirs: Dirs, client: lightkube.AsyncClient) -> AsyncIterator[PluginRunner]:
    """DraPlugins of the test, against the fake API server; stopped at its end."""
    runner = PluginRunner(dirs, client)
    yield runner
    await runner.stop_all()


__all__ = ["apiserver", "apiserver_kubeconfig", "client"]
