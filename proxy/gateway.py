"""The part of every /v1 request that does not depend on the surface.

`RequestScope` is the request's single owner. `proxy/handler.py` opens it before the view runs
and closes it after the last byte went out — or the client left, or anything failed — and
`close()` is the one place where the request ends: the call to the model is cancelled if it is
still running, the limits reservation is settled with the real usage, and exactly one usage
record is submitted. In between, `handle()` wraps a surface's handler: it authenticates the key,
reads and parses the body, and turns any GatewayError into an error body in the surface's shape;
the surface resolves the model, checks limits and calls the model through the scope.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import orjson
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponseBase

from billing import limits, metering
from billing.models import MAX_EVENT_COST_MICROS, MAX_EVENT_TOKENS, MAX_REQUESTED_MODEL_CHARS

from . import observe, tracing
from .access import AccessDenied, DeploymentRecord, KeyRecord, authenticate_key, deployment_for
from .calls import UpstreamCall
from .errors import GatewayError, anthropic_error_body, error_response, openai_error_body

log = logging.getLogger("tokios.gateway")
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def new_request_id() -> str:
    """`req_`, the time in milliseconds (12 hex digits), then 80 random bits (20 hex digits).

    Time first, so that ids sort by when they were made: the usage table's unique index on
    request_id is then written at its end, a few pages per batch, instead of at a random leaf per
    event. With 300,000 events stored, inserting 80-event batches cost SQLite 13.6 µs of CPU per
    event against 26.6 with random ids (WAL 6.6× smaller), and PostgreSQL 15 µs of backend CPU
    against 21. The random part keeps ids unique across processes (a clash would make the second
    event's insert a no-op) and unguessable."""
    return f"req_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"


class UsageSource(Protocol):
    """What a surface's translator knows of the tokens a request used, whenever it is asked."""

    def usage(self) -> tuple[int, int, bool]:
        """(input tokens, output tokens, estimated)."""
        ...


class RequestScope:
    """One /v1 request from the moment it is read to its usage record (see the module docstring)."""

    def __init__(self, request: HttpRequest):
        self.request = request
        self.request_id = new_request_id()
        self.record = metering.UsageRecord(request_id=self.request_id, surface="")
        self.deadline = time.monotonic() + settings.REQUEST_DEADLINE
        self.surface = ""
        self.anthropic = False
        self.metered = False  # a surface took the request: it gets a usage record
        self.key: KeyRecord | None = None
        self.deployment: DeploymentRecord | None = None
        # The deployment that served instead, when `deployment` could not (proxy/failover.py): the
        # request is metered and priced as its.
        self.fallback: DeploymentRecord | None = None
        self.body: dict = {}
        self.headers: dict[str, str] = {}  # added to the response (rate limits…)
        self.reservation: limits.Reservation | None = None
        self.call: UpstreamCall | None = None  # the call in flight, so that every exit can cancel it
        self.usage_source: UsageSource | None = None
        # Why proxy/handler.py left the body unread (401, 413, 408; 500: no key lookup): the surface
        # answers it in its shape.
        self.refusal: GatewayError | None = None
        self.closed = False
        # Its spans while tracing is on (proxy/tracing.py); ended by observe.request_finished.
        self.trace = tracing.request_trace(request, self.request_id) if tracing.TRACING.tracer is not None else None
        observe.request_started(self)  # in flight until close() (proxy/request_metrics.py)

    async def __aenter__(self) -> RequestScope:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def close(self) -> None:
        """End the request: the one place that cancels, settles and records (once)."""
        if self.closed:
            return
        self.closed = True
        call = self.call
        try:
            if call is not None and not call.finished:
                self.record.cancelled = True  # the client left, or the view failed, while the model worked
                await call.cancel()
        except Exception:
            log.warning("could not cancel the call of request %s", self.request_id, exc_info=True)
        finally:
            # Even when cancelled here (a server shutting down): the request is recorded once.
            if self.metered:
                self._record()
            observe.request_finished(self)

    def _record(self) -> None:
        record = self.record
        if self.usage_source is not None:
            input_tokens, output_tokens, record.usage_estimated = self.usage_source.usage()
            # The model's own figures: bounded before any arithmetic (a connector may report anything).
            record.input_tokens = min(max(0, input_tokens), MAX_EVENT_TOKENS)
            record.output_tokens = min(max(0, output_tokens), MAX_EVENT_TOKENS)
        deployment = self.fallback or self.deployment
        if deployment is not None:
            cost = deployment.cost_micros(record.input_tokens, record.output_tokens)
            record.cost_micros = min(max(0, cost), MAX_EVENT_COST_MICROS)
        record.finish()
        limits.settle(self.reservation, record)
        metering.submit(record)

    # --- the steps every surface takes ------------------------------------------------------------

    async def authenticate(self) -> KeyRecord:
        if self.key is not None:  # proxy/handler.py checked it before reading the body
            return self.key
        with tracing.step(self.trace, "auth"):
            try:
                key = await authenticate_key(presented_secret(self.request))
            except AccessDenied as exc:
                raise _denied(exc) from None
        self.key = key
        self.record.key_id = key.id
        self.record.org_id = key.org_id
        return key

    def authenticated_key(self) -> KeyRecord:
        """The key `authenticate()` accepted: `handle()` authenticates before any surface runs."""
        if self.key is None:
            raise RuntimeError(f"request {self.request_id} used its key before authenticating")
        return self.key

    def resolved_deployment(self) -> DeploymentRecord:
        """The deployment `resolve_model()` found: a surface resolves it before it needs it."""
        if self.deployment is None:
            raise RuntimeError(f"request {self.request_id} used its deployment before resolving it")
        return self.deployment

    async def resolve_model(self, model: object) -> DeploymentRecord:
        if isinstance(model, str):
            # For the request log, also when no deployment has the name (404) or the key may not use
            # it (403). A NUL would make PostgreSQL refuse the row: the text is stored without it.
            self.record.requested_model = model[:MAX_REQUESTED_MODEL_CHARS].replace("\x00", "")
        try:
            deployment = await deployment_for(self.authenticated_key(), model)
        except AccessDenied as exc:
            raise _denied(exc) from None
        self.deployment = deployment
        self.record.deployment_id = deployment.id
        if self.trace is not None:  # named for a model that exists, not for whatever a client sent
            self.trace.model_named(self.surface, self.record.requested_model)
        return deployment

    async def check_limits(self, estimated_tokens: int) -> None:
        """Admit the request and reserve its estimated usage, or raise a 429."""
        with tracing.step(self.trace, "limits"):
            try:
                self.reservation = await limits.enforce(
                    self.authenticated_key(),
                    self.deployment,
                    estimated_tokens,
                    anthropic=self.anthropic,
                    headers=self.headers,
                )
            except limits.LimitExceeded as exc:
                raise GatewayError(
                    exc.status, exc.message, code=exc.code, error_type=exc.error_type, headers=exc.headers
                ) from None

    def seconds_left(self) -> float:
        return self.deadline - time.monotonic()

    # --- responses --------------------------------------------------------------------------------

    def error_response(self, exc: GatewayError) -> HttpResponseBase:
        if self.anthropic:
            data = anthropic_error_body(exc.status, exc.message, exc.error_type, self.request_id)
        else:
            data = openai_error_body(exc.status, exc.message, exc.code, exc.param, exc.error_type)
        return self.finish_headers(error_response(data, exc.status, {**self.headers, **exc.headers}))

    def finish_headers(self, response: HttpResponseBase) -> HttpResponseBase:
        response["x-request-id"] = self.request_id
        response["request-id"] = self.request_id
        record = self.record
        if record.connector_id:
            response["x-tokios-connector"] = record.connector_id
        if record.retried:
            response["x-tokios-retried"] = "1"
        if self.fallback is not None:
            response["x-tokios-fallback"] = self.fallback.name
        for name, value in self.headers.items():
            response[name] = value
        return response


class ScopedRequest(HttpRequest):
    """A /v1 request as proxy/handler.py hands it to the views: with its scope attached."""

    request_scope: RequestScope


def presented_secret(request: HttpRequest) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key") or None


def _too_large() -> GatewayError:
    return GatewayError(
        413, f"Request body too large: the limit is {settings.MAX_BODY_BYTES} bytes.", code="request_too_large"
    )


MAX_JSON_DEPTH = 64  # nesting levels of objects and arrays; these APIs need a dozen or so


def _nested_deeper_than(body: dict | list, limit: int) -> bool:
    """Whether `body` nests objects and arrays more than `limit` levels deep.

    One level at a time, looking only at the values of containers. Measured against orjson's parse
    of the same body: ~3 µs for a small chat body (parse ~1.3), ~40 µs for 800 KB of messages
    (parse ~430); at worst, 1 MiB of small containers or of numbers, tens of ms, as the parse. A
    count of brackets over the raw bytes first was slower than this walk on real bodies."""
    level: list[dict | list] = [body]
    for _ in range(limit):
        below: list[dict | list] = []
        add = below.append
        for container in level:
            for value in container.values() if type(container) is dict else container:
                kind = type(value)
                if kind is dict or kind is list:
                    add(value)
        if not below:
            return False
        level = below
    return True


def read_json(request: HttpRequest) -> dict:
    length = request.META.get("CONTENT_LENGTH")
    if length and length.isdigit() and int(length) > settings.MAX_BODY_BYTES:
        raise _too_large()
    try:
        raw = request.body
    except RequestDataTooBig:
        raise _too_large() from None
    if len(raw) > settings.MAX_BODY_BYTES:
        raise _too_large()
    if not raw:
        raise GatewayError(400, "The request body is empty; send a JSON object.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(
            400, f"We could not parse the JSON body of your request: {exc}.", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise GatewayError(400, "The request body must be a JSON object.", code="invalid_json")
    # Deeper JSON than this is no request these APIs define, and past 255 levels it could not be
    # written back out to the model at all.
    if _nested_deeper_than(body, MAX_JSON_DEPTH):
        raise GatewayError(400, f"The JSON body is nested more than {MAX_JSON_DEPTH} levels deep.", code="invalid_json")
    return body


def _denied(exc: AccessDenied) -> GatewayError:
    return GatewayError(exc.status, exc.message, code=exc.code, param=exc.param, headers=exc.headers)


async def handle(
    request: ScopedRequest,
    surface: str,
    handler: Callable[[RequestScope], Awaitable[HttpResponseBase]],
    *,
    anthropic: bool = False,
    parse_body: bool = True,
) -> HttpResponseBase:
    """Run a surface's handler inside the request's scope (opened by proxy/handler.py)."""
    scope = request.request_scope
    scope.surface = scope.record.surface = surface
    scope.anthropic = anthropic
    scope.metered = True
    if scope.trace is not None and request.resolver_match is not None:
        scope.trace.routed(request.resolver_match.route, surface)
    try:
        if scope.refusal is not None:
            raise scope.refusal
        await scope.authenticate()
        if parse_body:
            scope.body = read_json(request)
        response = await handler(scope)
        scope.record.status_code = response.status_code
        return scope.finish_headers(response)
    except GatewayError as exc:
        scope.record.status_code = exc.status
        scope.record.error_code = exc.code or exc.error_type or ""
        return scope.error_response(exc)
    except Exception:
        # A bug must still answer in the caller's format, with the id to find it in the logs.
        log.exception("unhandled error in %s request %s", surface, scope.request_id)
        scope.record.status_code = 500
        scope.record.error_code = "internal_error"
        error = GatewayError(500, f"Internal error; request id {scope.request_id}.", code="internal_error")
        return scope.error_response(error)
