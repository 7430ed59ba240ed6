"""The WebSocket consumer a connector talks to. It authorises, then relays frames.

Requests reach it two ways: directly (`submit`) when the HTTP request is handled by this same
process, or through the channel layer (`tunnel.request` messages) from other processes. Responses
go back the same way: into the waiting request's local queue, or to its reply channel.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

import orjson
from asgiref.sync import sync_to_async
from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.utils import timezone

from accounts.secrets import hash_secret

from . import frames, presence

log = logging.getLogger("tokios.tunnel")

# channel name → consumer, for the in-process fast path
LOCAL: dict[str, ConnectorConsumer] = {}


def _lookup_token(secret: str):
    from deployments.models import ConnectorToken

    row = (
        ConnectorToken.objects.filter(token_hash=hash_secret(secret), revoked_at__isnull=True)
        .values_list("id", "deployment_id", "deployment__name")
        .first()
    )
    if row is not None:
        ConnectorToken.objects.filter(pk=row[0]).update(last_seen_at=timezone.now())
    return row


def _token_still_valid(token_id: int) -> bool:
    from deployments.models import ConnectorToken

    return ConnectorToken.objects.filter(pk=token_id, revoked_at__isnull=True).update(
        last_seen_at=timezone.now()
    ) == 1


class ConnectorConsumer(AsyncWebsocketConsumer):
    info: presence.ConnectorInfo | None = None

    async def __call__(self, scope, receive, send) -> None:
        # Channels' await_many_dispatch re-arms a task and an asyncio.wait for every frame; with one
        # frame per streamed token that was a fifth of the server's CPU. Two plain loops — frames
        # from the connector, messages from other processes — do the same with none of it.
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()
        self.base_send = send
        layer_task = asyncio.create_task(self._layer_loop()) if self.channel_layer is not None else None
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass
        finally:
            if layer_task is not None:
                layer_task.cancel()

    async def _layer_loop(self) -> None:
        while True:
            message = await self.channel_layer.receive(self.channel_name)
            try:
                await self.dispatch(message)
            except Exception:
                log.exception("connector consumer failed on %s", message.get("type"))

    async def dispatch(self, message: dict) -> None:
        # Channels closes stale DB connections (through sync_to_async, a thread hop) before every
        # message. Frames arrive thousands of times a second here and this consumer touches the
        # database only inside sync_to_async calls of its own, so go straight to the handler.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        self.pending: dict[str, asyncio.Queue | str] = {}  # request id → local queue or reply channel
        self.last_seen = time.monotonic()
        self.heartbeat_task: asyncio.Task | None = None
        self.token_row = None
        headers = dict(self.scope.get("headers") or [])
        auth = headers.get(b"authorization", b"").decode("latin-1")
        secret = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        await self.accept()
        if secret:
            self.token_row = await sync_to_async(_lookup_token)(secret)
        if self.token_row is None:
            log.warning("connector rejected: unknown or revoked token from %s", self._remote())
            await self.close(code=frames.CLOSE_AUTH_REJECTED, reason="connector token rejected")
            return

    def _remote(self) -> str:
        client = self.scope.get("client") or ("?", 0)
        return f"{client[0]}:{client[1]}"

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        self.last_seen = time.monotonic()
        if bytes_data is not None:
            if len(bytes_data) < 2:
                return
            rid, payload = frames.unpack_chunk(bytes_data)
            await self._deliver(rid, ("chunk", payload), final=False)
            return
        try:
            frame = orjson.loads(text_data)
            kind = frame["type"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            await self._protocol_error("frame is not a JSON object with a type")
            return
        if self.info is None:
            if kind != "hello" or self.token_row is None:
                await self._protocol_error("the first frame must be hello")
                return
            await self._hello(frame)
            return
        if kind == "response.start":
            await self._deliver(frame["id"], ("start", frame["status"], frame.get("headers") or {}), final=False)
        elif kind == "response.end":
            await self._deliver(frame["id"], ("end", frame.get("timing") or {}), final=True)
        elif kind == "response.error":
            await self._deliver(frame["id"], ("error", frame.get("code", "upstream_error"), frame.get("message", "")), final=True)
        elif kind == "pong":
            pass
        elif kind == "draining":
            self.info.draining = True
            await presence.publish(self.info)
            log.info("connector %s draining", self.info.connector_id)
        else:
            await self._protocol_error(f"unexpected frame type {kind!r}")

    async def _hello(self, frame: dict) -> None:
        token_id, deployment_id, deployment_name = self.token_row
        now = time.time()
        self.info = presence.ConnectorInfo(
            channel=self.channel_name,
            deployment_id=deployment_id,
            token_id=token_id,
            connector_id="conn_" + secrets.token_hex(6),
            version=str(frame.get("version", "?"))[:40],
            remote=self._remote(),
            connected_since=now,
            last_heartbeat=now,
            max_concurrency=int(frame.get("max_concurrency") or 0),
            upstream_model=frame.get("model"),
        )
        LOCAL[self.channel_name] = self
        await self.channel_layer.group_add(presence.token_group(token_id), self.channel_name)
        await self.send(
            text_data=orjson.dumps(
                {
                    "type": "welcome",
                    "deployment": deployment_name,
                    "connector_id": self.info.connector_id,
                    "heartbeat_interval": settings.HEARTBEAT_INTERVAL,
                    "heartbeat_timeout": settings.HEARTBEAT_TIMEOUT,
                }
            ).decode()
        )
        await presence.publish(self.info)
        self.heartbeat_task = asyncio.create_task(self._heartbeat())
        log.info(
            "connector %s online for %s (version %s, from %s)",
            self.info.connector_id,
            deployment_name,
            self.info.version,
            self.info.remote,
        )

    async def _heartbeat(self) -> None:
        try:
            while True:
                await asyncio.sleep(settings.HEARTBEAT_INTERVAL)
                if time.monotonic() - self.last_seen > settings.HEARTBEAT_TIMEOUT:
                    log.warning("connector %s silent, dropping it", self.info.connector_id)
                    await self.close(code=frames.CLOSE_HEARTBEAT_TIMEOUT)
                    await self._cleanup()
                    return
                if not await sync_to_async(_token_still_valid)(self.info.token_id):
                    await self.tunnel_revoked({})
                    return
                await self.send(text_data=orjson.dumps({"type": "ping", "t": time.time()}).decode())
                self.info.last_heartbeat = time.time()
                await presence.publish(self.info)
        except asyncio.CancelledError:
            pass

    async def _protocol_error(self, message: str) -> None:
        log.warning("connector protocol error: %s", message)
        await self.close(code=frames.CLOSE_PROTOCOL_ERROR, reason=message[:100])
        await self._cleanup()

    async def disconnect(self, code) -> None:
        await self._cleanup()
        if self.info is not None:
            log.info("connector %s offline (close %s)", self.info.connector_id, code)

    async def _cleanup(self) -> None:
        if self.heartbeat_task is not None and self.heartbeat_task is not asyncio.current_task():
            self.heartbeat_task.cancel()
        LOCAL.pop(self.channel_name, None)
        if self.info is not None:
            await presence.withdraw(self.info)
            await self.channel_layer.group_discard(presence.token_group(self.info.token_id), self.channel_name)
        pending, self.pending = self.pending, {}
        for target in pending.values():
            await self._send_to(target, ("error", "connector_disconnected", "the connector disconnected"))

    # --- delivery to the waiting HTTP request ---------------------------------------------------

    async def _deliver(self, rid: str, item: tuple, *, final: bool) -> None:
        target = self.pending.pop(rid, None) if final else self.pending.get(rid)
        if target is None:
            return  # cancelled or unknown: drop
        if final and self.info is not None:
            self.info.inflight = max(0, self.info.inflight - 1)
        await self._send_to(target, item)

    async def _send_to(self, target, item: tuple) -> None:
        if isinstance(target, asyncio.Queue):
            target.put_nowait(item)
        else:
            await self.channel_layer.send(target, {"type": "tunnel.frame", "item": list(item)})

    # --- requests from this process (fast path) and from others (channel layer) -----------------

    async def submit(self, frame: dict, body: bytes, target: asyncio.Queue | str) -> None:
        rid = frame["id"]
        self.pending[rid] = target
        if self.info is not None:
            self.info.inflight += 1
        if len(body) <= frames.MAX_PART:
            frame["body"] = body.decode() if body else None
            frame["body_parts"] = 0
            await self.send(text_data=orjson.dumps(frame).decode())
            return
        # Bodies are JSON, so UTF-8 text: split on characters, never inside a multi-byte sequence.
        # At most 4 bytes per character keeps every part under MAX_PART bytes.
        text = body.decode()
        step = frames.MAX_PART // 4
        parts = [text[i : i + step] for i in range(0, len(text), step)]
        frame["body"] = None
        frame["body_parts"] = len(parts)
        await self.send(text_data=orjson.dumps(frame).decode())
        for part in parts:
            await self.send(text_data=orjson.dumps({"type": "request.body", "id": rid, "data": part}).decode())

    async def cancel(self, rid: str) -> None:
        if self.pending.pop(rid, None) is not None:
            if self.info is not None:
                self.info.inflight = max(0, self.info.inflight - 1)
            try:
                await self.send(text_data=orjson.dumps({"type": "cancel", "id": rid}).decode())
            except OSError:  # the connector's socket closed (uvicorn's ClientDisconnected): nothing left to stop
                log.debug("cancel %s: the connector is already gone", rid)

    async def tunnel_request(self, event: dict) -> None:
        reply = event["reply"]
        if self.info is None or self.info.draining:
            await self.channel_layer.send(reply, {"type": "tunnel.frame", "item": ["reject", "draining"]})
            return
        await self.channel_layer.send(reply, {"type": "tunnel.frame", "item": ["accepted"]})
        await self.submit(event["frame"], event["body"], reply)

    async def tunnel_cancel(self, event: dict) -> None:
        await self.cancel(event["id"])

    async def tunnel_revoked(self, event: dict) -> None:
        log.info("connector token revoked, closing %s", self.info.connector_id if self.info else "?")
        await self.close(code=frames.CLOSE_TOKEN_REVOKED, reason="connector token revoked")
        await self._cleanup()
