"""Sending one HTTP request through a connector and reading its response, from any process.

`TunnelCall` is the tunnel's `UpstreamCall` (proxy/calls.py). It picks the least loaded live
connector of the deployment that has a free slot; if this process holds it, the request goes
straight to its session and the answer comes back into the call's inbox; otherwise it goes over
the channel layer to the process that does, and a small receiver task moves that process's replies
into the same inbox. Either way the call hands credit back to the connector as it reads (see
session.py), and a call waiting on another process checks, while nothing arrives, that the
connector is still alive there. When every live connector is busy, the call waits in the
deployment's queue (queue.py) until a slot is handed to it.

A call with an `affinity` key (proxy/routing.py) goes to the connector that key ranks first while
that one is live and has a free slot, so that a conversation's turns reuse one model server's
cache; otherwise to the least loaded. A call that `avoid`s connectors (the retry of a request that
one of them failed) never goes to them, and does not wait in line: it is sent at once or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import defaultdict

from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import RedisError

from lib.redis import redis_enabled, report_outage

from ..calls import CallError, CallTrace, Data, Ended, Failed, Item, Started
from ..routing import weight
from . import layer as layer_messages
from . import lease, presence, queue
from .inbox import Inbox
from .session import LOCAL, ConnectorSession

log = logging.getLogger("tokios.tunnel")

OFFLINE_MESSAGE = "Connector offline — the tunnel is not active"
QUEUE_FULL_MESSAGE = "The model is busy and too many requests are waiting for it; try again shortly."
QUEUE_TIMEOUT_MESSAGE = "The model stayed busy for as long as a request may wait for it; try again shortly."
# A remote process acknowledges a dispatched request once its consumer has it. A busy process can
# be slow to: after ACK_FIRST_CHECK, then after each ACK_TIMEOUT, without an answer the router asks presence whether that
# connector is still live. If it is, it waits on (retrying elsewhere could run the request twice);
# if not, it cancels the request there (in case it arrives after all) and tries another connector.
# ACK_PATIENCE bounds the whole wait.
ACK_FIRST_CHECK = 0.5
ACK_TIMEOUT = 3.0
ACK_PATIENCE = 30.0
# While a call waiting on another process's connector hears nothing, it checks this often that
# the connector is still live there (a process that died stops republishing it).
LIVENESS_INTERVAL = 5.0

_dispatched: dict[str, int] = defaultdict(int)  # requests this process has in flight per connector

# Connector-side error codes → (HTTP status, message) for a request that has sent nothing yet.
CONNECTOR_ERRORS = {
    "upstream_unreachable": (502, "The model server behind the connector is unreachable."),
    "upstream_timeout": (504, "The model server did not answer in time."),
    "upstream_error": (502, "The model server failed while answering."),
    "path_not_allowed": (502, "The connector refused the request path."),
    "bad_request": (502, "The connector could not read the request."),
    "overloaded": (503, "The connector is at its concurrency limit; try again."),
    "connector_disconnected": (502, "The connector disconnected while handling the request."),
    "connector_protocol_error": (502, "The connector broke the tunnel protocol and was disconnected."),
    "cancelled": (502, "The request was cancelled by the connector."),
}


def call_error(failure: Failed) -> CallError:
    status, message = CONNECTOR_ERRORS.get(failure.code, (502, "The connector failed the request."))
    return CallError(status, failure.code, f"{message} ({failure.message})" if failure.message else message)


class TunnelCall:
    """One request through the tunnel: `start()` (or `admit()` first), then `next_item()` until
    `Ended` or `Failed`."""

    def __init__(
        self,
        *,
        deployment_id: int,
        request_id: str,
        method: str,
        path: str,
        body: bytes,
        org_id: int = 0,
        key_id: int = 0,
        trace: CallTrace | None = None,
        affinity: str = "",
        avoid: frozenset[str] = frozenset(),
    ):
        self.deployment_id = deployment_id  # the pool: the id its connectors announce themselves under
        self.request_id = request_id
        self.method = method
        self.path = path
        self.body = body
        self.org_id = org_id  # who the request is for: its turn in a queue is fair across orgs and keys
        self.key_id = key_id
        self.inbox = Inbox()
        self.session: ConnectorSession | None = None  # the connector's session, when in this process
        self.channel: str | None = None  # the connector's consumer channel
        self.reply: str | None = None  # our reply channel, when the connector is in another process
        self.receiver: asyncio.Task | None = None
        self.acknowledged: asyncio.Future[str] | None = None
        self.window = settings.TUNNEL_WINDOW  # replaced by the chosen connector's own window
        self.reading = 0  # credit of the last item returned, consumed when the next is asked for
        self.consumed = 0  # credit consumed since it was last handed back
        self.finished = False
        self.counted: str | None = None  # the connector this call is counted against in _dispatched
        self.connector_id = ""  # the connector that took the request (the request log shows it)
        self.dispatched = False
        self.waiter: queue.Waiter | None = None  # its place in the deployment's queue, while it waits
        self.queued_at: float | None = None  # time.monotonic() when it started waiting
        self.queue_deadline = 0.0
        self.queue_wait_ms = 0  # how long it waited for a slot
        self.trace = trace  # the request's trace (proxy/tracing.py), when tracing is on
        self.affinity = affinity  # the conversation's key: its connector first (proxy/routing.py)
        self.avoid = avoid  # connector ids this call must not go to

    def _count(self, channel: str) -> None:
        self.counted = channel
        _dispatched[channel] += 1

    # --- admission --------------------------------------------------------------------------------

    async def admit(self, timeout: float, notice: float | None = None) -> int:
        """Send the request to a connector with a free slot; 0 once it is sent. While every live
        connector is busy the request waits in the deployment's queue, at most `timeout` seconds
        and `TOKIOS_QUEUE_MAX_WAIT` in all; with `notice`, it returns its place in line (1: next)
        whenever it has waited `notice` seconds more, and waits on at the next call. With a
        `timeout` of 0 it never takes a place in line. CallError: 503 `connector_offline`,
        `queue_full` or `queue_timeout`."""
        if self.dispatched:
            return 0
        if self.finished:
            raise CallError(502, "cancelled", "The request was cancelled before it was sent.")
        if self.waiter is None:
            if await self._dispatch():
                return 0
            if timeout <= 0:
                # It may not wait: the answer a place in line would give at once, without taking
                # one (a helper call beside a generation must not stand in anyone's way).
                self._finish()
                raise CallError(503, "queue_timeout", QUEUE_TIMEOUT_MESSAGE)
            if self.avoid:  # a retry: sent at once elsewhere, or not at all (it would wait behind others)
                self._finish()
                raise CallError(503, "overloaded", CONNECTOR_ERRORS["overloaded"][1])
            await self._enqueue(max(0.0, min(settings.QUEUE_MAX_WAIT, timeout)))
        deadline = min(self.queue_deadline, time.monotonic() + timeout)
        return await self._wait_turn(deadline, notice)

    async def _enqueue(self, wait: float) -> None:
        try:
            self.waiter = await queue.enqueue(
                deployment_id=self.deployment_id, rid=self.request_id, org=self.org_id, key=self.key_id, wait=wait
            )
        except queue.QueueFull:
            self._finish()
            raise CallError(503, "queue_full", QUEUE_FULL_MESSAGE) from None
        except (RedisError, OSError) as exc:  # no shared line: busy is busy, as before the queue
            report_outage(log, "could not queue a request in Redis", exc)
            self._finish()
            raise CallError(503, "overloaded", CONNECTOR_ERRORS["overloaded"][1]) from None
        if self.trace is not None:
            self.trace.queued()
        if self.queued_at is None:
            self.queued_at = time.monotonic()
            self.queue_deadline = self.queued_at + wait
        # This process's connectors may have a slot free by now (a request ended in between).
        for info in presence.local_connectors(self.deployment_id):
            session = LOCAL.get(info.channel)
            if session is not None:
                await queue.fill(session)

    async def _wait_turn(self, deadline: float, notice: float | None) -> int:
        notice_at = time.monotonic() + notice if notice is not None else math.inf
        while True:
            waiter = self.waiter
            if waiter is None or self.finished:  # cancelled meanwhile
                raise CallError(502, "cancelled", "The request was cancelled while it waited for a slot.")
            now = time.monotonic()
            if now >= deadline:
                await self.cancel()
                raise CallError(503, "queue_timeout", QUEUE_TIMEOUT_MESSAGE)
            channel = await queue.wait(waiter, min(queue.POLL, deadline - now, notice_at - now))
            if channel is not None:
                queue.done(waiter)
                self.waiter = None
                if await self._dispatch_to(channel, granted=True) == "sent":
                    self._waited()
                    return 0
                # The slot went with its connector: back in line, with the time left.
                await self._enqueue(max(0.0, self.queue_deadline - time.monotonic()))
                continue
            if time.monotonic() >= notice_at:
                return max(1, await queue.position(waiter))
            if all(info.draining for info in await presence.live_connectors(self.deployment_id)):
                await self.cancel()  # no connector left that could take it
                raise CallError(503, "connector_offline", OFFLINE_MESSAGE)
            await queue.remind(self.deployment_id)

    def _waited(self) -> None:
        if self.queued_at is not None:
            self.queue_wait_ms = round((time.monotonic() - self.queued_at) * 1000)

    # --- dispatch ---------------------------------------------------------------------------------

    async def _dispatch(self) -> bool:
        """Send the request to the least loaded connector with a free slot: True once sent, False
        if every live connector is busy. CallError if none is live."""
        tried: set[str] = set()
        busy = False
        for attempt in range(4):
            candidates = [
                info
                for info in await presence.live_connectors(self.deployment_id, fresh=attempt > 0)
                if info.channel not in tried and not info.draining and info.connector_id not in self.avoid
            ]
            free = [info for info in candidates if _admits(info, self.request_id)]
            if not free:
                busy = busy or bool(candidates)
                break
            choice = self._preferred(candidates, free) or min(
                free, key=lambda i: (_load(i) / i.capacity, random.random())
            )
            outcome = await self._dispatch_to(choice.channel, granted=False)
            if outcome == "sent":
                return True
            busy = busy or outcome == "busy"
            tried.add(choice.channel)
        if busy:
            return False
        raise CallError(503, "connector_offline", OFFLINE_MESSAGE)

    def _preferred(
        self, candidates: list[presence.ConnectorInfo], free: list[presence.ConnectorInfo]
    ) -> presence.ConnectorInfo | None:
        """The conversation's connector, if it has a free slot: the live one its key ranks first."""
        if not self.affinity or len(candidates) < 2:
            return None
        best = max(candidates, key=lambda info: (weight(self.affinity, info.connector_id), info.channel))
        return best if any(info is best for info in free) else None

    async def _dispatch_to(self, channel: str, *, granted: bool) -> str:
        """ "sent", "busy" (no slot for it there) or "gone" (the connector is)."""
        session = LOCAL.get(channel)
        if session is None:
            return await self._dispatch_remote(channel, granted=granted)
        if session.closed:
            return "gone"
        if not session.admits(self.request_id, granted=granted):
            return "busy"
        self.channel = channel
        self.session = session
        self.window = session.window
        self._count(channel)
        self.connector_id = session.info.connector_id
        self.dispatched = True
        trace = self.trace
        traceparent = trace.dispatching() if trace is not None else None
        await session.submit(
            self.request_id, self.method, self.path, self.body, inbox=self.inbox, traceparent=traceparent
        )
        if trace is not None:
            trace.dispatched("sent", self.connector_id)
        return "sent"

    async def _dispatch_remote(self, channel: str, *, granted: bool) -> str:
        layer = get_channel_layer()
        self.reply = await layer.new_channel()
        acknowledged = self.acknowledged = asyncio.get_running_loop().create_future()
        self.receiver = asyncio.create_task(self._receive(layer, self.reply))
        self._count(channel)
        self.channel = channel  # a cancel while the acknowledgement is on its way goes there too
        message = {
            "type": "tunnel.request",
            "reply": self.reply,
            "id": self.request_id,
            "method": self.method,
            "path": self.path,
            "body": self.body,
            "granted": granted,
            # The holder cancels the request if this process dies (proxy/tunnel/lease.py).
            "process": await lease.hold() if redis_enabled() else "",
        }
        trace = self.trace
        if trace is not None:
            message["traceparent"] = trace.dispatching()
        try:
            await layer_messages.send(layer, channel, message, patience=ACK_TIMEOUT)
            outcome = await self._acknowledgement(channel, acknowledged)
        except ChannelFull:  # that process has not read its channel for ACK_TIMEOUT
            outcome = "gone"
        if trace is not None:
            trace.dispatched(outcome, self.connector_id)
        if outcome == "sent":
            self.dispatched = True
            return outcome
        if outcome == "gone":
            with contextlib.suppress(ChannelFull):
                await layer_messages.send(layer, channel, {"type": "tunnel.cancel", "id": self.request_id})
        self._release()
        self.reply = self.channel = None
        self.inbox = Inbox()  # nothing of this attempt may reach the next one
        return outcome

    async def _acknowledgement(self, channel: str, acknowledged: asyncio.Future[str]) -> str:
        waited, slice_ = 0.0, ACK_FIRST_CHECK  # the first check early: our presence read may be stale
        while waited < ACK_PATIENCE:
            try:
                async with asyncio.timeout(slice_):
                    return await asyncio.shield(acknowledged)
            except TimeoutError:
                waited += slice_
                slice_ = ACK_TIMEOUT
            if not await presence.is_alive(self.deployment_id, channel):
                await presence.forget(self.deployment_id, channel)
                return "gone"
        return "gone"

    async def _receive(self, layer, reply: str) -> None:
        """Move another process's replies into the inbox (one reader of the reply channel for the
        call's whole life: cancelling a channel-layer receive mid-wait can lose a message)."""
        while True:
            try:
                message = await layer.receive(reply)
            except Exception as exc:  # the channel layer (Redis) failed: so has this call
                self.inbox.put(Failed("connector_disconnected", f"the channel layer failed: {exc!r}"[:200]))
                if self.acknowledged is not None and not self.acknowledged.done():
                    self.acknowledged.set_result("gone")
                return
            if message.get("type") == "tunnel.ack":
                if self.acknowledged is not None and not self.acknowledged.done():
                    self.window = message.get("window") or self.window  # that connector's window
                    self.connector_id = str(message.get("connector") or "")[:64]
                    accepted, busy = message.get("accepted"), message.get("busy")
                    self.acknowledged.set_result("sent" if accepted else "busy" if busy else "gone")
                continue
            item = layer_messages.message_item(message)
            if item is not None:
                self.inbox.put(item)

    # --- reading ----------------------------------------------------------------------------------

    async def start(self, timeout: float) -> Started:
        """Admit the request (waiting in line if need be) and wait for the response's status; the
        time in line counts against `timeout`."""
        began = time.monotonic()
        await self.admit(timeout)
        item = await self._wait(max(0.0, timeout - (time.monotonic() - began)))
        match item:
            case Started():
                if self.trace is not None:
                    self.trace.response_started(item.status)
                return item
            case Failed():
                self._finish()
                lost = item.code in ("connector_protocol_error", "connector_disconnected")
                if lost and self.reply is not None and self.channel is not None:
                    await presence.forget(self.deployment_id, self.channel)  # before our cache says so
                raise call_error(item)
            case None:
                await self.cancel()
                raise CallError(504, "upstream_timeout", "The model did not answer in time.")
        await self.cancel()  # a session delivers a start first; anything else is a bug
        raise CallError(502, "connector_protocol_error", "The connector answered out of order.")

    async def next_item(self, timeout: float) -> Data | Ended | Failed | None:
        # The frames of the item returned last time are consumed only now that the reader asks
        # for more (it has written them to its client): credit follows the client's pace, so what
        # a slow client leaves in this process stays within one window.
        if self.reading:
            self.consumed += self.reading
            self.reading = 0
            if self.consumed * 2 >= self.window:
                await self._hand_back_credit()
        item = await self._wait(timeout)
        match item:
            case Data(blocks=blocks):
                self.reading = blocks
            case Ended() | Failed():
                self._finish()
        return item  # type: ignore[return-value]  # the session refuses a second response.start

    async def _wait(self, timeout: float) -> Item | None:
        channel = self.channel
        if self.reply is None or channel is None:
            return await self.inbox.get(timeout)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            item = await self.inbox.get(min(LIVENESS_INTERVAL, max(0.0, left)))
            if item is not None:
                return item
            if left <= LIVENESS_INTERVAL:
                return None
            if not await presence.is_alive(self.deployment_id, channel):
                return Failed("connector_disconnected", "the connector's process is gone")

    async def _hand_back_credit(self) -> None:
        blocks, self.consumed = self.consumed, 0
        if self.session is not None:
            await self.session.grant(self.request_id, blocks)
        elif self.reply is not None and self.channel is not None:
            message = {"type": "tunnel.credit", "id": self.request_id, "blocks": blocks}
            with contextlib.suppress(ChannelFull):  # the call's own timeouts cover a stuck process
                await layer_messages.send(get_channel_layer(), self.channel, message)

    # --- the end ----------------------------------------------------------------------------------

    async def cancel(self) -> None:
        if self.finished:
            return
        self._finish()
        if self.waiter is not None:  # still in line: leave it, and give back a slot handed over meanwhile
            waiter, self.waiter = self.waiter, None
            self._waited()
            channel = await queue.leave(waiter)
            if channel is not None:
                await self._give_back(channel)
            return
        if self.session is not None:
            await self.session.cancel(self.request_id)
        elif self.reply is not None and self.channel is not None:
            with contextlib.suppress(ChannelFull):
                await layer_messages.send(
                    get_channel_layer(), self.channel, {"type": "tunnel.cancel", "id": self.request_id}
                )

    async def _give_back(self, channel: str) -> None:
        session = LOCAL.get(channel)
        if session is not None:
            await session.cancel(self.request_id)
            return
        with contextlib.suppress(ChannelFull):
            await layer_messages.send(get_channel_layer(), channel, {"type": "tunnel.cancel", "id": self.request_id})

    def _finish(self) -> None:
        self.finished = True
        self._release()

    def _release(self) -> None:
        """Stop counting this call against its connector, and stop reading its reply channel."""
        if self.receiver is not None:
            self.receiver.cancel()
            self.receiver = None
        channel, self.counted = self.counted, None
        if channel is not None and _dispatched.get(channel):
            _dispatched[channel] -= 1
            if _dispatched[channel] <= 0:
                del _dispatched[channel]


def _load(info: presence.ConnectorInfo) -> int:
    session = LOCAL.get(info.channel)
    if session is not None:
        return len(session.pending) + len(session.reserved)
    return info.inflight + _dispatched.get(info.channel, 0)


def _admits(info: presence.ConnectorInfo, rid: str) -> bool:
    """Whether a request that did not queue may try this connector. Exact for this process's
    connectors; for another's, a guess from presence (a second old) that its process checks."""
    session = LOCAL.get(info.channel)
    if session is not None:
        return session.admits(rid, granted=False)
    return not queue.maybe_waiting(info.deployment_id) and _load(info) < info.capacity
