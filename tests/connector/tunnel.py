"""A stand-in for the Tokios server side of the connector protocol, for connector tests.

It accepts connector WebSockets, records what arrives per request id, and lets a test send
welcome/request/cancel/ping frames like the real consumer will (docs/connector-protocol.md).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tokios_connector.frames import MAX_FRAME_SIZE, parse_chunk

PART_SIZE = 256 * 1024


@dataclass
class Chunk:
    payload: bytes
    at: float  # time.monotonic() on arrival
    frame_size: int


@dataclass
class Response:
    start: dict[str, Any] | None = None
    chunks: list[Chunk] = field(default_factory=list)
    end: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    end_at: float = 0.0

    @property
    def status(self) -> int | None:
        return self.start["status"] if self.start else None

    @property
    def body(self) -> bytes:
        return b"".join(chunk.payload for chunk in self.chunks)

    def json(self) -> Any:
        return json.loads(self.body)

    def sse_data(self) -> list[str]:
        return [line[6:] for line in self.body.decode().split("\n") if line.startswith("data: ")]


class Peer:
    """One connector connection as the server sees it."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.authorization = ws.request.headers.get("Authorization") if ws.request else None
        self.control: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
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
                if isinstance(message, bytes):
                    rid, payload = parse_chunk(message)
                    self._queue(rid).put_nowait(("chunk", Chunk(payload, now, len(message)), now))
                else:
                    frame = json.loads(message)
                    if "id" in frame:
                        self._queue(frame["id"]).put_nowait((frame["type"], frame, now))
                    else:
                        self.control.put_nowait(frame)
        except ConnectionClosed:
            pass

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def next_control(self, timeout: float = 5.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.control.get(), timeout)

    async def handshake(self, **welcome: Any) -> dict[str, Any]:
        hello = await self.next_control()
        assert hello["type"] == "hello", hello
        await self.send(
            {
                "type": "welcome",
                "deployment": "fake-deployment",
                "connector_id": "conn-1",
                "heartbeat_interval": 15,
                "heartbeat_timeout": 45,
                **welcome,
            }
        )
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
        parts = (
            []
            if text is None or len(text) <= PART_SIZE
            else [text[i : i + PART_SIZE] for i in range(0, len(text), PART_SIZE)]
        )
        await self.send(
            {
                "type": "request",
                "id": rid,
                "method": method,
                "path": path,
                "headers": headers if headers is not None else {"content-type": "application/json"},
                "body": None if parts else text,
                "body_parts": len(parts),
            }
        )
        for part in parts:
            await self.send({"type": "request.body", "id": rid, "data": part})

    async def next_event(self, rid: str, timeout: float = 5.0) -> tuple[str, Any, float]:
        return await asyncio.wait_for(self._queue(rid).get(), timeout)

    def pending_events(self, rid: str) -> list[tuple[str, Any, float]]:
        queue = self._queue(rid)
        events = []
        while not queue.empty():
            events.append(queue.get_nowait())
        return events

    async def collect(self, rid: str, timeout: float = 10.0, *, start: dict[str, Any] | None = None) -> Response:
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

    async def _handle(self, ws: ServerConnection) -> None:
        peer = Peer(ws)
        await self.connections.put(peer)
        await peer.reader

    async def accept(self, timeout: float = 5.0) -> Peer:
        return await asyncio.wait_for(self.connections.get(), timeout)
