"""Cancellations that an awaited library call swallows, given back to the task.

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

__all__ = ["cancel_requests", "raise_lost_cancellation"]


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
