"""A device list over kubelet's 4 MiB receive limit: refused once, never a registration loop."""

from __future__ import annotations

import logging

import pytest

from host.deviceplugin import DeviceInfo, Manager
from host.deviceplugin._service import KUBELET_MAX_MESSAGE, DevicePluginService
from host.testing import FakeKubelet
from tests.scanners import QueueScanner

from .conftest import ServeFn
from .helpers import info, tree_of

HUGE = 45_000  # devices with 100-character IDs: about 4.8 MB of device list


def huge_list(one: DeviceInfo) -> dict[str, DeviceInfo]:
    return {f"{i:0>100}": one for i in range(HUGE)}


class TestService:
    def test_logged_once_with_name_and_size(self, caplog: pytest.LogCaptureFixture) -> None:
        """The first oversized list is an error with the size; more of them say nothing."""
        caplog.set_level(logging.INFO)
        service = DevicePluginService("ex.com/huge", object())
        one = DeviceInfo()
        service.update(huge_list(one))
        size = service.snapshot.ByteSize()
        assert size > KUBELET_MAX_MESSAGE
        assert service.oversize == size
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1
        assert "ex.com/huge" in errors[0].getMessage()
        assert str(size) in errors[0].getMessage()
        assert "several device types" in errors[0].getMessage()
        caplog.clear()
        service.update({**huge_list(one), "one more": one})
        assert caplog.records == []
        service.update({"small": one})
        assert service.oversize is None
        assert "fits kubelet's limit again" in caplog.text


def resource_status(manager: Manager, name: str) -> str | None:
    status = manager.resources.get(name)
    return None if status is None else status.not_ready_reason


@pytest.mark.asyncio
class TestEndpoint:
    async def test_not_registered_until_it_fits(
        self, kubelet: FakeKubelet, serve: ServeFn, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An oversized resource is not ready with a reason and never registers; once the
        list fits it registers once; growing too big again ends the stream, no loop."""
        caplog.set_level(logging.ERROR)
        one = info()
        scanner = QueueScanner(tree_of({"huge": huge_list(one), "small": {"s0": one}}))
        manager = await serve("ex.com", scanner)
        await kubelet.wait_for_resource("ex.com/small", count=1)
        await kubelet.wait_for(
            lambda: "receive limit" in (resource_status(manager, "ex.com/huge") or ""),
            timeout=30,
            what="the huge resource refused",
        )
        assert "ex.com/huge" not in kubelet.resources
        assert manager.resources["ex.com/huge"].ready is False

        scanner.trees.put_nowait(tree_of({"huge": {"h0": one}, "small": {"s0": one}}))
        await kubelet.wait_for_resource("ex.com/huge", count=1, healthy=1)
        assert kubelet.resources["ex.com/huge"].registrations == 1

        scanner.trees.put_nowait(tree_of({"huge": huge_list(one), "small": {"s0": one}}))
        await kubelet.wait_for_resource("ex.com/huge", count=1, healthy=0, timeout=30)
        await kubelet.wait_for(
            lambda: "receive limit" in (resource_status(manager, "ex.com/huge") or ""),
            timeout=30,
            what="the huge resource refused again",
        )
        # The small resource's next list shows the loop had time to run: still one.
        scanner.trees.put_nowait(tree_of({"huge": huge_list(one), "small": {"s1": one}}))
        await kubelet.wait_for(lambda: set(kubelet.resources["ex.com/small"].devices) == {"s1"})
        assert kubelet.resources["ex.com/huge"].registrations == 1
        errors = [r for r in caplog.records if "receive limit" in r.getMessage()]
        assert len(errors) == 2  # one per time it grew too big, not one per retry
