"""Fuzzing the tunnel's server side: whatever a connector sends, the parser answers with a typed frame
or ProtocolError, the session with items in order or ProtocolError, memory stays bounded by the
credit window, and a connector that broke the protocol leaves nothing behind.

Sized to run in about ten seconds on a busy two-core machine. No example database (`database=None`):
a failure prints its example, to be pinned with `@example`.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections import Counter
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from proxy.calls import CallError, Data, Ended, Failed, Started
from proxy.tests.test_consumer import TIMEOUT, Link
from proxy.tunnel import presence, router
from proxy.tunnel.inbox import Inbox
from proxy.tunnel.presence import ConnectorInfo
from proxy.tunnel.router import TunnelCall
from proxy.tunnel.session import LOCAL, ConnectorSession
from tokios_connector import protocol
from tokios_connector.protocol import (
    Cancel,
    Credit,
    Draining,
    Pong,
    ProtocolError,
    Request,
    ResponseEnd,
    ResponseError,
    ResponseStart,
    chunk_prefix,
    decode_chunk,
    decode_from_connector,
    decode_from_server,
    encode,
)

WINDOW = 4
PENDING = ("r0", "r1", "r2")  # submitted, each with an inbox
CANCELLED = "r3"  # submitted, then cancelled before any frame arrives
UNKNOWN = ("zz", "r" * 64)  # valid ids the server never sent
ID_POOL = (*PENDING, CANCELLED, *UNKNOWN)

CONNECTOR_TYPES = ["hello", "response.start", "response.end", "response.error", "pong", "draining"]
SERVER_TYPES = ["welcome", "request", "request.body", "cancel", "credit", "ping"]
ODD_TYPES = ["", "RESPONSE.START", "response.start ", "response", "x" * 100]


def fuzz(examples: int, *suppress: HealthCheck) -> settings:
    return settings(
        max_examples=examples, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, *suppress]
    )


# --- strategies ----------------------------------------------------------------------------------

huge_ints = st.sampled_from([2**31, 2**53 + 1, 2**63, 2**64, 2**70, 10**30, 10**400, -(10**400)])
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    huge_ints,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
ids = st.sampled_from(ID_POOL)


def maybe(valid: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(valid, valid, junk)


frame_objects = st.fixed_dictionaries(
    {"type": st.sampled_from(CONNECTOR_TYPES + SERVER_TYPES + ODD_TYPES) | junk},
    optional={
        "id": maybe(ids),
        "status": maybe(st.integers(100, 599)),
        "headers": maybe(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)),
        "timing": maybe(
            st.fixed_dictionaries({}, optional={"upstream_ms": maybe(st.integers(0, 10**6)), "ttfb_ms": junk})
        ),
        "code": maybe(st.sampled_from(sorted(protocol.ERROR_CODES))),
        "message": junk,
        "t": maybe(st.floats(0, 2e9)),
        "protocol": maybe(st.just(2)),
        "version": junk,
        "upstream": junk,
        "model": junk,
        "max_concurrency": maybe(st.integers(1, 64)),
        "method": maybe(st.just("POST")),
        "path": maybe(st.just("/v1/chat/completions")),
        "body": junk,
        "body_parts": maybe(st.integers(0, 5)),
        "data": junk,
        "blocks": maybe(st.integers(1, 8)),
        "frames": junk,  # the field's name before credit was counted in blocks
        "deployment": junk,
        "connector_id": junk,
        "heartbeat_interval": maybe(st.floats(1, 60)),
        "heartbeat_timeout": maybe(st.floats(1, 60)),
        "window": maybe(st.integers(1, protocol.MAX_WINDOW)),
    },
)

junk_text = st.one_of(
    frame_objects.map(json.dumps),  # stdlib JSON: writes huge ints and NaN/Infinity as they are
    junk.map(json.dumps),  # valid JSON that is not an object
    st.text(max_size=40),  # anything at all
    st.sampled_from(['{"type": "pong"', "[" * 2000 + "]" * 2000, '{"type": "pong", "t": 1e999}', "\ufeff{}", "null"]),
)

wellformed_text = st.one_of(
    st.builds(
        lambda rid, status: encode(ResponseStart(rid, status, {"content-type": "text/plain"})),
        ids,
        st.integers(100, 599),
    ),
    st.builds(lambda rid: encode(ResponseEnd(rid, 3, 1)), ids),
    st.builds(
        lambda rid, code: encode(ResponseError(rid, code, "why")), ids, st.sampled_from(sorted(protocol.ERROR_CODES))
    ),
    st.just(encode(Pong(1.0))),
    st.just(encode(Draining())),
)

# Sizes on either side of a credit block: 1, 1, 1, 2 and 4 blocks.
CHUNK_SIZES = [0, 1, 100, protocol.CREDIT_BLOCK, protocol.CREDIT_BLOCK + 1, protocol.MAX_CHUNK_PAYLOAD]
wellformed_chunk = st.builds(lambda rid, size: chunk_prefix(rid) + b"x" * size, ids, st.sampled_from(CHUNK_SIZES))
junk_binary = st.one_of(
    st.binary(max_size=80),
    st.builds(
        lambda length, rest: bytes([length]) + rest, st.integers(0, 255), st.binary(max_size=70)
    ),  # any id length
    st.builds(
        lambda rid, payload: bytes([len(rid)]) + rid + payload,
        st.binary(min_size=1, max_size=64),
        st.binary(max_size=8),
    ),
    st.builds(lambda rid: chunk_prefix(rid) + b"x" * (protocol.MAX_CHUNK_PAYLOAD + 1), ids),
)


# Frames out of nowhere: many break the protocol, some are stray frames for other requests.
noise = st.one_of(
    wellformed_text.map(lambda raw: ("text", raw)),
    wellformed_chunk.map(lambda raw: ("binary", raw)),
    junk_text.map(lambda raw: ("text", raw)),
    junk_binary.map(lambda raw: ("binary", raw)),
)
# Each pending request's own response, as a connector would send it: start, some chunks of 1 or 2
# credit blocks each (more than the window sometimes), then end, error or nothing yet. "next" sends
# the next frame of one of them, so responses interleave as they do on a busy connector.
flows = st.fixed_dictionaries(
    {
        rid: st.tuples(st.integers(0, WINDOW + 2), st.sampled_from(["end", "error", "open"]), st.sampled_from([1, 2]))
        for rid in PENDING
    }
)
next_frame = st.tuples(st.just("next"), st.sampled_from(PENDING))


def script(responses: dict[str, tuple[int, str, int]], steps: list[tuple]) -> list[tuple]:
    """The steps with each "next" replaced by the frame it stands for."""
    sent: Counter[str] = Counter()
    out = []
    for step in steps:
        if step[0] != "next":
            out.append(step)
            continue
        rid = step[1]
        chunks, ending, blocks = responses[rid]
        index = sent[rid]
        sent[rid] += 1
        if index == 0:
            out.append(("text", encode(ResponseStart(rid, 200, {"content-type": "text/event-stream"}))))
        elif index <= chunks:
            out.append(("binary", chunk_prefix(rid) + b"%d;" % index + b"x" * (blocks - 1) * protocol.CREDIT_BLOCK))
        elif index == chunks + 1 and ending == "end":
            out.append(("text", encode(ResponseEnd(rid, 3, 1))))
        elif index == chunks + 1 and ending == "error":
            out.append(("text", encode(ResponseError(rid, "upstream_error", "died"))))
    return out


@st.composite
def connector_runs(draw, *, readers: bool) -> list[tuple]:
    """What a connector sends (and, with `readers`, what the requests' readers do meanwhile: hand
    credit back, cancel). Every response is sent in full, interleaved with the others, unless the
    run is cut short; half the runs have noise in them, and any may send beyond the window."""
    responses = draw(flows)
    steps = draw(st.permutations([("next", rid) for rid, (chunks, *_) in responses.items() for _ in range(chunks + 2)]))
    steps = steps[: draw(st.one_of(st.just(len(steps)), st.integers(0, len(steps))))]
    extras = []
    if readers:
        extras += [st.tuples(st.just("grant"), ids, st.integers(-2, 6))] * 3 + [st.tuples(st.just("cancel"), ids)]
    if draw(st.booleans()):
        extras += [noise]
    if extras:
        for position, extra in draw(st.lists(st.tuples(st.integers(0, len(steps)), st.one_of(*extras)), max_size=10)):
            steps.insert(position, extra)
    return script(responses, steps)


# --- the parsers ---------------------------------------------------------------------------------


@contextmanager
def json_backend(name: str):
    """The connector runs without orjson too (`pip install tokios-connector` needs only httpx and
    websockets): the protocol module then parses with the standard library."""
    saved = protocol.loads, protocol.JSONDecodeError
    if name == "json":
        protocol.loads, protocol.JSONDecodeError = json.loads, json.JSONDecodeError
    try:
        yield
    finally:
        protocol.loads, protocol.JSONDecodeError = saved


def assert_bounded(frame: object) -> None:
    """A frame the parser let through holds only what the protocol allows."""
    rid = getattr(frame, "id", None)
    if rid is not None:
        assert protocol.valid_request_id(rid)
    match frame:
        case ResponseStart(status=status, headers=headers):
            assert 100 <= status <= 599 and len(headers) <= protocol.MAX_HEADERS
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
        case ResponseEnd(upstream_ms=upstream_ms, ttfb_ms=ttfb_ms):
            assert 0 <= upstream_ms <= protocol.MAX_MS and 0 <= ttfb_ms <= protocol.MAX_MS
        case ResponseError(code=code, message=message):
            assert code in protocol.ERROR_CODES and len(message) <= protocol.MAX_TEXT
        case protocol.Hello(protocol=version, max_concurrency=concurrency):
            assert isinstance(version, int) and 1 <= concurrency <= protocol.MAX_CONCURRENCY
        case Pong(t=t) | protocol.Ping(t=t):
            assert t is None or (isinstance(t, float) and math.isfinite(t))
        case Credit(blocks=blocks):
            assert 1 <= blocks <= protocol.MAX_CREDIT
        case protocol.Welcome(window=window, heartbeat_interval=interval):
            assert 1 <= window <= protocol.MAX_WINDOW and math.isfinite(interval)
        case Request(body_parts=parts, body=body):
            assert 0 <= parts <= protocol.MAX_BODY_PARTS and not (parts and body is not None)


@pytest.mark.parametrize("backend", ["orjson", "json"])
@fuzz(150)
@given(raw=junk_text | wellformed_text | st.binary(max_size=40))
@example(raw='{"type": "pong", "t": 1' + "0" * 400 + "}")
def test_decode_from_connector_returns_a_frame_or_raises_protocol_error(backend, raw):
    with json_backend(backend):
        try:
            frame = decode_from_connector(raw)
        except ProtocolError:
            return
        assert isinstance(frame, protocol.ConnectorFrame)
        assert_bounded(frame)
        assert decode_from_connector(encode(frame)) == frame


@pytest.mark.parametrize("backend", ["orjson", "json"])
@fuzz(150)
@given(raw=junk_text | st.binary(max_size=40))
@example(raw='{"type": "ping", "t": 1' + "0" * 400 + "}")
@example(raw='{"type": "welcome", "heartbeat_interval": 1' + "0" * 400 + ', "heartbeat_timeout": 5}')
def test_decode_from_server_returns_a_frame_or_raises_protocol_error(backend, raw):
    with json_backend(backend):
        try:
            frame = decode_from_server(raw)
        except ProtocolError:
            return
        assert isinstance(frame, protocol.ServerFrame)
        assert_bounded(frame)
        assert decode_from_server(encode(frame)) == frame


def test_a_bad_timing_is_reported_as_such_whatever_type_the_connector_wrote_into_it():
    raw = json.dumps({"type": "response.end", "id": "r0", "timing": {"type": "x" * 5000, "upstream_ms": "soon"}})

    with pytest.raises(ProtocolError) as caught:
        decode_from_connector(raw)

    assert caught.value.message.startswith("response.end.timing.upstream_ms must be an integer")
    assert caught.value.request_id == "r0"


@fuzz(200)
@given(raw=junk_binary | wellformed_chunk)
def test_decode_chunk_returns_a_chunk_or_raises_protocol_error(raw):
    try:
        chunk = decode_chunk(raw)
    except ProtocolError:
        return
    assert protocol.valid_request_id(chunk.id) and len(chunk.payload) <= protocol.MAX_CHUNK_PAYLOAD
    assert chunk_prefix(chunk.id) + chunk.payload == raw


# --- one session ---------------------------------------------------------------------------------


def assert_in_order(items: list) -> None:
    """Started, Data..., then Ended or Failed; or Failed alone; nothing after the end."""
    kinds = "".join({Started: "S", Data: "D", Ended: "E", Failed: "F"}[type(item)] for item in items)
    assert re.fullmatch(r"(SD*[EF]?|F)?", kinds), kinds


def is_terminal(items: list) -> bool:
    return bool(items) and isinstance(items[-1], Ended | Failed)


class Fuzzed:
    """A session holding a few requests, and what the test knows it should hold."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        now = time.time()
        info = ConnectorInfo("specific.fuzz!1", 1, 1, "conn_fuzz", "fuzz", "127.0.0.1:1", now, now)
        self.session = ConnectorSession(info=info, send_text=self._send_text, layer=None, window=WINDOW)
        self.inboxes = {rid: Inbox() for rid in (*PENDING, CANCELLED)}
        self.granted: Counter[str] = Counter()
        self.cancelled: dict[str, int] = {}  # request id → items it had when it was cancelled
        self.credit_sent: Counter[str] = Counter()
        self.cancels_sent = 0

    async def _send_text(self, text: str) -> None:
        self.texts.append(text)

    async def start(self) -> None:
        for rid, inbox in self.inboxes.items():
            await self.session.submit(rid, "POST", "/v1/chat/completions", b"{}", inbox=inbox)
        await self.cancel(CANCELLED)

    async def cancel(self, rid: str) -> None:
        if rid in self.session.pending:
            self.cancelled[rid] = len(self.inboxes[rid].items)
            self.cancels_sent += 1
        await self.session.cancel(rid)

    async def grant(self, rid: str, blocks: int) -> None:
        if rid in self.session.pending and blocks > 0:
            self.granted[rid] += blocks
            self.credit_sent[rid] += blocks
        await self.session.grant(rid, blocks)

    def check(self) -> None:
        session = self.session
        assert set(session.pending) <= set(PENDING)
        assert session.info.inflight == len(session.pending)
        for rid, inbox in self.inboxes.items():
            items = list(inbox.items)
            assert_in_order(items)
            entry = session.pending.get(rid)
            if rid in self.cancelled:
                assert entry is None and len(items) == self.cancelled[rid]  # nothing after a cancel
            elif entry is not None:
                assert not is_terminal(items)
                pieces = [item for item in items if isinstance(item, Data)]
                assert all(item.blocks == protocol.credit_cost(len(item.data)) for item in pieces)
                held = sum(item.blocks for item in pieces)
                assert held == entry.received <= entry.allowed == WINDOW + self.granted[rid]
                assert sum(len(item.data) for item in pieces) <= held * protocol.CREDIT_BLOCK
                assert entry.started == bool(items)
            else:
                assert is_terminal(items)

    def check_sent(self) -> None:
        """Only well-formed frames went to the connector: the requests, their credit, the cancels."""
        frames = [decode_from_server(text) for text in self.texts]
        assert [f.id for f in frames if isinstance(f, Request)] == [*PENDING, CANCELLED]
        assert sum(isinstance(f, Cancel) for f in frames) == self.cancels_sent
        credit: Counter[str] = Counter()
        for frame in frames:
            if isinstance(frame, Credit):
                credit[frame.id] += frame.blocks
        assert credit == self.credit_sent


