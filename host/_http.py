"""A minimal HTTP/1.1 server on the host's own event loop: ``/metrics``, probes, ``/status``.

Deliberately small (GET and HEAD, one request per connection, ``Connection: close``)
and served from the loop that serves kubelet: ``/healthz`` answering at all is the
proof that the loop runs. Every request is bounded: the request head may be at most
:data:`MAX_HEAD` bytes and must arrive within :data:`READ_TIMEOUT` seconds, at most
:data:`MAX_CONNECTIONS` clients are served at once, and a handler that raises answers
500. Nothing a client sends can raise out of the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from host._config import ConfigError

__all__ = [
    "MAX_CONNECTIONS",
    "MAX_HEAD",
    "READ_TIMEOUT",
    "HttpServer",
    "Response",
    "format_address",
    "json_response",
    "parse_address",
]

log = logging.getLogger("host.http")

MAX_HEAD = 8192
"""Bytes of request line plus headers accepted; more is answered 431."""
READ_TIMEOUT = 5.0
"""Seconds a client has to send its request head (and to take the answer)."""
MAX_CONNECTIONS = 32
"""Connections served at once; more are closed at once."""

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Response:
    """An HTTP answer: status, body, content type, extra headers."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)


def json_response(status: int, document: Any) -> Response:
    """Return ``document`` as a JSON answer with ``status``."""
    body = json.dumps(document, indent=2).encode() + b"\n"
    return Response(status, body, "application/json")


Route = Callable[[Mapping[str, str]], Response | Awaitable[Response]]
"""A handler: takes the query parameters (the last value of each), returns the answer or
a coroutine of it for slow answers."""


def parse_address(text: str, source: str = "--metrics-address") -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[::1]:9464`` for IPv6, ``:9464`` for every address).

    Raises ConfigError saying what is wrong with ``text``.
    """
    host, colon, port = text.strip().rpartition(":")
    if not colon or not port:
        raise ConfigError(f"{source} expects HOST:PORT (e.g. 0.0.0.0:9464), got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(f"{source}: put an IPv6 address in brackets ([::1]:9464), got {text!r}")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{source}: port must be a number from 0 to 65535, got {port!r}")
    return host or "0.0.0.0", int(port)


def format_address(host: str, port: int) -> str:
    """``HOST:PORT``, with brackets around an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class HttpServer:
    """Serves ``routes`` (path -> function returning a :class:`Response`) over HTTP/1.1."""

    def __init__(
        self,
        routes: Mapping[str, Route],
        host: str,
        port: int,
        *,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self._routes = dict(routes)
        self._read_timeout = read_timeout
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        """Where it listens, ``HOST:PORT`` (the real port when started with port 0)."""
        if self._server is None or not self._server.sockets:
            return format_address(self._host, self._port)
        host, port = self._server.sockets[0].getsockname()[:2]
        return format_address(host, port)

    async def start(self) -> None:
        """Listen; an address that cannot be bound raises OSError."""
        self._server = await asyncio.start_server(
            self._accept, self._host, self._port, limit=MAX_HEAD, reuse_address=True
        )

    async def stop(self) -> None:
        """Stop listening and drop every client still connected."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._clients) >= MAX_CONNECTIONS:
            writer.close()
            return
        self._clients.add(task)
        try:
            await self._serve_one(reader, writer)
        except asyncio.CancelledError:
            # Only stop() cancels a client; ending quietly keeps asyncio's stream
            # callback from logging the cancellation as an error.
            pass
        except Exception:  # never let a client end anything but its own connection
            log.debug("HTTP client failed", exc_info=True)
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self._read_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            await self._send(writer, Response(408, b"request head not received in time\n"))
            return
        except asyncio.LimitOverrunError:
            too_long = f"request head over {MAX_HEAD} bytes\n".encode()
            await self._send(writer, Response(431, too_long))
            return
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the client went away mid-request: nobody to answer
        response, head_only = await self._respond(head)
        await self._send(writer, response, head_only=head_only)

    async def _respond(self, head: bytes) -> tuple[Response, bool]:
        line = head.split(b"\r\n", 1)[0]
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return Response(400, b"malformed request line\n"), False
        method, target = parts[0], parts[1]
        raw_path, _, raw_query = target.decode("ascii", "replace").partition("?")
        path = raw_path
        route = self._routes.get(path)
        if route is None:
            known = ", ".join(sorted(self._routes))
            return Response(404, f"no such path {path!r}; paths: {known}\n".encode()), False
        if method not in (b"GET", b"HEAD"):
            return Response(405, b"only GET and HEAD\n", headers={"Allow": "GET, HEAD"}), False
        try:
            query = dict(urllib.parse.parse_qsl(raw_query, max_num_fields=16))
            answer = route(query)
            if inspect.isawaitable(answer):
                answer = await answer
            return answer, method == b"HEAD"
        except Exception:
            log.exception("HTTP handler for %s failed", path)
            return Response(500, b"internal error; see the host's log\n"), False

    async def _send(
        self, writer: asyncio.StreamWriter, response: Response, *, head_only: bool = False
    ) -> None:
        reason = _REASONS.get(response.status, "")
        headers = {
            "Content-Type": response.content_type,
            "Content-Length": str(len(response.body)),
            "Connection": "close",
            **response.headers,
        }
        lines = [f"HTTP/1.1 {response.status} {reason}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not head_only:
            writer.write(response.body)
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(self._read_timeout):
                await writer.drain()
