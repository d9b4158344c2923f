"""What the end-to-end tests of ``run --dra`` check after every disruption.

:class:`PoolHistory` records each state of one driver's pool on the fake API server
(after every change of a stored object) and checks, in every state and at the end,
that no ResourceSlice is duplicated; :func:`assert_claims_kept` checks that claims
prepared before a disruption are still the driver's: a repeated prepare is answered
identically without reading the claim again, and unprepare removes their CDI specs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from host import hookimpl
from host.deviceplugin import HEALTHY, DeviceInfo, DeviceSpec, DeviceTree, Notifier
from host.dra import slice_name
from host.testing import DraClaim, DraClaimResult, FakeApiServer, FakeDraKubelet

__all__ = [
    "DRIVER",
    "NODE",
    "PoolHistory",
    "ScriptedPlugin",
    "ScriptedScanner",
    "assert_claims_kept",
    "gpu_tree",
]

DRIVER = "gpu.example.com"
NODE = "node-a"


def gpu_tree(*ids: str, unhealthy: Sequence[str] = ()) -> DeviceTree:
    """A tree of i915 devices ``ids``, each with its own device node; ``unhealthy`` ones so."""
    tree = DeviceTree()
    for dev_id in ids:
        path = f"/dev/dri/{dev_id}"
        node = DeviceSpec(host_path=path, container_path=path, permissions="rw")
        state = "Unhealthy" if dev_id in unhealthy else HEALTHY
        tree.add_device("i915", dev_id, DeviceInfo(state=state, nodes=[node]))
    return tree


class ScriptedScanner:
    """A scanner the test drives: each tree put with :meth:`publish` is notified."""

    def __init__(self, *trees: DeviceTree) -> None:
        self._trees: asyncio.Queue[DeviceTree] = asyncio.Queue()
        for tree in trees:
            self._trees.put_nowait(tree)

    def publish(self, tree: DeviceTree) -> None:
        """Have the scanner notify ``tree`` next."""
        self._trees.put_nowait(tree)

    async def scan(self, notifier: Notifier) -> None:
        """Notify every tree published, until cancelled."""
        while True:
            notifier.notify(await self._trees.get())


class ScriptedPlugin:
    """A plugin object serving one :class:`ScriptedScanner` as namespace ``gpu.example.com``."""

    def __init__(self, scanner: ScriptedScanner) -> None:
        self.scanner = scanner

    @hookimpl
    def devplugin_scanners(self, config: object) -> list[tuple[str, object]]:
        return [(DRIVER, self.scanner)]


def _generation(item: dict[str, Any]) -> int:
    return int(item["spec"]["pool"]["generation"])


@dataclass
class PoolHistory:
    """Every state of the pool of ``driver`` on ``node`` the API server held, checked.

    ``states`` holds each distinct state, in order (the first one as found).

    In every state: slice names unique and the fixed ones (index below the pool's
    ``resourceSliceCount``: a second slice for the same content would have another
    name), device names unique across the slices of the newest generation. Over time:
    the pool's generation never goes down, unless the pool was gone in between (kubelet
    wiped it). ``violations`` says what was wrong and when.
    """

    api: FakeApiServer
    driver: str = DRIVER
    node: str = NODE
    states: list[list[dict[str, Any]]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        previous = self.api.on_change

        def changed() -> None:
            previous()
            self.record()

        self.api.on_change = changed
        self.record()

    def record(self) -> None:
        """Look at the pool as it is now."""
        slices = self.api.resource_slices(driver=self.driver, node_name=self.node)
        if self.states and slices == self.states[-1]:
            return  # another object changed
        index = len(self.states)
        self.states.append(slices)
        if not slices:
            return
        names = [item["metadata"]["name"] for item in slices]
        newest = max(_generation(item) for item in slices)
        current = [item for item in slices if _generation(item) == newest]
        count = current[0]["spec"]["pool"]["resourceSliceCount"]
        widest = max(item["spec"]["pool"]["resourceSliceCount"] for item in slices)
        fixed = {slice_name(self.driver, self.node, i) for i in range(widest)}
        devices = [device["name"] for item in current for device in item["spec"]["devices"]]
        if len(names) != len(set(names)):
            self.violations.append(f"state {index}: slice names repeated: {names}")
        if not set(names) <= fixed:
            self.violations.append(f"state {index}: slices beyond the fixed names: {names}")
        if len(devices) != len(set(devices)):
            self.violations.append(f"state {index}: a device in two slices: {sorted(devices)}")
        if len(current) > count:
            self.violations.append(f"state {index}: {len(current)} slices of {count} counted")
        before = self._last_generation()
        if before is not None and newest < before:
            self.violations.append(f"state {index}: generation went down, {before} -> {newest}")

    def _last_generation(self) -> int | None:
        # The newest generation of the last non-empty state since the pool was last gone.
        for slices in reversed(self.states[:-1]):
            if not slices:
                return None
            return max(_generation(item) for item in slices)
        return None

    def devices(self) -> dict[str, list[dict[str, Any]]]:
        """The devices published now, by name: the taints of each (one entry each)."""
        found: dict[str, list[dict[str, Any]]] = {}
        for item in self.states[-1] if self.states else ():
            for device in item["spec"]["devices"]:
                found.setdefault(device["name"], []).extend(device.get("taints") or ())
        return found

    def assert_clean(self) -> None:
        """No violation so far, and the pool now is whole: one generation, every slice."""
        assert self.violations == []
        slices = self.api.resource_slices(driver=self.driver, node_name=self.node)
        assert slices, f"no ResourceSlices of {self.driver} on {self.node}"
        assert len({_generation(item) for item in slices}) == 1, "mixed generations at the end"
        count = slices[0]["spec"]["pool"]["resourceSliceCount"]
        assert sorted(item["metadata"]["name"] for item in slices) == sorted(
            slice_name(self.driver, self.node, i) for i in range(count)
        )

    def generations(self) -> list[int]:
        """The pool's newest generation in each non-empty state, in order."""
        return [max(_generation(i) for i in slices) for slices in self.states if slices]


