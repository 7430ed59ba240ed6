"""Traces of /v1 requests (proxy/tracing.py), in process: the real /v1 app against a scripted model
(fake_call.py, a TEST DOUBLE), and the real TunnelCall against a session driven by hand, with the
SDK's in-memory exporter in place of OTLP.

The span tree and its attributes, no prompt or answer on a span unless the operator opts in, error
spans for refusals and failures, the client's W3C traceparent honoured (and hostile ones ignored),
the dispatch span's context on the request frame, and, with tracing off, no span at all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from django.test import RequestFactory
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from accounts.actions import create_api_key
from proxy import tracing
from proxy.calls import CallError, Data, Ended, Failed, Started
from proxy.tunnel import presence
from proxy.tunnel.presence import ConnectorInfo
from proxy.tunnel.router import OFFLINE_MESSAGE, TunnelCall
from proxy.tunnel.session import LOCAL, ConnectorSession
from tokios_connector import protocol
from tokios_connector.protocol import ResponseEnd, ResponseStart

from .fake_call import COMPLETION_TOKENS, CONNECTOR_ID, PROMPT_TOKENS, delta, streamed, whole
from .v1 import V1_DB, call_v1

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

PATH = "/v1/chat/completions"
PROMPT = "Tell me the secret launch codes"
ANSWER = "Hi"  # the scripted model's words
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """Tracing on, into memory; off again after the test."""
    found = InMemorySpanExporter()
    tracing.install(tracing.processor_for_tests(SimpleSpanProcessor(found)))
    yield found
    tracing.shutdown()


@pytest.fixture
def content_exporter() -> Iterator[InMemorySpanExporter]:
    """Tracing on with the operator's opt-in to content, cut to 40 characters."""
    found = InMemorySpanExporter()
    tracing.install(tracing.processor_for_tests(SimpleSpanProcessor(found)), content_limit=40)
    yield found
    tracing.shutdown()


def chat(model: str, *, stream: bool = True, **extra) -> dict:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": PROMPT}], **extra}


def tree(exporter: InMemorySpanExporter) -> tuple[ReadableSpan, dict[str, ReadableSpan]]:
    """The one trace's root, and its children by name (each name once), all checked to be its children."""
    spans = exporter.get_finished_spans()
    roots = [span for span in spans if span.kind == SpanKind.SERVER]
    assert len(roots) == 1, [span.name for span in spans]
    root = roots[0]
    children = [span for span in spans if span is not root]
    for span in children:
        assert span.context.trace_id == root.context.trace_id
        assert span.parent is not None and span.parent.span_id == root.context.span_id, span.name
    names = [span.name for span in children]
    assert len(set(names)) == len(names), names
    return root, {span.name: span for span in children}


def texts(spans) -> str:
    return " ".join(f"{span.name} {dict(span.attributes)} {[e.attributes for e in span.events]}" for span in spans)


# --- the span tree ------------------------------------------------------------------------------------


@V1_DB
async def test_a_streamed_chat_is_one_trace_with_a_span_per_step_and_genai_attributes(
    key, deployment, upstream, ledger, exporter
):
    upstream.answer(*streamed(ANSWER))
    body = chat(deployment.name, temperature=0.5, max_tokens=64)

    response = await call_v1("POST", PATH, body, secret=key.secret)

    assert response.status == 200
    root, steps = tree(exporter)
    assert root.name == f"chat {deployment.name}"
    assert root.parent is None  # the client sent no traceparent: a trace of its own
    assert list(steps) == ["auth", "limits", "tunnel dispatch", "upstream first byte", "stream"]
    ends = [steps[name].end_time for name in steps]
    assert ends == sorted(ends) and root.end_time >= ends[-1]  # one after the other, inside the request
    assert dict(root.attributes) == {
        "http.request.method": "POST",
        "url.path": PATH,
        "http.route": PATH,
        "http.response.status_code": 200,
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "tokios",
        "gen_ai.request.model": deployment.name,
        "gen_ai.response.model": deployment.name,  # no upstream_model: the deployment's name
        "gen_ai.request.max_tokens": 64,
        "gen_ai.request.temperature": 0.5,
        "gen_ai.usage.input_tokens": PROMPT_TOKENS,
        "gen_ai.usage.output_tokens": COMPLETION_TOKENS,
        "gen_ai.response.time_to_first_chunk": root.attributes["gen_ai.response.time_to_first_chunk"],
        "tokios.request_id": response.headers["x-request-id"],
        "tokios.org_id": key.org_id,
        "tokios.key_prefix": key.prefix,
        "tokios.deployment": deployment.name,
        "tokios.connector_id": CONNECTOR_ID,
        "tokios.surface": "chat",
        "tokios.streamed": True,
        "tokios.cancelled": False,
        "tokios.upstream_ms": 12,  # the connector's own timing (the script's `end` frame)
    }
    assert 0 <= root.attributes["gen_ai.response.time_to_first_chunk"] < 5
    assert steps["tunnel dispatch"].attributes["tokios.connector_id"] == CONNECTOR_ID
    assert steps["upstream first byte"].attributes["http.response.status_code"] == 200
    assert all(span.status.status_code == StatusCode.UNSET for span in exporter.get_finished_spans())


