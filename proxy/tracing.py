"""Traces of /v1 requests with OpenTelemetry, exported over OTLP/HTTP; off unless configured.

`setup()` is called once per process when the ASGI application starts (tokios_site/asgi.py). It
does nothing unless `settings.TRACING` (an OTLP endpoint in `OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or `TOKIOS_TRACING=otlp`; never with `TOKIOS_TRACING=off` or
`OTEL_SDK_DISABLED=true`). The rest is the SDK's own environment: `OTEL_SERVICE_NAME` (default here
"tokios"), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`/`_ARG` (default: parent-based, always
on), `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*`. Spans leave in batches from the SDK's own thread
(`BatchSpanProcessor`), never from the event loop, and are flushed when the process exits.

While tracing is off a request pays one test: `RequestScope.trace` is None, and nothing else in
this module runs (no no-op spans are made).

One trace per /v1 request (`RequestTrace`): a SERVER span, child of the client's W3C `traceparent`
when it sent a valid one, named `{gen_ai.operation.name} {gen_ai.request.model}` ("chat gemma")
once the model is known and `{method} {route}` otherwise, with a child span per step:

    auth                 the key lookup (proxy/access.py)
    limits               rate limits and budget (billing.limits.enforce)
    queue wait           only if every connector was busy (proxy/tunnel/queue.py)
    tunnel dispatch      sending the request to the connector; its context travels on the request
                         frame (`traceparent`), so the connector's CLIENT span joins the trace
    upstream first byte  from the request sent until the model's status arrived
    stream               from the status to the end of the response

No prompt or completion text is put on a span unless the operator opts in (`TOKIOS_TRACE_CONTENT`),
and then at most `TOKIOS_TRACE_CONTENT_MAX_CHARS` characters of each.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

import orjson
from django.conf import settings
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from django.http import HttpRequest

    from .gateway import RequestScope

log = logging.getLogger("tokios.tracing")

# Attribute names. HTTP, URL and error attributes are stable semantic conventions; the GenAI ones
# are spelled as the semantic conventions of opentelemetry-semantic-conventions 0.66b2 name them
# (only in its `_incubating` modules, which are not imported: they may move between releases).
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"  # was gen_ai.system
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"  # seconds
GEN_AI_INPUT_MESSAGES = "gen_ai.input.messages"  # only with TOKIOS_TRACE_CONTENT
HTTP_REQUEST_METHOD = "http.request.method"
HTTP_REQUEST_METHOD_ORIGINAL = "http.request.method_original"
HTTP_ROUTE = "http.route"
HTTP_RESPONSE_STATUS_CODE = "http.response.status_code"
URL_PATH = "url.path"
ERROR_TYPE = "error.type"
# Tokios's own, to join a trace with the access log, the request log and the metrics.
TOKIOS_REQUEST_ID = "tokios.request_id"
TOKIOS_ORG_ID = "tokios.org_id"
TOKIOS_KEY_PREFIX = "tokios.key_prefix"
TOKIOS_DEPLOYMENT = "tokios.deployment"
TOKIOS_CONNECTOR_ID = "tokios.connector_id"
TOKIOS_QUEUE_WAIT_MS = "tokios.queue_wait_ms"
TOKIOS_SURFACE = "tokios.surface"
TOKIOS_STREAMED = "tokios.streamed"
TOKIOS_CANCELLED = "tokios.cancelled"
TOKIOS_UPSTREAM_MS = "tokios.upstream_ms"  # the connector's timing of the model server
TOKIOS_RESPONSE_CONTENT = "tokios.response.content"  # the model's raw answer; only with TOKIOS_TRACE_CONTENT

PROVIDER = "tokios"  # what answers the client: the gateway, whatever model server is behind it
# Surfaces that ask a model for an answer, and their GenAI operation.
OPERATIONS = {"chat": "chat", "messages": "chat", "responses": "chat", "embeddings": "embeddings"}
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})
MAX_PATH_CHARS = 1024
# The propagator itself refuses longer values, but logs a warning for each: a client must not be
# able to fill the log with them.
MAX_TRACEPARENT_CHARS = 512
MAX_TRACESTATE_CHARS = 512
STEPS = ("auth", "limits", "queue wait", "tunnel dispatch", "upstream first byte", "stream")
NO_STEP: AbstractContextManager[None] = nullcontext()  # stateless: shared by every untraced request

PROPAGATOR = TraceContextTextMapPropagator()


class Tracing:
    """This process's tracing: a tracer while it is on (None, the default, while it is off)."""

    def __init__(self) -> None:
        self.provider: TracerProvider | None = None
        self.tracer: Tracer | None = None
        self.content_limit = 0  # characters of prompt and answer kept on a span; 0: none


