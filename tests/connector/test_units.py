"""Pure functions of the connector: URL rules, frame splitting, header and body shaping."""

from __future__ import annotations

import httpx
import pytest

from tokios_connector.config import public_url, upstream_base, websocket_url
from tokios_connector.connector import BACKOFF_CAP, backoff_delay
from tokios_connector.frames import MAX_CHUNK_PAYLOAD, chunk_frames, chunk_prefix, loads, parse_chunk, valid_request_id
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


def test_chunk_frames_split_payloads_over_256_kib() -> None:
    prefix = chunk_prefix("req-1")
    payload = bytes(range(256)) * (600 * 1024 // 256)
    frames = list(chunk_frames(prefix, payload))
    assert [len(parse_chunk(f)[1]) for f in frames] == [
        MAX_CHUNK_PAYLOAD,
        MAX_CHUNK_PAYLOAD,
        600 * 1024 - 2 * MAX_CHUNK_PAYLOAD,
    ]
    assert all(parse_chunk(f)[0] == "req-1" for f in frames)
    assert b"".join(parse_chunk(f)[1] for f in frames) == payload
    assert list(chunk_frames(prefix, b"data: x\n\n")) == [b"\x05req-1data: x\n\n"]


def test_request_ids_must_fit_the_frame_header() -> None:
    assert valid_request_id("a" * 64)
    assert not valid_request_id("a" * 65)
    assert not valid_request_id("")
    assert not valid_request_id("é")
    assert not valid_request_id(12)


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