@V1_DB
async def test_no_prompt_or_answer_is_on_a_span_by_default(key, deployment, upstream, ledger, exporter):
    upstream.answer(*whole(b'{"choices": [{"message": {"role": "assistant", "content": "Hi launch codes"}}]}'))

    response = await call_v1("POST", PATH, chat(deployment.name, stream=False), secret=key.secret)

    assert response.status == 200
    spans = exporter.get_finished_spans()
    assert len(spans) == 6
    assert "launch codes" not in texts(spans)
    assert not any(
        name in span.attributes for span in spans for name in ("gen_ai.input.messages", "tokios.response.content")
    )


@V1_DB
async def test_with_the_operators_opt_in_prompt_and_answer_are_on_the_root_span_cut_to_the_limit(
    key, deployment, upstream, ledger, content_exporter
):
    upstream.answer(*streamed(ANSWER))

    assert (await call_v1("POST", PATH, chat(deployment.name), secret=key.secret)).status == 200

    root, _ = tree(content_exporter)
    prompt = root.attributes["gen_ai.input.messages"]
    assert prompt == '[{"role":"user","content":"Tell me the secret launch codes"}]'[:40]
    answer = root.attributes["tokios.response.content"]
    assert len(answer) == 40 and answer.startswith("data: {")  # the model's raw answer, cut


# --- the client's trace context -------------------------------------------------------------------------


@V1_DB
async def test_the_clients_traceparent_makes_the_request_part_of_its_trace(key, deployment, upstream, ledger, exporter):
    upstream.answer(*streamed(ANSWER))
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "vendor=value"}

    assert (await call_v1("POST", PATH, chat(deployment.name), secret=key.secret, headers=headers)).status == 200

    root, steps = tree(exporter)
    assert f"{root.context.trace_id:032x}" == TRACE_ID
    assert root.parent is not None and root.parent.is_remote
    assert f"{root.parent.span_id:016x}" == PARENT_ID
    assert root.context.trace_state.get("vendor") == "value"
    assert len(steps) == 5


@V1_DB
@pytest.mark.parametrize(
    "traceparent",
    [
        "garbage",
        f"00-{TRACE_ID}-{PARENT_ID}",  # no flags
        f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",
        f"00-{'0' * 32}-{PARENT_ID}-01",  # all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent
        f"ff-{TRACE_ID}-{PARENT_ID}-01",  # a version that must not be
        f"00-{TRACE_ID}-{PARENT_ID}-01-extra",  # version 00 has nothing after the flags
        f"00-{TRACE_ID}-{PARENT_ID}-01" + " " * 600,  # longer than any traceparent
        "\u0660" * 55,  # Arabic-Indic digits: not hex
    ],
)
async def test_a_malformed_traceparent_is_ignored_and_the_request_gets_a_trace_of_its_own(
    key, deployment, upstream, ledger, exporter, traceparent, caplog
):
    upstream.answer(*streamed(ANSWER))

    response = await call_v1(
        "POST", PATH, chat(deployment.name), secret=key.secret, headers={"traceparent": traceparent}
    )

    assert response.status == 200
    root, _ = tree(exporter)
    assert root.parent is None and f"{root.context.trace_id:032x}" != TRACE_ID
    assert "traceparent" not in caplog.text  # nothing a client can fill the log with


# --- refusals and failures ----------------------------------------------------------------------------------


