"""A cancellation that an awaited call swallows is raised again (host._cancellation)."""

from __future__ import annotations

import asyncio
import sys

import pytest

from host._cancellation import cancel_requests, raise_lost_cancellation

pytestmark = pytest.mark.asyncio


class TestLostCancellation:
    async def test_a_cancellation_swallowed_by_wait_for_is_raised_after_the_clean_up(
        self,
    ) -> None:
        """Cancelled as the awaited thing completes: the clean-up runs, then CancelledError."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        steps: list[str] = []

        async def stop() -> None:
            requests = cancel_requests()
            # Python 3.11's wait_for returns here instead of raising (gh-86296).
            await asyncio.wait_for(done, 10)
            steps.append("clean-up")
            raise_lost_cancellation(requests)
            steps.append("ran on")

        task = asyncio.create_task(stop())
        await asyncio.sleep(0)  # suspended in wait_for
        done.set_result(None)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # 3.12+ raise in wait_for itself; 3.11 went on to the clean-up.
        assert steps == (["clean-up"] if sys.version_info < (3, 12) else [])

    async def test_nothing_is_raised_without_a_new_cancellation(self) -> None:
        """In a task already being cancelled (its clean-up), only a newer request counts."""
        steps: list[str] = []
        started = asyncio.Event()

        async def serve() -> None:
            try:
                started.set()
                await asyncio.Event().wait()
            finally:
                requests = cancel_requests()
                assert requests == 1
                await asyncio.sleep(0)
                raise_lost_cancellation(requests)
                steps.append("clean-up finished")

        task = asyncio.create_task(serve())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert steps == ["clean-up finished"]
        assert cancel_requests() == 0  # outside that task: this one was never cancelled
