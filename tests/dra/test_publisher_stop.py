"""Stopping the publisher: at once while it backs off or waits for the API server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from host.dra import ResourceSlicePublisher
from host.testing import FakeApiServer
from tests.dra.publishing import DRIVER, NODE, failures, gpus, node, synced

pytestmark = [pytest.mark.asyncio, pytest.mark.usefixtures("node")]
__all__ = ["node"]  # the fixture, imported

STUCK = 60.0
"""Backoff and request timeout of these tests: a stop that waited them out would hang."""


async def started(kubeconfig: Path, **kwargs: Any) -> ResourceSlicePublisher:
    kwargs.setdefault("retry_initial", STUCK)
    kwargs.setdefault("retry_max", STUCK)
    kwargs.setdefault("request_timeout", STUCK)
    publisher = ResourceSlicePublisher(DRIVER, NODE, kubeconfig=kubeconfig, **kwargs)
    await publisher.start()
    return publisher


async def stopped(publisher: ResourceSlicePublisher, **kwargs: bool) -> None:
    """Stop ``publisher``; 10 s (far below :data:`STUCK`) mean it waited for something."""
    async with asyncio.timeout(10):
        await publisher.stop(**kwargs)


class TestStop:
    async def test_during_the_backoff(
        self, apiserver: FakeApiServer, apiserver_kubeconfig: Path
    ) -> None:
        """A publisher waiting to retry a failed attempt stops without retrying."""
        apiserver.begin_outage("unavailable")
        publisher = await started(apiserver_kubeconfig)
        publisher.update(gpus(2))
        await failures(publisher, 1)
        await stopped(publisher)
        assert publisher.status.failures == 1
        await apiserver.end_outage()
        assert apiserver.resource_slices() == []

    async def test_during_a_request(
        self, apiserver: FakeApiServer, apiserver_kubeconfig: Path
    ) -> None:
        """A publisher waiting for an API server that never answers stops at once."""
        publisher = await started(apiserver_kubeconfig)
        publisher.update(gpus(2))
        await synced(publisher)
        apiserver.begin_outage("hang")
        publisher.update(gpus(3))
        await apiserver.wait_for(
            lambda: any(r.code is None for r in apiserver.requests), what="a hung request"
        )
        await stopped(publisher)
        assert publisher.status.failures == 0
        await apiserver.end_outage()
        assert len(apiserver.resource_slices()) == 1

    async def test_with_cleanup_after_failures(
        self, apiserver: FakeApiServer, apiserver_kubeconfig: Path
    ) -> None:
        """Failures meanwhile do not keep stop(cleanup=True) from deleting the slices."""
        publisher = await started(apiserver_kubeconfig)
        publisher.update(gpus(2))
        await synced(publisher)
        apiserver.fail_next("PUT", "resourceslices/", 500, "InternalError", "etcd timeout")
        publisher.update(gpus(2, unhealthy={0}))
        await failures(publisher, 1)
        await stopped(publisher, cleanup=True)
        assert apiserver.resource_slices() == []

    async def test_cancelled_stop_stays_cancelled(
        self, apiserver: FakeApiServer, apiserver_kubeconfig: Path
    ) -> None:
        """Cancelling stop() while the publisher's task is still ending cancels stop()."""
        asked, cancelled, finish = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def may_write() -> bool:
            asked.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                await finish.wait()  # ending takes a while (a connection being closed)
                raise
            return True

        publisher = await started(apiserver_kubeconfig)
        publisher.may_write = may_write
        publisher.update(gpus(1))
        async with asyncio.timeout(10):
            await asked.wait()
        stopper = asyncio.create_task(publisher.stop())
        async with asyncio.timeout(10):
            await cancelled.wait()
        stopper.cancel()
        async with asyncio.timeout(10):
            await asyncio.wait([stopper])
        assert stopper.cancelled()
        finish.set()
        await stopped(publisher)
        assert apiserver.resource_slices() == []
