"""ConnectorSession and Inbox units: no socket, the frames the session sends are collected in a list."""

from __future__ import annotations

import asyncio
import time

import pytest
from channels.layers import InMemoryChannelLayer
from uvicorn.protocols.utils import ClientDisconnected

from proxy.calls import Data, Ended, Failed, Started
from proxy.tunnel import layer as layer_messages
from proxy.tunnel.inbox import Inbox
from proxy.tunnel.presence import ConnectorInfo
from proxy.tunnel.session import ConnectorSession
from tokios_connector import protocol
from tokios_connector.protocol import (
    CREDIT_BLOCK,
    MAX_CHUNK_PAYLOAD,
    Cancel,
    Credit,
    ProtocolError,
    Request,
    RequestBody,
    ResponseEnd,
    ResponseError,
    ResponseStart,
    chunk_prefix,
    decode_from_server,
)

pytestmark = pytest.mark.asyncio

WINDOW = 4


class Socket:
    """What the session sends to its connector, decoded as the connector would read it."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.closed = False

    async def send_text(self, text: str) -> None:
        if self.closed:
            raise ClientDisconnected()  # what uvicorn raises for a socket that closed under us
        self.texts.append(text)

    @property
    def frames(self) -> list[protocol.ServerFrame]:
        return [decode_from_server(text) for text in self.texts]


def connector_info() -> ConnectorInfo:
    now = time.time()
    return ConnectorInfo(
        channel="specific.test!1",
        deployment_id=1,
        token_id=1,
        connector_id="conn_test",
        version="test",
        remote="127.0.0.1:1",
        connected_since=now,
        last_heartbeat=now,
    )


@pytest.fixture
def socket() -> Socket:
    return Socket()


@pytest.fixture
def session(socket: Socket) -> ConnectorSession:
    return ConnectorSession(info=connector_info(), send_text=socket.send_text, layer=None, window=WINDOW)


def chunk(rid: str, payload: bytes) -> bytes:
    return chunk_prefix(rid) + payload


def drain(inbox: Inbox) -> list:
    """Everything delivered so far, without merging body pieces."""
    items = list(inbox.items)
    inbox.items.clear()
    return items


async def started(session: ConnectorSession, rid: str = "r1") -> Inbox:
    inbox = Inbox()
    await session.submit(rid, "POST", "/v1/chat/completions", b"{}", inbox=inbox)
    await session.on_frame(ResponseStart(rid, 200, {"content-type": "text/event-stream"}))
    return inbox


# --- submit --------------------------------------------------------------------------------------


async def test_submit_sends_one_request_frame_with_the_body_inline(session, socket):
    inbox = Inbox()
    await session.submit("r1", "POST", "/v1/chat/completions", b'{"model":"m"}', inbox=inbox)

    assert socket.frames == [
        Request(
            "r1",
            "POST",
            "/v1/chat/completions",
            {"content-type": "application/json", "x-request-id": "r1"},
            '{"model":"m"}',
            0,
        )
    ]
    assert list(session.pending) == ["r1"]
    assert session.info.inflight == 1
    assert not inbox.items


async def test_an_empty_body_is_sent_as_null(session, socket):
    await session.submit("r1", "GET", "/v1/models", b"", inbox=Inbox())

    assert socket.frames[0].body is None


async def test_a_body_of_exactly_256_kib_still_goes_inline(session, socket):
    body = b'"' + b"a" * (protocol.MAX_BODY_PART - 2) + b'"'

    await session.submit("r1", "POST", "/v1/chat/completions", body, inbox=Inbox())

    [request] = socket.frames
    assert request.body == body.decode() and request.body_parts == 0


async def test_a_body_over_256_kib_follows_in_request_body_parts_none_over_256_kib(session, socket):
    # Multi-byte characters: the split must be on characters, and the parts stay under the limit.
    body = ('{"text":"' + "é😀a" * 40_000 + '"}').encode()
    assert len(body) > protocol.MAX_BODY_PART

    await session.submit("r1", "POST", "/v1/chat/completions", body, inbox=Inbox())

    request, *parts = socket.frames
    assert isinstance(request, Request)
    assert request.body is None and request.body_parts == len(parts) > 1
    assert all(isinstance(part, RequestBody) and part.id == "r1" for part in parts)
    assert all(len(part.data.encode()) <= protocol.MAX_BODY_PART for part in parts)
    assert "".join(part.data for part in parts) == body.decode()


async def test_submit_on_a_closed_session_fails_the_request_at_once_and_sends_nothing(session, socket):
    await session.fail_all("connector_disconnected", "gone")
    inbox = Inbox()

    await session.submit("r1", "POST", "/v1/chat/completions", b"{}", inbox=inbox)

    assert drain(inbox) == [Failed("connector_disconnected", "the connector disconnected")]
    assert session.pending == {} and socket.texts == []


async def test_a_socket_closed_under_submit_cancel_or_grant_raises_nothing(session, socket):
    inbox = await started(session)
    socket.closed = True

    await session.grant("r1", 2)
    await session.cancel("r1")
    await session.submit("r2", "POST", "/v1/chat/completions", b"{}", inbox=Inbox())
    await session.submit("r3", "POST", "/v1/chat/completions", b"x" * (protocol.MAX_BODY_PART + 1), inbox=Inbox())

    assert drain(inbox) == [Started(200, {"content-type": "text/event-stream"})]
    assert set(session.pending) == {"r2", "r3"}  # the consumer's cleanup fails them (fail_all)


# --- frames from the connector -------------------------------------------------------------------


async def test_start_chunks_and_end_reach_the_inbox_as_started_data_ended(session):
    inbox = await started(session)

    await session.on_chunk(chunk("r1", b"ab"))
    await session.on_chunk(chunk("r1", b""))
    await session.on_chunk(chunk("r1", b"cd"))
    await session.on_frame(ResponseEnd("r1", upstream_ms=120, ttfb_ms=30))

    assert drain(inbox) == [
        Started(200, {"content-type": "text/event-stream"}),
        Data(b"ab"),
        Data(b""),
        Data(b"cd"),
        Ended(120, 30),
    ]
    assert session.pending == {} and session.info.inflight == 0


async def test_response_error_fails_the_request_before_or_after_start(session):
    early = Inbox()
    await session.submit("early", "POST", "/v1/chat/completions", b"{}", inbox=early)
    late = await started(session, "late")

    await session.on_frame(ResponseError("early", "overloaded", "busy"))
    await session.on_frame(ResponseError("late", "upstream_error", "boom"))

    assert drain(early) == [Failed("overloaded", "busy")]
    assert drain(late)[-1] == Failed("upstream_error", "boom")
    assert session.pending == {}


async def test_a_chunk_before_response_start_is_a_protocol_error(session):
    await session.submit("r1", "POST", "/v1/chat/completions", b"{}", inbox=Inbox())

    with pytest.raises(ProtocolError) as caught:
        await session.on_chunk(chunk("r1", b"x"))
    assert caught.value.request_id == "r1"


async def test_response_start_twice_is_a_protocol_error(session):
    await started(session)

    with pytest.raises(ProtocolError, match="twice") as caught:
        await session.on_frame(ResponseStart("r1", 200, {}))
    assert caught.value.request_id == "r1"


async def test_response_end_before_response_start_is_a_protocol_error(session):
    await session.submit("r1", "POST", "/v1/chat/completions", b"{}", inbox=Inbox())

    with pytest.raises(ProtocolError, match="before response.start") as caught:
        await session.on_frame(ResponseEnd("r1"))
    assert caught.value.request_id == "r1"


async def test_a_chunk_beyond_the_credit_window_is_a_protocol_error(session):
    inbox = await started(session)
    for _ in range(WINDOW):  # small chunks: one block each
        await session.on_chunk(chunk("r1", b"x"))

    with pytest.raises(ProtocolError, match="beyond its credit") as caught:
        await session.on_chunk(chunk("r1", b"x"))
    assert caught.value.request_id == "r1"
    assert sum(isinstance(item, Data) for item in drain(inbox)) == WINDOW  # memory stays bounded


@pytest.mark.parametrize(
    "size, blocks",
    [
        (0, 1),
        (1, 1),
        (CREDIT_BLOCK, 1),
        (CREDIT_BLOCK + 1, 2),
        (3 * CREDIT_BLOCK, 3),
        (MAX_CHUNK_PAYLOAD - 1, 4),
        (MAX_CHUNK_PAYLOAD, 4),
    ],
)
async def test_a_chunk_costs_one_block_per_started_4_kib_of_payload(session, size, blocks):
    inbox = await started(session)

    await session.on_chunk(chunk("r1", b"x" * size))

    assert drain(inbox)[-1] == Data(b"x" * size, blocks)
    assert session.pending["r1"].received == blocks


async def test_a_16_kib_chunk_costs_4_blocks_so_a_window_of_8_admits_two(socket):
    session = ConnectorSession(info=connector_info(), send_text=socket.send_text, layer=None, window=8)
    inbox = await started(session)
    full = b"x" * MAX_CHUNK_PAYLOAD

    await session.on_chunk(chunk("r1", full))
    await session.on_chunk(chunk("r1", full))
    assert session.pending["r1"].received == 8 == session.pending["r1"].allowed

    with pytest.raises(ProtocolError, match=r"beyond its credit \(8 blocks\)") as caught:
        await session.on_chunk(chunk("r1", full))  # 8 frames of one byte would have fitted
    assert caught.value.request_id == "r1"
    assert [item for item in drain(inbox) if isinstance(item, Data)] == [Data(full, 4), Data(full, 4)]


async def test_hello_after_the_handshake_is_a_protocol_error(session):
    with pytest.raises(ProtocolError, match="hello"):
        await session.on_frame(protocol.Hello(2, "1.0", "", None, 4))


async def test_frames_for_request_ids_the_session_does_not_hold_are_dropped(session, socket):
    inbox = await started(session)
    await session.on_frame(ResponseEnd("r1"))
    drain(inbox)

    # Late control frames for a finished request, and any frame for an id never sent.
    for frame in (ResponseStart("r1", 200, {}), ResponseEnd("r1"), ResponseError("r1", "upstream_error", "late")):
        await session.on_frame(frame)
    await session.on_chunk(chunk("never-sent", b"late"))
    await session.on_frame(ResponseStart("never-sent", 200, {}))
    await session.on_frame(ResponseEnd("never-sent"))

    assert drain(inbox) == []
    assert session.pending == {} and len(socket.texts) == 1  # the request frame alone


async def test_a_body_chunk_after_its_request_ended_breaks_the_protocol(session):
    await started(session)
    await session.on_frame(ResponseEnd("r1"))

    with pytest.raises(ProtocolError):
        await session.on_chunk(chunk("r1", b"late"))


async def test_after_a_cancel_what_was_in_flight_is_dropped_and_more_breaks_the_protocol(session):
    await started(session)
    await session.on_chunk(chunk("r1", b"a"))  # 1 of the window's blocks used
    await session.cancel("r1")

    for _ in range(session.window - 1):  # the rest of its credit may still be on the way
        await session.on_chunk(chunk("r1", b"late"))
    with pytest.raises(ProtocolError):
        await session.on_chunk(chunk("r1", b"beyond"))


async def test_after_a_cancel_what_may_still_arrive_is_counted_in_blocks(session):
    await started(session)
    await session.on_chunk(chunk("r1", b"a"))  # 1 of the window's 4 blocks used
    await session.cancel("r1")

    await session.on_chunk(chunk("r1", b"x" * (2 * CREDIT_BLOCK)))  # 2 blocks in flight: dropped
    with pytest.raises(ProtocolError):  # 2 more blocks, where only 1 was left
        await session.on_chunk(chunk("r1", b"x" * (CREDIT_BLOCK + 1)))


async def test_draining_marks_the_connector_and_pong_changes_nothing(session):
    await session.on_frame(protocol.Pong(1.5))
    assert not session.info.draining

    await session.on_frame(protocol.Draining())

    assert session.info.draining


# --- credit, cancel, fail_all --------------------------------------------------------------------


async def test_grant_raises_the_allowance_and_sends_a_credit_frame(session, socket):
    await started(session)
    for _ in range(WINDOW):
        await session.on_chunk(chunk("r1", b"x"))

    await session.grant("r1", 3)

    assert socket.frames[-1] == Credit("r1", 3)
    await session.on_chunk(chunk("r1", b"x" * (3 * CREDIT_BLOCK)))  # 3 blocks: what was granted
    with pytest.raises(ProtocolError):
        await session.on_chunk(chunk("r1", b"x"))


async def test_grant_for_an_unknown_request_or_of_no_blocks_sends_nothing(session, socket):
    await started(session)

    await session.grant("other", 3)
    await session.grant("r1", 0)
    await session.grant("r1", -5)

    assert len(socket.texts) == 1
    assert session.pending["r1"].allowed == WINDOW


async def test_cancel_sends_a_cancel_frame_and_forgets_the_request(session, socket):
    inbox = await started(session)

    await session.cancel("r1")
    await session.cancel("r1")  # a second cancel sends nothing
    await session.on_chunk(chunk("r1", b"late"))  # the connector had not heard yet

    assert socket.frames[1:] == [Cancel("r1")]
    assert session.pending == {} and session.info.inflight == 0
    assert drain(inbox) == [Started(200, {"content-type": "text/event-stream"})]


async def test_fail_all_delivers_failed_to_every_pending_request_and_keeps_none(session):
    waiting, streaming = Inbox(), await started(session, "streaming")
    await session.submit("waiting", "POST", "/v1/chat/completions", b"{}", inbox=waiting)
    await session.on_chunk(chunk("streaming", b"x"))

    await session.fail_all("connector_protocol_error", "bad frame")

    assert drain(waiting) == [Failed("connector_protocol_error", "bad frame")]
    assert drain(streaming)[-1] == Failed("connector_protocol_error", "bad frame")
    assert session.pending == {} and session.closed and session.info.inflight == 0


async def test_inflight_follows_the_pending_requests(session):
    for rid in ("a", "b", "c", "d"):
        await session.submit(rid, "POST", "/v1/chat/completions", b"{}", inbox=Inbox())
    assert session.info.inflight == 4

    await session.on_frame(ResponseStart("a", 200, {}))
    await session.on_frame(ResponseEnd("a"))
    assert session.info.inflight == 3
    await session.on_frame(ResponseError("b", "upstream_error"))
    assert session.info.inflight == 2
    await session.cancel("c")
    assert session.info.inflight == 1
    await session.fail_all("connector_disconnected", "gone")
    assert session.info.inflight == 0 == len(session.pending)


async def test_items_for_another_process_go_to_its_reply_channel():
    layer = InMemoryChannelLayer()
    reply = await layer.new_channel()
    socket = Socket()
    session = ConnectorSession(info=connector_info(), send_text=socket.send_text, layer=layer, window=WINDOW)
    await session.submit("r1", "POST", "/v1/chat/completions", b"{}", reply=reply)

    await session.on_frame(ResponseStart("r1", 201, {"x": "y"}))
    await session.on_chunk(chunk("r1", b"abc"))
    await session.on_chunk(chunk("r1", b"d" * (CREDIT_BLOCK + 1)))
    await session.on_frame(ResponseEnd("r1", 7, 3))

    received = [layer_messages.message_item(await layer.receive(reply)) for _ in range(4)]
    # The blocks each piece cost travel with it: the other process hands back that much credit.
    assert received == [Started(201, {"x": "y"}), Data(b"abc", 1), Data(b"d" * (CREDIT_BLOCK + 1), 2), Ended(7, 3)]


# --- Inbox ---------------------------------------------------------------------------------------


async def test_an_inbox_merges_waiting_body_pieces_but_not_across_other_items():
    inbox = Inbox()
    for item in (Started(200, {}), Data(b"a"), Data(b"b", blocks=2), Data(b"c"), Ended()):
        inbox.put(item)

    got = [await inbox.get(0) for _ in range(3)]

    assert got == [Started(200, {}), Data(b"abc", blocks=4), Ended()]


async def test_an_inbox_get_returns_none_after_its_timeout_and_wakes_on_put():
    inbox = Inbox()
    assert await inbox.get(0.01) is None

    reader = asyncio.create_task(inbox.get(5))
    await asyncio.sleep(0)
    inbox.put(Data(b"x"))

    assert await reader == Data(b"x")
    assert inbox.waiter is None
