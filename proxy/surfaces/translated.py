"""Driving a Chat Completions upstream for a surface that speaks another format.

The upstream is always asked to stream (with usage), whatever the client asked: chunks feed the
surface's translator, which either streams SSE to the client or builds the final object. That one
path gives exact stop-sequence detection, time to first token, and partial usage on cancel.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from django.conf import settings
from django.http import HttpResponse, StreamingHttpResponse

from ..errors import GatewayError, json_response
from ..gateway import STREAM_HEADERS, Context, finish_record
from ..translate.sse import SSEParser
from ..tunnel.router import TunnelError
from .upstream import open_call, read_error, tunnel_error, upstream_error


class Translated:
    """What a surface provides: its translator and how it frames keep-alives and results."""

    def __init__(
        self,
        translator,
        *,
        keepalive: Callable[[], bytes],
        final: Callable[[], dict],
        before_finish: Callable[[], Awaitable[None]] | None = None,
    ):
        self.translator = translator
        self.keepalive = keepalive
        self.final = final
        self.before_finish = before_finish


def _settle(ctx: Context, translator) -> None:
    record = ctx.record
    record.input_tokens = translator.input_tokens
    record.output_tokens = translator.output_tokens
    record.usage_estimated = translator.usage_estimated
    record.cost_micros = ctx.deployment.cost_micros(record.input_tokens, record.output_tokens)


async def run(ctx: Context, chat_body: dict, surface: Translated, *, stream: bool) -> HttpResponse:
    call, status = await open_call(ctx, "/chat/completions", chat_body)
    if status != 200:
        raise upstream_error(ctx, status, await read_error(call))
    if stream:
        ctx.record.streamed = True
        return StreamingHttpResponse(_events(ctx, call, surface, emit=True), content_type="text/event-stream", headers=STREAM_HEADERS)
    try:
        async for _ in _events(ctx, call, surface, emit=False):
            pass
    except TunnelError as exc:
        raise tunnel_error(exc) from None
    translator = surface.translator
    if translator.failed:
        # The same statuses as a Chat Completions request failing the same way: a model that went
        # silent is a 504 (timeout_error for Anthropic), anything else that broke is a 502.
        message = translator.error_message or "The model server failed."
        if ctx.record.error_code == "upstream_timeout":
            raise GatewayError(504, message, code="upstream_timeout", headers={"x-should-retry": "true"})
        raise GatewayError(502, message, code="upstream_error", headers={"x-should-retry": "false"})
    return json_response(surface.final())


async def _events(ctx: Context, call, surface: Translated, *, emit: bool):
    """Yield SSE bytes (or nothing when not emitting) until the translator is done."""
    translator = surface.translator
    record = ctx.record
    parser = SSEParser()
    deadline = time.monotonic() + settings.UPSTREAM_TIMEOUT
    try:
        if emit:
            yield translator.start()
        else:
            translator.start()
        while not translator.failed:
            item = await call.next_item(settings.KEEPALIVE_INTERVAL)
            if item is None:
                if time.monotonic() > deadline:
                    await call.cancel()
                    out = translator.error("The model stopped sending tokens (timeout).", "timeout_error" if ctx.anthropic else "server_error")
                    record.error_code = "upstream_timeout"
                    if emit:
                        yield out
                    return
                if emit:
                    yield surface.keepalive()
                continue
            kind = item[0]
            if kind == "chunk":
                deadline = time.monotonic() + settings.UPSTREAM_TIMEOUT
                out = []
                more = call.ready_chunks()
                for event in parser.feed(b"".join([item[1], *more]) if more else item[1]):
                    if event == "[DONE]":
                        continue
                    if record.ttft_ms is None and event.get("choices"):
                        record.first_token()
                    out.append(translator.feed(event))
                    if translator.stopped or translator.failed:
                        break
                if emit and out:
                    yield b"".join(out)
                if translator.failed:
                    record.error_code = "upstream_error"
                    return
                if translator.stopped:
                    await call.cancel()  # a stop sequence matched: the model can stop working
                    break
            elif kind == "end":
                # The upstream's last event may have had no blank line after it (Ollama writes a
                # mid-stream error as bare JSON): what it produces goes to the client like the rest.
                out = [translator.feed(event) for event in parser.flush() if event != "[DONE]"]
                if emit and out:
                    yield b"".join(out)
                if translator.failed:
                    record.error_code = "upstream_error"
                    return
                break
            elif kind == "error":
                record.error_code = item[1]
                out = translator.error(f"The tunnel failed mid-stream: {item[2] or item[1]}", "api_error" if ctx.anthropic else "server_error")
                if emit:
                    yield out
                return
        if translator.failed:
            return
        out = translator.finish()
        if surface.before_finish is not None:
            _settle(ctx, translator)
            await surface.before_finish()
        if emit:
            yield out
    finally:
        try:
            if not call.finished:
                record.cancelled = True
                await call.cancel()
        finally:
            _settle(ctx, translator)
            if emit:
                record.finish()
                finish_record(ctx)
