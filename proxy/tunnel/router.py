"""Sending one HTTP request through a connector and reading its response, from any process."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

from channels.layers import get_channel_layer
from django.conf import settings

from . import presence
from .consumer import LOCAL

OFFLINE_MESSAGE = "Connector offline — the tunnel is not active"
# How long a remote process may take to acknowledge a dispatched request before the router
# treats its connector as gone and tries another (nothing has reached the upstream by then).
ACK_TIMEOUT = 3.0

_dispatched: dict[str, int] = defaultdict(int)  # requests this process has in flight per connector


class TunnelError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


# Connector-side error codes → (HTTP status, message) for a request that has sent nothing yet.
CONNECTOR_ERRORS = {
    "upstream_unreachable": (502, "The model server behind the connector is unreachable."),
    "upstream_timeout": (504, "The model server did not answer in time."),
    "upstream_error": (502, "The model server failed while answering."),
    "path_not_allowed": (502, "The connector refused the request path."),
    "bad_request": (502, "The connector could not read the request."),
    "overloaded": (503, "The connector is at its concurrency limit; try again."),
    "connector_disconnected": (502, "The connector disconnected while handling the request."),
    "cancelled": (502, "The request was cancelled by the connector."),
}


class TunnelCall:
    """One request through the tunnel. Use `start()`, then `next_item()` until it returns an end."""

    def __init__(self, *, deployment_id: int, request_id: str, method: str, path: str, body: bytes):
        self.deployment_id = deployment_id
        self.request_id = request_id
        self.frame = {
            "type": "request",
            "id": request_id,
            "method": method,
            "path": path,
            "headers": {"content-type": "application/json", "x-request-id": request_id},
        }
        self.body = body
        self.queue: asyncio.Queue | None = None
        self.consumer = None
        self.reply: str | None = None
        self.channel: str | None = None
        self.finished = False
        self.timing: dict = {}

    async def dispatch(self) -> None:
        tried: set[str] = set()
        for attempt in range(4):
            candidates = [
                info
                for info in await presence.live_connectors(self.deployment_id, fresh=attempt > 0)
                if info.channel not in tried and not info.draining
            ]
            if not candidates:
                raise TunnelError(503, "connector_offline", OFFLINE_MESSAGE)
            choice = min(candidates, key=lambda i: (_load(i), random.random()))
            self.channel = choice.channel
            consumer = LOCAL.get(choice.channel)
            if consumer is not None:
                self.consumer = consumer
                self.queue = asyncio.Queue()
                _dispatched[choice.channel] += 1
                await consumer.submit(dict(self.frame), self.body, self.queue)
                return
            if await self._dispatch_remote(choice):
                return
            tried.add(choice.channel)
        raise TunnelError(503, "connector_offline", OFFLINE_MESSAGE)

    async def _dispatch_remote(self, choice: presence.ConnectorInfo) -> bool:
        layer = get_channel_layer()
        self.reply = await layer.new_channel()
        _dispatched[choice.channel] += 1
        await layer.send(
            choice.channel, {"type": "tunnel.request", "reply": self.reply, "frame": dict(self.frame), "body": self.body}
        )
        try:
            message = await asyncio.wait_for(layer.receive(self.reply), ACK_TIMEOUT)
        except TimeoutError:
            presence.forget(self.deployment_id, choice.channel)
            self._release()
            return False
        if message["item"][0] != "accepted":
            self._release()
            return False
        return True

    def _release(self) -> None:
        if self.channel is not None and _dispatched.get(self.channel):
            _dispatched[self.channel] -= 1
            if _dispatched[self.channel] <= 0:
                _dispatched.pop(self.channel, None)

    async def next_item(self, timeout: float | None) -> tuple | None:
        """The next response item, or None if `timeout` passed first."""
        try:
            if self.queue is not None:
                if not self.queue.empty():  # the common case mid-stream: no timer, no task
                    item = self.queue.get_nowait()
                elif timeout:
                    item = await asyncio.wait_for(self.queue.get(), timeout)
                else:
                    item = await self.queue.get()
            else:
                layer = get_channel_layer()
                coro = layer.receive(self.reply)
                message = await (asyncio.wait_for(coro, timeout) if timeout else coro)
                item = tuple(message["item"])
        except TimeoutError:
            return None
        if item[0] in ("end", "error"):
            self.finished = True
            self._release()
            if item[0] == "end":
                self.timing = item[1]
        return item

    def ready_chunks(self) -> list[bytes]:
        """Body chunks already waiting in this process, taken without blocking, so that a stream
        that fell behind writes them to the client in one go."""
        chunks: list[bytes] = []
        queue = self.queue
        while queue is not None and not queue.empty():
            item = queue._queue[0]  # peek: only chunks are taken here; ends and errors stay queued
            if item[0] != "chunk":
                break
            chunks.append(queue.get_nowait()[1])
        return chunks

    async def start(self) -> tuple[int, dict]:
        """Dispatch and wait for the upstream's status and headers, or raise TunnelError."""
        await self.dispatch()
        item = await self.next_item(settings.FIRST_BYTE_TIMEOUT)
        if item is None:
            await self.cancel()
            raise TunnelError(504, "upstream_timeout", "The model did not answer in time.")
        if item[0] == "error":
            status, message = CONNECTOR_ERRORS.get(item[1], (502, "The connector failed the request."))
            raise TunnelError(status, item[1], f"{message} ({item[2]})" if item[2] else message)
        if item[0] != "start":
            raise TunnelError(502, "protocol_error", "The connector answered out of order.")
        return int(item[1]), item[2]

    async def read_all(self) -> bytes:
        parts = []
        while True:
            item = await self.next_item(settings.UPSTREAM_TIMEOUT)
            if item is None:
                await self.cancel()
                raise TunnelError(504, "upstream_timeout", "The model did not finish in time.")
            if item[0] == "chunk":
                parts.append(item[1])
            elif item[0] == "end":
                return b"".join(parts)
            elif item[0] == "error":
                status, message = CONNECTOR_ERRORS.get(item[1], (502, "The connector failed the request."))
                raise TunnelError(status, item[1], message)

    async def cancel(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._release()
        if self.consumer is not None:
            await self.consumer.cancel(self.request_id)
        elif self.channel is not None and self.reply is not None:
            await get_channel_layer().send(self.channel, {"type": "tunnel.cancel", "id": self.request_id})


def _load(info: presence.ConnectorInfo) -> int:
    local = LOCAL.get(info.channel)
    if local is not None and local.info is not None:
        return local.info.inflight
    return info.inflight + _dispatched.get(info.channel, 0)