@V1_DB
async def test_a_bad_key_is_a_failed_auth_span_and_the_root_says_why(deployment, upstream, ledger, exporter):
    response = await call_v1("POST", PATH, chat(deployment.name), secret="tk_live_nope")

    assert response.status == 401
    root, steps = tree(exporter)
    assert list(steps) == ["auth"]
    auth = steps["auth"]
    assert auth.status.status_code == StatusCode.ERROR
    assert auth.attributes["error.type"] == "invalid_api_key"
    assert root.attributes["error.type"] == "invalid_api_key"
    assert root.attributes["http.response.status_code"] == 401
    assert root.status.status_code == StatusCode.UNSET  # a client's error is not the server's (HTTP conventions)


@V1_DB
async def test_an_unknown_model_is_a_404_whose_span_keeps_its_route_for_a_name(
    key, deployment, upstream, ledger, exporter
):
    response = await call_v1("POST", PATH, chat("no-such-model-" + "x" * 50), secret=key.secret)

    assert response.status == 404
    root, steps = tree(exporter)
    # A name the client made up does not name a span (that would be one span name per typo).
    assert root.name == f"POST {PATH}"
    assert root.attributes["gen_ai.request.model"] == "no-such-model-" + "x" * 50
    assert root.attributes["error.type"] == "model_not_found"
    assert list(steps) == ["auth"]


@V1_DB
async def test_a_granted_model_that_the_key_may_not_use_is_a_403(
    restricted_key, granted_deployment, upstream, ledger, exporter
):
    response = await call_v1("POST", PATH, chat(granted_deployment.name), secret=restricted_key.secret)

    assert response.status == 403
    root, _ = tree(exporter)
    assert root.attributes["error.type"] == response.json()["error"]["code"]
    assert root.attributes["http.response.status_code"] == 403


@V1_DB
async def test_a_rate_limited_request_is_a_failed_limits_span(
    org, deployment, upstream, ledger, exporter, fresh_limits
):
    _, secret = await sync_to_async(create_api_key)(org=org, name="one a minute", rpm_limit=1)
    upstream.answer(*streamed(ANSWER))
    assert (await call_v1("POST", PATH, chat(deployment.name), secret=secret)).status == 200
    exporter.clear()

    response = await call_v1("POST", PATH, chat(deployment.name), secret=secret)

    assert response.status == 429
    root, steps = tree(exporter)
    assert list(steps) == ["auth", "limits"]
    assert steps["limits"].status.status_code == StatusCode.ERROR
    assert steps["limits"].attributes["error.type"] == "rate_limit_exceeded"
    assert root.attributes["error.type"] == "rate_limit_exceeded"


@V1_DB
async def test_no_connector_is_a_503_and_an_error_span(key, deployment, upstream, ledger, exporter):
    upstream.answer(CallError(503, "connector_offline", OFFLINE_MESSAGE))

    response = await call_v1("POST", PATH, chat(deployment.name), secret=key.secret)

    assert response.status == 503
    root, steps = tree(exporter)
    assert list(steps) == ["auth", "limits"]  # no connector took it: nothing was dispatched
    assert root.status.status_code == StatusCode.ERROR
    assert root.attributes["error.type"] == "connector_offline"
    assert root.attributes["http.response.status_code"] == 503


@V1_DB
async def test_a_model_that_stops_mid_stream_fails_the_stream_span(key, deployment, upstream, ledger, exporter):
    upstream.answer(Started(200, {}), Data(delta("Hi")), Failed("upstream_error", "the model crashed"))

    response = await call_v1("POST", PATH, chat(deployment.name), secret=key.secret)

    assert response.status == 200  # the stream had begun: the error is in-band
    root, steps = tree(exporter)
    assert steps["stream"].status.status_code == StatusCode.ERROR
    assert steps["stream"].attributes["error.type"] == "upstream_error"
    assert root.status.status_code == StatusCode.ERROR  # a 200 that failed is the server's failure


# --- tracing off -----------------------------------------------------------------------------------------


@V1_DB
async def test_with_tracing_off_a_request_makes_no_span_and_no_trace_object(
    key, deployment, upstream, ledger, monkeypatch
):
    assert tracing.TRACING.tracer is None  # the default: no endpoint configured
    watcher = InMemorySpanExporter()
    made: list[object] = []
    monkeypatch.setattr(tracing, "RequestTrace", lambda *args: made.append(args))  # must not be reached
    upstream.answer(*streamed(ANSWER))

    response = await call_v1("POST", PATH, chat(deployment.name), secret=key.secret)

    assert response.status == 200
    assert made == [] and watcher.get_finished_spans() == ()
    assert upstream.call.trace is None


