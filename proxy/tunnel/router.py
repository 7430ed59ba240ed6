"""Sending one HTTP request through a connector and reading its response, from any process.

`TunnelCall` is the tunnel's `UpstreamCall` (proxy/calls.py). It picks the least loaded live
connector of the deployment; if this process holds it, the request goes straight to its session
and the answer comes back into the call's inbox; otherwise it goes over the channel layer to the
process that does, and a small receiver task moves that process's replies into the same inbox.
Either way the call hands credit back to the connector as it reads (see session.py), and a call
waiting on another process checks, while nothing arrives, that the connector is still alive there.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import defaultdict

from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from django.conf import settings

from ..calls import CallError, Data, Ended, Failed, Item, Started
from . import layer as layer_messages
from . import presence
from .inbox import Inbox
from .session import LOCAL, ConnectorSession

OFFLINE_MESSAGE = "Connector offline — the tunnel is not active"
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
    """One request through the tunnel: `start()`, then `next_item()` until `Ended` or `Failed`."""

    def __init__(self, *, deployment_id: int, request_id: str, method: str, path: str, body: bytes):
        self.deployment_id = deployment_id
        self.request_id = request_id
        self.method = method
        self.path = path
        self.body = body
        self.inbox = Inbox()
        self.session: ConnectorSession | None = None  # the connector's session, when in this process
        self.channel: str | None = None  # the connector's consumer channel
        self.reply: str | None = None  # our reply channel, when the connector is in another process
        self.receiver: asyncio.Task | None = None
        self.acknowledged: asyncio.Future[bool] | None = None
        self.window = settings.TUNNEL_WINDOW  # replaced by the chosen connector's own window
        self.reading = 0  # credit of the last item returned, consumed when the next is asked for
        self.consumed = 0  # credit consumed since it was last handed back
        self.finished = False
        self.counted: str | None = None  # the connector this call is counted against in _dispatched

    def _count(self, channel: str) -> None:
        self.counted = channel
        _dispatched[channel] += 1

    # --- dispatch ---------------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        tried: set[str] = set()
        for attempt in range(4):
            candidates = [
                info
                for info in await presence.live_connectors(self.deployment_id, fresh=attempt > 0)
                if info.channel not in tried and not info.draining
            ]
            if not candidates:
                break
            choice = min(candidates, key=lambda i: (_load(i), random.random()))
            self.channel = choice.channel
            session = LOCAL.get(choice.channel)
            if session is not None and not session.closed:
                self.session = session
                self.window = session.window
                self._count(choice.channel)
                await session.submit(self.request_id, self.method, self.path, self.body, inbox=self.inbox)
                return
            if await self._dispatch_remote(choice):
                return
            tried.add(choice.channel)
        raise CallError(503, "connector_offline", OFFLINE_MESSAGE)

    async def _dispatch_remote(self, choice: presence.ConnectorInfo) -> bool:
        layer = get_channel_layer()
        self.reply = await layer.new_channel()
        acknowledged = self.acknowledged = asyncio.get_running_loop().create_future()
        self.receiver = asyncio.create_task(self._receive(layer, self.reply))
        self._count(choice.channel)
        message = {
            "type": "tunnel.request",
            "reply": self.reply,
            "id": self.request_id,
            "method": self.method,
            "path": self.path,
            "body": self.body,
        }
        try:
            await layer_messages.send(layer, choice.channel, message, patience=ACK_TIMEOUT)
            accepted = await self._acknowledgement(choice, acknowledged)
        except ChannelFull:  # that process has not read its channel for ACK_TIMEOUT
            accepted = False
        if not accepted:
            with contextlib.suppress(ChannelFull):
                await layer_messages.send(layer, choice.channel, {"type": "tunnel.cancel", "id": self.request_id})
            self._release()
            self.reply = None
            self.inbox = Inbox()  # nothing of this attempt may reach the next one
        return accepted

    async def _acknowledgement(self, choice: presence.ConnectorInfo, acknowledged: asyncio.Future[bool]) -> bool:
        waited, slice_ = 0.0, ACK_FIRST_CHECK  # the first check early: our presence read may be stale
        while waited < ACK_PATIENCE:
            try:
                async with asyncio.timeout(slice_):
                    return await asyncio.shield(acknowledged)
            except TimeoutError:
                waited += slice_
                slice_ = ACK_TIMEOUT
            if not await presence.is_alive(self.deployment_id, choice.channel):
                await presence.forget(self.deployment_id, choice.channel)
                return False
        return False

    async def _receive(self, layer, reply: str) -> None:
        """Move another process's replies into the inbox (one reader of the reply channel for the
        call's whole life: cancelling a channel-layer receive mid-wait can lose a message)."""
        while True:
            try:
                message = await layer.receive(reply)
            except Exception as exc:  # the channel layer (Redis) failed: so has this call
                self.inbox.put(Failed("connector_disconnected", f"the channel layer failed: {exc!r}"[:200]))
                if self.acknowledged is not None and not self.acknowledged.done():
                    self.acknowledged.set_result(False)
                return
            if message.get("type") == "tunnel.ack":
                if self.acknowledged is not None and not self.acknowledged.done():
                    self.window = message.get("window") or self.window  # that connector's window
                    self.acknowledged.set_result(bool(message.get("accepted")))
                continue
            item = layer_messages.message_item(message)
            if item is not None:
                self.inbox.put(item)

    # --- reading ----------------------------------------------------------------------------------

    async def start(self, timeout: float) -> Started:
        await self._dispatch()
        item = await self._wait(timeout)
        match item:
            case Started():
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
        if self.session is not None:
            await self.session.cancel(self.request_id)
        elif self.reply is not None and self.channel is not None:
            with contextlib.suppress(ChannelFull):
                await layer_messages.send(
                    get_channel_layer(), self.channel, {"type": "tunnel.cancel", "id": self.request_id}
                )

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
        return len(session.pending)
    return info.inflight + _dispatched.get(info.channel, 0)
