"""Pytest fixtures for the fake API server: ``apiserver`` and ``apiserver_kubeconfig``.

Loaded by the :mod:`host.testing` pytest plugin, like the kubelet fixtures.

PYTEST_DONT_REWRITE: as :mod:`host.testing`, importable before the plugin is loaded.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from host.testing._apiserver import FakeApiServer

__all__ = ["apiserver", "apiserver_kubeconfig"]


@pytest_asyncio.fixture
async def apiserver() -> AsyncIterator[FakeApiServer]:
    """Serve a :class:`~host.testing.FakeApiServer` on 127.0.0.1, stopped at teardown."""
    async with FakeApiServer() as server:
        yield server


@pytest.fixture
def apiserver_kubeconfig(apiserver: FakeApiServer) -> Iterator[Path]:
    """Write a kubeconfig file pointing at the ``apiserver`` fixture; yield its path."""
    directory = Path(tempfile.mkdtemp(prefix="kc", dir="/tmp"))
    try:
        yield apiserver.write_kubeconfig(directory / "kubeconfig")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