def test_tracing_is_off_unless_an_endpoint_or_otlp_is_configured(settings):
    settings.TRACING = False
    assert tracing.setup() is False
    assert tracing.TRACING.provider is None


# --- across the tunnel: the real TunnelCall against a session driven by hand -------------------------------

DEPLOYMENT = 990_077  # no database here: an id no real deployment of the test database has


class HandDriven:
    """A connector held by this process, one slot, and the frames the server sent it."""

    def __init__(self) -> None:
        now = time.time()
        self.texts: list[str] = []
        info = ConnectorInfo(
            channel="specific.test!traced",
            deployment_id=DEPLOYMENT,
            token_id=1,
            connector_id="conn_traced",
            version="test",
            remote="127.0.0.1:1",
            connected_since=now,
            last_heartbeat=now,
            max_concurrency=1,
        )
        self.session = ConnectorSession(info=info, send_text=self._send, layer=None, window=8)

    async def _send(self, text: str) -> None:
        self.texts.append(text)

    def requests(self) -> list[protocol.Request]:
        return [
            frame for text in self.texts if isinstance(frame := protocol.decode_from_server(text), protocol.Request)
        ]


@pytest_asyncio.fixture
async def hand_driven():
    connector = HandDriven()
    LOCAL[connector.session.info.channel] = connector.session
    await presence.publish(connector.session.info)
    yield connector
    await presence.withdraw(connector.session.info)


def traced_call(rid: str) -> tuple[TunnelCall, tracing.RequestTrace]:
    trace = tracing.request_trace(RequestFactory().post(PATH), rid)
    assert trace is not None
    call = TunnelCall(
        deployment_id=DEPLOYMENT, request_id=rid, method="POST", path="/chat/completions", body=b"{}", trace=trace
    )
    return call, trace


async def until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.001)


async def test_the_request_frame_carries_the_dispatch_spans_context(hand_driven, exporter):
    call, trace = traced_call("req_t1")
    start = asyncio.create_task(call.start(5))
    await until(lambda: "req_t1" in hand_driven.session.pending)
    await hand_driven.session.on_frame(ResponseStart("req_t1", 200, {}))
    await start
    await hand_driven.session.on_frame(ResponseEnd("req_t1", 5, 2))
    assert await call.next_item(5) == Ended(5, 2)
    trace.root.end()
    trace.phase.end()

    spans = {span.name: span for span in exporter.get_finished_spans()}
    dispatch = spans["tunnel dispatch"]
    [frame] = hand_driven.requests()
    context = dispatch.context
    assert frame.traceparent == f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
    assert context.trace_flags.sampled
    assert dispatch.attributes["tokios.connector_id"] == "conn_traced"
    assert "queue wait" not in spans  # it did not wait


async def test_a_request_that_waits_for_a_slot_gets_a_queue_wait_span(hand_driven, exporter, settings):
    settings.QUEUE_MAX_WAIT = 5
    first, first_trace = traced_call("req_q1")
    second, second_trace = traced_call("req_q2")
    starting = asyncio.create_task(first.start(5))
    await until(lambda: "req_q1" in hand_driven.session.pending)
    waiting = asyncio.create_task(second.start(5))
    await asyncio.sleep(0.2)  # the one slot is taken: the second waits in line
    assert "req_q2" not in hand_driven.session.pending

    await hand_driven.session.on_frame(ResponseStart("req_q1", 200, {}))
    await starting
    await hand_driven.session.on_frame(ResponseEnd("req_q1", 5, 2))  # the slot frees: the second's turn
    await until(lambda: "req_q2" in hand_driven.session.pending)
    await hand_driven.session.on_frame(ResponseStart("req_q2", 200, {}))
    await waiting
    for trace in (first_trace, second_trace):
        trace.phase.end()
        trace.root.end()

    second_trace_id = second_trace.root.get_span_context().trace_id
    names = [span.name for span in exporter.get_finished_spans() if span.context.trace_id == second_trace_id]
    assert names[:3] == ["queue wait", "tunnel dispatch", "upstream first byte"]
    queue_span = next(span for span in exporter.get_finished_spans() if span.name == "queue wait")
    assert (queue_span.end_time - queue_span.start_time) / 1e9 >= 0.15
    await second.cancel()
