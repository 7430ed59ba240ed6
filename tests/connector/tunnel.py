"""TEST DOUBLE: a stand-in for the Tokios server side of the connector protocol, for the connector
tests that need what the real server never does (test_connector.py): frame-level control of credit,
frames the protocol does not allow, a server that goes silent. The rest of the connector's tests run
against the real server in process (server.py, test_with_server.py).

It accepts connector WebSockets, reads what arrives with the shared parser
(`tokios_connector.protocol`) as strictly as the real server does, records it per request id, and
lets a test send welcome/request/credit/cancel/ping frames like the real consumer will
(docs/connector-protocol.md).

Flow control: like the server, it grants each request `window` credit blocks, charges each chunk
frame `credit_cost(len(payload))` of them (one per started 4 KiB), and, by default, hands credit
back as soon as half the window has arrived (a client that reads everything at once).
`handshake(auto_credit=False)` turns that off, so a test decides when credit is returned.
A connector that breaks the protocol (bad frame, chunk beyond its credit, chunk before
response.start, response.start twice) is recorded in `Peer.violation` and closed with 4002; the
`tunnel` fixture fails the test if any peer saw one.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tokios_connector.protocol import (
    CLOSE_PROTOCOL_ERROR,
    DEFAULT_WINDOW,
    MAX_BODY_PART,
    MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
    Cancel,
    ConnectorFrame,
    Credit,
    ProtocolError,
    Request,
    RequestBody,
    ResponseEnd,
    ResponseError,
    ResponseStart,
    ServerFrame,
    Welcome,
    credit_cost,
    decode_chunk,
    decode_from_connector,
    encode,
)


@dataclass
class ReceivedChunk:
    payload: bytes
    at: float  # time.monotonic() on arrival
    frame_size: int

    @property
    def blocks(self) -> int:
        """The credit this frame cost."""
        return credit_cost(len(self.payload))


@dataclass
class Response:
    start: ResponseStart | None = None
    chunks: list[ReceivedChunk] = field(default_factory=list)
    end: ResponseEnd | None = None
    error: ResponseError | None = None
    end_at: float = 0.0

    @property
    def status(self) -> int | None:
        return self.start.status if self.start else None

    @property
    def body(self) -> bytes:
        return b"".join(chunk.payload for chunk in self.chunks)

    def json(self) -> Any:
        return json.loads(self.body)

    def sse_data(self) -> list[str]:
        return [line[6:] for line in self.body.decode().split("\n") if line.startswith("data: ")]


@dataclass
class _Flow:
    """What the double knows about one request it sent."""

    credit: int  # credit blocks the connector may still spend
    unreturned: int = 0  # credit blocks spent since credit was last handed back
    started: bool = False


class Peer:
    """One connector connection as the server sees it."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.authorization = ws.request.headers.get("Authorization") if ws.request else None
        self.control: asyncio.Queue[ConnectorFrame] = asyncio.Queue()
        self.window = DEFAULT_WINDOW
        self.auto_credit = True
        self.violation: str | None = None
        self._flows: dict[str, _Flow] = {}
        self._by_id: dict[str, asyncio.Queue[tuple[str, Any, float]]] = {}
        self.reader = asyncio.create_task(self._read())

    def _queue(self, rid: str) -> asyncio.Queue[tuple[str, Any, float]]:
        if rid not in self._by_id:
            self._by_id[rid] = asyncio.Queue()
        return self._by_id[rid]

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                now = time.monotonic()
                try:
                    if isinstance(message, bytes):
                        await self._on_chunk(message, now)
                    else:
                        self._on_text(message, now)
                except ProtocolError as exc:
                    self.violation = exc.message
                    await self.ws.close(CLOSE_PROTOCOL_ERROR, exc.message[:100])
                    return
        except ConnectionClosed:
            pass

    async def _on_chunk(self, message: bytes, now: float) -> None:
        chunk = decode_chunk(message)
        flow = self._flows.get(chunk.id)
        # Recorded before it is judged, so a test counting frames sees an overrun too.
        self._queue(chunk.id).put_nowait(("chunk", ReceivedChunk(chunk.payload, now, len(message)), now))
        if flow is None:
            return  # a request the double never sent or already finished: dropped, as the server does
        if not flow.started:
            raise ProtocolError("chunk before response.start", chunk.id)
        cost = credit_cost(len(chunk.payload))
        if cost > flow.credit:
            raise ProtocolError(f"chunk of {cost} blocks beyond credit ({flow.credit} blocks left)", chunk.id)
        flow.credit -= cost
        flow.unreturned += cost
        if self.auto_credit and flow.unreturned * 2 >= self.window:  # the server's rule
            blocks, flow.unreturned = flow.unreturned, 0
            await self.send_credit(chunk.id, blocks)

    def _on_text(self, message: str, now: float) -> None:
        frame = decode_from_connector(message)
        match frame:
            case ResponseStart(id=rid):
                flow = self._flows.get(rid)
                if flow is not None:
                    if flow.started:
                        raise ProtocolError("response.start twice", rid)
                    flow.started = True
                self._queue(rid).put_nowait(("response.start", frame, now))
            case ResponseEnd(id=rid) | ResponseError(id=rid):
                self._flows.pop(rid, None)
                self._queue(rid).put_nowait((frame.type, frame, now))
            case _:
                self.control.put_nowait(frame)

    async def _get(self, queue: asyncio.Queue[Any], timeout: float) -> Any:
        try:
            return await asyncio.wait_for(queue.get(), timeout)
        except TimeoutError:
            if self.violation is not None:
                raise AssertionError(f"the connector broke the protocol: {self.violation}") from None
            raise

    async def send(self, frame: ServerFrame | dict[str, Any]) -> None:
        """Send a frame; a dict is sent as it is (for frames the protocol does not allow)."""
        await self.ws.send(json.dumps(frame) if isinstance(frame, dict) else encode(frame))

    async def send_credit(self, rid: str, blocks: int) -> None:
        flow = self._flows.get(rid)
        if flow is not None:
            flow.credit += blocks
        await self.send(Credit(rid, blocks))

    async def cancel(self, rid: str) -> None:
        self._flows.pop(rid, None)
        await self.send(Cancel(rid))

    async def next_control(self, timeout: float = 5.0) -> ConnectorFrame:
        return await self._get(self.control, timeout)

    async def handshake(
        self,
        *,
        window: int = DEFAULT_WINDOW,
        auto_credit: bool = True,
        protocol: int = PROTOCOL_VERSION,
        **welcome: Any,
    ) -> ConnectorFrame:
        hello = await self.next_control()
        assert hello.type == "hello", hello
        self.window = window
        self.auto_credit = auto_credit
        fields: dict[str, Any] = {
            "deployment": "fake-deployment",
            "connector_id": "conn-1",
            "heartbeat_interval": 15,
            "heartbeat_timeout": 45,
            **welcome,
        }
        await self.send(Welcome(window=window, protocol=protocol, **fields))
        return hello

    async def request(
        self,
        rid: str,
        body: Any = None,
        *,
        method: str = "POST",
        path: str = "/chat/completions",
        headers: dict[str, str] | None = None,
    ) -> None:
        text = body if isinstance(body, str) or body is None else json.dumps(body)
        # Split by characters: with ASCII JSON that is bytes too, and no part is over MAX_BODY_PART.
        parts = (
            []
            if text is None or len(text) <= MAX_BODY_PART
            else [text[i : i + MAX_BODY_PART] for i in range(0, len(text), MAX_BODY_PART)]
        )
        self._flows[rid] = _Flow(credit=self.window)
        await self.send(
            Request(
                rid,
                method,
                path,
                headers if headers is not None else {"content-type": "application/json"},
                body=None if parts else text,
                body_parts=len(parts),
            )
        )
        for part in parts:
            await self.send(RequestBody(rid, part))

    async def next_event(self, rid: str, timeout: float = 5.0) -> tuple[str, Any, float]:
        return await self._get(self._queue(rid), timeout)

    def pending_events(self, rid: str) -> list[tuple[str, Any, float]]:
        queue = self._queue(rid)
        events = []
        while not queue.empty():
            events.append(queue.get_nowait())
        return events

    async def collect(self, rid: str, timeout: float = 10.0, *, start: ResponseStart | None = None) -> Response:
        """Everything for one request up to its response.end or response.error (pass `start` if the
        test already took the response.start frame with next_event)."""
        response = Response(start=start)
        deadline = time.monotonic() + timeout
        while True:
            kind, item, at = await self.next_event(rid, max(0.01, deadline - time.monotonic()))
            if kind == "chunk":
                assert response.start is not None, "body chunk before response.start"
                response.chunks.append(item)
            elif kind == "response.start":
                response.start = item
            elif kind == "response.end":
                response.end, response.end_at = item, at
                return response
            elif kind == "response.error":
                response.error, response.end_at = item, at
                return response
            else:
                raise AssertionError(f"unexpected frame for {rid}: {item}")


class FakeTokios:
    """A WebSocket server on a free port that hands each connector connection to the test."""

    def __init__(self) -> None:
        self.connections: asyncio.Queue[Peer] = asyncio.Queue()
        self.peers: list[Peer] = []
        self.server: Server | None = None
        self.port = 0

    async def __aenter__(self) -> FakeTokios:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, port: int = 0) -> None:
        self.server = await serve(self._handle, "127.0.0.1", port, max_size=MAX_FRAME_SIZE, compression=None)
        self.port = self.server.sockets[0].getsockname()[1] if not port else port

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/connector"

    @property
    def violations(self) -> list[str]:
        return [peer.violation for peer in self.peers if peer.violation is not None]

    async def _handle(self, ws: ServerConnection) -> None:
        peer = Peer(ws)
        self.peers.append(peer)
        await self.connections.put(peer)
        await peer.reader

    async def accept(self, timeout: float = 5.0) -> Peer:
        return await asyncio.wait_for(self.connections.get(), timeout)
