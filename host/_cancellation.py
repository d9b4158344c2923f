"""Cancellations kept where they belong: the caller's never lost, the task's never leaked.

:func:`cancel_and_wait` stops a background task without swallowing a cancellation of
the task that stops it.

The rest is for cancellations that an awaited library call swallows, given back to the task.

Python 3.11's ``asyncio.wait_for`` returns the inner result instead of raising when
the task is cancelled in the loop iteration in which the awaited thing completes
(cpython gh-86296; 3.12 rebuilt ``wait_for`` on ``asyncio.timeout``). Our own code
waits with ``asyncio.timeout``, but grpc.aio's ``Server.stop(grace)`` waits out the
grace period with ``wait_for`` (``AioServer.shutdown`` in grpc's
``_cython/_cygrpc/aio/server.pyx.pxi``): a task cancelled just as its server finishes
stopping runs on as if nobody had cancelled it, and whoever awaits it waits forever.

``Task.cancelling()`` still counts the request the library swallowed, so a caller
takes :func:`cancel_requests` before such a call and :func:`raise_lost_cancellation`
after it (once its own clean-up is done)::

    requests = cancel_requests()
    await server.stop(grace)
    path.unlink()
    raise_lost_cancellation(requests)
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait", "cancel_requests", "raise_lost_cancellation"]


def cancel_requests() -> int:
    """How many ``cancel()`` requests of the current task are outstanding (0 outside a task)."""
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


def raise_lost_cancellation(requests_before: int) -> None:
    """Raise ``CancelledError`` if the current task was cancelled since ``requests_before``.

    Called after an await that returned normally: a request counted since then was
    delivered into that await and swallowed there (a cancellation that had not been
    delivered yet would have been raised by the await itself).
    """
    if cancel_requests() > requests_before:
        raise asyncio.CancelledError


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
