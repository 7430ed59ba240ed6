"""Calling the model through the tunnel, shared by every surface."""

from __future__ import annotations

import orjson

from ..errors import GatewayError
from ..gateway import Context
from ..tunnel.router import TunnelCall, TunnelError


def tunnel_error(exc: TunnelError) -> GatewayError:
    headers = {"retry-after": "1"} if exc.status == 503 else {}
    if exc.status >= 500:
        # A 502/504 from the model is not the client's fault, but repeating it thrice won't help.
        headers["x-should-retry"] = "true" if exc.status in (503, 504) else "false"
    return GatewayError(exc.status, exc.message, code=exc.code, headers=headers)


def upstream_error(ctx: Context, status: int, raw: bytes) -> GatewayError:
    """Normalise an upstream's error answer (llama.cpp numeric codes, flat vLLM, Ollama)."""
    message, kind = "the model server returned an error", ""
    try:
        data = orjson.loads(raw)
        err = data.get("error", data) if isinstance(data, dict) else {}
        if isinstance(err, dict):
            message = str(err.get("message") or message)
            kind = str(err.get("type") or "")
        elif isinstance(err, str):
            message = err
    except orjson.JSONDecodeError:
        if raw:
            message = raw[:300].decode("utf-8", "replace")
    if kind == "exceed_context_size_error":
        return GatewayError(400, message, code="context_length_exceeded")
    if status in (400, 413, 422):
        return GatewayError(400, f"The model rejected the request: {message}", code="upstream_bad_request")
    if status == 429:
        return GatewayError(429, f"The model is busy: {message}", code="upstream_rate_limited", headers={"retry-after": "1"})
    if status == 503:
        # Anthropic's word for "busy or loading, retry" is 529 overloaded_error (wire-formats §6.7).
        return GatewayError(
            529 if ctx.anthropic else 503,
            f"The model is not ready: {message}",
            code="server_is_overloaded",
            headers={"retry-after": "1"},
        )
    return GatewayError(502, f"The model server failed (HTTP {status}): {message}", code="upstream_error", headers={"x-should-retry": "false"})


async def open_call(ctx: Context, path: str, payload: dict | None, method: str = "POST") -> tuple[TunnelCall, int]:
    """Dispatch through the tunnel and wait for the upstream's status; GatewayError on failure."""
    body = orjson.dumps(payload) if payload is not None else b""
    call = TunnelCall(
        deployment_id=ctx.deployment.id, request_id=ctx.request_id, method=method, path=path, body=body
    )
    ctx.call = call
    try:
        status, _headers = await call.start()
    except TunnelError as exc:
        raise tunnel_error(exc) from None
    except BaseException:
        await call.cancel()
        raise
    return call, status


async def read_error(call: TunnelCall) -> bytes:
    try:
        return await call.read_all()
    except TunnelError:
        return b""


def upstream_model(ctx: Context) -> str:
    return ctx.deployment.upstream_model or ctx.deployment.name

