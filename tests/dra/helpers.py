"""Builders shared by the DRA driver tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightkube
import pytest_asyncio

from host.deviceplugin import HEALTHY, DeviceInfo, DeviceSpec, DeviceTree
from host.deviceplugin._cdi import validate_cdi_spec
from host.dra import ClaimSource, DraDriver, kube_client
from host.testing import FakeApiServer, FakeClaims, allocated_claim

DRIVER = "gpu.example.com"
NODE = "node-a"


@pytest_asyncio.fixture
async def client(
    apiserver: FakeApiServer, apiserver_kubeconfig: Path
) -> AsyncIterator[lightkube.AsyncClient]:
    """A Kubernetes client of the fake API server, which has Node :data:`NODE`."""
    apiserver.add_node(NODE)
    kube = kube_client(apiserver_kubeconfig)
    try:
        yield kube
    finally:
        await kube.close()


def gpu(index: int, state: str = HEALTHY, **kwargs: Any) -> DeviceInfo:
    path = f"/dev/dri/card{index}"
    return DeviceInfo(
        state=state,
        nodes=[DeviceSpec(host_path=path, container_path=path, permissions="rw")],
        **kwargs,
    )


def gpu_tree(*cards: int) -> DeviceTree:
    """A DeviceTree of i915 ``card<N>`` for each index in ``cards``."""
    devices = DeviceTree()
    for index in cards:
        devices.add_device("i915", f"card{index}", gpu(index))
    return devices


def published_devices(api: FakeApiServer) -> list[str]:
    """The device names in the driver's slices on the node, sorted."""
    return sorted(
        device["name"]
        for item in api.resource_slices(driver=DRIVER, node_name=NODE)
        for device in item["spec"].get("devices", ())
    )


def snapshot(count: int = 4, **kwargs: Any) -> dict[str, dict[str, DeviceInfo]]:
    return {"i915": {f"card{i}": gpu(i, **kwargs) for i in range(count)}}


def result(
    device: str, request: str = "gpu", pool: str = NODE, driver: str = DRIVER
) -> dict[str, str]:
    return {"request": request, "driver": driver, "pool": pool, "device": device}


@dataclass
class Dirs:
    root: Path

    @property
    def plugins(self) -> Path:
        return self.root / "plugins"

    @property
    def registry(self) -> Path:
        return self.root / "reg"

    @property
    def cdi(self) -> Path:
        return self.root / "cdi"

    @property
    def checkpoint(self) -> Path:
        return self.plugins / DRIVER / "checkpoint.json"


def add_claim(
    claims: FakeClaims, name: str, uid: str, *results: Mapping[str, Any]
) -> tuple[str, str, str]:
    claims.put(allocated_claim("default", name, uid, results))
    return ("default", name, uid)


def resolve_cdi(cdi_dir: Path, cdi_id: str) -> Mapping[str, Any]:
    """Find the spec file defining ``cdi_id`` and return it, validated."""
    kind, name = cdi_id.split("=", 1)
    matches = []
    for path in cdi_dir.glob("*.json"):
        spec = json.loads(path.read_text())
        if spec.get("kind") == kind and spec["devices"][0]["name"] == name:
            matches.append(spec)
    assert len(matches) == 1, f"{cdi_id}: {len(matches)} spec files define it"
    return validate_cdi_spec(matches[0])


def cdi_files(cdi_dir: Path) -> list[str]:
    return sorted(p.name for p in cdi_dir.glob("*.json")) if cdi_dir.exists() else []


class DriverRunner:
    """Starts drivers as tasks; stop() cancels one and waits for it to finish."""

    def __init__(self, dirs: Dirs, claims: ClaimSource) -> None:
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
            del self.tasks[driver]
            task.result()
        assert driver.serving
        return driver

    async def stop(self, driver: DraDriver) -> None:
        task = self.tasks.pop(driver)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class QueueScanner:
    """A scanner driven by the test: each tree put on ``trees`` is notified, an exception raised.

    ``check_interval``: the seconds between notifies it promises (None: no promise).
    """

    def __init__(self, *trees: DeviceTree, check_interval: float | None = None) -> None:
        self.check_interval = check_interval
        self.trees: asyncio.Queue[DeviceTree | BaseException] = asyncio.Queue()
        for tree in trees:
            self.trees.put_nowait(tree)

    async def scan(self, notifier: Any) -> None:
        while True:
            item = await self.trees.get()
            if isinstance(item, BaseException):
                raise item
            notifier.notify(item)
