"""What ``devplugin-host simulate`` overhears: scanners' trees and the fake kubelet's changes.

:class:`ObservedScanner` wraps a plugin's scanner so the simulation learns of each tree
it notifies (the Manager still gets it unchanged); :class:`KubeletObserver` turns every
change of the :class:`host.testing.FakeKubelet`'s state into an :class:`Event`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from host._loader import ScannerRecord
from host._simulate_output import Event
from host.deviceplugin import DeviceTree, Notifier
from host.deviceplugin._names import resource_name_error
from host.deviceplugin._scanning import run_scan
from host.testing import FakeKubelet, KubeletError, Registration

__all__ = ["KubeletObserver", "ObservedScanner"]

_WAIT_FOREVER = 3600.0  # FakeKubelet.wait_for needs a bound; the observer just waits again


class ObservedScanner:
    """A plugin's scanner whose notifications the simulation overhears.

    Everything else (allocate, get_preferred_allocation, ...) is the plugin's own,
    through ``__getattr__``, so kubelet talks to the plugin unchanged.
    """

    def __init__(
        self,
        record: ScannerRecord,
        loop: asyncio.AbstractEventLoop,
        on_first_tree: Callable[[ObservedScanner], None],
    ) -> None:
        self.record = record
        self.types: frozenset[str] | None = None
        """The device types of the latest tree; None until the first notify."""
        self._loop = loop
        self._on_first_tree = on_first_tree

    def __getattr__(self, name: str) -> Any:
        return getattr(self.record.scanner, name)

    async def scan(self, notifier: Notifier) -> None:
        """Run the plugin's scan; each tree goes to the Manager and to the simulation."""
        await run_scan(self.record.scanner, _OverhearingNotifier(notifier, self))

    def resource_names(self) -> list[str]:
        """Return the resources of the latest tree that the Manager serves (valid names)."""
        names = [f"{self.record.namespace}/{dev_type}" for dev_type in self.types or {}]
        return [name for name in names if resource_name_error(name) is None]

    def heard(self, types: frozenset[str]) -> None:
        """Take note of a tree (on the loop)."""
        first, self.types = self.types is None, types
        if first:
            self._on_first_tree(self)


class _OverhearingNotifier:
    def __init__(self, notifier: Notifier, scanner: ObservedScanner) -> None:
        self._notifier = notifier
        self._scanner = scanner

    def notify(self, tree: DeviceTree) -> None:
        self._notifier.notify(tree)  # checks the tree; safe from any thread
        types = frozenset(tree)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
            self._scanner._loop.call_soon_threadsafe(self._scanner.heard, types)


@dataclass(frozen=True)
class _Seen:
    capacity: int
    allocatable: int
    connected: bool
    removed: bool
    devices: Mapping[str, Any]


class KubeletObserver:
    """Turns every change of the fake kubelet's state into events."""

    def __init__(self, kubelet: FakeKubelet, emit: Callable[[Event], None]) -> None:
        self._kubelet = kubelet
        self._emit = emit
        self._last: tuple[int, int, dict[str, _Seen]] = (0, 0, {})

    def _view(self) -> tuple[int, int, dict[str, _Seen]]:
        resources = {
            name: _Seen(s.capacity, s.allocatable, s.connected, s.removed, s.devices)
            for name, s in self._kubelet.resources.items()
        }
        return len(self._kubelet.registrations), len(self._kubelet.rejected), resources

    async def run(self) -> None:
        """Emit events for every change until cancelled."""
        while True:
            self.poll()
            with contextlib.suppress(TimeoutError):
                await self._kubelet.wait_for(
                    lambda: self._view() != self._last, _WAIT_FOREVER, what="a change"
                )

    def poll(self) -> None:
        """Emit the events of every change since the last poll."""
        view = self._view()
        seen_registrations, seen_rejected, seen = self._last
        self._last = view
        offset = time.time() - time.monotonic()  # record times are monotonic
        counts: dict[str, int] = {}
        for index, registration in enumerate(self._kubelet.registrations):
            name = registration.request.resource_name
            counts[name] = counts.get(name, 0) + 1
            if index >= seen_registrations:
                self._emit(self._registered(registration, counts[name], offset))
        for rejection in self._kubelet.rejected[seen_rejected:]:
            request = rejection.request
            data = {"resource": request.resource_name, "endpoint": request.endpoint}
            self._emit(
                Event(
                    "rejected",
                    f"{request.resource_name}: registration rejected: {rejection.reason}",
                    rejection.time + offset,
                    data | {"reason": rejection.reason},
                )
            )
        for name, new in view[2].items():
            event = _resource_event(name, seen.get(name), new)
            if event is not None:
                self._emit(event)

    def _registered(self, registration: Registration, number: int, offset: float) -> Event:
        request = registration.request
        try:
            options = self._kubelet.options(request.resource_name)
        except KubeletError:  # mode 1.24, or gone again: the options it registered with
            options = request.options
        what = "registered" if number == 1 else f"re-registered (registration {number})"
        extras = [f"endpoint {request.endpoint}"]
        if options.get_preferred_allocation_available:
            extras.append("offers GetPreferredAllocation")
        if options.pre_start_required:
            extras.append("requires PreStartContainer")
        data = {
            "resource": request.resource_name,
            "registration": number,
            "endpoint": request.endpoint,
            "preferred_allocation": options.get_preferred_allocation_available,
            "pre_start_required": options.pre_start_required,
        }
        message = f"{request.resource_name}: {what}, {', '.join(extras)}"
        return Event("registered", message, registration.time + offset, data)


def _resource_event(name: str, old: _Seen | None, new: _Seen) -> Event | None:
    if old == new:
        return None
    data = {"resource": name, "capacity": new.capacity, "allocatable": new.allocatable}
    counts = f"capacity {new.capacity}, allocatable {new.allocatable}"
    if old is None:
        return Event("devices", f"{name}: first device list: {counts}", data=data)
    if old.connected and not new.connected:
        return Event("disconnected", f"{name}: plugin connection ended: {counts}", data=data)
    if new.removed and not old.removed:
        return Event("removed", f"{name}: removed after the grace period", data=data)
    if replace(old, connected=new.connected) == new:
        return None  # connected again: the registration's event says so
    added = new.devices.keys() - old.devices.keys()
    gone = old.devices.keys() - new.devices.keys()
    changed = [
        d for d in new.devices.keys() & old.devices.keys() if new.devices[d] != old.devices[d]
    ]
    counted = {"added": len(added), "gone": len(gone), "changed": len(changed)}
    details = [f"{number} {what}" for what, number in counted.items() if number]
    suffix = f" ({', '.join(details)})" if details else ""
    data |= counted
    return Event("devices", f"{name}: device list: {counts}{suffix}", data=data)