TRACING = Tracing()


def setup() -> bool:
    """Turn tracing on for this process if the settings ask for it (once; later calls change
    nothing). True when it is on."""
    if TRACING.provider is None and settings.TRACING:
        # The sampler comes from OTEL_TRACES_SAMPLER; the provider shuts down (flushing the batch)
        # when the interpreter exits.
        provider = TracerProvider(resource=_resource("tokios"))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        install(provider, content_limit=settings.TRACE_CONTENT_MAX_CHARS if settings.TRACE_CONTENT else 0)
        log.info("tracing on: OTLP/HTTP export (sampler and endpoint from the OTEL_* environment)")
    return TRACING.tracer is not None


def install(provider: TracerProvider, *, content_limit: int = 0) -> None:
    """Trace with `provider` from now on (setup() does it; tests give one with an in-memory exporter)."""
    TRACING.provider = provider
    TRACING.tracer = provider.get_tracer("tokios.proxy")
    TRACING.content_limit = max(0, content_limit)


def shutdown() -> None:
    """Flush what is batched and turn tracing off."""
    provider = TRACING.provider
    TRACING.provider = TRACING.tracer = None
    TRACING.content_limit = 0
    if provider is not None:
        provider.shutdown()


def _resource(default_name: str) -> Resource:
    """OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, with our name when they give none."""
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: default_name}))
    return resource


def processor_for_tests(processor: SpanProcessor) -> TracerProvider:
    """A provider with our resource and `processor` only, for install() in tests."""
    provider = TracerProvider(resource=_resource("tokios"))
    provider.add_span_processor(processor)
    return provider


# --- one request ------------------------------------------------------------------------------------


def request_trace(request: HttpRequest, request_id: str) -> RequestTrace | None:
    """The trace of a request that just arrived; None while tracing is off."""
    tracer = TRACING.tracer
    if tracer is None:
        return None
    return RequestTrace(tracer, request, request_id, TRACING.content_limit)


def step(trace: RequestTrace | None, name: str) -> AbstractContextManager:
    """`with step(scope.trace, "auth"):` a child span around a step; nothing while tracing is off."""
    if trace is None:
        return NO_STEP
    return Step(trace.child(name))


class Step:
    """A child span that ends with the block; an exception out of it marks the span failed."""

    __slots__ = ("span",)

    def __init__(self, span: Span) -> None:
        self.span = span

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> None:
        if exc is not None:
            _fail(self.span, error_type(exc))
        self.span.end()


