"""A lean, always-pipelined Redis connection for the per-request hot path (rate limits, budgets).

redis-py's asyncio client spends ~150 µs of CPU per awaited command (connection pool, retry and
timeout wrappers, a task per read) and ~25 µs per command even in a pipeline; at a thousand
requests a second with two limiter scripts each, that was a quarter of the event loop. This client
keeps one connection per event loop and writes every command issued in the same loop turn with
one `write`; replies are parsed by hiredis (C) in `data_received` and resolve the waiting futures
in order. It does only what the limiter needs: commands, error replies, NOSCRIPT-proof scripts,
AUTH/SELECT from the URL, TLS for `rediss://`, and a timeout that fails everything in flight when
Redis stops answering, so that callers can fail open instead of hanging.

Everything else (presence, caches, Channels, Celery) keeps using redis-py, where it is not hot.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import ssl
from urllib.parse import unquote, urlsplit

import hiredis

from .loops import for_this_loop

RECONNECT_PAUSE = 1.0  # seconds after a failed connect during which commands fail at once


class ReplyError(Exception):
    """Redis answered a command with an error (`-ERR …`, `-NOSCRIPT …`)."""


def encode(args: tuple) -> bytes:
    """One command in RESP (an array of bulk strings), packed in C by hiredis."""
    return hiredis.pack_command(args)


class Script:
    """A Lua script run by its SHA; loaded on every new connection, reloaded if Redis forgot it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class _Protocol(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self.reader = hiredis.Reader(replyError=ReplyError)
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self.outgoing: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None
        self.waiting_since = 0.0  # when the oldest unanswered command was sent (or the last reply came)
        self.watchdog: asyncio.TimerHandle | None = None

    # asyncio callbacks

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiters = self.waiters
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(ConnectionError(f"Redis protocol error: {exc}"))
                return
            if reply is False:
                break
            self.waiting_since = self.loop.time()
            if not waiters:
                self._fail(ConnectionError("Redis sent a reply nobody asked for"))
                return
            future = waiters.popleft()
            if future.done():  # the caller gave up (cancelled); the reply is dropped in order
                continue
            if type(reply) is ReplyError:
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"Redis connection lost: {exc}" if exc else "Redis closed the connection"))

    # sending

    def send(self, payload: bytes) -> asyncio.Future:
        future = self.loop.create_future()
        if self.lost is not None:
            future.set_exception(self.lost)
            return future
        if not self.waiters:
            self.waiting_since = self.loop.time()
        self.waiters.append(future)
        if not self.outgoing:
            self.loop.call_soon(self._flush)  # commands from the rest of this loop turn join in
        self.outgoing.append(payload)
        if self.watchdog is None:
            self.watchdog = self.loop.call_later(self.timeout, self._check)
        return future

    def _flush(self) -> None:
        if self.outgoing and self.transport is not None and self.lost is None:
            self.transport.write(b"".join(self.outgoing))
        self.outgoing.clear()

    def _check(self) -> None:
        self.watchdog = None
        if not self.waiters or self.lost is not None:
            return
        waited = self.loop.time() - self.waiting_since
        if waited >= self.timeout:
            self._fail(TimeoutError(f"Redis did not answer within {self.timeout:g} s"))
            return
        self.watchdog = self.loop.call_later(self.timeout - waited, self._check)

    def _fail(self, exc: Exception) -> None:
        if self.lost is None:
            self.lost = exc
        if self.transport is not None:
            self.transport.abort()
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        self.outgoing.clear()
        while self.waiters:
            future = self.waiters.popleft()
            if not future.done():
                future.set_exception(exc)


class RedisPipe:
    """One connection to the Redis at `url`, for one event loop; reconnects after a failure."""

    def __init__(self, url: str, *, timeout: float = 2.0, scripts: tuple[Script, ...] = ()) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.path = unquote(parts.path) if parts.scheme == "unix" else ""
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        db = parts.path.lstrip("/") if parts.scheme != "unix" else ""
        query = dict(item.split("=", 1) for item in parts.query.split("&") if "=" in item)
        self.db = int(query.get("db") or db or 0)
        self.timeout = timeout
        self.scripts = scripts
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future | None = None
        self._failed: tuple[float, Exception] | None = None  # (when, why) the last connect failed

    async def execute(self, *args):
        """Send one command; its reply, or ReplyError / ConnectionError / TimeoutError."""
        protocol = self._protocol
        if protocol is None or protocol.lost is not None:
            protocol = await self._connect()
        return await protocol.send(encode(args))

    def send_nowait(self, *args) -> asyncio.Future:
        """Queue one command on a live connection and return its reply future (no reconnecting)."""
        protocol = self._protocol
        if protocol is None or protocol.lost is not None:
            future = asyncio.get_running_loop().create_future()
            future.set_exception(ConnectionError("no live Redis connection"))
            return future
        return protocol.send(encode(args))

    def flush(self) -> None:
        """Write the commands queued so far now instead of at the end of the loop turn (for callers
        that already run at the end of one: waiting for the next turn would add a whole pass of
        the event loop to every reply)."""
        protocol = self._protocol
        if protocol is not None:
            protocol._flush()

    @property
    def connected(self) -> bool:
        return self._protocol is not None and self._protocol.lost is None

    async def evalsha(self, script: Script, keys: list[str], args: list):
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        protocol = self._protocol
        try:
            if protocol is not None and protocol.lost is None:  # live: one coroutine frame fewer per reply
                return await protocol.send(encode(command))
            return await self.execute(*command)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self.execute("SCRIPT", "LOAD", script.source)
        return await self.execute(*command)

    def close(self) -> None:
        if self._protocol is not None:
            self._protocol._fail(ConnectionError("closed"))
            self._protocol = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        if self._failed is not None and loop.time() - self._failed[0] < RECONNECT_PAUSE:
            # Redis just could not be reached: fail at once instead of making every request of the
            # next second wait for its own connect timeout (callers fail open).
            raise ConnectionError(f"Redis unreachable ({self._failed[1]!r}); retrying shortly")
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        except (OSError, TimeoutError, ReplyError) as exc:
            if connecting.done():
                self._failed = (loop.time(), exc)
            raise
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()

        def factory() -> _Protocol:
            return _Protocol(loop, self.timeout)

        if self.scheme == "unix":
            opening = loop.create_unix_connection(factory, self.path)
        else:
            context = ssl.create_default_context() if self.scheme == "rediss" else None
            opening = loop.create_connection(factory, self.host, self.port, ssl=context)
        async with asyncio.timeout(self.timeout):
            _, protocol = await opening
            handshake = []
            if self.password is not None:
                auth = ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
                handshake.append(protocol.send(encode(auth)))
            if self.db:
                handshake.append(protocol.send(encode(("SELECT", self.db))))
            handshake += [protocol.send(encode(("SCRIPT", "LOAD", s.source))) for s in self.scripts]
            try:
                await asyncio.gather(*handshake)
            except BaseException:
                protocol._fail(ConnectionError("Redis handshake failed"))
                raise
        self._protocol = protocol
        self._failed = None
        return protocol


_pipes: dict[tuple[int, str], tuple[asyncio.AbstractEventLoop, RedisPipe]] = {}


def get_pipe(url: str, *, scripts: tuple[Script, ...] = (), timeout: float = 2.0) -> RedisPipe:
    """The pipe to `url` for the running event loop (tests run several loops in one process)."""
    return for_this_loop(_pipes, url, lambda: RedisPipe(url, timeout=timeout, scripts=scripts))
