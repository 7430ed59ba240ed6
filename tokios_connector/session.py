"""State tied to one connector WebSocket: the requests in flight on it and their credit.

Request ids are only meaningful within one connection, so everything here is dropped with it.
"""

from __future__ import annotations

import asyncio

from websockets.asyncio.client import ClientConnection

from .protocol import MAX_CREDIT, Request
from .upstream import Route


class PendingBody:
    """A request whose body is still arriving in `request.body` parts."""

    __slots__ = ("request", "route", "parts", "remaining")

    def __init__(self, request: Request, route: Route) -> None:
        self.request = request
        self.route = route
        self.parts: list[bytes] = []
        self.remaining = request.body_parts


class Stream:
    """A request being relayed, and the credit blocks it may still spend (docs: "Flow control")."""

    __slots__ = ("task", "credit", "granted")

    task: asyncio.Task[None]  # set by the connector right after the stream is created

    def __init__(self, window: int) -> None:
        self.credit = window
        self.granted = asyncio.Event()

    def add_credit(self, blocks: int) -> None:
        # Bounded: a confused server must not make this grow without limit.
        self.credit = min(self.credit + blocks, MAX_CREDIT)
        self.granted.set()

    async def wait_for_credit(self) -> None:
        """Return once credit > 0. The caller reads nothing from the upstream meanwhile, so the
        model server feels TCP backpressure. A `cancel` or a lost WebSocket cancels the task, and
        so ends the wait at once."""
        while self.credit <= 0:
            self.granted.clear()
            await self.granted.wait()


class Session:
    """State tied to one WebSocket connection; request ids are only meaningful within it."""

    __slots__ = ("ws", "window", "inflight", "idle", "last_rx", "helpers")

    def __init__(self, ws: ClientConnection, window: int, now: float) -> None:
        self.ws = ws
        self.window = window  # credit blocks each request holds before the server hands any back
        self.inflight: dict[str, Stream | PendingBody] = {}
        self.idle = asyncio.Event()
        self.idle.set()
        self.last_rx = now
        # Strong references to fire-and-forget send tasks (asyncio keeps only weak ones).
        self.helpers: set[asyncio.Task[None]] = set()

    def running_tasks(self) -> list[asyncio.Task[None]]:
        return [entry.task for entry in self.inflight.values() if isinstance(entry, Stream)]
