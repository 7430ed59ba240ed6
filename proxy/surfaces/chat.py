"""POST /v1/chat/completions: validated, passed through the tunnel, streamed back."""

from __future__ import annotations

import time

import orjson
from django.conf import settings
from django.http import HttpResponse, StreamingHttpResponse

from ..errors import GatewayError, json_response
from ..gateway import STREAM_HEADERS, Context, check_limits, finish_record, resolve_model
from ..translate.sse import SSEParser
from ..tunnel.router import TunnelError
from .upstream import open_call, read_error, upstream_error, upstream_model

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
NUMBER_FIELDS = ("temperature", "top_p", "frequency_penalty", "presence_penalty")
INT_FIELDS = ("max_tokens", "max_completion_tokens", "n", "seed", "top_logprobs")
DEFAULT_OUTPUT_RESERVATION = 1024


def _bad(message: str, param: str) -> GatewayError:
    return GatewayError(400, message, param=param, code="invalid_value")


def validate(body: dict) -> None:
    messages = body.get("messages")
    if messages is None:
        raise _bad("Missing required parameter: 'messages'.", "messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty array.", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad(f"messages[{i}] must be an object.", f"messages[{i}]")
        role = message.get("role")
        if role not in ROLES:
            raise _bad(f"messages[{i}].role must be one of {sorted(ROLES)}, got {role!r}.", f"messages[{i}].role")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise _bad(f"messages[{i}].content must be a string or an array of parts.", f"messages[{i}].content")
        if content is None and role != "assistant":
            raise _bad(f"messages[{i}].content is required for role {role}.", f"messages[{i}].content")
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise _bad(f"messages[{i}].tool_call_id is required for tool messages.", f"messages[{i}].tool_call_id")
    for name in NUMBER_FIELDS:
        value = body.get(name)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise _bad(f"'{name}' must be a number.", name)
    for name in INT_FIELDS:
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise _bad(f"'{name}' must be a non-negative integer.", name)
    if "stream" in body and not isinstance(body["stream"], bool) and body["stream"] is not None:
        raise _bad("'stream' must be a boolean.", "stream")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise _bad("'stream_options' must be an object.", "stream_options")
        if not body.get("stream"):
            raise _bad("'stream_options' is only allowed when 'stream' is true.", "stream_options")
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str) and not (
        isinstance(stop, list) and all(isinstance(s, str) for s in stop)
    ):
        raise _bad("'stop' must be a string or an array of strings.", "stop")
    for name in ("tools", "tool_choice", "response_format"):
        value = body.get(name)
        if name == "tools" and value is not None and not isinstance(value, list):
            raise _bad("'tools' must be an array.", "tools")
        if name == "response_format" and value is not None and not isinstance(value, dict):
            raise _bad("'response_format' must be an object.", "response_format")


def prompt_chars(messages: list) -> int:
    total = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += len(part["text"])
    return total


