"""Fixtures of the DRA tests: fake API server, drivers served in the test's loop, fake kubelet."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from host.deviceplugin import DeviceInfo
from host.dra import DraDriver
from host.testing import FakeClaims, FakeDraKubelet
from host.testing._apiserver_fixtures import apiserver, apiserver_kubeconfig
from tests.dra.helpers import DRIVER, NODE, Dirs, snapshot


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


class DriverRunner:
    """Starts drivers as tasks; stop() cancels one and waits for it to finish."""

    def __init__(self, dirs: Dirs, claims: FakeClaims) -> None:
        self.dirs = dirs
        self.claims = claims
        self.tasks: dict[DraDriver, asyncio.Task[None]] = {}

    async def start(
        self,
        scanner: object = None,
        devices: Mapping[str, Mapping[str, DeviceInfo]] | None = None,
        **kwargs: Any,
    ) -> DraDriver:
        kwargs.setdefault("plugin_dir", self.dirs.plugins)
        kwargs.setdefault("registry_dir", self.dirs.registry)
        kwargs.setdefault("cdi_dir", self.dirs.cdi)
        driver = DraDriver(DRIVER, NODE, scanner, self.claims, **kwargs)
        driver.update(snapshot() if devices is None else devices)
        task = asyncio.create_task(driver.serve())
        self.tasks[driver] = task
        waiter = asyncio.ensure_future(driver.wait_serving())
        await asyncio.wait({task, waiter}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            waiter.cancel()
            task.result()
        assert driver.serving
        return driver

    async def stop(self, driver: DraDriver) -> None:
        task = self.tasks.pop(driver)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest_asyncio.fixture
async def drivers(dirs: Dirs, claims: FakeClaims) -> AsyncIterator[DriverRunner]:
    runner = DriverRunner(dirs, claims)
    try:
        yield runner
    finally:
        for driver in list(runner.tasks):
            await runner.stop(driver)


__all__ = ["apiserver", "apiserver_kubeconfig"]
