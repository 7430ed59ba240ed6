"""One connector's side of the tunnel: the requests it holds, their credit, and what it sends back.

The consumer (`consumer.py`) owns the WebSocket and hands every frame here; a request reaches the
session either from this process (`submit` with an `Inbox`) or from another one (`submit` with a
reply channel). Frames are parsed strictly (`tokios_connector.protocol`): whatever a connector
sends that breaks the protocol raises `ProtocolError`, and the consumer then closes it and calls
`fail_all`, so no request waits on a connector that cannot answer it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from channels.exceptions import ChannelFull

from tokios_connector import protocol
from tokios_connector.protocol import ProtocolError

from ..calls import Data, Ended, Failed, Item, Started
from . import layer as layer_messages
from .inbox import Inbox
from .presence import ConnectorInfo

log = logging.getLogger("tokios.tunnel")

# channel name → session, for requests handled by the process that holds the connector
LOCAL: dict[str, ConnectorSession] = {}
# Requests a session remembers after they ended or were cancelled, with the credit blocks the
# connector may still send for each (0 once it ended): what was in flight when we cancelled is
# dropped quietly, anything beyond it breaks the protocol. Older ids are forgotten (and their
# frames dropped), which bounds the memory.
RECENT_IDS = 4096


@dataclass(slots=True)
class Pending:
    """A request the connector holds: where its items go, and what it may still send."""

    rid: str
    inbox: Inbox | None  # this process's waiting request, or
    reply: str | None  # another process's reply channel
    allowed: int  # credit blocks the connector may spend in all (window + credit handed back)
    received: int = 0  # credit blocks it spent
    started: bool = False


@dataclass(eq=False)
class ConnectorSession:
    info: ConnectorInfo
    send_text: Callable[[str], Awaitable[None]]  # a text frame to the connector
    layer: object | None  # the channel layer, for replies to other processes
    window: int
    pending: dict[str, Pending] = field(default_factory=dict)
    recent: OrderedDict[str, int] = field(default_factory=OrderedDict)
    closed: bool = False

    # --- requests ---------------------------------------------------------------------------------

    async def submit(
        self, rid: str, method: str, path: str, body: bytes, *, inbox: Inbox | None = None, reply: str | None = None
    ) -> None:
        if self.closed:
            await self._deliver(
                Pending(rid, inbox, reply, 0), Failed("connector_disconnected", "the connector disconnected")
            )
            return
        self.pending[rid] = Pending(rid, inbox, reply, self.window)
        self.info.inflight = len(self.pending)
        headers = {"content-type": "application/json", "x-request-id": rid}
        try:
            if len(body) <= protocol.MAX_BODY_PART:
                await self.send_text(
                    protocol.encode(protocol.Request(rid, method, path, headers, body.decode() or None))
                )
                return
            # Bodies are JSON, so UTF-8 text: split on characters, never inside a multi-byte
            # sequence; at most 4 bytes per character keeps every part under MAX_BODY_PART bytes.
            text = body.decode()
            step = protocol.MAX_BODY_PART // 4
            parts = [text[i : i + step] for i in range(0, len(text), step)]
            await self.send_text(protocol.encode(protocol.Request(rid, method, path, headers, None, len(parts))))
            for part in parts:
                await self.send_text(protocol.encode(protocol.RequestBody(rid, part)))
        except OSError:  # the socket closed under us: the consumer's cleanup fails the request
            log.debug("submit %s: the connector is gone", rid)

    async def cancel(self, rid: str) -> None:
        entry = self.pending.get(rid)
        if entry is None:
            return
        self._finished(rid, still_allowed=entry.allowed - entry.received)
        try:
            await self.send_text(protocol.encode(protocol.Cancel(rid)))
        except OSError:  # the connector's socket closed: nothing left to stop
            log.debug("cancel %s: the connector is already gone", rid)

    async def grant(self, rid: str, blocks: int) -> None:
        """Credit handed back by the request's reader: the connector may spend `blocks` more."""
        entry = self.pending.get(rid)
        if entry is None or blocks <= 0:
            return
        entry.allowed += blocks
        try:
            await self.send_text(protocol.encode(protocol.Credit(rid, blocks)))
        except OSError:
            log.debug("credit %s: the connector is already gone", rid)

    # --- frames from the connector ----------------------------------------------------------------

    async def on_chunk(self, data: bytes) -> None:
        chunk = protocol.decode_chunk(data)
        entry = self.pending.get(chunk.id)
        cost = protocol.credit_cost(len(chunk.payload))
        if entry is None:
            left = self.recent.get(chunk.id)
            if left is not None:
                if left < cost:
                    raise ProtocolError("body chunk after the request ended, or beyond its credit", chunk.id)
                self.recent[chunk.id] = left - cost  # in flight when we cancelled: dropped
            return
        if not entry.started:
            raise ProtocolError("body chunk before response.start", chunk.id)
        entry.received += cost
        if entry.received > entry.allowed:
            raise ProtocolError(f"body chunk beyond its credit ({entry.allowed} blocks)", chunk.id)
        await self._deliver(entry, Data(chunk.payload, cost))

    async def on_frame(self, frame: protocol.ConnectorFrame) -> None:
        match frame:
            case protocol.ResponseStart(id=rid, status=status, headers=headers):
                entry = self.pending.get(rid)
                if entry is None:
                    return
                if entry.started:
                    raise ProtocolError("response.start twice", rid)
                entry.started = True
                await self._deliver(entry, Started(status, headers))
            case protocol.ResponseEnd(id=rid, upstream_ms=upstream_ms, ttfb_ms=ttfb_ms):
                entry = self.pending.get(rid)
                if entry is None:
                    return
                if not entry.started:
                    raise ProtocolError("response.end before response.start", rid)
                self._finished(rid)
                await self._deliver(entry, Ended(upstream_ms, ttfb_ms))
            case protocol.ResponseError(id=rid, code=code, message=message):
                entry = self.pending.get(rid)
                if entry is None:
                    return
                self._finished(rid)
                await self._deliver(entry, Failed(code, message))
            case protocol.Pong():
                pass
            case protocol.Draining():
                self.info.draining = True
            case protocol.Hello():
                raise ProtocolError("hello after the handshake")

    def _finished(self, rid: str, *, still_allowed: int = 0) -> None:
        del self.pending[rid]
        self.info.inflight = len(self.pending)
        self.recent[rid] = still_allowed
        if len(self.recent) > RECENT_IDS:
            self.recent.popitem(last=False)

    async def fail_all(self, code: str, message: str) -> None:
        """Fail every request this connector holds (it is gone, or broke the protocol)."""
        self.closed = True
        pending, self.pending = self.pending, {}
        self.info.inflight = 0
        for entry in pending.values():
            await self._deliver(entry, Failed(code, message))

    async def _deliver(self, entry: Pending, item: Item) -> None:
        if entry.inbox is not None:
            entry.inbox.put(item)
        elif entry.reply is not None and self.layer is not None:
            try:
                await layer_messages.send(self.layer, entry.reply, layer_messages.item_message(item))
            except ChannelFull:
                # The waiting process has not read its channel for a long time (it is stuck or
                # gone): stop the request rather than hold the connector; the waiter's own
                # timeouts end it there.
                log.warning("request %s: its process's reply channel stayed full; cancelling it", entry.rid)
                await self.cancel(entry.rid)