def error_type(exc: BaseException) -> str:
    """The error code the client was answered (GatewayError, AccessDenied, LimitExceeded all carry
    one), else the exception's class."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) and code else type(exc).__qualname__


def _fail(span: Span, kind: str) -> None:
    span.set_attribute(ERROR_TYPE, kind)
    span.set_status(Status(StatusCode.ERROR))


def client_context(request: HttpRequest) -> Context:
    """The client's trace context (W3C traceparent and tracestate), or an empty one: a malformed
    traceparent is ignored (the request gets a trace of its own), never refused."""
    headers = request.headers
    traceparent = headers.get("traceparent")
    if not traceparent or len(traceparent) > MAX_TRACEPARENT_CHARS:
        return Context()
    if len(headers.get("tracestate") or "") > MAX_TRACESTATE_CHARS:
        return PROPAGATOR.extract({"traceparent": traceparent})
    return PROPAGATOR.extract(headers)


class RequestTrace:
    """The spans of one /v1 request (see the module docstring): the root span, and the one step of
    the call to the model that is open now (queue wait, tunnel dispatch, upstream first byte or
    stream), ended when the next begins or the request ends. `proxy.calls.CallTrace` is what a
    call reports to it."""

    __slots__ = (
        "tracer",
        "method",
        "root",
        "context",
        "phase",
        "phase_name",
        "content_limit",
        "output",
        "output_chars",
    )

    def __init__(self, tracer: Tracer, request: HttpRequest, request_id: str, content_limit: int) -> None:
        self.tracer = tracer
        method = request.method or ""
        attributes: dict[str, str] = {
            HTTP_REQUEST_METHOD: method if method in METHODS else "_OTHER",
            URL_PATH: request.path[:MAX_PATH_CHARS],
            TOKIOS_REQUEST_ID: request_id,
        }
        if method not in METHODS:
            attributes[HTTP_REQUEST_METHOD_ORIGINAL] = method[:32]
        self.method = method if method in METHODS else "HTTP"
        self.root = tracer.start_span(
            self.method, context=client_context(request), kind=SpanKind.SERVER, attributes=attributes
        )
        self.context = set_span_in_context(self.root)
        self.phase: Span | None = None
        self.phase_name = ""
        self.content_limit = content_limit
        self.output: list[bytes] = []
        self.output_chars = 0

    def child(self, name: str) -> Span:
        return self.tracer.start_span(name, context=self.context)

    # --- what the gateway learns as it goes ----------------------------------------------------------

    def routed(self, route: str, surface: str) -> None:
        """The view that answers: `{method} {route}` until a model is named."""
        root = self.root
        route = "/" + route.lstrip("/")[:200]
        root.set_attribute(HTTP_ROUTE, route)
        root.set_attribute(TOKIOS_SURFACE, surface)
        root.update_name(f"{self.method} {route}")

    def model_named(self, surface: str, model: str) -> None:
        """A deployment answers to `model`: the span is named for it (not for a model name that no
        deployment has: a client could make up one span name per request)."""
        operation = OPERATIONS.get(surface)
        if operation is not None and model:
            self.root.update_name(f"{operation} {model}")

    def capture(self, data: bytes) -> None:
        """Keep the start of the model's answer (only with content on: see `capture_output`)."""
        if self.output_chars < self.content_limit:
            self.output.append(data[: self.content_limit - self.output_chars])
            self.output_chars += len(self.output[-1])

    # --- what a call reports (proxy.calls.CallTrace) --------------------------------------------------

    def queued(self) -> None:
        if self.phase_name != "queue wait":  # waiting on, after a slot went with its connector
            self._next_phase("queue wait")

    def dispatching(self) -> str:
        span = self._next_phase("tunnel dispatch")
        context = span.get_span_context()
        return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"

    def dispatched(self, outcome: str, connector_id: str) -> None:
        span = self.phase
        if span is None:
            return
        if connector_id:
            span.set_attribute(TOKIOS_CONNECTOR_ID, connector_id)
        if outcome == "sent":
            self._next_phase("upstream first byte")
        else:
            _fail(span, f"connector_{outcome}")  # connector_busy, connector_gone: another is tried
            span.end()
            self.phase, self.phase_name = None, ""

    def response_started(self, status: int) -> None:
        if self.phase is not None:
            self.phase.set_attribute(HTTP_RESPONSE_STATUS_CODE, status)
        self._next_phase("stream")

    def _next_phase(self, name: str) -> Span:
        if self.phase is not None:
            self.phase.end()
        self.phase = span = self.child(name)
        self.phase_name = name
        return span

    # --- the end ----------------------------------------------------------------------------------------

    def finish(self, scope: RequestScope) -> None:
        """End the request's spans, with what its usage record says (called once, at its end)."""
        record = scope.record
        error = record.error_code
        status = record.status_code
        phase = self.phase
        if phase is not None:
            if error:
                _fail(phase, error)
            phase.end()
            self.phase, self.phase_name = None, ""
        root = self.root
        attributes: dict[str, str | int | float | bool] = {}
        if status:
            attributes[HTTP_RESPONSE_STATUS_CODE] = status
        if scope.key is not None:
            attributes[TOKIOS_ORG_ID] = scope.key.org_id
            attributes[TOKIOS_KEY_PREFIX] = scope.key.prefix
        deployment = scope.deployment
        if deployment is not None:
            attributes[TOKIOS_DEPLOYMENT] = deployment.name
            if record.surface in OPERATIONS:
                attributes[GEN_AI_RESPONSE_MODEL] = deployment.upstream_model or deployment.name
        if record.connector_id:
            attributes[TOKIOS_CONNECTOR_ID] = record.connector_id
        if record.queue_wait_ms:
            attributes[TOKIOS_QUEUE_WAIT_MS] = record.queue_wait_ms
        if scope.metered:
            attributes[TOKIOS_STREAMED] = record.streamed
            attributes[TOKIOS_CANCELLED] = record.cancelled
        if record.upstream_ms is not None:
            attributes[TOKIOS_UPSTREAM_MS] = record.upstream_ms
        operation = OPERATIONS.get(record.surface)
        if operation is not None and record.requested_model:
            attributes[GEN_AI_OPERATION_NAME] = operation
            attributes[GEN_AI_PROVIDER_NAME] = PROVIDER
            attributes[GEN_AI_REQUEST_MODEL] = record.requested_model
        if operation is not None and deployment is not None:
            self._generation(scope, attributes)
        root.set_attributes(attributes)
        if error or status >= 400:
            root.set_attribute(ERROR_TYPE, error or str(status))
            # A client's mistake (4xx) is not the server's: the span's status stays unset for it
            # (HTTP semantic conventions); a 5xx, or an error after a 200, is an error.
            if status >= 500 or status < 400:
                root.set_status(Status(StatusCode.ERROR))
        root.end()

    def _generation(self, scope: RequestScope, attributes: dict[str, str | int | float | bool]) -> None:
        record, body = scope.record, scope.body
        for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
            value = body.get(name)
            if type(value) is int and 0 < value < 2**31:
                attributes[GEN_AI_REQUEST_MAX_TOKENS] = value
                break
        temperature = body.get("temperature")
        if isinstance(temperature, int | float) and not isinstance(temperature, bool) and 0 <= temperature <= 100:
            attributes[GEN_AI_REQUEST_TEMPERATURE] = float(temperature)
        if scope.usage_source is not None:
            attributes[GEN_AI_USAGE_INPUT_TOKENS] = record.input_tokens
            attributes[GEN_AI_USAGE_OUTPUT_TOKENS] = record.output_tokens
        if record.ttft_ms is not None:
            attributes[GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = record.ttft_ms / 1000
        limit = self.content_limit
        if limit:
            prompt = body.get("messages", body.get("input"))
            if prompt is not None:
                attributes[GEN_AI_INPUT_MESSAGES] = orjson.dumps(prompt).decode()[:limit]
            if self.output:
                attributes[TOKIOS_RESPONSE_CONTENT] = b"".join(self.output).decode("utf-8", "replace")[:limit]


def capture_output(trace: RequestTrace | None):
    """What the stream loop hands each piece of the model's answer to: None (nothing to do) unless
    this request is traced with content on."""
    if trace is None or not trace.content_limit:
        return None
    return trace.capture


def request_finished(scope: RequestScope) -> None:
    """proxy/observe.py, at the request's end."""
    trace = scope.trace
    if trace is not None:
        scope.trace = None
        try:
            trace.finish(scope)
        except Exception:  # a trace must never fail a request's end
            log.exception("could not finish the trace of request %s", scope.request_id)
