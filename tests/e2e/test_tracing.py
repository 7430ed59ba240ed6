"""Traces through real processes: uvicorn serving Tokios, a real connector, the fake upstream (a TEST
DOUBLE for the model server), and an OTLP/HTTP collector in this test (a small HTTP server thread
that decodes what arrives as ExportTraceServiceRequest protobuf).

Both processes export to the collector. N requests make exactly N traces; each holds the server's
spans and the connector's span, the connector's a child of the server's dispatch span. The batch
delay is set far beyond the test's length, so the spans arrive only because each process flushes
its batch when it stops.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from django.conf import settings
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.e2e.conftest import Proc, base_env

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

REQUESTS = 6
SERVER_STEPS = {"auth", "limits", "tunnel dispatch", "upstream first byte", "stream"}
SPAN_KIND_SERVER, SPAN_KIND_CLIENT = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind


@dataclass
class Received:
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    attributes: dict


def _value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class Collector:
    """An OTLP/HTTP trace receiver on 127.0.0.1 (POST /v1/traces, protobuf)."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.posts = 0
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                ok = self.path == "/v1/traces" and self.headers.get("content-type") == "application/x-protobuf"
                if ok:
                    collector.receive(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if ok else 404)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def receive(self, request: ExportTraceServiceRequest) -> None:
        found = []
        for resource_spans in request.resource_spans:
            resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(
                        Received(
                            service=str(resource.get("service.name")),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            name=span.name,
                            kind=span.kind,
                            attributes={kv.key: _value(kv.value) for kv in span.attributes},
                        )
                    )
        with self.lock:
            self.posts += 1
            self.spans.extend(found)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def collector():
    found = Collector()
    yield found
    found.close()


def traced_env(collector: Collector) -> dict[str, str]:
    # A batch delay of 10 minutes: nothing is exported on a timer during the test, only at exit.
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "600000"}


@pytest.mark.parametrize("across", [False, True], ids=["one process", "across processes"])
def test_every_request_is_one_trace_holding_the_servers_spans_and_the_connectors(
    start_server, fake_upstream, tenant, collector, across
):
    """Across processes: the connector is held by one server, the requests go to another (Redis
    carries them, and the dispatch span's context with them)."""
    if across and not settings.REDIS_URL:
        if os.environ.get("CI") == "true":
            pytest.fail("the cross-process case needs REDIS_URL")
        pytest.skip("the cross-process case needs REDIS_URL")
    holder = start_server(**traced_env(collector))
    server = start_server(**traced_env(collector)) if across else holder
    connector = Proc(
        "connector-traced",
        [
            sys.executable,
            "-m",
            "tokios_connector",
            "--server",
            holder.url,
            "--upstream",
            fake_upstream.base,
        ],
        base_env(TOKIOS_CONNECTOR_TOKEN=tenant.token, **traced_env(collector)),
    )
    try:
        connector.wait_for_output("connected to")
        request_ids = []
        for i in range(REQUESTS):
            body = {"model": tenant.model, "stream": i % 2 == 0, "messages": [{"role": "user", "content": f"hi {i}"}]}
            response = httpx.post(
                f"{server.url}/v1/chat/completions",
                content=json.dumps(body),
                headers={"content-type": "application/json", "authorization": f"Bearer {tenant.key}"},
                timeout=30,
            )
            assert response.status_code == 200, response.text
            request_ids.append(response.headers["x-request-id"])
        time.sleep(0.3)
        assert collector.spans == []  # batched: nothing leaves before the processes stop
    finally:
        connector.stop()  # SIGTERM: drains, then flushes its batch
        for srv in {holder.url: holder, server.url: server}.values():
            srv.proc.stop()  # SIGTERM: uvicorn shuts down, and the ASGI lifespan's shutdown flushes the batch

    deadline = time.monotonic() + 10
    while len(collector.spans) < REQUESTS * (1 + len(SERVER_STEPS) + 1) and time.monotonic() < deadline:
        time.sleep(0.05)
    traces: dict[str, list[Received]] = defaultdict(list)
    for span in collector.spans:
        traces[span.trace_id].append(span)
    assert len(traces) == REQUESTS, {trace_id: [s.name for s in spans] for trace_id, spans in traces.items()}
    seen_ids = []
    for spans in traces.values():
        by_service = defaultdict(list)
        for span in spans:
            by_service[span.service].append(span)
        assert set(by_service) == {"tokios", "tokios-connector"}
        [root] = [span for span in by_service["tokios"] if span.kind == SPAN_KIND_SERVER]
        assert root.name == f"chat {tenant.model}" and root.parent_id == ""
        assert root.attributes["http.response.status_code"] == 200
        steps = {span.name: span for span in by_service["tokios"] if span is not root}
        assert set(steps) == SERVER_STEPS and len(by_service["tokios"]) == 1 + len(SERVER_STEPS)
        assert all(span.parent_id == root.span_id for span in steps.values())
        [upstream_span] = by_service["tokios-connector"]
        assert upstream_span.kind == SPAN_KIND_CLIENT
        assert upstream_span.name == "upstream POST /chat/completions"
        assert upstream_span.parent_id == steps["tunnel dispatch"].span_id
        assert upstream_span.attributes["tokios.request_id"] == root.attributes["tokios.request_id"]
        assert upstream_span.attributes["http.response.status_code"] == 200
        seen_ids.append(root.attributes["tokios.request_id"])
    assert sorted(seen_ids) == sorted(request_ids)
    assert not any("hi 1" in json.dumps(span.attributes) for span in collector.spans)  # no prompts
