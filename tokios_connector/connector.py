"""The connector's event loop: one outbound WebSocket carrying many concurrent upstream requests.

Protocol: docs/connector-protocol.md (version 2; frames from `protocol.py`, shared with the
server). One asyncio task per request streams the upstream body back chunk by chunk, sending only
what the credit the server granted pays for; the WebSocket reader never awaits a send, so a slow
server cannot stop it from seeing `credit`, `cancel` and `ping` frames.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import sys
from typing import TYPE_CHECKING, Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from . import __version__, probe, slots
from .config import Config, public_url
from .contract import coalesce_writes
from .metrics import NO_METRICS, NoMetrics
from .protocol import (
    CLOSE_AUTH_REJECTED,
    CLOSE_TOKEN_REVOKED,
    CLOSE_VERSION_MISMATCH,
    CREDIT_BLOCK,
    MAX_CHUNK_PAYLOAD,
    MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
    Cancel,
    ConnectorFrame,
    Credit,
    Draining,
    Ping,
    Pong,
    ProtocolError,
    Request,
    RequestBody,
    ResponseEnd,
    ResponseError,
    ResponseStart,
    Slots,
    Welcome,
    chunk_prefix,
    credit_cost,
    decode_from_server,
    encode,
    loads,
)
from .session import PendingBody, Session, Stream
from .transport import make_transport
from .upstream import Route, build_routes, request_headers, response_headers, rewrite_model

if TYPE_CHECKING:
    from .tracing import ConnectorTracing

log = logging.getLogger("tokios_connector")
# websockets logs handshake headers (our Bearer token) and frame contents (prompts) at debug level.
# Give it a logger of our own, pinned at INFO, so no root logging setup can switch that on.
ws_log = logging.getLogger("tokios_connector.websocket")
ws_log.setLevel(logging.INFO)

EXIT_OK = 0
EXIT_FATAL = 2  # retrying cannot help: bad token, or the server speaks another protocol version

# Close codes after which reconnecting cannot help (docs: "Close codes").
FATAL_CLOSE_CODES = {
    CLOSE_AUTH_REJECTED: "connector token rejected by server (close 4001): check --token",
    CLOSE_TOKEN_REVOKED: "connector token revoked by server (close 4003): check --token",
    CLOSE_VERSION_MISMATCH: (
        f"server refused connector protocol {PROTOCOL_VERSION} (close 4004): "
        "upgrade the server or use a connector release that matches it"
    ),
}

BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
STABLE_AFTER = 60.0  # a connection up this long resets the backoff attempt counter
# A server cannot switch the watchdog off by announcing an absurd heartbeat timeout.
MAX_HEARTBEAT_TIMEOUT = 600.0
LOG_PROMPT_LIMIT = 4000


class FatalError(Exception):
    """Retrying cannot help (bad token, another protocol version); the message is for the operator."""


def backoff_delay(attempt: int) -> float:
    """Exponential backoff with full jitter, as the protocol specifies."""
    # The exponent is clamped: 2**attempt overflows a float after ~1024 attempts (8 hours at 30 s).
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(attempt, 16)))


def heartbeat_timeout(welcome: Welcome, default: float) -> float:
    """Seconds of silence from the server after which the connection counts as dead."""
    timeout = welcome.heartbeat_timeout if welcome.heartbeat_timeout > 0 else default
    # Never shorter than two ping intervals: a misconfigured server must not make us flap.
    timeout = max(timeout, 2 * welcome.heartbeat_interval)
    return min(timeout, MAX_HEARTBEAT_TIMEOUT)


def version_mismatch(server_protocol: object) -> str:
    return (
        f"the server speaks connector protocol {server_protocol}; this connector speaks {PROTOCOL_VERSION}: "
        "upgrade the server or use a matching connector"
    )


def _peek(raw: str | bytes) -> dict[str, Any]:
    """The JSON object of a frame that failed strict decoding, to tell what it was about.
    Only called on that cold path."""
    try:
        data = loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class Connector:
    def __init__(self, config: Config, tracing: ConnectorTracing | None = None, *, metrics: NoMetrics = NO_METRICS):
        self.config = config
        self.metrics = metrics  # counts nothing unless --metrics-port (metrics.py)
        self.tracing = tracing  # a span per upstream call, when tracing is configured (tracing.py)
        self.routes = build_routes(config.upstream)
        self.draining = False
        self.session: Session | None = None
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._http: httpx.AsyncClient | None = None

    # ----------------------------------------------------------------- lifecycle

    async def run(self, *, handle_signals: bool = True) -> int:
        """Serve until drained (exit 0) or retrying cannot help (exit 2)."""
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        self._http = self._make_http_client()
        forever = asyncio.create_task(self._connect_forever())
        stop = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait({forever, stop}, return_when=asyncio.FIRST_COMPLETED)
            if forever in done:
                return forever.result()
            await self._drain()
            return EXIT_OK
        except FatalError as exc:
            print(str(exc), file=sys.stderr, flush=True)
            return EXIT_FATAL
        finally:
            for task in (forever, stop):
                task.cancel()
            await asyncio.gather(forever, stop, return_exceptions=True)
            for sig in signals:
                loop.remove_signal_handler(sig)
            await self._http.aclose()

    def request_stop(self, reason: str = "stop requested") -> None:
        """First call: start draining. Second call: stop waiting for in-flight requests."""
        if self.draining:
            log.warning("%s again: not waiting for in-flight requests any longer", reason)
            self._force.set()
            return
        log.info("%s: draining (grace %gs)", reason, self.config.grace)
        self.draining = True
        self._stop.set()

    def _make_http_client(self) -> httpx.AsyncClient:
        cfg = self.config
        return httpx.AsyncClient(
            # One shared client; its transport pools up to this many upstream connections.
            transport=make_transport(cfg.upstream, max_connections=max(256, cfg.max_concurrency)),
            timeout=httpx.Timeout(
                connect=cfg.connect_timeout,
                read=cfg.read_timeout,
                write=cfg.read_timeout,
                pool=cfg.connect_timeout,
            ),
            follow_redirects=False,  # a redirect must never take a request off the upstream
            # Environment proxies must not reroute a local model's traffic (and its prompts).
            trust_env=False,
            # Compressed upstream bodies would cost CPU twice and confuse raw byte relaying.
            headers={"accept-encoding": "identity"},
        )

    async def _drain(self) -> None:
        session = self.session
        if session is None:
            log.info("not connected: exiting")
            return
        ws = session.ws
        try:
            await self._send(ws, Draining())
        except ConnectionClosed:
            return
        if session.inflight:
            log.info("waiting up to %gs for %d in-flight requests", self.config.grace, len(session.inflight))
            waiters = [
                asyncio.create_task(session.idle.wait()),
                asyncio.create_task(ws.wait_closed()),
                asyncio.create_task(self._force.wait()),
            ]
            await asyncio.wait(waiters, timeout=self.config.grace, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
        if session.inflight:
            log.warning("abandoning %d in-flight requests", len(session.inflight))
        await self._abandon(session)
        await ws.close(1001, "connector draining")
        log.info("drained: exiting")

    # ----------------------------------------------------------------- connection loop

    async def _connect_forever(self) -> int:
        cfg = self.config
        url = cfg.server_url
        shown = public_url(url)
        attempt = 0
        loop = asyncio.get_running_loop()
        while not self.draining:
            started = loop.time()
            code: int | None = None
            reason = ""
            problem = "connection ended"
            try:
                async with connect(
                    url,
                    additional_headers={"Authorization": f"Bearer {cfg.token}"},
                    user_agent_header=f"tokios-connector/{__version__}",
                    max_size=MAX_FRAME_SIZE,
                    # The protocol has its own ping/pong and 45 s watchdog; websockets' keepalive
                    # would only add a second, shorter timer that trips when the server is busy.
                    ping_interval=None,
                    # Chunks are small SSE events on a fast link: deflate costs more CPU than it saves.
                    compression=None,
                    open_timeout=cfg.connect_timeout,
                    close_timeout=5,
                    max_queue=64,
                    write_limit=256 * 1024,
                    logger=ws_log,
                ) as ws:
                    coalesce_writes(ws)  # the server reads ~10x fewer segments (contract.py)
                    await self._serve_connection(ws)
                code, reason = ws.close_code, ws.close_reason or ""
            except FatalError:
                raise
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status in (401, 403):
                    raise FatalError(
                        f"server refused the connector upgrade (HTTP {status}): check --token and --server"
                    ) from None
                problem = f"connect to {shown} failed: HTTP {status}"
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else 1006
                reason = exc.rcvd.reason if exc.rcvd else ""
            except (OSError, asyncio.TimeoutError) as exc:  # noqa: UP041 - a distinct class on Python 3.10
                problem = f"connect to {shown} failed: {exc or type(exc).__name__}"
            except Exception as exc:  # noqa: BLE001 - anything else must not end a forever-loop
                problem = f"connection to {shown} failed: {exc!r}"

            if code in FATAL_CLOSE_CODES:
                # The server's reason (at most 123 bytes by RFC 6455) may say which versions it speaks.
                raise FatalError(FATAL_CLOSE_CODES[code] + (f" (server said: {reason!r})" if reason else ""))
            if code is not None:
                problem = f"disconnected (close {code}{f' {reason!r}' if reason else ''})"
            if self.draining:
                log.info("%s", problem)
                break
            if loop.time() - started >= STABLE_AFTER:
                attempt = 0
            delay = backoff_delay(attempt)
            attempt += 1
            log.warning("%s; reconnecting in %.1fs", problem, delay)
            self.metrics.reconnecting()
            await asyncio.sleep(delay)
        return EXIT_OK

    async def _serve_connection(self, ws: ClientConnection) -> None:
        cfg = self.config
        assert self._http is not None
        # Asked on every connection: the model server may have restarted with another slot count,
        # other models, or as another release.
        slot_count, findings = await asyncio.gather(
            slots.count(self._http, cfg),
            probe.probe(self._http, cfg.upstream, cfg.upstream_key) if cfg.probe else probe.skipped(),
        )
        if findings is not None:
            log.info("upstream: %s", findings.summary())
        await self._send(ws, probe.hello(cfg, slot_count, findings))
        welcome = await self._await_welcome(ws)
        if welcome is None:
            return
        log.info(
            "connected to %s as connector %s for deployment %s (window %d credit blocks, %d slots)",
            public_url(cfg.server_url),
            welcome.connector_id,
            welcome.deployment,
            welcome.window,
            slot_count,
        )
        loop = asyncio.get_running_loop()
        session = Session(ws, welcome.window, loop.time())
        self.session = session
        self.metrics.connected(True)
        helpers = [asyncio.create_task(self._watchdog(session, heartbeat_timeout(welcome, cfg.heartbeat_timeout)))]
        if welcome.slot_updates:  # an older server would close the connection on a `slots` frame

            async def announce(count: int) -> None:
                await self._send_quietly(ws, Slots(count))

            helpers.append(asyncio.create_task(slots.follow(self._http, cfg, slot_count, announce)))
        try:
            async for message in ws:
                session.last_rx = loop.time()
                if isinstance(message, str):
                    self._on_frame(session, message)
                else:
                    self.metrics.frame_in("invalid", len(message))
                    log.warning("ignoring unexpected binary frame from server (%d bytes)", len(message))
        finally:
            self.metrics.connected(False)
            for helper in helpers:
                helper.cancel()
            self.session = None
            await self._abandon(session)

    async def _await_welcome(self, ws: ClientConnection) -> Welcome | None:
        """The server's `welcome`; None (connection closed, reconnect) if it did not come.
        FatalError if the server speaks another protocol version."""
        try:
            raw = await asyncio.wait_for(ws.recv(), self.config.heartbeat_timeout)
        except (TimeoutError, asyncio.TimeoutError):  # noqa: UP041 - distinct classes on Python 3.10
            log.warning("no welcome from server within %gs", self.config.heartbeat_timeout)
            await ws.close(1002, "no welcome")
            return None
        problem = "not a welcome frame"
        frame = None
        if isinstance(raw, str):
            try:
                frame = decode_from_server(raw)
            except ProtocolError as exc:
                problem = exc.message
                peeked = _peek(raw)
                # Another version's welcome may fail our stricter checks; its version is what matters.
                if peeked.get("type") == "welcome" and peeked.get("protocol", 1) != PROTOCOL_VERSION:
                    await self._refuse_version(ws, peeked.get("protocol", 1))
        if isinstance(frame, Welcome) and frame.protocol != PROTOCOL_VERSION:
            await self._refuse_version(ws, frame.protocol)
        if not isinstance(frame, Welcome):
            log.warning("expected welcome from server: %s", problem)
            await ws.close(1002, "expected welcome")
            return None
        return frame

    @staticmethod
    async def _refuse_version(ws: ClientConnection, server_protocol: object) -> None:
        await ws.close(1002, f"connector protocol {PROTOCOL_VERSION} required")
        # Bounded: the value comes from the server and ends up on the operator's terminal.
        raise FatalError(version_mismatch(str(server_protocol)[:20]))

    async def _watchdog(self, session: Session, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        interval = min(5.0, max(0.05, timeout / 4))
        while True:
            await asyncio.sleep(interval)
            silent = loop.time() - session.last_rx
            if silent > timeout:
                log.warning("nothing from server for %.0fs: reconnecting", silent)
                await session.ws.close(1001, "heartbeat timeout")
                return

    async def _abandon(self, session: Session) -> None:
        """Cancel whatever is still running (a task waiting for credit too): its answers have
        nowhere to go."""
        tasks = session.running_tasks()
        session.inflight.clear()
        session.idle.set()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # ----------------------------------------------------------------- frames from the server

    def _on_frame(self, session: Session, raw: str) -> None:
        try:
            frame = decode_from_server(raw)
        except ProtocolError as exc:
            self.metrics.text_in("invalid", raw)
            self._on_bad_frame(session, raw, exc)
            return
        self.metrics.text_in(frame.type, raw)
        match frame:
            case Credit(id=rid, blocks=blocks):
                entry = session.inflight.get(rid)
                # Credit for a finished or cancelled request (it crossed our response.end) is moot.
                if isinstance(entry, Stream):
                    entry.add_credit(blocks)
            case Request():
                self._on_request(session, frame)
            case RequestBody():
                self._on_body_part(session, frame)
            case Cancel(id=rid):
                self._on_cancel(session, rid)
            case Ping(t=t):
                self._send_soon(session, Pong(t))
            case Welcome():
                log.warning("ignoring a second welcome from server")

    def _on_bad_frame(self, session: Session, raw: str, exc: ProtocolError) -> None:
        rid = exc.request_id
        kind = _peek(raw).get("type") if rid is not None else None
        if kind == "request" and rid not in session.inflight:
            # The id is good, so the server can be told; an id in flight belongs to another stream.
            self._reject(session, rid, "bad_request", exc.message)
            log.info("req %s -> bad_request (%s)", rid, exc.message)
            return
        if kind == "request.body" and isinstance(session.inflight.get(rid), PendingBody):
            del session.inflight[rid]
            self._mark_idle_if_empty(session)
            self._reject(session, rid, "bad_request", exc.message)
            log.info("req %s -> bad_request (%s)", rid, exc.message)
            return
        # Not the raw frame: it may hold a prompt. ProtocolError messages are short and bounded.
        log.warning("ignoring a frame from server that breaks the protocol (%d chars): %s", len(raw), exc.message)

    def _on_request(self, session: Session, request: Request) -> None:
        rid, method, path = request.id, request.method, request.path
        if rid in session.inflight:
            # Answering would corrupt the stream that owns this id.
            log.warning("ignoring request %s: id already in flight", rid)
            return
        if self.draining:
            self._reject(session, rid, "overloaded", "connector is draining")
            log.info("req %s %.20s %.200s -> overloaded (draining)", rid, method, path)
            return
        route = self.routes.get(path)
        if route is None or method != route.method:
            self._reject(
                session, rid, "path_not_allowed", f"{method:.20} {path:.200} is not forwarded by this connector"
            )
            log.info("req %s %.20s %.200s -> path_not_allowed", rid, method, path)
            return
        if len(session.inflight) >= self.config.max_concurrency:
            self._reject(session, rid, "overloaded", f"over max_concurrency ({self.config.max_concurrency})")
            log.info("req %s %s %s -> overloaded", rid, method, path)
            return
        session.idle.clear()
        if request.body_parts:
            session.inflight[rid] = PendingBody(request, route)
            return
        self._start(session, request, route, request.body.encode() if request.body else None)

    def _on_body_part(self, session: Session, part: RequestBody) -> None:
        entry = session.inflight.get(part.id)
        if not isinstance(entry, PendingBody):
            # Usually a part of a request that was just cancelled.
            log.debug("ignoring request.body for %s", part.id)
            return
        entry.parts.append(part.data.encode())
        entry.remaining -= 1
        if entry.remaining == 0:
            self._start(session, entry.request, entry.route, b"".join(entry.parts))

    def _on_cancel(self, session: Session, rid: str) -> None:
        entry = session.inflight.pop(rid, None)
        if entry is None:
            return  # already finished: the cancel crossed our response.end
        if isinstance(entry, Stream):
            entry.task.cancel()
        else:
            log.info("req %s %s -> cancelled before its body arrived", rid, entry.request.path)
        self._mark_idle_if_empty(session)

    @staticmethod
    def _mark_idle_if_empty(session: Session) -> None:
        if not session.inflight:
            session.idle.set()

    # ----------------------------------------------------------------- sending

    def _send_soon(self, session: Session, frame: Pong | ResponseError) -> None:
        """Send from the reader without awaiting it, so a full write buffer never blocks reading."""
        task = asyncio.create_task(self._send_quietly(session.ws, frame))
        session.helpers.add(task)
        task.add_done_callback(session.helpers.discard)

    async def _send(self, ws: ClientConnection, frame: ConnectorFrame) -> None:
        text = encode(frame)
        self.metrics.text_out(frame.type, text)
        await ws.send(text)

    async def _send_quietly(self, ws: ClientConnection, frame: ConnectorFrame) -> None:
        try:
            await self._send(ws, frame)
        except ConnectionClosed:
            pass

    def _reject(self, session: Session, rid: str, code: str, message: str) -> None:
        self.metrics.refused(code)
        self._send_soon(session, ResponseError(rid, code, message))

    # ----------------------------------------------------------------- one request

    def _start(self, session: Session, request: Request, route: Route, body: bytes | None) -> None:
        rid = request.id
        stream = Stream(session.window)
        stream.task = task = asyncio.create_task(self._proxy(session.ws, request, route, body, stream))
        session.inflight[rid] = stream

        def finished(done: asyncio.Task[None]) -> None:
            # The id may already belong to a newer request if this one was cancelled.
            entry = session.inflight.get(rid)
            if isinstance(entry, Stream) and entry.task is done:
                del session.inflight[rid]
            self._mark_idle_if_empty(session)

        task.add_done_callback(finished)

    async def _proxy(
        self, ws: ClientConnection, request: Request, route: Route, body: bytes | None, stream: Stream
    ) -> None:
        cfg = self.config
        assert self._http is not None
        loop = asyncio.get_running_loop()
        rid = request.id
        if body is not None and route.rewrite_model and cfg.model:
            body = rewrite_model(body, cfg.model)
        if cfg.log_prompts and body:
            log.info("req %s body: %s", rid, body[:LOG_PROMPT_LIMIT].decode(errors="replace"))
        headers = request_headers(request.headers, cfg.upstream_key)
        headers.extend(route.headers)
        if body is not None and not any(name == "content-type" for name, _ in headers):
            headers.append(("content-type", "application/json"))
        span = self.tracing.upstream_span(request, route.method, str(route.url)) if self.tracing else None
        if span is not None:
            headers.append(("traceparent", span.traceparent()))  # the model server may join the trace
        prefix = chunk_prefix(rid)
        started = loop.time()
        self.metrics.request_started()
        first_byte: float | None = None
        status: int | None = None
        sent = 0
        waits = 0
        outcome = "ok"
        error: tuple[str, str] | None = None
        try:
            async with self._http.stream(route.method, route.url, headers=headers, content=body) as response:
                status = response.status_code
                await self._send(ws, ResponseStart(rid, status, response_headers(response.headers)))
                async for chunk in response.aiter_raw():
                    if first_byte is None:
                        first_byte = loop.time()
                    sent += len(chunk)
                    view, size, at = memoryview(chunk), len(chunk), 0
                    while at < size:
                        if stream.credit <= 0:  # the common case (credit left) costs no await
                            waits += 1
                            await stream.wait_for_credit()
                        # As much as the credit held pays for, at most MAX_CHUNK_PAYLOAD.
                        piece = min(size - at, MAX_CHUNK_PAYLOAD, stream.credit * CREDIT_BLOCK)
                        stream.credit -= credit_cost(piece)
                        await ws.send(prefix + view[at : at + piece])
                        self.metrics.frame_out("chunk", len(prefix) + piece)
                        at += piece
            done = loop.time()
            await self._send(
                ws,
                ResponseEnd(
                    rid,
                    upstream_ms=round((done - started) * 1000),
                    ttfb_ms=round(((first_byte or done) - started) * 1000),
                ),
            )
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except ConnectionClosed:
            outcome = "tunnel closed"
        except httpx.TimeoutException as exc:
            error = ("upstream_timeout", f"upstream timed out ({type(exc).__name__})")
        except httpx.ConnectError as exc:
            error = ("upstream_unreachable", f"cannot connect to upstream: {exc}")
        except httpx.HTTPError as exc:
            # Broken mid-body (or before the status line): the upstream went away or spoke nonsense.
            error = ("upstream_error", f"upstream connection failed: {exc or type(exc).__name__}")
        finally:
            if error is not None:
                outcome = error[0]
                try:
                    await self._send(ws, ResponseError(rid, error[0], error[1]))
                except ConnectionClosed:
                    pass
            log.info(
                "req %s %s %s -> %s %dms %dB%s%s",
                rid,
                route.method,
                request.path,
                status if status is not None else "-",
                round((loop.time() - started) * 1000),
                sent,
                f" (waited for credit {waits}x)" if waits else "",
                "" if outcome == "ok" else f" ({outcome})",
            )
            waited = None if first_byte is None else first_byte - started
            self.metrics.request_finished(status, outcome, loop.time() - started, waited)
            if span is not None:
                span.end(status, None if first_byte is None else first_byte - started, outcome)