def estimate_prompt_tokens(messages: list) -> int:
    """A rough count for reservations and for usage the upstream did not report (≈ 4 chars/token)."""
    return max(1, -(-prompt_chars(messages) // 4) + 4 * len(messages))


def upstream_body(ctx: Context, body: dict, *, stream: bool) -> dict:
    payload = dict(body)
    payload["model"] = upstream_model(ctx)
    # Ollama reads only max_tokens; reasoning models upstream read max_completion_tokens.
    if payload.get("max_completion_tokens") is not None and payload.get("max_tokens") is None:
        payload["max_tokens"] = payload["max_completion_tokens"]
    messages = payload["messages"]
    if any(isinstance(m, dict) and m.get("role") == "developer" for m in messages):
        payload["messages"] = [
            {**m, "role": "system"} if isinstance(m, dict) and m.get("role") == "developer" else m for m in messages
        ]
    if stream:
        # Always ask for usage: metering needs it; the chunk is hidden from clients that did not ask.
        payload["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return payload


def apply_usage(ctx: Context, usage: dict | None, fallback_output: int) -> None:
    record = ctx.record
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        record.input_tokens = int(usage.get("prompt_tokens") or 0)
        record.output_tokens = int(usage["completion_tokens"])
    else:
        record.input_tokens = estimate_prompt_tokens(ctx.body.get("messages") or [])
        record.output_tokens = fallback_output
        record.usage_estimated = True
    record.cost_micros = ctx.deployment.cost_micros(record.input_tokens, record.output_tokens)


async def chat_completions(ctx: Context) -> HttpResponse:
    body = ctx.body
    await resolve_model(ctx, body.get("model"))
    validate(body)
    stream = body.get("stream") is True
    max_out = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_OUTPUT_RESERVATION
    await check_limits(ctx, estimate_prompt_tokens(body["messages"]) + max_out * (body.get("n") or 1))
    call, status = await open_call(ctx, "/chat/completions", upstream_body(ctx, body, stream=stream))
    if status != 200:
        raise upstream_error(ctx, status, await read_error(call))
    if not stream:
        return await _complete(ctx, call)
    ctx.record.streamed = True
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    response = StreamingHttpResponse(
        _stream(ctx, call, include_usage), content_type="text/event-stream", headers=STREAM_HEADERS
    )
    return response


async def _complete(ctx: Context, call) -> HttpResponse:
    try:
        raw = await call.read_all()
    except TunnelError as exc:
        from .upstream import tunnel_error

        raise tunnel_error(exc) from None
    finally:
        await call.cancel()
    ctx.record.first_token()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise GatewayError(502, "The model server sent a response that is not JSON.", code="upstream_error") from None
    if not isinstance(data, dict):
        raise GatewayError(502, "The model server sent an unexpected response.", code="upstream_error")
    data["model"] = ctx.deployment.name
    data["id"] = "chatcmpl-" + ctx.request_id[4:]
    data.setdefault("object", "chat.completion")
    usage = data.get("usage")
    apply_usage(ctx, usage, fallback_output=0)
    if not isinstance(usage, dict):
        data["usage"] = {
            "prompt_tokens": ctx.record.input_tokens,
            "completion_tokens": ctx.record.output_tokens,
            "total_tokens": ctx.record.input_tokens + ctx.record.output_tokens,
        }
    return json_response(data)


class _Relay:
    """Rewrites upstream chunks for the client: our id and model name, usage only if asked."""

    def __init__(self, ctx: Context, include_usage: bool):
        self.ctx = ctx
        self.include_usage = include_usage
        self.completion_id = "chatcmpl-" + ctx.request_id[4:]
        self.model = ctx.deployment.name
        self.usage: dict | None = None
        self.deltas = 0
        self.done = False

    def relay(self, events: list) -> bytes:
        out = []
        for event in events:
            if event == "[DONE]":
                self.done = True
                out.append(b"data: [DONE]\n\n")
                continue
            if "error" in event:
                self.ctx.record.error_code = "upstream_error"
                out.append(b"data: " + orjson.dumps(_normalise_stream_error(event)) + b"\n\n")
                continue
            choices = event.get("choices")
            if event.get("usage"):
                # Older llama.cpp put usage on the finish chunk; the SDK wants it on the last only.
                self.usage = event["usage"]
                if not choices and not self.include_usage:
                    continue
            if not self.include_usage:
                event.pop("usage", None)
            if choices:
                if self.deltas == 0:
                    self.ctx.record.first_token()
                self.deltas += 1
            event["id"] = self.completion_id
            event["model"] = self.model
            out.append(b"data: " + orjson.dumps(event) + b"\n\n")
        return b"".join(out)


async def _stream(ctx: Context, call, include_usage: bool):
    record = ctx.record
    parser = SSEParser()
    relay = _Relay(ctx, include_usage)
    deadline = time.monotonic() + settings.UPSTREAM_TIMEOUT
    try:
        while True:
            item = await call.next_item(settings.KEEPALIVE_INTERVAL)
            if item is None:
                if time.monotonic() > deadline:
                    await call.cancel()
                    yield _error_event("The model stopped sending tokens (timeout).", "upstream_timeout")
                    record.status_code = 504
                    record.error_code = "upstream_timeout"
                    return
                yield b": keep-alive\n\n"
                continue
            kind = item[0]
            if kind == "chunk":
                deadline = time.monotonic() + settings.UPSTREAM_TIMEOUT
                data = item[1]
                more = call.ready_chunks()
                out = relay.relay(parser.feed(b"".join([data, *more]) if more else data))
                if out:
                    yield out
            elif kind == "end":
                # The last event may come without a blank line after it.
                out = relay.relay(parser.flush())
                if not relay.done:
                    out += b"data: [DONE]\n\n"
                yield out
                return
            elif kind == "error":
                record.error_code = item[1]
                yield _error_event(f"The tunnel failed mid-stream: {item[2] or item[1]}", item[1])
                return
    finally:
        try:
            if not call.finished:
                record.cancelled = True
                await call.cancel()
        finally:
            # Chunks that carried a delta approximate generated tokens when no usage arrived.
            apply_usage(ctx, relay.usage, fallback_output=max(0, relay.deltas - 1))
            record.finish()
            finish_record(ctx)


def _error_event(message: str, code: str) -> bytes:
    return b"data: " + orjson.dumps({"error": {"message": message, "type": "server_error", "param": None, "code": code}}) + b"\n\n"


def _normalise_stream_error(event: dict) -> dict:
    err = event.get("error")
    if not isinstance(err, dict):
        err = {"message": str(err)}
    return {
        "error": {
            "message": str(err.get("message") or "the model server failed"),
            "type": "server_error",
            "param": None,
            "code": str(err.get("code")) if err.get("code") is not None else None,
        }
    }
