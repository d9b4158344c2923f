"""Publisher tests' shared pieces: one driver on one node, snapshots of GPUs, waits."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from host.deviceplugin import HEALTHY, UNHEALTHY, DeviceInfo
from host.dra import ResourceSlicePublisher, device_name
from host.testing import FakeApiServer

DRIVER = "gpu.intel.com"
NODE = "node-1"
NODE_UID = "0b9b5a1c-1111-4000-8000-00000000abcd"


def gpus(
    count: int, unhealthy: set[int] = frozenset(), type_: str = "i915"
) -> dict[str, dict[str, DeviceInfo]]:  # type: ignore[assignment]
    return {
        type_: {
            f"card{i}-0": DeviceInfo(state=UNHEALTHY if i in unhealthy else HEALTHY)
            for i in range(count)
        }
    }


@contextlib.asynccontextmanager
async def publishing(kubeconfig: Path, **kwargs: Any) -> AsyncIterator[ResourceSlicePublisher]:
    kwargs.setdefault("retry_initial", 0.02)
    kwargs.setdefault("retry_max", 0.3)
    kwargs.setdefault("request_timeout", 2.0)
    publisher = ResourceSlicePublisher(DRIVER, NODE, kubeconfig=kubeconfig, **kwargs)
    await publisher.start()
    try:
        yield publisher
    finally:
        await publisher.stop()


async def synced(publisher: ResourceSlicePublisher, timeout: float = 10) -> None:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        await publisher.wait_synced()


async def failures(
    publisher: ResourceSlicePublisher,
    count: int,
    timeout: float = 10,  # noqa: ASYNC109 - a timeout argument reads best in tests
) -> None:
    async with asyncio.timeout(timeout):
        await publisher.wait_status(lambda s: s.failures >= count)


def devices(api: FakeApiServer) -> dict[str, dict[str, Any]]:
    """Every published device by name; fails on a device name seen twice (a duplicate)."""
    found: dict[str, dict[str, Any]] = {}
    for one in api.resource_slices(driver=DRIVER, node_name=NODE):
        for device in one["spec"].get("devices", ()):
            assert device["name"] not in found, f"duplicate device {device['name']}"
            found[device["name"]] = device
    return found


def pool_complete(api: FakeApiServer) -> bool:
    """All slices share one generation and their count matches resourceSliceCount."""
    slices = api.resource_slices(driver=DRIVER, node_name=NODE)
    pools = {
        (s["spec"]["pool"]["generation"], s["spec"]["pool"]["resourceSliceCount"]) for s in slices
    }
    return len(pools) == 1 and next(iter(pools))[1] == len(slices)


def matches(api: FakeApiServer, snapshot: dict[str, dict[str, DeviceInfo]]) -> Callable[[], bool]:
    """A condition: the server holds exactly ``snapshot``'s devices, healthy ones untainted."""

    def check() -> bool:
        want = {
            device_name(t, i): info.state == HEALTHY
            for t, ids in snapshot.items()
            for i, info in ids.items()
        }
        have = devices(api)
        return (
            set(have) == set(want)
            and all(("taints" not in have[n]) == healthy for n, healthy in want.items())
            and pool_complete(api)
        )

    return check


def writes(api: FakeApiServer, since: int = 0) -> list[str]:
    return [
        f"{r.method} {r.path.rsplit('/', 1)[-1]}"
        for r in api.requests[since:]
        if r.method in ("POST", "PUT", "DELETE")
    ]


@pytest.fixture
def node(apiserver: FakeApiServer) -> dict[str, Any]:
    return apiserver.add_node(NODE, uid=NODE_UID)
