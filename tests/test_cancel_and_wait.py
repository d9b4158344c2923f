"""cancel_and_wait: the task's cancellation is absorbed, the caller's is not."""

from __future__ import annotations

import asyncio

import pytest

from host._cancellation import cancel_and_wait

pytestmark = pytest.mark.asyncio


class TestCancelAndWait:
    async def test_task_ends_cancelled(self) -> None:
        """A running task is cancelled and has ended when the call returns."""
        started = asyncio.Event()

        async def forever() -> None:
            started.set()
            await asyncio.Event().wait()

        task = asyncio.create_task(forever())
        await started.wait()
        await cancel_and_wait(task)
        assert task.cancelled()

    async def test_finished_task_error_is_raised(self) -> None:
        """A task that had failed already raises its error, as awaiting it would."""

        async def broken() -> None:
            raise ValueError("broken")

        task = asyncio.create_task(broken())
        await asyncio.wait((task,))
        with pytest.raises(ValueError, match="broken"):
            await cancel_and_wait(task)

    async def test_caller_cancelled_while_the_task_ends(self) -> None:
        """Cancelling the caller while the task is still ending cancels the caller."""
        started, cancelled, finish = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def slow_to_end() -> None:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                await finish.wait()  # its own clean-up, awaiting something
                raise

        task = asyncio.create_task(slow_to_end())
        await started.wait()
        stopper = asyncio.create_task(cancel_and_wait(task))
        async with asyncio.timeout(5):
            await cancelled.wait()
        stopper.cancel()
        async with asyncio.timeout(5):
            await asyncio.wait((stopper,))
        assert stopper.cancelled()
        finish.set()
        async with asyncio.timeout(5):
            await asyncio.wait((task,))
        assert task.cancelled()
