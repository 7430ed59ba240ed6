"""A lean httpx transport for the connector's one plain-HTTP upstream.

Why not httpx's stock transport: measured on a 2-core box, its connection pool re-scans every
pooled connection (with a `poll()` syscall each, and an O(n²) idle count) on every request and
every response close, so CPU per request doubles at 64 concurrent streams and keeps growing with
the pool; and each socket read and write goes through anyio's cancel scopes. (Measured again with
bench/connector.py: the connector's CPU per streamed token is 28 % higher with the stock transport
at 8 streams, 224 % at 64.) This module keeps httpx's client API and httpcore's public HTTP/1.1
connection (`AsyncHTTP11Connection`, h11) and network stream interface, and replaces only those two
parts (the one undocumented thing it relies on is in contract.py):

- `_Pool`: a free list of idle keep-alive connections: O(1) to check out and give back;
- `_Stream`: an `asyncio.Protocol` network stream whose reads and writes are plain futures.

https:// upstreams keep httpx's stock transport (see `make_transport`): TLS to a remote model is not
the hot path this exists for.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Any

import httpcore
import httpx

from .contract import IS_READABLE

READ_HIGH_WATER = 256 * 1024  # stop reading from the upstream socket while this much is unread


class _Stream(asyncio.Protocol, httpcore.AsyncNetworkStream):
    """One TCP connection to the upstream, as httpcore's network stream interface."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._eof = False
        self._error: BaseException | None = None
        self._read_waiter: asyncio.Future[None] | None = None
        self._write_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False

    # asyncio.Protocol side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport quacks like asyncio.Transport without subclassing it.
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > READ_HIGH_WATER and not self._reading_paused and self._transport is not None:
            # Backpressure: a fast upstream must not fill memory while the WebSocket is slow.
            self._reading_paused = True
            self._transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        if exc is not None:
            self._error = exc
        self._wake_reader()
        waiter, self._write_waiter = self._write_waiter, None
        if waiter is not None and not waiter.done():
            # The writer wakes up; its next read then reports the broken connection.
            waiter.set_result(None)

    def pause_writing(self) -> None:
        self._write_waiter = self._loop.create_future()

    def resume_writing(self) -> None:
        waiter, self._write_waiter = self._write_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_reader(self) -> None:
        waiter, self._read_waiter = self._read_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # httpcore.AsyncNetworkStream side

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if not self._chunks:
            if self._eof:
                if self._error is not None:
                    raise httpcore.ReadError(str(self._error))
                return b""
            await self._wait(timeout, httpcore.ReadTimeout)
            if not self._chunks:
                if self._error is not None:
                    raise httpcore.ReadError(str(self._error))
                return b""
        chunk = self._chunks.popleft()
        if len(chunk) > max_bytes:
            self._chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        elif self._chunks:
            # Several packets already arrived: hand them over together, as one recv() would.
            pieces = [chunk]
            size = len(chunk)
            while self._chunks and size + len(self._chunks[0]) <= max_bytes:
                piece = self._chunks.popleft()
                pieces.append(piece)
                size += len(piece)
            chunk = b"".join(pieces)
        self._buffered -= len(chunk)
        if self._reading_paused and self._buffered <= READ_HIGH_WATER // 4 and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()
        return chunk

    async def _wait(self, timeout: float | None, timeout_error: type[Exception]) -> None:
        waiter = self._read_waiter = self._loop.create_future()
        if timeout is None:
            await waiter
            return
        # A timer handle per wait is much cheaper than asyncio.wait_for, which wraps a task.
        handle = self._loop.call_later(timeout, self._time_out, waiter, timeout_error)
        try:
            await waiter
        finally:
            handle.cancel()

    @staticmethod
    def _time_out(waiter: asyncio.Future[None], timeout_error: type[Exception]) -> None:
        if not waiter.done():
            waiter.set_exception(timeout_error("timed out"))

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        transport = self._transport
        if transport is None or transport.is_closing():
            raise httpcore.WriteError("connection closed")
        transport.write(buffer)
        waiter = self._write_waiter
        if waiter is None:
            return
        if timeout is None:
            await asyncio.shield(waiter)
            return
        handle = self._loop.call_later(timeout, self._time_out, waiter, httpcore.WriteTimeout)
        try:
            await asyncio.shield(waiter)
        finally:
            handle.cancel()

    async def aclose(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> Any:
        raise httpcore.UnsupportedProtocol("the lean transport serves http:// upstreams only")

    def get_extra_info(self, info: str) -> Any:
        if info == IS_READABLE:
            # httpcore asks this of idle keep-alive connections: anything readable (data or EOF)
            # means the server closed or broke it. No syscall needed: the protocol already knows.
            return self._eof or bool(self._chunks)
        if info == "ssl_object":
            return None
        if self._transport is None:
            return None
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._transport.get_extra_info("socket")
        return None


async def _connect(host: str, port: int, timeout: float | None) -> _Stream:
    loop = asyncio.get_running_loop()
    try:
        _, stream = await asyncio.wait_for(loop.create_connection(_Stream, host, port), timeout)
    except (TimeoutError, asyncio.TimeoutError) as exc:  # noqa: UP041 - distinct classes on Python 3.10
        raise httpcore.ConnectTimeout(f"connect to {host}:{port} timed out") from exc
    except OSError as exc:
        raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
    return stream


class _Pool:
    """At most `max_connections` requests at once; idle keep-alive connections on a LIFO free list."""

    def __init__(self, max_connections: int, keepalive_expiry: float) -> None:
        self._slots = asyncio.Semaphore(max_connections)
        self._max_idle = max_connections
        self._keepalive_expiry = keepalive_expiry
        # Keyed by (scheme, host, port): httpcore.Origin is not hashable.
        self._idle: dict[tuple[bytes, bytes, int], list[httpcore.AsyncHTTP11Connection]] = {}

    async def send(self, request: httpcore.Request) -> tuple[httpcore.Response, httpcore.AsyncHTTP11Connection]:
        """Send on an idle or new connection; the caller must `give_back` it once the body is closed."""
        timeouts = request.extensions.get("timeout", {})
        pool_timeout = timeouts.get("pool")
        try:
            if pool_timeout is None:
                await self._slots.acquire()
            else:
                await asyncio.wait_for(self._slots.acquire(), pool_timeout)
        except (TimeoutError, asyncio.TimeoutError) as exc:  # noqa: UP041 - distinct classes on Python 3.10
            raise httpcore.PoolTimeout("no free upstream connection") from exc
        connection: httpcore.AsyncHTTP11Connection | None = None
        try:
            connection = await self._checkout(request.url.origin, timeouts.get("connect"))
            return await connection.handle_async_request(request), connection
        except BaseException:
            self._slots.release()
            if connection is not None and not connection.is_closed():
                await connection.aclose()
            raise

    async def _checkout(self, origin: httpcore.Origin, connect_timeout: float | None) -> httpcore.AsyncHTTP11Connection:
        idle = self._idle.get((origin.scheme, origin.host, origin.port))
        while idle:
            connection = idle.pop()  # most recently used: the least likely to have been closed
            if connection.is_idle() and not connection.has_expired():
                return connection
            await connection.aclose()
        stream = await _connect(origin.host.decode("ascii"), origin.port, connect_timeout)
        return httpcore.AsyncHTTP11Connection(origin=origin, stream=stream, keepalive_expiry=self._keepalive_expiry)

    async def give_back(self, origin: httpcore.Origin, connection: httpcore.AsyncHTTP11Connection) -> None:
        self._slots.release()
        if connection.is_idle():  # a body that was not read to the end has closed the connection
            idle = self._idle.setdefault((origin.scheme, origin.host, origin.port), [])
            if len(idle) < self._max_idle:
                idle.append(connection)
                return
        await connection.aclose()

    async def aclose(self) -> None:
        idle = [c for connections in self._idle.values() for c in connections]
        self._idle.clear()
        for connection in idle:
            await connection.aclose()


def _to_httpx_error(exc: Exception) -> Exception:
    """httpcore and httpx share exception names; map to the most specific httpx class."""
    for cls in type(exc).__mro__:
        target = getattr(httpx, cls.__name__, None)
        if isinstance(target, type) and issubclass(target, httpx.HTTPError):
            return target(str(exc))
    return httpx.TransportError(str(exc))


_CORE_ERRORS = (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol)


class _ResponseBody(httpx.AsyncByteStream):
    """The response body; closing it returns the connection to the pool, or closes it if the body
    was not read to the end (that socket close is how the upstream learns of a cancel)."""

    def __init__(
        self, stream: Any, pool: _Pool, origin: httpcore.Origin, connection: httpcore.AsyncHTTP11Connection
    ) -> None:
        self._stream = stream
        self._pool = pool
        self._origin = origin
        self._connection: httpcore.AsyncHTTP11Connection | None = connection

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._stream:
                yield part
        except _CORE_ERRORS as exc:
            raise _to_httpx_error(exc) from exc

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            await self._stream.aclose()
        finally:
            await self._pool.give_back(self._origin, connection)


class LeanTransport(httpx.AsyncBaseTransport):
    """httpx transport for plain-HTTP upstreams built on `_Pool` and `_Stream` (see module docstring)."""

    def __init__(self, *, max_connections: int, keepalive_expiry: float = 60.0) -> None:
        self._pool = _Pool(max_connections, keepalive_expiry)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        url = request.url
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            response, connection = await self._pool.send(core_request)
        except _CORE_ERRORS as exc:
            raise _to_httpx_error(exc) from exc
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseBody(response.stream, self._pool, core_request.url.origin, connection),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


def make_transport(upstream: str, *, max_connections: int, keepalive_expiry: float = 60.0) -> httpx.AsyncBaseTransport:
    """The lean transport for http:// upstreams, httpx's stock one (with TLS) for https://."""
    if upstream.startswith("http://"):
        return LeanTransport(max_connections=max_connections, keepalive_expiry=keepalive_expiry)
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections, keepalive_expiry=keepalive_expiry
    )
    return httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
