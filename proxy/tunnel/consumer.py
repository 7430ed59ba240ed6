"""The WebSocket endpoint a connector dials (`/v1/connector`): it authorises, shakes hands, and hands
every frame to the connector's `ConnectorSession`.

Requests reach the session two ways: directly, when the HTTP request is handled by this same
process (the router finds the session in `session.LOCAL`), or through the channel layer
(`tunnel.request` messages) from other processes. A connector that breaks the protocol is closed
with 4002; whatever way it goes, every request it held fails at once and it is withdrawn from
presence before anything else happens.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

from asgiref.sync import sync_to_async
from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.utils import timezone

from accounts.secrets import hash_secret
from deployments.models import ConnectorToken
from lib import metrics
from lib.redis import report_outage
from tokios_connector import protocol
from tokios_connector.protocol import ProtocolError

from . import layer as layer_messages
from . import presence, queue, signals
from .session import LOCAL, ConnectorSession

log = logging.getLogger("tokios.tunnel")
LAYER_RETRY = 0.5  # seconds between tries to read the channel layer while it fails


def _lookup_token(secret: str) -> tuple[int, int, str] | None:
    row = (
        ConnectorToken.objects.filter(token_hash=hash_secret(secret), revoked_at__isnull=True)
        .values_list("id", "deployment_id", "deployment__name")
        .first()
    )
    if row is not None:
        ConnectorToken.objects.filter(pk=row[0]).update(last_seen_at=timezone.now())
    return row


def _token_still_valid(token_id: int) -> bool:
    return ConnectorToken.objects.filter(pk=token_id, revoked_at__isnull=True).update(last_seen_at=timezone.now()) == 1


class ConnectorConsumer(AsyncWebsocketConsumer):
    session: ConnectorSession | None = None

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
            await self._end(None, "", "connector_disconnected", "the connector disconnected")

    async def _layer_loop(self) -> None:
        while True:
            try:
                message = await self.channel_layer.receive(self.channel_name)
            except Exception as exc:  # Redis down or restarting: keep listening once it is back
                report_outage(log, "the channel layer failed; requests from other processes cannot arrive", exc)
                await asyncio.sleep(LAYER_RETRY)
                continue
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

    # --- the connection ---------------------------------------------------------------------------

    async def connect(self) -> None:
        self.last_seen = time.monotonic()
        self.heartbeat_task: asyncio.Task | None = None
        self.token_row: tuple[int, int, str] | None = None
        self.ended = False
        headers = dict(self.scope.get("headers") or [])
        auth = headers.get(b"authorization", b"").decode("latin-1")
        secret = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        await self.accept()
        if secret:
            self.token_row = await sync_to_async(_lookup_token)(secret)
        if self.token_row is None:
            log.warning("connector rejected: unknown or revoked token from %s", self._remote())
            await self._end(protocol.CLOSE_AUTH_REJECTED, "connector token rejected", "", "")

    def _remote(self) -> str:
        client = self.scope.get("client") or ("?", 0)
        return f"{client[0]}:{client[1]}"

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.ended:  # closed by us: frames still on their way must not act (a `draining` would republish it)
            return
        self.last_seen = time.monotonic()
        session = self.session
        try:
            if bytes_data is not None:
                metrics.FRAMES_FROM_CONNECTORS.count("chunk", len(bytes_data))
                if session is None:
                    raise ProtocolError("a body chunk before hello")
                await session.on_chunk(bytes_data)
                return
            text = text_data or ""
            try:
                frame = protocol.decode_from_connector(text)
            except ProtocolError:
                metrics.FRAMES_FROM_CONNECTORS.count_text(metrics.INVALID_FRAME, text)
                raise
            metrics.FRAMES_FROM_CONNECTORS.count_text(frame.type, text)
            if session is None:
                await self._hello(frame)
                return
            await session.on_frame(frame)
            if isinstance(frame, protocol.Draining):
                await presence.publish(session.info)
                log.info("connector %s draining", session.info.connector_id)
            elif isinstance(frame, protocol.Slots):
                await presence.publish(session.info)
                log.info("connector %s now takes %d requests at once", session.info.connector_id, session.info.slots)
        except ProtocolError as exc:
            who = session.info.connector_id if session is not None else self._remote()
            log.warning("connector %s broke the protocol: %s", who, exc.message)
            reason = exc.message.encode()[:123].decode(errors="ignore")  # a close frame holds 123 bytes of reason
            await self._end(protocol.CLOSE_PROTOCOL_ERROR, reason, "connector_protocol_error", exc.message)

    async def _hello(self, frame: protocol.ConnectorFrame) -> None:
        if self.token_row is None or self.ended:
            return  # being closed (4001)
        if not isinstance(frame, protocol.Hello):
            raise ProtocolError("the first frame must be hello")
        if frame.protocol != protocol.PROTOCOL_VERSION:
            reason = (
                f"connector protocol {frame.protocol} is not supported; this server speaks {protocol.PROTOCOL_VERSION}"
            )
            log.warning("connector from %s refused: %s", self._remote(), reason)
            await self._end(protocol.CLOSE_VERSION_MISMATCH, reason[:120], "", "")
            return
        token_id, deployment_id, deployment_name = self.token_row
        now = time.time()
        info = presence.ConnectorInfo(
            channel=self.channel_name,
            deployment_id=deployment_id,
            token_id=token_id,
            connector_id="conn_" + secrets.token_hex(6),
            version=frame.version[:40],
            remote=self._remote(),
            connected_since=now,
            last_heartbeat=now,
            max_concurrency=frame.max_concurrency,
            upstream_model=frame.model,
            surfaces=None if frame.surfaces is None else list(frame.surfaces),
            models=None if frame.models is None else list(frame.models),
        )
        window = max(1, min(settings.TUNNEL_WINDOW, protocol.MAX_WINDOW))
        session = self.session = ConnectorSession(
            info=info, send_text=self._send_text, layer=self.channel_layer, window=window
        )
        # A connector that does not say (an older one) works on as many requests as it accepts.
        session.set_slots(frame.slots or frame.max_concurrency)
        LOCAL[self.channel_name] = session
        await self.channel_layer.group_add(presence.token_group(token_id), self.channel_name)
        await self.channel_layer.group_add(queue.group(deployment_id), self.channel_name)
        welcome = protocol.Welcome(
            deployment=deployment_name,
            connector_id=info.connector_id,
            heartbeat_interval=settings.HEARTBEAT_INTERVAL,
            heartbeat_timeout=settings.HEARTBEAT_TIMEOUT,
            window=window,
            slot_updates=True,
        )
        await session.send(welcome)
        await presence.publish(info)
        self.heartbeat_task = asyncio.create_task(self._heartbeat(session))
        await queue.fill(session, force=True)  # requests may be waiting for a connector to come
        await signals.connector_connected.asend_robust(sender=ConnectorConsumer, info=info)
        log.info(
            "connector %s online for %s (version %s, from %s)",
            info.connector_id,
            deployment_name,
            info.version,
            info.remote,
        )

    async def _send_text(self, text: str) -> None:
        await self.send(text_data=text)

    async def _heartbeat(self, session: ConnectorSession) -> None:
        while True:
            await asyncio.sleep(settings.HEARTBEAT_INTERVAL)
            if time.monotonic() - self.last_seen > settings.HEARTBEAT_TIMEOUT:
                log.warning("connector %s silent, dropping it", session.info.connector_id)
                await self._end(
                    protocol.CLOSE_HEARTBEAT_TIMEOUT,
                    "heartbeat timeout",
                    "connector_disconnected",
                    "the connector stopped answering",
                )
                return
            if not await sync_to_async(_token_still_valid)(session.info.token_id):
                await self.tunnel_revoked({})
                return
            await session.drop_orphans()
            await session.send(protocol.Ping(time.time()))
            session.info.last_heartbeat = time.time()

    async def disconnect(self, code) -> None:
        if self.session is not None and not self.ended:
            log.info("connector %s offline (close %s)", self.session.info.connector_id, code)
        await self._end(None, "", "connector_disconnected", "the connector disconnected", peer_code=code)

    async def _end(
        self, close_code: int | None, reason: str, failure: str, message: str, peer_code: int | None = None
    ) -> None:
        """Take the connector out of service (once): out of presence first, so that nothing new is
        routed to it, then fail what it holds, then close the socket if it is still open. The
        history records `close_code` (ours) or else `peer_code` (the connector's, 1006 if none)."""
        if getattr(self, "ended", False):
            return
        self.ended = True
        task = getattr(self, "heartbeat_task", None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        session = self.session
        if session is not None:
            LOCAL.pop(self.channel_name, None)
            await presence.withdraw(session.info)
            await session.fail_all(failure, message)
            await self.channel_layer.group_discard(presence.token_group(session.info.token_id), self.channel_name)
            await self.channel_layer.group_discard(queue.group(session.info.deployment_id), self.channel_name)
        if close_code is not None:
            try:
                await self.close(code=close_code, reason=reason)
            except OSError:
                pass
        if session is not None:  # the history alerts keep (flapping); after the close, not before it
            await signals.connector_disconnected.asend_robust(
                sender=ConnectorConsumer,
                info=session.info,
                reason=failure,
                close_code=close_code if close_code is not None else peer_code,
            )

    # --- messages from other processes --------------------------------------------------------------

    async def tunnel_request(self, event: dict) -> None:
        reply, rid = event["reply"], event["id"]
        session = self.session
        live = session if session is not None and not session.closed and not session.info.draining else None
        # A request takes the slot promised to it, or a free one; else it queues (`busy`).
        accepted = live is not None and live.admits(rid, granted=bool(event.get("granted")))
        process = str(event.get("process") or "")
        if accepted and live is not None and rid not in live.reserved:
            live.reserve(rid, process)  # taken now: sending the acknowledgement lets others run
        ack = {
            "type": "tunnel.ack",
            "accepted": accepted,
            "busy": live is not None and not accepted,
            "window": live.window if live is not None else 0,
            "connector": live.info.connector_id if live is not None else "",
        }
        await layer_messages.send(self.channel_layer, reply, ack)
        if accepted and live is not None:
            traceparent = event.get("traceparent")  # the dispatch span of the process that sent it
            await live.submit(
                rid,
                event["method"],
                event["path"],
                event["body"],
                reply=reply,
                process=process,
                traceparent=traceparent if protocol.valid_traceparent(traceparent) else None,
            )

    async def tunnel_waiting(self, event: dict) -> None:
        """Another process queued a request for this deployment."""
        if self.session is not None:
            queue.heard_waiting(self.session.info.deployment_id)
            await queue.fill(self.session)

    async def tunnel_cancel(self, event: dict) -> None:
        if self.session is not None:
            await self.session.cancel(event["id"])

    async def tunnel_credit(self, event: dict) -> None:
        if self.session is not None:
            await self.session.grant(event["id"], event["blocks"])

    async def tunnel_revoked(self, event: dict) -> None:
        log.info("connector token revoked, closing %s", self.session.info.connector_id if self.session else "?")
        await self._end(
            protocol.CLOSE_TOKEN_REVOKED,
            "connector token revoked",
            "connector_disconnected",
            "the connector's token was revoked",
        )