@pytest.mark.asyncio
@fuzz(200)
@given(steps=connector_runs(readers=True))
async def test_a_session_survives_any_sequence_of_frames_and_keeps_its_bounds(steps):
    fuzzed = Fuzzed()
    await fuzzed.start()
    session = fuzzed.session
    broken = False
    for step in steps:
        try:
            match step:
                case ("text", raw):
                    await session.on_frame(decode_from_connector(raw))
                case ("binary", raw):
                    await session.on_chunk(raw)
                case ("grant", rid, blocks):
                    await fuzzed.grant(rid, blocks)
                case ("cancel", rid):
                    await fuzzed.cancel(rid)
        except ProtocolError as exc:  # anything else fails the test
            await session.fail_all("connector_protocol_error", exc.message)  # as the consumer does
            broken = True
        fuzzed.check()
        if broken:
            break

    fuzzed.check_sent()
    event("broke the protocol" if broken else "kept to the protocol")
    event(f"requests ended by the connector: {sum(is_terminal(list(i.items)) for i in fuzzed.inboxes.values())}")
    event(
        f"body frames delivered: {min(8, sum(isinstance(x, Data) for i in fuzzed.inboxes.values() for x in i.items))}"
    )
    delivered = [x for inbox in fuzzed.inboxes.values() for x in inbox.items if isinstance(x, Data)]
    event(f"a frame of several blocks delivered: {any(x.blocks > 1 for x in delivered)}")
    if broken:
        assert session.pending == {} and session.closed
    await session.fail_all("connector_disconnected", "the connector disconnected")
    fuzzed.check()
    assert session.pending == {} and session.info.inflight == 0
    for rid, inbox in fuzzed.inboxes.items():
        assert is_terminal(list(inbox.items)) or rid in fuzzed.cancelled


