"""TunnelCall against connectors held by this process: the session is driven by hand as its
connector would (no socket, no consumer), and what the session sends is collected in a list."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
import pytest_asyncio

from proxy.calls import CallError, Data, Ended, Failed, Started
from proxy.tunnel import presence, router
from proxy.tunnel.inbox import Inbox
from proxy.tunnel.presence import ConnectorInfo
from proxy.tunnel.router import TunnelCall
from proxy.tunnel.session import LOCAL, ConnectorSession
from tokios_connector import protocol
from tokios_connector.protocol import (
    CREDIT_BLOCK,
    MAX_CHUNK_PAYLOAD,
    Cancel,
    Credit,
    Request,
    ResponseEnd,
    ResponseError,
    ResponseStart,
    chunk_prefix,
)

pytestmark = pytest.mark.asyncio

DEPLOYMENT = 990_001  # no database here: an id no real deployment of the test database has


class Connector:
    """A connector held by this process: its session, registered and announced as the consumer
    does after hello, and the frames the server sent it."""

    def __init__(self, name: str, window: int) -> None:
        now = time.time()
        self.texts: list[str] = []
        info = ConnectorInfo(
            channel=f"specific.test!{name}",
            deployment_id=DEPLOYMENT,
            token_id=1,
            connector_id=f"conn_{name}",
            version="test",
            remote="127.0.0.1:1",
            connected_since=now,
            last_heartbeat=now,
            max_concurrency=8,
        )
        self.session = ConnectorSession(info=info, send_text=self._send_text, layer=None, window=window)

    async def _send_text(self, text: str) -> None:
        self.texts.append(text)

    @property
    def frames(self) -> list[protocol.ServerFrame]:
        return [protocol.decode_from_server(text) for text in self.texts]

    async def chunks(self, rid: str, count: int, payload: bytes = b"x") -> None:
        for _ in range(count):
            await self.session.on_chunk(chunk_prefix(rid) + payload)


@pytest_asyncio.fixture
async def connect(settings):
    settings.TUNNEL_WINDOW = 4
    connectors: list[Connector] = []

    async def connect(name: str = "a", *, window: int = 4) -> Connector:
        connector = Connector(name, window)
        LOCAL[connector.session.info.channel] = connector.session
        await presence.publish(connector.session.info)
        connectors.append(connector)
        return connector

    yield connect
    for connector in connectors:
        await presence.withdraw(connector.session.info)


def new_call(rid: str = "req_1") -> TunnelCall:
    return TunnelCall(deployment_id=DEPLOYMENT, request_id=rid, method="POST", path="/v1/chat/completions", body=b"{}")


async def until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.001)


async def started_call(connector: Connector, rid: str = "req_1") -> TunnelCall:
    call = new_call(rid)
    start = asyncio.create_task(call.start(5))
    await until(lambda: rid in connector.session.pending)
    await connector.session.on_frame(ResponseStart(rid, 200, {"content-type": "text/event-stream"}))
    assert await start == Started(200, {"content-type": "text/event-stream"})
    return call


async def test_a_call_streams_started_data_ended_and_hands_credit_back_after_half_the_window(connect):
    connector = await connect()
    call = await started_call(connector)
    assert connector.frames[0] == Request(
        "req_1", "POST", "/v1/chat/completions", {"content-type": "application/json", "x-request-id": "req_1"}, "{}"
    )

    # Blocks count as consumed when the reader asks for the next item (it has written them by then).
    await connector.chunks("req_1", 1)
    assert await call.next_item(5) == Data(b"x")
    await connector.chunks("req_1", 1)
    assert await call.next_item(5) == Data(b"x")
    assert len(connector.texts) == 1  # 1 of 4 blocks consumed: no credit yet

    await connector.chunks("req_1", 2)  # the window is used up
    assert await call.next_item(5) == Data(b"xx", blocks=2)
    assert connector.frames[-1] == Credit("req_1", 2)

    await connector.chunks("req_1", 2)  # what was handed back
    assert await call.next_item(5) == Data(b"xx", blocks=2)
    assert connector.frames[-1] == Credit("req_1", 2)

    await connector.session.on_frame(ResponseEnd("req_1", 9, 4))
    assert await call.next_item(5) == Ended(9, 4)
    assert call.finished
    assert connector.session.pending == {} and router._dispatched == {}


async def test_credit_goes_back_in_blocks_not_frames(connect):
    connector = await connect(window=8)
    call = await started_call(connector)
    full = b"x" * MAX_CHUNK_PAYLOAD

    await connector.chunks("req_1", 1, full)  # one frame, 4 blocks: half the window
    assert await call.next_item(5) == Data(full, blocks=4)
    assert len(connector.texts) == 1  # nothing consumed until the reader asks again
    await connector.chunks("req_1", 1, b"x" * (CREDIT_BLOCK + 1))  # one frame, 2 blocks
    assert await call.next_item(5) == Data(b"x" * (CREDIT_BLOCK + 1), blocks=2)
    assert connector.frames[-1] == Credit("req_1", 4)  # the 16 KiB frame's blocks, not 1 frame

    await connector.chunks("req_1", 1, full)  # 2 + 4 unconsumed blocks: within the 12 granted in all
    assert await call.next_item(5) == Data(full, blocks=4)
    assert len(connector.texts) == 2  # only the 2 blocks consumed since the credit: under half
    assert await call.next_item(0.05) is None  # consumes the 16 KiB frame too
    assert connector.frames[-1] == Credit("req_1", 6)
    await call.cancel()


async def test_a_call_with_no_live_connector_is_503_connector_offline(connect):
    with pytest.raises(CallError) as caught:
        await new_call().start(1)

    assert (caught.value.status, caught.value.code) == (503, "connector_offline")


async def test_a_draining_connector_gets_no_new_requests(connect):
    connector = await connect()
    await connector.session.on_frame(protocol.Draining())

    with pytest.raises(CallError) as caught:
        await new_call().start(1)

    assert caught.value.code == "connector_offline"
    assert connector.texts == []


async def test_the_least_loaded_connector_gets_the_request(connect):
    busy, idle = await connect("busy"), await connect("idle")
    for rid in ("x1", "x2"):
        await busy.session.submit(rid, "POST", "/v1/chat/completions", b"{}", inbox=Inbox())

    call = await started_call(idle)

    assert "req_1" not in busy.session.pending
    await call.cancel()
    assert idle.frames[-1] == Cancel("req_1")
    assert router._dispatched == {}


@pytest.mark.parametrize(
    ("code", "status", "expected_code"),
    [
        ("overloaded", 503, "overloaded"),
        ("upstream_timeout", 504, "upstream_timeout"),
        ("upstream_unreachable", 502, "upstream_unreachable"),
        ("some_future_code", 502, "upstream_error"),  # codes the protocol does not know
    ],
)
async def test_a_response_error_before_the_response_starts_is_a_call_error(connect, code, status, expected_code):
    connector = await connect()
    call = new_call()
    start = asyncio.create_task(call.start(5))
    await until(lambda: "req_1" in connector.session.pending)

    await connector.session.on_frame(
        protocol.decode_from_connector(protocol.encode(ResponseError("req_1", code, "why")))
    )

    with pytest.raises(CallError) as caught:
        await start
    assert (caught.value.status, caught.value.code) == (status, expected_code)
    assert "why" in caught.value.message
    assert call.finished and router._dispatched == {}


async def test_a_connector_failing_everything_before_the_response_starts_is_a_502(connect):
    connector = await connect()
    call = new_call()
    start = asyncio.create_task(call.start(5))
    await until(lambda: "req_1" in connector.session.pending)

    await connector.session.fail_all("connector_protocol_error", "bad frame")

    with pytest.raises(CallError) as caught:
        await start
    assert (caught.value.status, caught.value.code) == (502, "connector_protocol_error")
    assert call.finished and router._dispatched == {}


async def test_a_start_that_times_out_is_504_and_cancels_the_request(connect):
    connector = await connect()

    with pytest.raises(CallError) as caught:
        await new_call().start(0.05)

    assert (caught.value.status, caught.value.code) == (504, "upstream_timeout")
    assert connector.frames[-1] == Cancel("req_1")
    assert connector.session.pending == {} and router._dispatched == {}


async def test_next_item_returns_none_after_its_timeout_and_the_call_goes_on(connect):
    connector = await connect()
    call = await started_call(connector)

    assert await call.next_item(0.02) is None

    assert not call.finished and "req_1" in connector.session.pending


async def test_a_failure_mid_stream_comes_in_band_and_finishes_the_call(connect):
    connector = await connect()
    call = await started_call(connector)
    await connector.chunks("req_1", 1)
    await connector.session.on_frame(ResponseError("req_1", "upstream_error", "died"))

    assert await call.next_item(5) == Data(b"x")
    assert await call.next_item(5) == Failed("upstream_error", "died")
    assert call.finished and router._dispatched == {}


async def test_cancel_mid_stream_sends_one_cancel_and_late_frames_are_dropped(connect):
    connector = await connect()
    call = await started_call(connector)

    await call.cancel()
    await call.cancel()
    await connector.chunks("req_1", 2)
    await connector.session.on_frame(ResponseEnd("req_1"))

    assert [f for f in connector.frames if isinstance(f, Cancel)] == [Cancel("req_1")]
    assert call.finished and connector.session.pending == {} and router._dispatched == {}


async def test_cancel_after_the_end_sends_nothing(connect):
    connector = await connect()
    call = await started_call(connector)
    await connector.session.on_frame(ResponseEnd("req_1"))
    assert await call.next_item(5) == Ended()

    await call.cancel()

    assert not any(isinstance(f, Cancel) for f in connector.frames)
