"""Instrumentation points of the framework: what a Manager tells an :class:`Observer`.

The framework calls an observer at the moment something happens (an RPC finished, a
device list went out, a registration succeeded); everything that is a state rather
than an event (devices by health, registration status, scanner restarts) is read from
:attr:`Manager.resources` and :attr:`Manager.feed` when it is needed. The default observer does
nothing; the host's metrics (:mod:`host._metrics`) subclass it.

Every call happens on the event loop and must be quick: it sits on the Allocate path.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

import grpc

__all__ = [
    "LOG_FIELDS",
    "NULL_OBSERVER",
    "Observer",
    "log_context",
    "observed_rpc",
    "observed_stream",
]

R = TypeVar("R")

_NO_FIELDS: Mapping[str, str] = MappingProxyType({})
LOG_FIELDS: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "devplugin_log_fields", default=_NO_FIELDS
)
"""``plugin`` and ``resource`` of the task logging; JSON log lines carry them."""


def log_context(**fields: str) -> contextvars.Context:
    """Return a copy of the current context whose log fields also hold ``fields``.

    Tasks created with ``context=`` this (and every task they create, gRPC handlers of a
    server they start included) log with these fields.
    """
    context = contextvars.copy_context()
    current: Mapping[str, str] = context.get(LOG_FIELDS, _NO_FIELDS)
    context.run(LOG_FIELDS.set, {**current, **fields})
    return context


class Observer:
    """Told of every event of one Manager; each method here does nothing.

    Subclass and pass ``Manager(..., observer=...)``. Methods are called on the event
    loop, inline: keep them short and never raise.
    """

    def rpc_finished(self, resource_name: str, method: str, code: str, seconds: float) -> None:
        """Note that an Allocate-path RPC ended with ``code`` (a gRPC status name)."""

    def stream_opened(self, resource_name: str) -> None:
        """Note that kubelet opened a ListAndWatch stream."""

    def stream_closed(self, resource_name: str) -> None:
        """Note that a ListAndWatch stream ended."""

    def snapshot_sent(self, resource_name: str, message: Any) -> None:
        """Note that a ListAndWatch stream handed ``message`` (a device list) to gRPC.

        ``message`` is the encoded ``ListAndWatchResponse`` (bytes) or the message.
        """

    def registered(self, resource_name: str, registrations: int) -> None:
        """Note that Register succeeded; ``registrations``: this server's count, 1 = first."""


NULL_OBSERVER = Observer()
"""The observer of a Manager built without one."""


class _ObservedService(Protocol):
    resource_name: str
    observer: Observer


S = TypeVar("S", bound=_ObservedService)


def _code_name(context: Any, exc: BaseException | None) -> str:
    if exc is None:
        return "OK"
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    code = None
    with contextlib.suppress(Exception):  # a context without code(): nothing to read
        code = context.code()
    # An exception that did not abort goes out as UNKNOWN.
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


def observed_rpc(
    method: str,
) -> Callable[[Callable[[S, Any, Any], Awaitable[R]]], Callable[[S, Any, Any], Awaitable[R]]]:
    """Decorate a unary RPC handler: tell the service's observer its status code and time."""

    def decorate(
        handler: Callable[[S, Any, Any], Awaitable[R]],
    ) -> Callable[[S, Any, Any], Awaitable[R]]:
        @functools.wraps(handler)
        async def wrapper(self: S, request: Any, context: Any) -> R:
            started = time.perf_counter()
            failure: BaseException | None = None
            try:
                return await handler(self, request, context)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                self.observer.rpc_finished(
                    self.resource_name,
                    method,
                    _code_name(context, failure),
                    time.perf_counter() - started,
                )

        return wrapper

    return decorate


def observed_stream(
    handler: Callable[[S, Any, Any], AsyncIterator[R]],
) -> Callable[[S, Any, Any], AsyncIterator[R]]:
    """Decorate ListAndWatch: tell the service's observer of every message handed to gRPC."""

    @functools.wraps(handler)
    async def wrapper(self: S, request: Any, context: Any) -> AsyncGenerator[R, None]:
        stream = handler(self, request, context)
        observer = self.observer
        observer.stream_opened(self.resource_name)
        try:
            async for message in stream:
                observer.snapshot_sent(self.resource_name, message)
                yield message
        finally:
            observer.stream_closed(self.resource_name)
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()

    return wrapper
