"""Builders shared by the DRA driver tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import lightkube
import pytest_asyncio

from host._cancellation import cancel_and_wait
from host.deviceplugin import HEALTHY, DeviceInfo, DeviceSpec, DeviceTree
from host.deviceplugin._cdi import validate_cdi_spec
from host.dra import ClaimSource, DraDriver, DraPlugin, kube_client
from host.testing import (
    DraClaimResult,
    FakeApiServer,
    FakeClaims,
    FakeDraKubelet,
    allocated_claim,
)

_Served = TypeVar("_Served")

DRIVER = "gpu.example.com"
NODE = "node-a"
PLUGIN_SPEC: Mapping[str, Any] = {
    "cdiVersion": "0.5.0",
    "kind": "example.com/gpu",
    "devices": [{"name": "card0", "containerEdits": {"env": ["OWN=1"]}}],
}
"""A plugin's own CDI spec for its card0, ``example.com/gpu=card0``."""
PLUGIN_SPEC_FILE = "example.com-gpu-card0.json"
"""The file :data:`PLUGIN_SPEC` is written to."""


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


async def prepare_on_api(
    apiserver: FakeApiServer, kubelet: FakeDraKubelet, device: str, name: str = "c0"
) -> tuple[str, DraClaimResult]:
    """Allocate ``device`` to a new claim on the API server and have kubelet prepare it.

    Returns the claim's UID and its (successful) result.
    """
    claim = apiserver.add_claim(
        "default", name, allocation={"devices": {"results": [result(device)]}}
    )
    uid: str = claim["metadata"]["uid"]
    return uid, (await prepare_ok(kubelet, ("default", name, uid)))[uid]


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


def without_version(spec: Mapping[str, Any]) -> dict[str, Any]:
    """``spec`` but its ``cdiVersion``: the writer stores the lowest one a spec needs."""
    return {key: value for key, value in spec.items() if key != "cdiVersion"}


async def prepare_ok(
    kubelet: FakeDraKubelet, *claims: tuple[str, str, str]
) -> dict[str, DraClaimResult]:
    """Prepare ``claims`` through ``kubelet``; every one must succeed. Results by UID."""
    results = await kubelet.prepare(DRIVER, claims)
    errors = {uid: outcome.error for uid, outcome in results.items() if outcome.error}
    assert not errors, errors
    return results


class _Runner(Generic[_Served]):
    """What a runner serves, each as a task; stop() cancels one and waits for it."""

    def __init__(self, dirs: Dirs) -> None:
        self.dirs = dirs
        self.tasks: dict[_Served, asyncio.Task[None]] = {}

    async def stop(self, served: _Served) -> None:
        await cancel_and_wait(self.tasks.pop(served))

    async def stop_all(self) -> None:
        for served in list(self.tasks):
            await self.stop(served)


class DriverRunner(_Runner[DraDriver]):
    """Starts drivers as tasks on the test's dirs, reading claims from ``claims``."""

    def __init__(self, dirs: Dirs, claims: ClaimSource) -> None:
        super().__init__(dirs)
        self.claims = claims

    async def start(
        self,
        scanner: object = None,
        devices: Mapping[str, Mapping[str, DeviceInfo]] | None = None,
        *,
        kubelet: FakeDraKubelet | None = None,
        **kwargs: Any,
    ) -> DraDriver:
        """Serve a driver of ``devices`` (default: :func:`snapshot`); with ``kubelet``,
        return once that kubelet has registered it."""
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
        if kubelet is not None:
            await kubelet.wait_for_driver(DRIVER)
        return driver


class PluginRunner(_Runner[DraPlugin]):
    """Builds DraPlugins (scanner feed, slices, kubelet plugin) on the test's dirs and
    API server, and serves them as tasks."""

    def __init__(self, dirs: Dirs, client: lightkube.AsyncClient) -> None:
        super().__init__(dirs)
        self.client = client

    def build(self, scanner: object, **kwargs: Any) -> DraPlugin:
        """Plugin ``gpu`` serving ``scanner`` as driver :data:`DRIVER` on :data:`NODE`."""
        return DraPlugin(
            "gpu",
            DRIVER,
            scanner,  # type: ignore[arg-type]
            self.client,
            node_name=NODE,
            plugin_dir=self.dirs.plugins,
            registry_dir=self.dirs.registry,
            cdi_dir=self.dirs.cdi,
            **kwargs,
        )

    def serve(self, plugin: DraPlugin) -> DraPlugin:
        """Run ``plugin.serve()`` as a task until :meth:`stop` (or the test's end)."""
        self.tasks[plugin] = asyncio.create_task(plugin.serve())
        return plugin

    def start(self, scanner: object, **kwargs: Any) -> DraPlugin:
        """:meth:`build` then :meth:`serve`."""
        return self.serve(self.build(scanner, **kwargs))