# --- the consumer ------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
# The connector token (`consumer_db`) and the settings are made once for the test and serve every example.
@fuzz(40, HealthCheck.function_scoped_fixture)
@given(steps=connector_runs(readers=False))
async def test_the_consumer_survives_any_frames_and_leaves_nothing_behind(consumer_db, settings, steps):
    settings.TUNNEL_WINDOW = WINDOW  # the flows send up to two blocks beyond it
    credentials = consumer_db
    link = Link(credentials.secret)
    await link.open()
    try:
        window = (await link.hello()).window
        calls = [
            TunnelCall(deployment_id=credentials.deployment_id, request_id=rid, method="POST", path="/", body=b"{}")
            for rid in (*PENDING, "sentinel")
        ]
        starts = [asyncio.create_task(call.start(TIMEOUT)) for call in calls]
        for _ in calls:
            assert isinstance(await link.frame(), Request)

        for _, frame in steps:
            await link.send(frame)
        # The consumer handles frames in order: once the sentinel's error is through (or the
        # connector was closed and every request failed), so is everything sent before it.
        await link.send_frame(ResponseError("sentinel", "upstream_error", "end of the fuzz"))
        with pytest.raises(CallError):
            await starts[-1]

        broken = link.session not in LOCAL.values()
        event("closed with 4002" if broken else "still connected")
        if broken:  # 4002: every request failed at once, and the connector is gone
            assert (await link.closed())[0] == protocol.CLOSE_PROTOCOL_ERROR
            await asyncio.wait_for(asyncio.gather(*starts, return_exceptions=True), 1)
            assert presence.local_connectors(credentials.deployment_id) == []
        else:  # nobody read, so no credit went back, and nothing was cancelled
            assert link.ws.output_queue.empty()
        for call, start in zip(calls, starts, strict=True):
            if not start.done():
                assert call.request_id in link.session.pending and not call.inbox.items
            elif start.exception() is None:  # started: what it holds is bounded by the window
                items = list(call.inbox.items)
                pieces = [item for item in items if isinstance(item, Data)]
                assert sum(item.blocks for item in pieces) <= window
                assert sum(len(item.data) for item in pieces) <= window * protocol.CREDIT_BLOCK
                assert is_terminal(items) or not broken
    finally:
        await link.disconnect()

    for call, start in zip(calls, starts, strict=True):  # whatever was left ends with the connector
        try:
            await asyncio.wait_for(start, 1)
        except CallError:
            assert call.finished
            continue
        while not call.finished:
            assert await call.next_item(1) is not None
    assert LOCAL == {} and presence._local == {} and router._dispatched == {}
    assert presence.local_connectors(credentials.deployment_id) == []
