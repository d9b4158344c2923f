"""A small asyncio HTTP client for tests: GET from a host's metrics address without blocking.

The host under test runs in the test's own event loop, so a blocking client
(``urllib``) would stall the very loop that has to answer.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

__all__ = ["HttpReply", "http_get"]


@dataclass(frozen=True)
class HttpReply:
    """What the server answered: status code, headers (lower-case names), body."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        """The body as UTF-8 text."""
        return self.body.decode()

    def json(self) -> Any:
        """Parse the body as JSON."""
        return json.loads(self.body)


async def http_get(
    address: str,
    path: str,
    *,
    method: str = "GET",
    timeout: float = 10.0,  # noqa: ASYNC109 - one deadline for connect, send and read
) -> HttpReply:
    """Send one ``method path`` request to ``address`` (``HOST:PORT``) and read the answer."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(f"{method} {path} HTTP/1.1\r\nHost: {address}\r\n\r\n".encode())
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return HttpReply(status, headers, body)
