"""Pure functions of the connector: URL rules, frames, credit, header and body shaping."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tokios_connector.config import public_url, upstream_base, websocket_url
from tokios_connector.connector import BACKOFF_CAP, MAX_HEARTBEAT_TIMEOUT, backoff_delay, heartbeat_timeout
from tokios_connector.protocol import (
    CREDIT_BLOCK,
    DEFAULT_WINDOW,
    MAX_FRAME_SIZE,
    MAX_WINDOW,
    Credit,
    ProtocolError,
    Request,
    Welcome,
    credit_cost,
    decode_from_connector,
    decode_from_server,
    encode,
    loads,
    valid_request_id,
)
from tokios_connector.session import Stream
from tokios_connector.transport import LeanTransport, make_transport
from tokios_connector.upstream import build_routes, request_headers, response_headers, rewrite_model


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ("https://tokios.example", "wss://tokios.example/v1/connector"),
        ("http://127.0.0.1:8000/", "ws://127.0.0.1:8000/v1/connector"),
        ("https://example.com/tokios", "wss://example.com/tokios/v1/connector"),
        ("https://tokios.example/v1/connector", "wss://tokios.example/v1/connector"),
        ("wss://tokios.example/custom/path", "wss://tokios.example/custom/path"),
    ],
)
def test_websocket_url_is_derived_from_server(server: str, expected: str) -> None:
    assert websocket_url(server) == expected


@pytest.mark.parametrize("server", ["tokios.example", "ftp://tokios.example", "https://", "ws://"])
def test_websocket_url_rejects_what_it_cannot_dial(server: str) -> None:
    with pytest.raises(ValueError):
        websocket_url(server)


def test_upstream_base_and_public_url() -> None:
    assert upstream_base("http://127.0.0.1:8080/v1/") == "http://127.0.0.1:8080/v1"
    with pytest.raises(ValueError):
        upstream_base("127.0.0.1:8080")
    with pytest.raises(ValueError):
        upstream_base("http://h/v1?key=1")
    assert public_url("http://user:secret@h:1/v1") == "http://h:1/v1"


def test_routes_send_llama_cpp_extensions_to_the_origin() -> None:
    routes = build_routes("http://h:8080/v1")
    assert str(routes["/chat/completions"].url) == "http://h:8080/v1/chat/completions"
    assert str(routes["/tokenize"].url) == "http://h:8080/tokenize"
    assert str(routes["/apply-template"].url) == "http://h:8080/apply-template"
    assert routes["/models"].method == "GET"


def test_routes_forward_the_native_surfaces_under_the_base_with_the_model_rewritten() -> None:
    routes = build_routes("http://h:8080/v1")
    for path in ("/messages", "/messages/count_tokens", "/responses"):
        assert str(routes[path].url) == f"http://h:8080/v1{path}"
        assert (routes[path].method, routes[path].rewrite_model) == ("POST", True)
    assert routes["/messages"].headers == (("anthropic-version", "2023-06-01"),)
    assert routes["/responses"].headers == routes["/chat/completions"].headers == ()


def test_request_ids_must_fit_the_frame_header() -> None:
    assert valid_request_id("a" * 64)
    assert not valid_request_id("a" * 65)
    assert not valid_request_id("")
    assert not valid_request_id("é")
    assert not valid_request_id(12)


def test_a_malformed_request_names_its_id_so_the_connector_can_refuse_it() -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_from_server('{"type":"request","id":"r1","method":"POST","path":"/models","body_parts":-1}')
    assert caught.value.request_id == "r1"
    assert decode_from_server('{"type":"request","id":"r1","method":"GET","path":"/models"}') == Request(
        "r1", "GET", "/models", {}
    )


def test_a_welcome_without_protocol_is_version_1_with_the_default_window() -> None:
    welcome = decode_from_server(
        '{"type":"welcome","deployment":"d","connector_id":"c","heartbeat_interval":15,"heartbeat_timeout":45}'
    )
    assert isinstance(welcome, Welcome)
    assert (welcome.protocol, welcome.window) == (1, 256)
    assert DEFAULT_WINDOW * CREDIT_BLOCK == 1024 * 1024  # 1 MiB in flight, or 256 frames


@pytest.mark.parametrize("window", [0, MAX_WINDOW + 1])
def test_a_welcome_window_is_1_to_4096_blocks(window: int) -> None:
    fields = {"type": "welcome", "heartbeat_interval": 15, "heartbeat_timeout": 45, "protocol": 2}
    assert decode_from_server(json.dumps({**fields, "window": 4096})).window == MAX_WINDOW == 4096
    with pytest.raises(ProtocolError):
        decode_from_server(json.dumps({**fields, "window": window}))


@pytest.mark.parametrize("blocks", [0, -1, 10**9, 1.5, True, "3"])
def test_credit_must_be_a_bounded_positive_integer(blocks: object) -> None:
    assert decode_from_server('{"type":"credit","id":"r1","blocks":3}') == Credit("r1", 3)
    assert json.loads(encode(Credit("r1", 3))) == {"type": "credit", "id": "r1", "blocks": 3}
    with pytest.raises(ProtocolError):
        decode_from_server(json.dumps({"type": "credit", "id": "r1", "blocks": blocks}))


def test_credit_counted_in_frames_is_not_credit() -> None:
    with pytest.raises(ProtocolError):
        decode_from_server('{"type":"credit","id":"r1","frames":3}')


@pytest.mark.parametrize(
    ("size", "blocks"),
    [(0, 1), (1, 1), (4095, 1), (4096, 1), (4097, 2), (8192, 2), (12289, 4), (16384, 4)],
)
def test_a_chunk_frame_costs_one_credit_block_per_started_4_kib(size: int, blocks: int) -> None:
    assert CREDIT_BLOCK == 4096
    assert credit_cost(size) == blocks


def test_heartbeat_timeout_is_bounded() -> None:
    def welcome(interval: float, timeout: float) -> Welcome:
        return Welcome("d", "c", heartbeat_interval=interval, heartbeat_timeout=timeout)

    assert heartbeat_timeout(welcome(15, 45), 45) == 45
    assert heartbeat_timeout(welcome(1, 0.2), 45) == 2  # at least two ping intervals
    assert heartbeat_timeout(welcome(15, -1), 45) == 45  # nonsense: the default
    assert heartbeat_timeout(welcome(1e300, 1e300), 45) == MAX_HEARTBEAT_TIMEOUT


@pytest.mark.asyncio
async def test_a_stream_waits_for_credit_only_when_it_has_none() -> None:
    stream = Stream(1)
    await asyncio.wait_for(stream.wait_for_credit(), 0.1)  # credit left: returns at once
    stream.credit -= 1

    waiter = asyncio.create_task(stream.wait_for_credit())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    stream.add_credit(2)
    await asyncio.wait_for(waiter, 0.1)
    assert stream.credit == 2

    stream.credit = 0
    waiter = asyncio.create_task(stream.wait_for_credit())
    await asyncio.sleep(0.05)
    waiter.cancel()  # what `cancel` and a lost WebSocket do
    with pytest.raises(asyncio.CancelledError):
        await waiter

    stream.add_credit(10**12)
    assert stream.credit == 1_000_000  # bounded


def test_only_safe_request_headers_are_forwarded() -> None:
    headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream",
        "X-Request-Id": "r",
        "Cookie": "c",
        "Authorization": "Bearer sk",
    }
    assert request_headers(headers, None) == [
        ("content-type", "application/json"),
        ("accept", "text/event-stream"),
        ("x-request-id", "r"),
    ]
    assert ("authorization", "Bearer up") in request_headers({}, "up")
    assert request_headers("nonsense", None) == []


def test_hop_by_hop_response_headers_are_dropped() -> None:
    headers = httpx.Headers(
        [
            ("Content-Type", "text/event-stream"),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "keep-alive, X-Hop"),
            ("X-Hop", "1"),
            ("X-Keep", "2"),
        ]
    )
    assert response_headers(headers) == {"content-type": "text/event-stream", "x-keep": "2"}


def test_rewrite_model_only_touches_json_objects() -> None:
    assert loads(rewrite_model(b'{"model":"a","messages":[]}', "b")) == {"model": "b", "messages": []}
    assert rewrite_model(b"not json", "b") == b"not json"
    assert rewrite_model(b"[1]", "b") == b"[1]"


def test_backoff_has_full_jitter_and_a_cap() -> None:
    first = [backoff_delay(0) for _ in range(200)]
    assert all(0 <= d <= 0.5 for d in first) and max(first) > 0.25
    late = [backoff_delay(20) for _ in range(200)] + [backoff_delay(5000)]  # reconnecting for days
    assert all(0 <= d <= BACKOFF_CAP for d in late) and max(late) > BACKOFF_CAP / 2


def test_https_upstreams_use_the_stock_transport() -> None:
    assert isinstance(make_transport("http://127.0.0.1:8080/v1", max_connections=4), LeanTransport)
    assert isinstance(make_transport("https://model.example/v1", max_connections=4), httpx.AsyncHTTPTransport)


def test_a_control_frame_over_the_size_limit_is_refused_before_it_is_parsed() -> None:
    big = '{"type":"pong","t":1,"pad":"' + "x" * MAX_FRAME_SIZE + '"}'
    with pytest.raises(ProtocolError, match="larger than"):
        decode_from_connector(big)
    assert decode_from_connector('{"type":"pong","t":1,"pad":"x"}').t == 1.0
