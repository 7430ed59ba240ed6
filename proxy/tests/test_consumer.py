"""The connector WebSocket (`/v1/connector`) driven through Channels' WebsocketCommunicator, with a
real connector token in the test database, and requests sent to it by `TunnelCall` on the same loop
(the connector's session is in `session.LOCAL` while it is connected).

The consumer is mounted on its own rather than through `tokios_site.asgi.application`: importing
that module freezes the garbage collector and changes its thresholds for the whole test process.
asgiref's ApplicationCommunicator stands in for Channels' WebsocketCommunicator, whose package
imports daphne (a server we do not install) on import.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import pytest
import pytest_asyncio
from asgiref.testing import ApplicationCommunicator
from channels.layers import get_channel_layer
from django.utils import timezone

from deployments.models import ConnectorToken
from proxy.calls import CallError, Data, Ended, Failed, Started
from proxy.tunnel import presence, router
from proxy.tunnel.consumer import ConnectorConsumer
from proxy.tunnel.router import TunnelCall
from proxy.tunnel.session import LOCAL, ConnectorSession
from tokios_connector import protocol
from tokios_connector.protocol import (
    Cancel,
    Credit,
    Request,
    ResponseEnd,
    ResponseStart,
    Welcome,
    chunk_prefix,
    decode_from_server,
    encode,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]

TIMEOUT = 5  # generous: the machine running the suite may be busy
HELLO = {
    "type": "hello",
    "protocol": 2,
    "version": "9.9.9",
    "upstream": "http://127.0.0.1:8080",
    "model": "gemma",
    "max_concurrency": 8,
}


class Link:
    """One connector's WebSocket, seen from the connector's end."""

    def __init__(self, secret: str | None) -> None:
        headers = [(b"authorization", f"Bearer {secret}".encode())] if secret is not None else []
        scope = {
            "type": "websocket",
            "path": "/v1/connector",
            "query_string": b"",
            "headers": headers,
            "subprotocols": [],
        }
        self.ws = ApplicationCommunicator(ConnectorConsumer.as_asgi(), scope)
        self.welcome: Welcome | None = None
        self.session: ConnectorSession | None = None  # the server's session for it, once welcomed

    async def open(self) -> None:
        await self.ws.send_input({"type": "websocket.connect"})
        assert (await self.ws.receive_output(TIMEOUT))["type"] == "websocket.accept"

    async def hello(self, **changes) -> Welcome:
        await self.send({**HELLO, **changes})
        welcome = await self.frame()
        assert isinstance(welcome, Welcome)
        self.welcome = welcome
        [self.session] = [s for s in LOCAL.values() if s.info.connector_id == welcome.connector_id]
        return welcome

    async def send(self, frame: dict | str | bytes) -> None:
        if isinstance(frame, bytes):
            await self.ws.send_input({"type": "websocket.receive", "bytes": frame})
        else:
            text = frame if isinstance(frame, str) else json.dumps(frame)
            await self.ws.send_input({"type": "websocket.receive", "text": text})

    async def send_frame(self, frame: protocol.ConnectorFrame) -> None:
        await self.send(encode(frame))

    async def chunks(self, rid: str, count: int, payload: bytes = b"x") -> None:
        for _ in range(count):
            await self.send(chunk_prefix(rid) + payload)

    async def frame(self, timeout: float = TIMEOUT) -> protocol.ServerFrame:
        """The next text frame from the server (a timeout here cancels the consumer: only wait for
        frames that must come, and use `quiet()` otherwise)."""
        message = await self.ws.receive_output(timeout)
        assert message["type"] == "websocket.send", message
        return decode_from_server(message["text"])

    async def disconnect(self) -> None:
        await self.ws.send_input({"type": "websocket.disconnect", "code": 1000})
        await self.ws.wait(TIMEOUT)

    async def closed(self) -> tuple[int, str]:
        """The close the server sent (skipping any frames still ahead of it)."""
        while True:
            message = await self.ws.receive_output(TIMEOUT)
            if message["type"] == "websocket.close":
                return message.get("code"), message.get("reason", "")

    async def quiet(self) -> bool:
        """True when the server sends nothing for a while (time enough to handle what we sent)."""
        return await self.ws.receive_nothing(timeout=0.2)


@pytest_asyncio.fixture
async def links(consumer_db):
    """Opens connector WebSockets; disconnects every one at the end of the test."""
    opened: list[Link] = []

    async def open_link(secret: str | None) -> Link:
        link = Link(secret)
        opened.append(link)
        await link.open()
        return link

    yield open_link
    for link in opened:
        try:
            await link.disconnect()
        except asyncio.CancelledError:  # a timed-out receive_output cancelled it: the test failed already
            pass


@pytest_asyncio.fixture
async def online(links, credentials):
    """A connector that said hello and was welcomed."""
    link = await links(credentials.secret)
    await link.hello()
    return link


def new_call(credentials, rid: str = "req_1") -> TunnelCall:
    return TunnelCall(
        deployment_id=credentials.deployment_id, request_id=rid, method="POST", path="/v1/chat/completions", body=b"{}"
    )


async def waiting_call(link: Link, credentials, rid: str = "req_1") -> tuple[TunnelCall, asyncio.Task]:
    """A call whose request reached the connector, waiting for its response to start."""
    call = new_call(credentials, rid)
    start = asyncio.create_task(call.start(TIMEOUT))
    request = await link.frame()
    assert isinstance(request, Request) and request.id == rid
    return call, start


async def started_call(link: Link, credentials, rid: str = "req_1") -> TunnelCall:
    call, start = await waiting_call(link, credentials, rid)
    await link.send_frame(ResponseStart(rid, 200, {"content-type": "text/event-stream"}))
    assert await start == Started(200, {"content-type": "text/event-stream"})
    return call


async def until(condition: Callable[[], object]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.001)


async def assert_gone(link: Link, credentials) -> None:
    """The connector is out of service: no session, no presence, here or (with Redis) anywhere."""
    assert link.session is None or link.session not in LOCAL.values()
    assert presence.local_connectors(credentials.deployment_id) == []
    assert await presence.live_connectors(credentials.deployment_id, fresh=True) == []
    assert presence._local == {}  # nothing kept for it


# --- authorisation and handshake -----------------------------------------------------------------


@pytest.mark.parametrize("secret", [None, "", "ctk-tokios-not-a-real-token"])
async def test_a_missing_or_unknown_token_is_closed_with_4001(links, credentials, secret):
    link = await links(secret)

    assert (await link.closed())[0] == protocol.CLOSE_AUTH_REJECTED


async def test_a_revoked_token_is_closed_with_4001(links, credentials):
    await ConnectorToken.objects.filter(pk=credentials.token_id).aupdate(revoked_at=timezone.now())
    link = await links(credentials.secret)

    assert (await link.closed())[0] == protocol.CLOSE_AUTH_REJECTED


async def test_frames_after_a_rejected_token_get_no_second_close(links, credentials):
    """A second websocket.close is a RuntimeError in uvicorn ("Unexpected ASGI message"), which
    escapes the consumer as an unhandled application error."""
    link = await links("ctk-tokios-not-a-real-token")
    assert (await link.closed())[0] == protocol.CLOSE_AUTH_REJECTED

    await link.send("not json")
    await link.send(b"\x01a payload")

    assert await link.quiet()


async def test_hello_with_protocol_1_is_closed_with_4004_and_says_why(links, credentials):
    link = await links(credentials.secret)

    await link.send({**HELLO, "protocol": 1})

    code, reason = await link.closed()
    assert code == protocol.CLOSE_VERSION_MISMATCH
    assert reason == "connector protocol 1 is not supported; this server speaks 2"
    await assert_gone(link, credentials)


async def test_a_valid_hello_is_welcomed_with_protocol_2_and_the_window(links, credentials, settings):
    settings.TUNNEL_WINDOW = 16
    link = await links(credentials.secret)

    welcome = await link.hello()

    assert welcome.protocol == protocol.PROTOCOL_VERSION == 2
    assert welcome.window == 16
    assert welcome.deployment == credentials.deployment_name
    assert welcome.connector_id.startswith("conn_")
    assert (welcome.heartbeat_interval, welcome.heartbeat_timeout) == (
        settings.HEARTBEAT_INTERVAL,
        settings.HEARTBEAT_TIMEOUT,
    )
    [info] = presence.local_connectors(credentials.deployment_id)
    assert (info.connector_id, info.max_concurrency, info.upstream_model, info.version) == (
        welcome.connector_id,
        8,
        "gemma",
        "9.9.9",
    )
    assert [i.connector_id for i in await presence.live_connectors(credentials.deployment_id, fresh=True)] == [
        info.connector_id
    ]


@pytest.mark.redis
async def test_with_redis_every_process_sees_the_connector_come_and_go(online, credentials):
    channel = online.session.info.channel
    assert await presence.is_alive(credentials.deployment_id, channel)  # read from Redis

    await online.send("not json")

    assert (await online.closed())[0] == protocol.CLOSE_PROTOCOL_ERROR
    assert not await presence.is_alive(credentials.deployment_id, channel)


@pytest.mark.parametrize("configured, announced", [(0, 1), (5000, protocol.MAX_WINDOW)])
async def test_the_window_announced_stays_within_the_protocol(links, credentials, settings, configured, announced):
    settings.TUNNEL_WINDOW = configured
    link = await links(credentials.secret)

    assert (await link.hello()).window == announced


# --- protocol errors -----------------------------------------------------------------------------

BEFORE_HELLO = {
    "hello with max_concurrency 'x'": {**HELLO, "max_concurrency": "x"},
    "hello with max_concurrency 0": {**HELLO, "max_concurrency": 0},
    "a first frame other than hello": {"type": "pong"},
    "a chunk before hello": b"\x05req_1data",
    "not JSON": "{hello",
}

AFTER_HELLO = {
    "response.start without status": {"type": "response.start", "id": "req_1"},
    "response.start with status 'abc'": {"type": "response.start", "id": "req_1", "status": "abc"},
    "response.start with status 99": {"type": "response.start", "id": "req_1", "status": 99},
    "response.start with status 2**70": {"type": "response.start", "id": "req_1", "status": 2**70},
    "response.start with headers a list": {"type": "response.start", "id": "req_1", "status": 200, "headers": []},
    "response.end with timing a string": {"type": "response.end", "id": "req_1", "timing": "fast"},
    "response.error without code": {"type": "response.error", "id": "req_1"},
    "an id that is not a string": {"type": "response.end", "id": 7},
    "an id over 64 characters": {"type": "response.end", "id": "r" * 65},
    "an unknown type": {"type": "response.trailers", "id": "req_1"},
    "a type that is not a string": {"type": 5},
    "a second hello": HELLO,
    "not JSON": "not json",
    "a JSON array": "[1, 2]",
    "a binary frame with a non-ASCII id": bytes([2]) + "é".encode() + b"data",
    "a binary frame with a non-UTF-8 id": b"\x02\xff\xfedata",
    "a binary frame with an unprintable id": b"\x02\x00\x01data",
    "a binary frame with an empty id": b"\x00data",
    "a binary frame shorter than its id": b"\x09req_1",
    "a binary frame of one byte": b"\x01",
    "a binary frame over 16 KiB of payload": chunk_prefix("req_1") + b"x" * (protocol.MAX_CHUNK_PAYLOAD + 1),
}


@pytest.mark.parametrize("frame", BEFORE_HELLO.values(), ids=BEFORE_HELLO.keys())
async def test_a_malformed_first_frame_is_closed_with_4002(links, credentials, frame):
    link = await links(credentials.secret)

    await link.send(frame)

    assert (await link.closed())[0] == protocol.CLOSE_PROTOCOL_ERROR
    await assert_gone(link, credentials)


@pytest.mark.parametrize("frame", AFTER_HELLO.values(), ids=AFTER_HELLO.keys())
async def test_a_malformed_frame_is_closed_with_4002_and_withdrawn(online, credentials, frame):
    await online.send(frame)

    assert (await online.closed())[0] == protocol.CLOSE_PROTOCOL_ERROR
    await assert_gone(online, credentials)


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "😀" * 40},
        {"type": "response.end", "id": "req_1", "timing": {"type": "😀" * 50, "upstream_ms": "x"}},
    ],
    ids=["an unknown type", "a bad timing that names its own type"],
)
async def test_the_close_reason_fits_in_a_close_frame_whatever_the_connector_sent(online, frame):
    """RFC 6455 allows 123 bytes of reason; websockets refuses to send a longer close frame
    ("control frame too long"), and the connector would see the connection drop instead of 4002."""
    await online.send(frame)

    code, reason = await online.closed()

    assert code == protocol.CLOSE_PROTOCOL_ERROR
    assert 0 < len(reason.encode()) <= 123


async def test_a_protocol_error_fails_a_waiting_request_at_once_with_502(online, credentials):
    call, start = await waiting_call(online, credentials)

    await online.send({"type": "response.start", "id": "req_1", "status": "abc"})

    with pytest.raises(CallError) as caught:
        await asyncio.wait_for(start, 1)  # at once, not after the call's own timeout
    assert (caught.value.status, caught.value.code) == (502, "connector_protocol_error")
    assert (await online.closed())[0] == protocol.CLOSE_PROTOCOL_ERROR
    await assert_gone(online, credentials)
    assert router._dispatched == {}


async def test_a_protocol_error_fails_a_streaming_request_in_band(online, credentials):
    call = await started_call(online, credentials)
    await online.chunks("req_1", 1)
    assert await call.next_item(TIMEOUT) == Data(b"x")

    await online.send(b"\x02\xff\xfedata")

    item = await call.next_item(1)
    assert isinstance(item, Failed) and item.code == "connector_protocol_error"
    assert call.finished
    assert (await online.closed())[0] == protocol.CLOSE_PROTOCOL_ERROR


async def test_after_a_protocol_error_new_requests_find_no_connector(online, credentials):
    await online.send("not json")
    assert (await online.closed())[0] == protocol.CLOSE_PROTOCOL_ERROR

    with pytest.raises(CallError) as caught:
        await new_call(credentials).start(TIMEOUT)

    assert (caught.value.status, caught.value.code) == (503, "connector_offline")


@pytest.mark.parametrize("frame", ["not json", b"\x02\xff\xfe"], ids=["text", "binary"])
async def test_frames_after_a_protocol_error_do_not_bring_the_connector_back(online, credentials, frame):
    """Frames already on their way when the server closed the connector are not read: a
    `draining` one used to publish the withdrawn connector again, where it stayed for good."""
    await online.send(frame)
    await online.send({"type": "draining"})
    await online.send({"type": "pong", "t": 1.0})

    assert (await online.closed())[0] == protocol.CLOSE_PROTOCOL_ERROR
    assert await online.quiet()
    await assert_gone(online, credentials)
    await online.disconnect()
    await assert_gone(online, credentials)


async def test_response_start_twice_for_a_held_request_is_closed_with_4002(online, credentials):
    call = await started_call(online, credentials)

    await online.send_frame(ResponseStart("req_1", 200, {}))

    assert (await online.closed())[0] == protocol.CLOSE_PROTOCOL_ERROR
    assert (await call.next_item(1)).code == "connector_protocol_error"


@pytest.mark.parametrize("payload", [b"x", b"x" * protocol.MAX_CHUNK_PAYLOAD], ids=["1 block", "4 blocks"])
async def test_a_chunk_beyond_the_credit_window_is_closed_with_4002(online, credentials, settings, payload):
    call = await started_call(online, credentials)
    window = online.welcome.window
    cost = protocol.credit_cost(len(payload))
    fits = window // cost
    assert fits * cost == window

    await online.chunks("req_1", fits + 1, payload)  # nobody read: no credit came back

    assert (await online.closed())[0] == protocol.CLOSE_PROTOCOL_ERROR
    item = await call.next_item(1)
    assert item == Data(payload * fits, blocks=window)  # what it was allowed
    assert (await call.next_item(1)).code == "connector_protocol_error"


# --- the happy path, credit, and other ends -----------------------------------------------------


async def test_a_request_streams_through_and_credit_comes_back_after_half_the_window(links, credentials, settings):
    settings.TUNNEL_WINDOW = 4
    link = await links(credentials.secret)
    assert (await link.hello()).window == 4
    call = await started_call(link, credentials)

    # An item's blocks count as consumed when the reader asks for the next one (it has written
    # them to its client by then); credit goes back once half the window is consumed.
    await link.chunks("req_1", 1, b"a")
    assert await call.next_item(TIMEOUT) == Data(b"a")
    assert await link.quiet()  # nothing consumed yet

    await link.chunks("req_1", 1, b"b")
    assert await call.next_item(TIMEOUT) == Data(b"b")
    assert await link.quiet()  # 1 of 4 blocks consumed: no credit yet

    await link.chunks("req_1", 2, b"c")  # all it holds: the window is used up
    assert await call.next_item(TIMEOUT) == Data(b"cc", blocks=2)
    assert await link.frame() == Credit("req_1", 2)  # a and b consumed

    await link.chunks("req_1", 2, b"d")  # what was handed back
    assert await call.next_item(TIMEOUT) == Data(b"dd", blocks=2)
    assert await link.frame() == Credit("req_1", 2)

    await link.send_frame(ResponseEnd("req_1", 120, 30))
    await until(lambda: not link.session.pending)  # ended: credit for dd has no one left to go to
    assert await call.next_item(TIMEOUT) == Ended(120, 30)
    assert call.finished and link.session.pending == {} and link.session.info.inflight == 0
    assert router._dispatched == {}
    assert await link.quiet()


async def test_a_window_setting_above_the_protocol_maximum_still_hands_credit_back(links, credentials, settings):
    """The consumer announces min(TUNNEL_WINDOW, MAX_WINDOW); a call that waits for half of the
    unclamped setting before handing credit back waits for blocks the connector may never send:
    the stream stalls until its timeouts end it."""
    settings.TUNNEL_WINDOW = protocol.MAX_WINDOW + 2000  # set directly: the env variable is clamped
    link = await links(credentials.secret)
    window = (await link.hello()).window
    assert window == protocol.MAX_WINDOW
    call = await started_call(link, credentials)

    full = b"x" * protocol.MAX_CHUNK_PAYLOAD
    await link.chunks("req_1", window // protocol.credit_cost(len(full)), full)  # all the credit it has
    read = 0
    while read < window:
        item = await call.next_item(TIMEOUT)
        assert isinstance(item, Data)
        read += item.blocks
    assert await call.next_item(0.05) is None  # asking for more consumes what was read

    credited = 0
    while await link.ws.receive_nothing(timeout=0.2) is False:
        frame = await link.frame()
        assert isinstance(frame, Credit)
        credited += frame.blocks
    assert credited >= window // 2  # the connector may go on


async def test_a_request_from_another_process_streams_through_the_channel_layer(
    online, credentials, monkeypatch, settings
):
    settings.TUNNEL_WINDOW = online.welcome.window
    monkeypatch.setattr(router, "LOCAL", {})  # as another process sees it: not held here
    call = new_call(credentials)
    start = asyncio.create_task(call.start(TIMEOUT))

    request = await online.frame()
    assert isinstance(request, Request) and request.id == "req_1" and call.reply is not None
    await online.send_frame(ResponseStart("req_1", 200, {}))
    assert await start == Started(200, {})
    half = online.welcome.window // 2
    # 4 KiB + 1 byte: 2 blocks a frame, which the other process must hand back as 2 each.
    await online.chunks("req_1", half // 2, b"x" * (protocol.CREDIT_BLOCK + 1))
    read = 0
    while read < half:
        item = await call.next_item(TIMEOUT)
        read += item.blocks
    assert await call.next_item(0.05) is None  # asking for more consumes what was read
    assert await online.frame() == Credit("req_1", half)  # sent back over the channel layer
    await online.send_frame(ResponseEnd("req_1"))
    assert await call.next_item(TIMEOUT) == Ended()
    assert online.session.pending == {} and router._dispatched == {}


async def test_a_cancelled_call_sends_cancel_to_the_connector(online, credentials):
    call = await started_call(online, credentials)

    await call.cancel()

    assert await online.frame() == Cancel("req_1")
    assert online.session.pending == {}
    await online.chunks("req_1", 2)  # late frames for it are dropped, not a protocol error
    await online.send_frame(ResponseEnd("req_1"))
    assert await online.quiet()


async def test_a_connector_that_leaves_fails_its_requests_and_is_withdrawn(online, credentials):
    call, start = await waiting_call(online, credentials)

    await online.disconnect()

    with pytest.raises(CallError) as caught:
        await asyncio.wait_for(start, 1)
    assert (caught.value.status, caught.value.code) == (502, "connector_disconnected")
    await assert_gone(online, credentials)


async def test_a_revoked_token_closes_its_connector_with_4003(online, credentials):
    call, start = await waiting_call(online, credentials)

    await get_channel_layer().group_send(presence.token_group(credentials.token_id), {"type": "tunnel.revoked"})

    assert (await online.closed())[0] == protocol.CLOSE_TOKEN_REVOKED
    with pytest.raises(CallError) as caught:
        await asyncio.wait_for(start, 1)
    assert caught.value.code == "connector_disconnected"
    await assert_gone(online, credentials)


async def test_draining_takes_the_connector_out_of_routing_but_not_out_of_presence(online, credentials):
    await online.send({"type": "draining"})
    await until(lambda: online.session.info.draining)

    [info] = presence.local_connectors(credentials.deployment_id)
    assert info.draining
    with pytest.raises(CallError) as caught:
        await new_call(credentials).start(TIMEOUT)
    assert caught.value.code == "connector_offline"


async def test_a_silent_connector_is_pinged_then_dropped_with_4008(links, credentials, settings):
    settings.HEARTBEAT_INTERVAL = 0.05
    settings.HEARTBEAT_TIMEOUT = 0.12
    link = await links(credentials.secret)
    await link.hello()
    began = time.monotonic()

    frames = []
    while True:
        message = await link.ws.receive_output(TIMEOUT)
        if message["type"] == "websocket.close":
            break
        frames.append(decode_from_server(message["text"]))

    assert message["code"] == protocol.CLOSE_HEARTBEAT_TIMEOUT
    assert frames and all(isinstance(f, protocol.Ping) for f in frames)
    assert time.monotonic() - began < 2
    await assert_gone(link, credentials)
