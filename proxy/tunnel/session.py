"""One connector's side of the tunnel: the requests it holds, their credit, and what it sends back.

The consumer (`consumer.py`) owns the WebSocket and hands every frame here; a request reaches the
session either from this process (`submit` with an `Inbox`) or from another one (`submit` with a
reply channel). Frames are parsed strictly (`tokios_connector.protocol`): whatever a connector
sends that breaks the protocol raises `ProtocolError`, and the consumer then closes it and calls
`fail_all`, so no request waits on a connector that cannot answer it.

The session also counts the connector's slots (`info.slots`): the requests it holds plus the slots
promised to queued requests (`reserved`). Whenever one frees it hands it to the deployment's queue
(`queue.fill`), which gives it to the request first in line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from channels.exceptions import ChannelFull

from lib import metrics
from tokios_connector import protocol
from tokios_connector.protocol import ProtocolError

from ..calls import Data, Ended, Failed, Item, Started
from . import layer as layer_messages
from . import lease, queue
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
    process: str = ""  # the lease of the process it came from (another process's request, with Redis)


@dataclass(slots=True)
class Promise:
    """A slot popped for a queued request, kept for it until it comes or the timer lapses."""

    process: str
    timer: asyncio.TimerHandle


@dataclass(eq=False)
class ConnectorSession:
    info: ConnectorInfo
    send_text: Callable[[str], Awaitable[None]]  # a text frame to the connector
    layer: object | None  # the channel layer, for replies to other processes
    window: int
    pending: dict[str, Pending] = field(default_factory=dict)
    recent: OrderedDict[str, int] = field(default_factory=OrderedDict)
    closed: bool = False
    reserved: dict[str, Promise] = field(default_factory=dict)
    reserving: int = 0  # slots held while a pop from the queue is on its way
    tasks: set[asyncio.Task] = field(default_factory=set)  # what lapsed promises started
    # Processes whose lease was missing, and since when (time.monotonic()): see drop_orphans.
    suspects: dict[str, float] = field(default_factory=dict)

    # --- slots ------------------------------------------------------------------------------------

    def free_slots(self) -> int:
        return self.info.capacity - len(self.pending) - len(self.reserved) - self.reserving

    def admits(self, rid: str, *, granted: bool) -> bool:
        """Whether a request may go to this connector now: on the slot promised to it, or, for one
        that did not queue, on a free slot nobody in line is waiting for."""
        if self.closed or self.info.draining:
            return False
        if granted and rid in self.reserved:
            return True
        return self.free_slots() > 0 and (granted or not queue.maybe_waiting(self.info.deployment_id))

    def set_slots(self, slots: int) -> None:
        """The connector's new slot count (bounded by the protocol, and by its max_concurrency)."""
        self.info.slots = max(1, min(slots, self.info.max_concurrency or slots, protocol.MAX_SLOTS))

    def reserve(self, rid: str, process: str) -> None:
        timer = asyncio.get_running_loop().call_later(queue.RESERVE_TIMEOUT, self._lapse, rid)
        self.reserved[rid] = Promise(process, timer)
        self._count()

    def unreserve(self, rid: str) -> bool:
        promise = self.reserved.pop(rid, None)
        if promise is None:
            return False
        promise.timer.cancel()
        self._count()
        return True

    def _count(self) -> None:
        self.info.inflight = len(self.pending) + len(self.reserved)

    def _lapse(self, rid: str) -> None:
        promise = self.reserved.get(rid)
        if promise is None or self.closed:
            return
        log.info("request %s did not come for the slot kept for it; giving the slot to the next", rid)
        self.unreserve(rid)
        task = asyncio.get_running_loop().create_task(self._after_lapse(promise.process))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _after_lapse(self, process: str) -> None:
        if process and process in await lease.dead([process]):
            await queue.drop_process(self.info.deployment_id, process)
        await queue.fill(self)

    async def drop_orphans(self) -> None:
        """Cancel the requests of processes that died while we served them (their leases expired):
        nobody reads their answers, and they hold slots. A lease must be missing for a while, not
        once: a Redis that restarted has lost every lease until each process writes its own again."""
        processes = {entry.process for entry in self.pending.values() if entry.process}
        if not processes:
            self.suspects.clear()
            return
        now = time.monotonic()
        missing = await lease.dead(processes)
        self.suspects = {process: self.suspects.get(process, now) for process in missing}
        dead = {process for process, since in self.suspects.items() if now - since >= lease.CONFIRM_AFTER}
        for entry in [entry for entry in self.pending.values() if entry.process in dead]:
            log.warning("request %s: its process %s is gone; cancelling it", entry.rid, entry.process)
            await self.cancel(entry.rid)

    async def send(self, frame: protocol.ServerFrame) -> None:
        """A control frame to the connector, counted (lib/metrics.py)."""
        text = protocol.encode(frame)
        metrics.FRAMES_TO_CONNECTORS.count_text(frame.type, text)
        await self.send_text(text)

    # --- requests ---------------------------------------------------------------------------------

    async def submit(
        self,
        rid: str,
        method: str,
        path: str,
        body: bytes,
        *,
        inbox: Inbox | None = None,
        reply: str | None = None,
        process: str = "",
        traceparent: str | None = None,
    ) -> None:
        """Send a request to the connector (on the slot promised to it, if it was); `traceparent`:
        the request's dispatch span, when tracing is on (proxy/tracing.py)."""
        if self.closed:
            await self._deliver(
                Pending(rid, inbox, reply, 0), Failed("connector_disconnected", "the connector disconnected")
            )
            return
        promise = self.reserved.pop(rid, None)
        if promise is not None:
            promise.timer.cancel()
        self.pending[rid] = Pending(rid, inbox, reply, self.window, process=process)
        self._count()
        headers = {"content-type": "application/json", "x-request-id": rid}
        try:
            if len(body) <= protocol.MAX_BODY_PART:
                await self.send(protocol.Request(rid, method, path, headers, body.decode() or None, 0, traceparent))
                return
            # Bodies are JSON, so UTF-8 text: split on characters, never inside a multi-byte
            # sequence; at most 4 bytes per character keeps every part under MAX_BODY_PART bytes.
            text = body.decode()
            step = protocol.MAX_BODY_PART // 4
            parts = [text[i : i + step] for i in range(0, len(text), step)]
            await self.send(protocol.Request(rid, method, path, headers, None, len(parts), traceparent))
            for part in parts:
                await self.send(protocol.RequestBody(rid, part))
        except OSError:  # the socket closed under us: the consumer's cleanup fails the request
            log.debug("submit %s: the connector is gone", rid)

    async def cancel(self, rid: str) -> None:
        """Stop a request (or give back the slot promised to it, if it never came)."""
        entry = self.pending.get(rid)
        if entry is None:
            if self.unreserve(rid):
                await queue.fill(self)
            return
        self._finished(rid, still_allowed=entry.allowed - entry.received)
        try:
            await self.send(protocol.Cancel(rid))
        except OSError:  # the connector's socket closed: nothing left to stop
            log.debug("cancel %s: the connector is already gone", rid)
        await queue.fill(self)

    async def grant(self, rid: str, blocks: int) -> None:
        """Credit handed back by the request's reader: the connector may spend `blocks` more."""
        entry = self.pending.get(rid)
        if entry is None or blocks <= 0:
            return
        entry.allowed += blocks
        try:
            await self.send(protocol.Credit(rid, blocks))
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
                await queue.fill(self)
            case protocol.ResponseError(id=rid, code=code, message=message):
                entry = self.pending.get(rid)
                if entry is None:
                    return
                self._finished(rid)
                await self._deliver(entry, Failed(code, message))
                await queue.fill(self)
            case protocol.Pong():
                pass
            case protocol.Draining():
                self.info.draining = True
            case protocol.Slots(slots=slots):
                self.set_slots(slots)
                await queue.fill(self)
            case protocol.Hello():
                raise ProtocolError("hello after the handshake")

    def _finished(self, rid: str, *, still_allowed: int = 0) -> None:
        del self.pending[rid]
        self._count()
        self.recent[rid] = still_allowed
        if len(self.recent) > RECENT_IDS:
            self.recent.popitem(last=False)

    async def fail_all(self, code: str, message: str) -> None:
        """Fail every request this connector holds (it is gone, or broke the protocol)."""
        self.closed = True
        pending, self.pending = self.pending, {}
        for promise in self.reserved.values():
            promise.timer.cancel()  # their requests find the connector gone and queue again
        self.reserved.clear()
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
