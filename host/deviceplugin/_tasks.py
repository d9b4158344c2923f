"""Stopping a background task without losing a cancellation of the one that stops it."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended; the caller's own cancellation propagates.

    ``task.cancel()`` then ``with contextlib.suppress(asyncio.CancelledError): await task``
    cannot tell the task's CancelledError from one meant for the caller: cancelling a
    task that awaits another cancels the awaited one and hands its CancelledError
    back, so a caller cancelled while the task is still ending (an HTTP request
    closing its connection) swallows its own cancellation and carries on.
    ``asyncio.wait`` never raises the task's outcome, only the caller's cancellation.
    An exception the task ended with, other than its cancellation, is raised here as
    ``await task`` would. The task is cancelled even if the caller is cancelled
    meanwhile; it may then still be ending when this returns.
    """
    task.cancel()
    if not task.done():
        await asyncio.wait((task,))
    if not task.cancelled() and (exc := task.exception()) is not None:
        raise exc
