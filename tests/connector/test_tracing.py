"""Trace context across the tunnel: the `traceparent` of the `request` frame (protocol.py), and the
connector's span of its call to the model server (tokios_connector/tracing.py).

The frame field round-trips, and whatever else a server puts in it is ignored (never a refused
request). Against the real server in this process (tests/connector/server.py) with the fake upstream
process (a TEST DOUBLE), the connector's CLIENT span is the child of the server's dispatch span, in
the same trace, and the model server is handed the connector's span as its parent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from proxy import tracing as server_tracing
from tests.connector.conftest import Upstream
from tests.connector.server import Tokios
from tokios_connector import tracing
from tokios_connector.config import Config
from tokios_connector.connector import Connector
from tokios_connector.protocol import Request, decode_from_server, encode

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


# --- the frame field --------------------------------------------------------------------------------


def test_a_request_frame_carries_its_traceparent_both_ways():
    frame = Request("req_1", "POST", "/chat/completions", {}, "{}", 0, TRACEPARENT)

    assert decode_from_server(encode(frame)) == frame


def test_a_request_without_tracing_sends_no_field_and_reads_as_none():
    """An older server sends none; an older connector would ignore one it does not know."""
    text = encode(Request("req_1", "POST", "/chat/completions", {}, "{}"))

    assert "traceparent" not in json.loads(text)
    assert decode_from_server(text).traceparent is None


@pytest.mark.parametrize(
    "value",
    [
        None,
        123,
        ["00"],
        {"traceparent": TRACEPARENT},
        True,
        "",
        "garbage",
        TRACEPARENT.upper(),
        TRACEPARENT + "\n",
        " " + TRACEPARENT,
        TRACEPARENT + "-extra",
        "01" + TRACEPARENT[2:],  # a later version: this connector reads version 00 only
        "ff" + TRACEPARENT[2:],
        "00-" + "0" * 32 + TRACEPARENT[35:],  # all-zero trace id
        TRACEPARENT[:36] + "0" * 16 + "-01",  # all-zero parent id
        "00-" + "\u0661" * 32 + TRACEPARENT[35:],  # digits, but not ASCII hex
        "x" * 3_000_000,  # within the frame size, far beyond a traceparent
    ],
)
def test_a_malformed_traceparent_is_ignored_and_the_request_still_reads(value):
    raw = json.dumps({"type": "request", "id": "req_1", "method": "POST", "path": "/chat/completions", "body": "{}"})
    raw = raw[:-1] + ', "traceparent": ' + json.dumps(value) + "}"

    frame = decode_from_server(raw)

    assert isinstance(frame, Request) and frame.id == "req_1" and frame.body == "{}"
    assert frame.traceparent is None


# --- configuration ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"TOKIOS_TRACING": "otlp"}, True),
        ({"TOKIOS_TRACING": "off", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
    ],
)
def test_tracing_is_on_only_when_an_endpoint_or_otlp_is_configured(env, on):
    assert tracing.wanted(env) is on


def test_an_unknown_tracing_mode_is_refused_by_name():
    with pytest.raises(ValueError, match="TOKIOS_TRACING must be otlp, off or empty"):
        tracing.wanted({"TOKIOS_TRACING": "jaeger"})


def test_without_opentelemetry_installed_the_connector_runs_untraced_with_a_warning(monkeypatch):
    monkeypatch.setattr(tracing, "AVAILABLE", False)

    traces, warning = tracing.setup({"TOKIOS_TRACING": "otlp"})

    assert traces is None
    assert warning is not None and "tokios-connector[tracing]" in warning


def test_the_service_name_defaults_to_the_connectors_and_follows_otel_service_name(monkeypatch):
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert tracing.resource().attributes["service.name"] == "tokios-connector"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gpu-box-7")
    assert tracing.resource().attributes["service.name"] == "gpu-box-7"


# --- one trace across the tunnel ----------------------------------------------------------------------


@pytest.fixture
def server_spans() -> Iterator[InMemorySpanExporter]:
    found = InMemorySpanExporter()
    server_tracing.install(server_tracing.processor_for_tests(SimpleSpanProcessor(found)))
    yield found
    server_tracing.shutdown()


@pytest.mark.asyncio
@pytest.mark.timeout(60)
@pytest.mark.django_db(transaction=True)
async def test_the_connectors_span_joins_the_servers_trace_under_its_dispatch_span(
    tokios: Tokios, upstream: Upstream, deployment, connector_token, key, server_spans
):
    connector_spans = InMemorySpanExporter()
    traces = tracing.ConnectorTracing(tracing.provider_for_tests(SimpleSpanProcessor(connector_spans)))
    config = Config(server_url=tokios.ws_url, token=connector_token.secret, upstream=upstream.base)
    connector = Connector(config, traces)
    running = asyncio.create_task(connector.run(handle_signals=False))
    try:
        await tokios.wait_online(deployment.id)
        async with httpx.AsyncClient(base_url=tokios.url, timeout=30) as http:
            body = {"model": deployment.name, "messages": [{"role": "user", "content": "hello"}]}
            response = await http.post(
                "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key.secret}"}
            )
        assert response.status_code == 200, response.text
    finally:
        connector.request_stop("test")
        connector.request_stop("test")
        await asyncio.wait_for(running, 10)

    [upstream_span] = connector_spans.get_finished_spans()
    dispatch = next(span for span in server_spans.get_finished_spans() if span.name == "tunnel dispatch")
    root = next(span for span in server_spans.get_finished_spans() if span.kind == SpanKind.SERVER)
    assert upstream_span.name == "upstream POST /chat/completions"
    assert upstream_span.kind == SpanKind.CLIENT
    assert upstream_span.context.trace_id == root.context.trace_id == dispatch.context.trace_id
    assert upstream_span.parent is not None and upstream_span.parent.span_id == dispatch.context.span_id
    assert upstream_span.attributes["http.response.status_code"] == 200
    assert upstream_span.attributes["tokios.request_id"] == response.headers["x-request-id"]
    assert upstream_span.attributes["url.path"] == "/v1/chat/completions"
    assert upstream_span.attributes["tokios.upstream_ttfb_ms"] >= 0
    assert upstream_span.status.status_code == StatusCode.UNSET
    assert "hello" not in json.dumps(dict(upstream_span.attributes))  # no prompt on the span
    # The model server is told the connector's span is its parent.
    context = upstream_span.context
    sent = upstream.stats()["last_headers"]
    assert sent["traceparent"] == f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


@pytest.mark.asyncio
@pytest.mark.timeout(60)
@pytest.mark.django_db(transaction=True)
async def test_an_untraced_connector_sends_the_model_server_no_trace_context(
    tokios: Tokios, upstream: Upstream, deployment, connector_token, key, server_spans
):
    config = Config(server_url=tokios.ws_url, token=connector_token.secret, upstream=upstream.base)
    connector = Connector(config)
    running = asyncio.create_task(connector.run(handle_signals=False))
    try:
        await tokios.wait_online(deployment.id)
        async with httpx.AsyncClient(base_url=tokios.url, timeout=30) as http:
            body = {"model": deployment.name, "messages": [{"role": "user", "content": "hello"}]}
            response = await http.post(
                "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key.secret}"}
            )
        assert response.status_code == 200, response.text
    finally:
        connector.request_stop("test")
        connector.request_stop("test")
        await asyncio.wait_for(running, 10)

    assert "traceparent" not in upstream.stats()["last_headers"]
    assert any(span.name == "tunnel dispatch" for span in server_spans.get_finished_spans())
