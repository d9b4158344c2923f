"""Scanner chaos: scanners that raise, hang, return, flood or notify garbage, next to good ones.

Every scanner gets its own Manager, all sharing one watcher in one loop, as plugins do
in the host. While the chaos goes on, the good resources keep answering Allocate and
come back after a kubelet restart; once it is over, what kubelet sees matches what the
managers report, resource by resource.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from host.deviceplugin import UNHEALTHY, DeviceSpec, DeviceTree, Manager, PluginDirWatcher
from host.testing import FakeKubelet

from .conftest import ServeFn, SteadyScanner, info, node, socket_files, tree_of

pytestmark = pytest.mark.asyncio


def devices(prefix: str, count: int, unhealthy: int = 0) -> dict[str, Any]:
    return {
        f"{prefix}{i}": info(f"/dev/{prefix}{i}", state=UNHEALTHY if i < unhealthy else "Healthy")
        for i in range(count)
    }


class RaisesAfterNotifying:
    """Notifies, then raises, on its first ``failures`` runs; scans quietly after that."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.runs = 0

    async def scan(self, notifier: Any) -> None:
        self.runs += 1
        notifier.notify(tree_of({"flaky": devices("f", 3)}))
        if self.runs <= self.failures:
            raise RuntimeError(f"chaos: scan {self.runs} failed")
        await asyncio.Future()


class AlwaysRaises:
    async def scan(self, notifier: Any) -> None:
        raise RuntimeError("chaos: no devices, ever")


class BlocksItsThread:
    """A plain scan that blocks its worker thread until the test ends (after notifying, or not)."""

    def __init__(self, gate: threading.Event, tree: DeviceTree | None) -> None:
        self.gate = gate
        self.tree = tree

    def scan(self, notifier: Any) -> None:
        if self.tree is not None:
            notifier.notify(self.tree)
        self.gate.wait()


class HangsOnTheLoop:
    async def scan(self, notifier: Any) -> None:
        await asyncio.Event().wait()


class ReturnsAfterNotifying:
    async def scan(self, notifier: Any) -> None:
        notifier.notify(tree_of({"once": devices("o", 2)}))


class ReturnsEmptyHanded:
    def scan(self, notifier: Any) -> None:
        return None


class Floods:
    """Notifies ~1,000 trees a second from its thread (one device flapping) until stopped."""

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate
        self.stop = threading.Event()
        self.finished = threading.Event()
        self.sent = 0
        self.trees = [tree_of({"flood": devices("x", 4, unhealthy=n)}) for n in (0, 1)]

    def scan(self, notifier: Any) -> None:
        while not self.stop.is_set():
            notifier.notify(self.trees[self.sent % 2])
            self.sent += 1
            time.sleep(0.001)
        notifier.notify(tree_of({"flood": devices("x", 4)}))
        self.finished.set()
        self.gate.wait()


class NotifiesGarbage:
    """Trees with a type that cannot be a resource name; on its first runs, a non-tree too."""

    def __init__(self, bad_runs: int) -> None:
        self.bad_runs = bad_runs
        self.runs = 0

    async def scan(self, notifier: Any) -> None:
        self.runs += 1
        notifier.notify(tree_of({"fine": devices("g", 2), "Bad Type!": devices("b", 1)}))
        if self.runs <= self.bad_runs:
            notifier.notify({"fine": {"g0": info()}})  # not a DeviceTree: TypeError
        await asyncio.Future()


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """Holds blocked scanner threads until the test is over."""
    event = threading.Event()
    yield event
    event.set()


def consistent(kubelet: FakeKubelet, managers: list[Manager]) -> bool:
    """Kubelet sees exactly the managers' resources, each with their device and health counts."""
    served = {name: s for m in managers for name, s in m.resources.items()}
    connected = {name for name, state in kubelet.resources.items() if state.connected}
    if connected != served.keys():
        return False
    return all(
        status.ready
        and kubelet.resources[name].capacity == status.devices
        and kubelet.resources[name].allocatable == status.healthy
        for name, status in served.items()
    )


