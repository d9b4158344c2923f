"""The metrics HTTP server: bad requests get a clean answer or are closed; the loop goes on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import pytest
import pytest_asyncio

from host._config import ConfigError
from host._http import (
    MAX_CONNECTIONS,
    MAX_HEAD,
    HttpServer,
    Response,
    format_address,
    parse_address,
)
from host.testing._http import HttpReply, http_get


def failing(query: Mapping[str, str]) -> Response:
    raise RuntimeError("handler bug")


@pytest_asyncio.fixture
async def server() -> AsyncIterator[HttpServer]:
    routes = {
        "/ok": lambda query: Response(200, b"fine\n"),
        "/echo": lambda query: Response(200, repr(sorted(query.items())).encode()),
        "/broken": failing,
    }
    http = HttpServer(routes, "127.0.0.1", 0, read_timeout=0.3)
    await http.start()
    try:
        yield http
    finally:
        await http.stop()


async def exchange(server: HttpServer, raw: bytes) -> bytes:
    """Send ``raw`` and read until the server closes the connection."""
    host, _, port = server.address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


async def still_serves_later(
    server: HttpServer, idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
) -> None:
    """With every slot taken, one more client is closed unanswered; then the idle time out."""
    host, _, port = server.address.rpartition(":")
    for _reader, writer in idle:
        writer.write(b"GET /ok HTTP/1.1\r\n")  # a head that never ends
        await writer.drain()
    extra_reader, extra_writer = await asyncio.open_connection(host, int(port))
    async with asyncio.timeout(10):
        turned_away = await extra_reader.read()
    extra_writer.close()
    answers = [await asyncio.wait_for(reader.read(), 10) for reader, _ in idle]
    assert all(status_of(answer) == 408 for answer in answers)
    assert turned_away == b"" or status_of(turned_away) == 408


async def still_serves(server: HttpServer) -> HttpReply:
    reply = await http_get(server.address, "/ok")
    assert (reply.status, reply.text) == (200, "fine\n")
    return reply


@pytest.mark.asyncio
class TestAnswers:
    async def test_get_and_query_string(self, server: HttpServer) -> None:
        """A GET is answered with length and Connection: close; the query string is ignored."""
        reply = await http_get(server.address, "/ok?verbose=1")
        assert (reply.status, reply.body) == (200, b"fine\n")
        assert reply.headers["content-length"] == "5"
        assert reply.headers["connection"] == "close"

    async def test_query_parameters(self, server: HttpServer) -> None:
        """Handlers get the query parameters, percent-decoded, the last value of each."""
        reply = await http_get(server.address, "/echo?devices=all&x=1&x=2&y=%41")
        assert reply.text == "[('devices', 'all'), ('x', '2'), ('y', 'A')]"

    async def test_unknown_path_404(self, server: HttpServer) -> None:
        """An unknown path is 404 and names the paths there are."""
        reply = await http_get(server.address, "/nope")
        assert reply.status == 404
        assert "/ok" in reply.text

    @pytest.mark.parametrize("method", ["POST", "DELETE", "PUT"])
    async def test_wrong_method_405(self, server: HttpServer, method: str) -> None:
        """Anything but GET and HEAD is 405 with an Allow header."""
        reply = await http_get(server.address, "/ok", method=method)
        assert reply.status == 405
        assert reply.headers["allow"] == "GET, HEAD"

    async def test_handler_failure_500(self, server: HttpServer) -> None:
        """A handler that raises answers 500; the next request is served."""
        assert (await http_get(server.address, "/broken")).status == 500
        await still_serves(server)


@pytest.mark.asyncio
class TestBadClients:
    @pytest.mark.parametrize(
        "raw",
        [
            b"\x00\x01\x02 garbage\r\n\r\n",
            b"GET /ok\r\n\r\n",
            b"GET /ok SPDY/9\r\n\r\n",
            b"\r\n\r\n",
        ],
        ids=["binary", "no-version", "other-protocol", "empty-line"],
    )
    async def test_garbage_400(self, server: HttpServer, raw: bytes) -> None:
        """A malformed request line is 400."""
        assert status_of(await exchange(server, raw)) == 400
        await still_serves(server)

    async def test_oversize_head_431(self, server: HttpServer) -> None:
        """A request head over the limit is 431, without reading it all."""
        raw = b"GET /ok HTTP/1.1\r\nX-Big: " + b"a" * (2 * MAX_HEAD) + b"\r\n\r\n"
        assert status_of(await exchange(server, raw)) == 431
        await still_serves(server)

    async def test_silent_client_408(self, server: HttpServer) -> None:
        """A client that never finishes its head gets 408 and the connection closes."""
        answer = await exchange(server, b"GET /ok HTTP/1.1\r\n")
        assert status_of(answer) == 408
        await still_serves(server)

    async def test_client_gone_mid_request(self, server: HttpServer) -> None:
        """A client that hangs up mid-request costs nothing; the next one is served."""
        host, _, port = server.address.rpartition(":")
        for _ in range(5):
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /o")
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        await still_serves(server)

    async def test_too_many_clients_are_turned_away(self, server: HttpServer) -> None:
        """Past MAX_CONNECTIONS a client is closed at once; the silent ones get 408 in time."""
        host, _, port = server.address.rpartition(":")
        idle = [await asyncio.open_connection(host, int(port)) for _ in range(MAX_CONNECTIONS)]
        try:
            # Let the server accept them all before the extra client arrives.
            await still_serves_later(server, idle)
        finally:
            for _, writer in idle:
                writer.close()
        await still_serves(server)

    async def test_stop_drops_clients(self) -> None:
        """Stopping the server ends connections still waiting for their head."""
        http = HttpServer({"/ok": lambda query: Response(200)}, "127.0.0.1", 0)
        await http.start()
        host, _, port = http.address.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /ok HTTP/1.1\r\n")
        await writer.drain()
        await http.stop()
        async with asyncio.timeout(10):
            try:
                rest = await reader.read()
            except ConnectionResetError:
                rest = b""
        assert rest == b""
        writer.close()


class TestAddress:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("0.0.0.0:9464", ("0.0.0.0", 9464)),
            ("127.0.0.1:0", ("127.0.0.1", 0)),
            (":9464", ("0.0.0.0", 9464)),
            ("[::1]:9464", ("::1", 9464)),
            ("localhost:80", ("localhost", 80)),
        ],
    )
    def test_parse(self, text: str, expected: tuple[str, int]) -> None:
        """HOST:PORT, IPv6 in brackets, an empty host meaning every address."""
        assert parse_address(text) == expected

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("9464", "expects HOST:PORT"),
            ("host:", "expects HOST:PORT"),
            ("host:http", "port must be a number"),
            ("host:70000", "port must be a number"),
            ("::1:9464", "IPv6 address in brackets"),
        ],
    )
    def test_bad(self, text: str, message: str) -> None:
        """A bad address is a ConfigError naming the option and what to write."""
        with pytest.raises(ConfigError, match=message) as err:
            parse_address(text)
        assert str(err.value).startswith("--metrics-address")

    def test_format(self) -> None:
        """IPv6 hosts get brackets back."""
        assert format_address("::1", 1) == "[::1]:1"
        assert format_address("127.0.0.2", 2) == "127.0.0.2:2"