def _claim_gets(api: FakeApiServer, claim: DraClaim) -> int:
    path = f"/apis/resource.k8s.io/v1/namespaces/{claim.namespace}/resourceclaims/{claim.name}"
    return sum(1 for request in api.requests if request.method == "GET" and request.path == path)


async def assert_claims_kept(
    api: FakeApiServer,
    kubelet: FakeDraKubelet,
    claims: Sequence[DraClaim],
    *,
    unprepare: bool = True,
) -> None:
    """The driver still holds ``claims``: kubelet's repeated prepare gets the same answer.

    The repeat is answered from the driver's record (the claims are not read from the
    API server again); then, with ``unprepare``, kubelet's unprepare succeeds and each
    claim's own CDI spec files are gone (the plugin's CDI devices stay, as they must).
    """
    (driver,) = {claim.driver for claim in claims}
    gets = {claim.uid: _claim_gets(api, claim) for claim in claims}
    repeated = await kubelet.prepare(driver, [claim.ref for claim in claims])
    for claim in claims:
        assert repeated[claim.uid] == DraClaimResult(devices=claim.prepared), claim.name
        assert _claim_gets(api, claim) == gets[claim.uid], f"{claim.name} was read again"
        for cdi_id, path in claim.spec_files.items():
            assert path.exists(), f"{cdi_id}: {path} is gone"
    if not unprepare:
        return
    errors = await kubelet.unprepare(driver, [claim.ref for claim in claims])
    assert errors == {claim.uid: "" for claim in claims}
    for claim in claims:
        own = f"{claim.driver}/dra=claim-{claim.uid}-"
        for cdi_id, path in claim.spec_files.items():
            # The claim's own specs go; a plugin's CDI device (DeviceInfo.cdi_spec) stays.
            assert path.exists() != cdi_id.startswith(own), f"{claim.name}: {cdi_id}"
