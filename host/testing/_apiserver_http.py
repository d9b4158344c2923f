"""A small HTTP/1.1 server on asyncio streams, with injectable latency and outages.

Just what a Kubernetes client needs: keep-alive, Content-Length and chunked request
bodies, JSON answers. The handler maps a request to ``(code, body)``; the server adds
the faults a test asks for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

__all__ = ["HttpRequest", "HttpServer", "OutageMode"]

log = logging.getLogger("host.testing.apiserver")

OutageMode = Literal["unavailable", "refuse", "hang", "drop-response"]
"""How the server misbehaves during an outage.

``unavailable``: every request gets 503 ServiceUnavailable. ``refuse``: the listener
closes and open connections are cut (connection refused). ``hang``: requests are read
but never answered; when the outage ends their connections are cut. ``drop-response``:
requests are carried out but the connection is cut before the answer (a lost reply).
"""

_REASONS = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    422: "Unprocessable Entity",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class HttpRequest:
    """One request as received: method, path, query parameters and the decoded JSON body."""

    method: str
    path: str
    query: dict[str, str]
    body: Any


Handler = Callable[[HttpRequest], tuple[int, Any]]


class HttpServer:
    """Serves ``handler`` on ``host:port`` (port 0: any free port, kept across restarts)."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0) -> None:
        self._handler = handler
        self.host = host
        self.port = port
        self.latency = 0.0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._outage: OutageMode | None = None
        self._outage_over = asyncio.Event()
        self._outage_over.set()
        self.on_request: Callable[[HttpRequest, int | None], None] = lambda _r, _c: None

    @property
    def outage(self) -> OutageMode | None:
        """The current outage mode, None while the server answers normally."""
        return self._outage

    async def start(self) -> None:
        """Listen (again, on the same port after the first start)."""
        self._server = await asyncio.start_server(
            self._connection, self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and cut every connection."""
        self._outage_over.set()
        self._close_listener()
        self._cut_connections()
        # Cut connections end their tasks; cancelling is only the fallback.
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=5)
            for task in pending:
                task.cancel()

    def begin_outage(self, mode: OutageMode) -> None:
        """Start misbehaving as ``mode`` says until :meth:`end_outage`."""
        self._outage = mode
        self._outage_over.clear()
        if mode == "refuse":
            self._close_listener()
            self._cut_connections()

    async def end_outage(self) -> None:
        """Answer normally again (listening again after a ``refuse`` outage)."""
        mode, self._outage = self._outage, None
        self._outage_over.set()
        if mode == "refuse" and self._server is None:
            await self.start()

    def _close_listener(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def _cut_connections(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
            log.debug("connection closed: %s", exc)
        except asyncio.CancelledError:
            # The connection's own task: asyncio's stream callback would report a
            # cancelled handler as an error, so it ends quietly instead.
            pass
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.transport.abort()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        line = await reader.readline()
        if not line:
            return False
        method, target, _version = line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
            key, _, value = header.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        raw = await self._read_body(reader, headers)
        url = urlsplit(target)
        try:
            body = json.loads(raw) if raw.strip() else None
        except ValueError as exc:
            await self._respond(writer, 400, _bad_json(exc))
            return True
        request = HttpRequest(method.upper(), url.path, dict(parse_qsl(url.query)), body)
        if self._outage == "hang":
            self.on_request(request, None)
            await self._outage_over.wait()
            return False
        if self.latency:
            await asyncio.sleep(self.latency)
        if self._outage == "unavailable":
            code, answer = 503, _unavailable()
        else:
            code, answer = self._handler(request)
        if self._outage in ("drop-response", "refuse"):
            self.on_request(request, None)
            return False
        self.on_request(request, code)
        await self._respond(writer, code, answer)
        return headers.get("connection", "").lower() != "close"

    @staticmethod
    async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while size := int((await reader.readline()).split(b";")[0].strip() or b"0", 16):
                chunks.append(await reader.readexactly(size))
                await reader.readline()
            await reader.readline()
            return b"".join(chunks)
        return await reader.readexactly(int(headers.get("content-length", "0")))

    @staticmethod
    async def _respond(writer: asyncio.StreamWriter, code: int, answer: Any) -> None:
        if isinstance(answer, str):
            payload, content_type = answer.encode(), "text/plain; charset=utf-8"
        else:
            payload, content_type = json.dumps(answer).encode(), "application/json"
        head = (
            f"HTTP/1.1 {code} {_REASONS.get(code, 'Unknown')}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        writer.write(head.encode("latin-1") + payload)
        with contextlib.suppress(ConnectionError):
            await writer.drain()


def _unavailable() -> dict[str, Any]:
    from host.testing._apiserver_store import status

    return status(503, "ServiceUnavailable", "the server is currently unable to handle the request")


def _bad_json(exc: ValueError) -> dict[str, Any]:
    from host.testing._apiserver_store import status

    return status(400, "BadRequest", f"the body of the request was in an unknown format: {exc}")
