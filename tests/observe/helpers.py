"""Reading a host's /metrics in tests: parsed with prometheus_client, looked up by labels."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from host import hookimpl
from host.deviceplugin import HEALTHY, UNHEALTHY, DeviceInfo, DeviceTree, Notifier, pluginapi

NAMESPACE = "obs.example.com"
RESOURCE = f"{NAMESPACE}/dev"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text page, by (sample name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float | None:
    """The value of sample ``name`` with exactly ``labels`` (None when absent)."""
    return samples(text).get((name, frozenset(labels.items())))


def families(text: str) -> dict[str, Any]:
    """Every metric family by name, with its type and help."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def tree(*states: str) -> DeviceTree:
    """Devices ``d0``, ``d1``, ... of type ``dev`` with the given health states."""
    result = DeviceTree()
    for index, state in enumerate(states):
        result.add_device("dev", f"d{index}", DeviceInfo(state=state))
    return result


class ControlledScanner:
    """Reports what the test tells it to; raises when the test says so."""

    def __init__(self, *states: str) -> None:
        self.states = states or (HEALTHY, HEALTHY)
        self.notifier: Notifier | None = None
        self.failure: asyncio.Future[None] | None = None
        self.scans = 0

    async def scan(self, notifier: Notifier) -> None:
        self.scans += 1
        self.notifier = notifier
        self.failure = asyncio.get_running_loop().create_future()
        notifier.notify(tree(*self.states))
        await self.failure  # raises what the test sets

    def report(self, *states: str) -> None:
        assert self.notifier is not None
        self.states = states
        self.notifier.notify(tree(*states))

    def crash(self) -> None:
        assert self.failure is not None
        self.failure.set_exception(RuntimeError("scanner lost the device"))


class PreferringScanner(ControlledScanner):
    """A ControlledScanner that also prefers devices and prepares containers."""

    def get_preferred_allocation(
        self, request: pluginapi.PreferredAllocationRequest
    ) -> pluginapi.PreferredAllocationResponse:
        response = pluginapi.PreferredAllocationResponse()
        for creq in request.container_requests:
            chosen = sorted(creq.available_deviceIDs)[: creq.allocation_size]
            response.container_responses.add(deviceIDs=chosen)
        return response

    def pre_start_container(self, request: pluginapi.PreStartContainerRequest) -> None:
        if "d1" in request.devices_ids:
            raise RuntimeError("d1 needs a firmware reset first")


class ThreadScanner:
    """A plain (blocking) scan: it runs in a thread of its own, notifies once, returns."""

    def scan(self, notifier: Notifier) -> None:
        notifier.notify(tree(HEALTHY))


class ControlledPlugin:
    """A plugin object serving one ControlledScanner as ``obs.example.com``."""

    def __init__(self, scanner: object, namespace: str = NAMESPACE) -> None:
        self.scanner = scanner
        self.namespace = namespace

    @hookimpl
    def devplugin_scanners(self, config: object) -> list[tuple[str, object]]:
        return [(self.namespace, self.scanner)]


class BrokenPlugin:
    """A plugin whose scanner hook raises: it is left out."""

    @hookimpl
    def devplugin_scanners(self, config: object) -> list[tuple[str, object]]:
        raise RuntimeError("no hardware support library")


__all__ = [
    "HEALTHY",
    "NAMESPACE",
    "RESOURCE",
    "UNHEALTHY",
    "BrokenPlugin",
    "ControlledPlugin",
    "ControlledScanner",
    "PreferringScanner",
    "ThreadScanner",
    "families",
    "samples",
    "tree",
    "value",
]
