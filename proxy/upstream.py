"""Calling the model for a surface: opening the call, reading a whole body, mapping its errors."""

from __future__ import annotations

import time

import orjson
from django.conf import settings

from .calls import CallError, Data, Ended, Failed, UpstreamCall
from .errors import GatewayError
from .failover import RoutedCall
from .gateway import RequestScope
from .tunnel.router import TunnelCall, call_error

# The model is busy and the request could not wait for it (proxy/tunnel/queue.py).
QUEUE_ERRORS = frozenset({"queue_full", "queue_timeout"})


def gateway_error(exc: CallError, *, anthropic: bool = False) -> GatewayError:
    headers = {"retry-after": "1"} if exc.status == 503 else {}
    if exc.status >= 500:
        # A 502/504 from the model is not the client's fault, but repeating it thrice won't help.
        headers["x-should-retry"] = "true" if exc.status in (503, 504) else "false"
    if anthropic and exc.code in QUEUE_ERRORS:
        # Anthropic's word for "busy, retry" is 529 overloaded_error (wire-formats §6.7).
        return GatewayError(529, exc.message, code=exc.code, headers=headers)
    return GatewayError(exc.status, exc.message, code=exc.code, headers=headers)


def upstream_error(scope: RequestScope, status: int, raw: bytes) -> GatewayError:
    """Normalise an upstream's error answer (llama.cpp numeric codes, flat vLLM, Ollama)."""
    message, kind = "the model server returned an error", ""
    try:
        data = orjson.loads(raw)
        err = data.get("error", data) if isinstance(data, dict) else {}
        if isinstance(err, dict):
            message = str(err.get("message") or message)[:2000]
            kind = str(err.get("type") or "")
        elif isinstance(err, str):
            message = err[:2000]
    except orjson.JSONDecodeError:
        if raw:
            message = raw[:300].decode("utf-8", "replace")
    if kind == "exceed_context_size_error":
        return GatewayError(400, message, code="context_length_exceeded")
    if status in (400, 413, 422):
        return GatewayError(400, f"The model rejected the request: {message}", code="upstream_bad_request")
    if status == 429:
        return GatewayError(
            429, f"The model is busy: {message}", code="upstream_rate_limited", headers={"retry-after": "1"}
        )
    if status == 503:
        # Anthropic's word for "busy or loading, retry" is 529 overloaded_error (wire-formats §6.7).
        return GatewayError(
            529 if scope.anthropic else 503,
            f"The model is not ready: {message}",
            code="server_is_overloaded",
            headers={"retry-after": "1"},
        )
    return GatewayError(
        502,
        f"The model server failed (HTTP {status}): {message}",
        code="upstream_error",
        headers={"x-should-retry": "false"},
    )


def new_call(scope: RequestScope, path: str, payload: dict | None, method: str = "POST") -> UpstreamCall:
    """The call for a request to the model, not sent yet. It is the scope's from here on: whatever
    happens, the scope's close() ends it. It goes to the deployment's pool, retried once on another
    connector or sent to a fallback while nothing went to the client yet (proxy/failover.py)."""
    call = RoutedCall(scope, settings.UPSTREAM_CALL or TunnelCall, path=path, method=method, payload=payload)
    scope.call = call
    return call


def first_byte_budget(scope: RequestScope) -> float:
    """Seconds a call may take to send its request (queueing included) and get the status."""
    return min(settings.FIRST_BYTE_TIMEOUT, max(0.0, scope.seconds_left()))


def call_failed(scope: RequestScope, exc: CallError) -> GatewayError:
    """A call that failed before its response began, in the surface's terms."""
    scope.call = None  # a call that failed to start has ended: nothing to cancel, nothing cancelled
    if exc.status == 504 and scope.seconds_left() <= 0:
        return request_deadline()
    return gateway_error(exc, anthropic=scope.anthropic)


def note_call(scope: RequestScope, call: UpstreamCall) -> None:
    """What the request log shows of the call: also for one that was taken, then failed."""
    scope.record.connector_id = call.connector_id
    scope.record.queue_wait_ms = call.queue_wait_ms


async def open_call(
    scope: RequestScope, path: str, payload: dict | None, method: str = "POST"
) -> tuple[UpstreamCall, int]:
    """Send the request to the model and wait for its status; GatewayError on failure. The call is
    the scope's from here on: whatever happens, the scope's close() ends it."""
    call = new_call(scope, path, payload, method)
    try:
        started = await call.start(first_byte_budget(scope))
    except CallError as exc:
        raise call_failed(scope, exc) from None
    finally:
        note_call(scope, call)
    return call, started.status


async def read_body(scope: RequestScope, call: UpstreamCall, limit: int | None = None) -> bytes:
    """The whole response body (an error answer, a small helper call); GatewayError on failure."""
    limit = settings.MAX_RESPONSE_BYTES if limit is None else limit
    parts: list[bytes] = []
    size = 0
    idle_until = time.monotonic() + settings.UPSTREAM_TIMEOUT
    while True:
        wait = min(idle_until - time.monotonic(), scope.seconds_left())
        item = await call.next_item(max(0.0, wait)) if wait > 0 else None
        match item:
            case Data(data=data):
                size += len(data)
                if size > limit:
                    await call.cancel()
                    raise response_too_large(limit)
                parts.append(data)
                idle_until = time.monotonic() + settings.UPSTREAM_TIMEOUT
            case Ended():
                return b"".join(parts)
            case Failed():
                raise gateway_error(call_error(item))
            case None:
                await call.cancel()
                if scope.seconds_left() <= 0:
                    raise request_deadline()
                raise GatewayError(
                    504,
                    "The model did not finish in time.",
                    code="upstream_timeout",
                    headers={"x-should-retry": "true"},
                )


async def ask_json(scope: RequestScope, path: str, payload: dict, limit: int) -> dict | None:
    """A helper call's answer (a rendered prompt, a token list, a count) as a JSON object, or None:
    the call failed, the status was not 200, or the body is not a JSON object of at most `limit` bytes."""
    try:
        call, status = await open_call(scope, path, payload)
        raw = await read_body(scope, call, limit)
    except GatewayError:
        return None
    if status != 200:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def response_too_large(limit: int) -> GatewayError:
    return GatewayError(
        502,
        f"The model's response is larger than this server accepts ({limit} bytes); ask for a streamed response.",
        code="response_too_large",
        headers={"x-should-retry": "false"},
    )


def request_deadline() -> GatewayError:
    return GatewayError(
        504,
        f"The request took longer than this server allows ({settings.REQUEST_DEADLINE:g} s).",
        code="request_deadline",
        headers={"x-should-retry": "false"},
    )


def upstream_model(scope: RequestScope) -> str:
    deployment = scope.resolved_deployment()
    return deployment.upstream_model or deployment.name
