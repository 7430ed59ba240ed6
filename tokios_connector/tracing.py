"""The connector's span of each call to the model server (OpenTelemetry), when tracing is configured.

Optional: OpenTelemetry comes with the extra `tracing` (`pip install 'tokios-connector[tracing]'`);
without it the connector runs as before. It is configured like the server, by the SDK's own
environment: on when an OTLP endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) or `TOKIOS_TRACING=otlp`, never with `TOKIOS_TRACING=off` or
`OTEL_SDK_DISABLED=true`; `OTEL_SERVICE_NAME` defaults to "tokios-connector".

Each upstream call gets a CLIENT span "upstream {method} {path}", a child of the server's dispatch
span when the `request` frame carried its `traceparent` (protocol.py validated it: a malformed one
arrives as None, and the span then starts a trace of its own), so that it joins the request's
trace. Its `traceparent` goes on to the model server, which may join the trace too (vLLM can).
Nothing of the request's body or answer is put on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

try:  # the optional extra `tracing`
    from opentelemetry.context import Context
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised only where the extra is not installed
    AVAILABLE = False

from .protocol import Request

SERVICE = "tokios-connector"
MODES = ("", "otlp", "off")
# Attribute names: stable HTTP, URL, server and error semantic conventions, and our own.
HTTP_REQUEST_METHOD = "http.request.method"
HTTP_RESPONSE_STATUS_CODE = "http.response.status_code"
URL_PATH = "url.path"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
ERROR_TYPE = "error.type"
TOKIOS_REQUEST_ID = "tokios.request_id"
TOKIOS_UPSTREAM_TTFB_MS = "tokios.upstream_ttfb_ms"  # until the first byte of the body


def wanted(env: Mapping[str, str]) -> bool:
    """Whether the environment asks for tracing; ValueError for a TOKIOS_TRACING we do not know."""
    mode = env.get("TOKIOS_TRACING", "").strip().lower()
    if mode not in MODES:
        raise ValueError(f"TOKIOS_TRACING must be otlp, off or empty (got {mode[:40]!r})")
    if mode == "off" or env.get("OTEL_SDK_DISABLED", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
    return mode == "otlp" or bool(endpoint.strip())


def setup(env: Mapping[str, str]) -> tuple[ConnectorTracing | None, str | None]:
    """Tracing as the environment asks: (the tracing or None, a warning for the operator or None)."""
    if not wanted(env):
        return None, None
    if not AVAILABLE:
        return None, (
            "tracing is configured (OTEL_EXPORTER_OTLP_ENDPOINT or TOKIOS_TRACING) but OpenTelemetry is not "
            "installed: pip install 'tokios-connector[tracing]'; running without traces"
        )
    provider = TracerProvider(resource=resource())  # the sampler comes from OTEL_TRACES_SAMPLER
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return ConnectorTracing(provider), None


def resource() -> Resource:
    """OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, with our name when they give none."""
    found = Resource.create()
    if str(found.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        found = found.merge(Resource({SERVICE_NAME: SERVICE}))
    return found


def provider_for_tests(processor: SpanProcessor) -> TracerProvider:
    provider = TracerProvider(resource=resource())
    provider.add_span_processor(processor)
    return provider


class ConnectorTracing:
    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("tokios.connector")
        self.propagator = TraceContextTextMapPropagator()

    def upstream_span(self, request: Request, method: str, url: str) -> UpstreamSpan:
        """The span of one call to the model server, started now."""
        if request.traceparent is not None:
            parent = self.propagator.extract({"traceparent": request.traceparent})
        else:
            parent = Context()
        parts = urlsplit(url)
        attributes: dict[str, str | int] = {
            HTTP_REQUEST_METHOD: method,
            URL_PATH: parts.path,
            SERVER_ADDRESS: parts.hostname or "",
            TOKIOS_REQUEST_ID: request.id,
        }
        if parts.port:
            attributes[SERVER_PORT] = parts.port
        span = self.tracer.start_span(
            f"upstream {method} {request.path}", context=parent, kind=SpanKind.CLIENT, attributes=attributes
        )
        return UpstreamSpan(span)

    def shutdown(self) -> None:
        """Flush what is batched (at the connector's exit)."""
        self.provider.shutdown()


class UpstreamSpan:
    __slots__ = ("span",)

    def __init__(self, span: Span) -> None:
        self.span = span

    def traceparent(self) -> str:
        """The W3C header for the model server: this span is its parent."""
        context = self.span.get_span_context()
        return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"

    def end(self, status: int | None, ttfb: float | None, outcome: str) -> None:
        """`outcome`: "ok", or what went wrong (an error code, "cancelled", "tunnel closed")."""
        span = self.span
        if status is not None:
            span.set_attribute(HTTP_RESPONSE_STATUS_CODE, status)
        if ttfb is not None:
            span.set_attribute(TOKIOS_UPSTREAM_TTFB_MS, round(ttfb * 1000))
        # An HTTP client's error: no answer, a broken one, or a 4xx/5xx status.
        failure = outcome if outcome != "ok" else (str(status) if status is not None and status >= 400 else "")
        if failure:
            span.set_attribute(ERROR_TYPE, failure.replace(" ", "_"))
            span.set_status(Status(StatusCode.ERROR))
        span.end()