class TestScannerChaos:
    async def test_the_good_keep_serving_and_state_stays_consistent(
        self,
        kubelet: FakeKubelet,
        serve: ServeFn,
        short_dir: Path,
        gate: threading.Event,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Raising, hanging, returning, flooding, garbage: good plugins serve; state matches."""
        caplog.set_level(logging.WARNING)
        watcher = PluginDirWatcher(short_dir)
        flaky, flood, garbage = RaisesAfterNotifying(3), Floods(gate), NotifiesGarbage(2)
        scanners = {
            "good.example.com": SteadyScanner(
                tree_of({"a": devices("a", 2), "b": devices("b", 1)})
            ),
            "flaky.example.com": flaky,
            "raises.example.com": AlwaysRaises(),
            "blocked.example.com": BlocksItsThread(gate, None),
            "busy.example.com": BlocksItsThread(gate, tree_of({"busy": devices("y", 1)})),
            "hangs.example.com": HangsOnTheLoop(),
            "once.example.com": ReturnsAfterNotifying(),
            "empty.example.com": ReturnsEmptyHanded(),
            "flood.example.com": flood,
            "garbage.example.com": garbage,
        }
        managers = [await serve(ns, scanner, watcher=watcher) for ns, scanner in scanners.items()]

        # During the chaos: the good resources answer every Allocate...
        await kubelet.wait_for_resource("good.example.com/a", count=2, healthy=2)
        await kubelet.wait_for(lambda: flood.sent > 1000, timeout=10, what="1,000 flood trees")
        for round_ in range(30):
            response = await kubelet.allocate("good.example.com/a", [f"a{round_ % 2}"])
            assert [DeviceSpec.of(d) for d in response.container_responses[0].devices] == [
                node(f"/dev/a{round_ % 2}")
            ]
        # ...and come back after a kubelet restart, flood and all.
        await kubelet.restart()
        for name in ("good.example.com/a", "good.example.com/b", "busy.example.com/busy"):
            await kubelet.wait_for(
                lambda n=name: (
                    n in kubelet.resources
                    and kubelet.resources[n].registrations == 2
                    and kubelet.resources[n].connected
                ),
                what=f"{name} registered again",
            )
        await kubelet.wait_for_resource("flood.example.com/flood", count=4)

        # After it: every resource settles, and kubelet agrees with the managers.
        flood.stop.set()
        await kubelet.wait_for(
            lambda: flaky.runs > 3 and garbage.runs > 2 and flood.finished.is_set(),
            what="chaos to end",
        )
        await kubelet.wait_for(
            # The flood's last (all healthy) tree reaches the loop after its notify returns.
            lambda: (
                consistent(kubelet, managers)
                and all(
                    s.healthy == 4 for m in managers for n, s in m.resources.items() if "flood" in n
                )
            ),
            timeout=10,
            what="kubelet and managers to agree",
        )
        served = {name: s for m in managers for name, s in m.resources.items()}
        assert {name: (s.devices, s.healthy) for name, s in served.items()} == {
            "good.example.com/a": (2, 2),
            "good.example.com/b": (1, 1),
            "flaky.example.com/flaky": (3, 3),
            "busy.example.com/busy": (1, 1),
            "once.example.com/once": (2, 2),
            "flood.example.com/flood": (4, 4),
            "garbage.example.com/fine": (2, 2),
        }
        assert socket_files(short_dir) == {"kubelet.sock"} | {
            f"{name.replace('/', '-')}.sock" for name in served
        }
        assert kubelet.rejected == ()
        messages = [r.getMessage() for r in caplog.records]
        assert sum("'Bad Type!' gives invalid resource name" in m for m in messages) == 1
        assert any("scanner failed" in m and "'raises.example.com'" in m for m in messages)
        crashes = [str(r.exc_info[1]) for r in caplog.records if r.exc_info]
        assert "notify() expects a DeviceTree, got dict" in crashes
