"""The connector's lean httpx transport against small raw HTTP/1.1 servers written for each case."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
import pytest_asyncio

from tests.fakes.process import free_port
from tokios_connector.transport import LeanTransport

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """Counts TCP connections; each is served by `handler` (one or more requests)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1/chat/completions"


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[RawServer]]]:
    servers: list[RawServer] = []

    async def start(handler: Handler) -> RawServer:
        raw = RawServer(handler)
        raw.server = await asyncio.start_server(raw._serve, "127.0.0.1", 0)
        servers.append(raw)
        return raw

    yield start
    for raw in servers:
        assert raw.server is not None
        raw.server.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return await reader.readexactly(length)


def response(body: bytes, *extra: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (
        len(body),
        b"".join(h + b"\r\n" for h in extra),
        body,
    )


def client(**kwargs: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=LeanTransport(max_connections=kwargs.get("max_connections", 8)), timeout=5)


async def test_keep_alive_connections_are_reused(serve: Callable[[Handler], Awaitable[RawServer]]) -> None:
    async def echo_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            body = await read_request(reader)
            writer.write(response(body))

    raw = await serve(echo_forever)
    async with client() as http:
        for i in range(5):
            r = await http.post(raw.url, content=b"hello %d" % i)
            assert r.content == b"hello %d" % i
        await asyncio.gather(*(http.post(raw.url, content=b"x") for _ in range(4)))
    assert raw.connections == 4  # five in a row share one; four at once need four


async def test_a_connection_the_server_closed_while_idle_is_replaced(
    serve: Callable[[Handler], Awaitable[RawServer]],
) -> None:
    async def one_then_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(b"ok"))
        await writer.drain()
        await asyncio.sleep(0.05)  # then close an idle keep-alive connection, as servers do

    raw = await serve(one_then_hang_up)
    async with client() as http:
        assert (await http.get(raw.url)).content == b"ok"
        await asyncio.sleep(0.2)
        assert (await http.get(raw.url)).content == b"ok"
    assert raw.connections == 2


async def test_a_large_body_survives_read_backpressure(serve: Callable[[Handler], Awaitable[RawServer]]) -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB, well over the 256 KiB read high-water mark

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(payload))
        await writer.drain()

    raw = await serve(big)
    received = bytearray()
    async with client() as http, http.stream("GET", raw.url) as r:
        async for chunk in r.aiter_raw():
            received += chunk
            await asyncio.sleep(0.001)  # a slow consumer, like a busy WebSocket
    assert bytes(received) == payload


async def test_closing_an_unfinished_body_drops_the_connection(
    serve: Callable[[Handler], Awaitable[RawServer]],
) -> None:
    gone = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        try:
            while True:
                writer.write(b"5\r\nhello\r\n")
                await writer.drain()
                await asyncio.sleep(0.01)
        except ConnectionError:
            gone.set()
            raise

    raw = await serve(endless)
    async with client() as http:
        async with http.stream("GET", raw.url) as r:
            async for _ in r.aiter_raw():
                break
        await asyncio.wait_for(gone.wait(), 5)  # the upstream saw the connection go
    assert gone.is_set()


async def test_errors_map_to_httpx_exceptions(serve: Callable[[Handler], Awaitable[RawServer]]) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async def truncated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
        await writer.drain()

    slow = await serve(silent)
    broken = await serve(truncated)
    async with client() as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get(slow.url, timeout=httpx.Timeout(5, read=0.2))
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(broken.url)
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{free_port()}/")


async def test_the_pool_caps_concurrent_connections(serve: Callable[[Handler], Awaitable[RawServer]]) -> None:
    async def slow_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            body = await read_request(reader)
            await asyncio.sleep(0.05)
            writer.write(response(body))

    raw = await serve(slow_echo)
    async with client(max_connections=2) as http:
        results = await asyncio.gather(*(http.post(raw.url, content=b"%d" % i) for i in range(6)))
    assert [r.content for r in results] == [b"%d" % i for i in range(6)]
    assert raw.connections == 2
