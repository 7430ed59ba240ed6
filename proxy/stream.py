"""The one loop that reads a model's response and turns it into what the client asked for.

Every surface runs through `relay()`: Chat Completions with a translator that passes the model's
events through (rewriting ids and names), Messages and Responses with translators from
`proxy/translate/`. Keep-alives, the idle timeout, the request's overall deadline, the size cap
on what is held in memory, cancellation and in-band errors live here and nowhere else.

A streamed request (`emit=True`) yields bytes for the client; a failure after the response began
becomes an in-band error event. A non-streamed one (`emit=False`) yields nothing: the surface
builds its answer from the translator afterwards, and a failure raises GatewayError.

`stream_response()` opens a streamed request's call. When the model is busy and the request waits
in its deployment's queue for longer than a moment, the client gets its 200 and headers at once
and reads `: queued, position N` comments (which SSE clients ignore) until a slot frees; what
fails after that (the wait, the model's answer status) comes as an in-band error event.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from django.conf import settings
from django.http import StreamingHttpResponse

from .calls import CallError, Data, Ended, Failed, UpstreamCall
from .errors import GatewayError
from .gateway import STREAM_HEADERS, RequestScope
from .tracing import capture_output
from .translate.sse import DONE, SSEParser
from .tunnel.router import call_error
from .upstream import (
    call_failed,
    first_byte_budget,
    gateway_error,
    new_call,
    note_call,
    read_body,
    request_deadline,
    response_too_large,
    upstream_error,
)

# Seconds between `: queued` comments to a streamed request waiting for a slot; the first one, and
# the response's headers, go out once it has waited that long (never later than a keep-alive).
QUEUE_NOTICE = 2.0


class Translator(Protocol):
    # Read-only here: the loop only reads them (a translator may compute them).
    @property
    def stopped(self) -> bool:
        """The answer is complete before the model finished (a stop sequence matched)."""

    @property
    def failed(self) -> bool:
        """The model's output carried an error; the translator has answered it."""

    @property
    def has_output(self) -> bool:
        """The first token has been seen (time to first token)."""

    def start(self) -> bytes: ...

    def feed(self, data: bytes) -> bytes: ...

    async def end(self) -> bytes: ...

    def fail(self, message: str, code: str) -> bytes: ...

    def keepalive(self) -> bytes: ...

    def buffered(self) -> int: ...

    def usage(self) -> tuple[int, int, bool]: ...


async def relay(scope: RequestScope, call: UpstreamCall, translator: Translator, *, emit: bool) -> AsyncIterator[bytes]:
    record = scope.record
    limit = settings.MAX_RESPONSE_BYTES
    held = 0  # bytes a non-streamed response holds in memory so far
    idle_until = time.monotonic() + settings.UPSTREAM_TIMEOUT
    capture = capture_output(scope.trace)  # None unless the operator opted in to content on traces
    out = translator.start()
    if emit and out:
        yield out
    while True:
        now = time.monotonic()
        wait = min(settings.KEEPALIVE_INTERVAL, idle_until - now, scope.deadline - now)
        item = await call.next_item(wait) if wait > 0 else None
        match item:
            case Data(data=data):
                idle_until = time.monotonic() + settings.UPSTREAM_TIMEOUT
                held += len(data) if not emit else 0
                if capture is not None:
                    capture(data)
                out = translator.feed(data)
                del item, data  # held no longer than needed while the client is written to
                if record.ttft_ms is None and translator.has_output:
                    record.first_token()
                if emit and out:
                    yield out
                if translator.failed:
                    record.error_code = record.error_code or "upstream_error"
                    await call.cancel()
                    return
                if held > limit or translator.buffered() > limit:
                    await call.cancel()
                    if not emit:
                        raise response_too_large(limit)
                    yield _failure(
                        translator,
                        record,
                        "response_too_large",
                        "The model sent an event larger than this server accepts.",
                    )
                    return
                if translator.stopped:
                    await call.cancel()  # a stop sequence matched: the model can stop working
                    out = await translator.end()
                    if emit and out:
                        yield out
                    return
            case Ended(upstream_ms=upstream_ms, ttfb_ms=ttfb_ms):
                record.upstream_ms, record.upstream_ttfb_ms = upstream_ms, ttfb_ms
                out = await translator.end()
                if record.ttft_ms is None and translator.has_output:
                    record.first_token()
                if translator.failed:
                    record.error_code = record.error_code or "upstream_error"
                if emit and out:
                    yield out
                return
            case Failed(code=code, message=message):
                if not emit:
                    raise gateway_error(call_error(item))
                yield _failure(translator, record, code, f"The tunnel failed mid-stream: {message or code}")
                return
            case None:
                now = time.monotonic()
                if now >= scope.deadline or now >= idle_until:
                    await call.cancel()
                    if now >= scope.deadline:
                        error = request_deadline()
                    else:
                        error = GatewayError(
                            504,
                            "The model stopped sending tokens (timeout).",
                            code="upstream_timeout",
                            headers={"x-should-retry": "true"},
                        )
                    if not emit:
                        raise error
                    yield _failure(translator, record, error.code or "upstream_timeout", error.message)
                    return
                if emit:
                    yield translator.keepalive()


async def stream_response(
    scope: RequestScope, path: str, payload: dict, translator: Translator
) -> StreamingHttpResponse:
    """Open a streamed request's call and answer with its stream; GatewayError for what fails
    before the client was answered."""
    call = new_call(scope, path, payload)
    notice = min(QUEUE_NOTICE, settings.KEEPALIVE_INTERVAL)
    began = time.monotonic()
    try:
        position = await call.admit(first_byte_budget(scope), notice)
        if not position:
            started = await call.start(_budget_left(scope, began))
    except CallError as exc:
        raise call_failed(scope, exc) from None
    finally:
        note_call(scope, call)
    if position:
        body = _queued(scope, call, translator, position, notice, began)
    elif started.status != 200:
        raise upstream_error(scope, started.status, await read_body(scope, call))
    else:
        scope.usage_source = translator
        body = relay(scope, call, translator, emit=True)
    scope.record.streamed = True
    return StreamingHttpResponse(body, content_type="text/event-stream", headers=STREAM_HEADERS)


def _budget_left(scope: RequestScope, began: float) -> float:
    """What is left of `first_byte_budget` for a call opened at `began`."""
    return max(0.0, min(settings.FIRST_BYTE_TIMEOUT - (time.monotonic() - began), scope.seconds_left()))


async def _queued(
    scope: RequestScope, call: UpstreamCall, translator: Translator, position: int, notice: float, began: float
) -> AsyncIterator[bytes]:
    """A streamed request whose client has its headers while it waits in line for a slot."""
    error: GatewayError | None = None
    try:
        while position:
            yield b": queued, position %d\n\n" % position
            position = await call.admit(_budget_left(scope, began), notice)
        started = await call.start(_budget_left(scope, began))
        if started.status != 200:
            error = upstream_error(scope, started.status, await read_body(scope, call))
    except CallError as exc:
        error = call_failed(scope, exc)
    except GatewayError as exc:
        error = exc
    finally:
        note_call(scope, call)
    if error is not None:
        scope.record.status_code = error.status  # what it would have been before any byte
        yield _failure(translator, scope.record, error.code or "upstream_error", error.message)
        return
    scope.usage_source = translator
    async for out in relay(scope, call, translator, emit=True):
        yield out


def _failure(translator: Translator, record, code: str, message: str) -> bytes:
    record.error_code = code
    if code in ("upstream_timeout", "request_deadline"):
        record.status_code = 504
    return translator.fail(message, code)


class EventTranslator:
    """Adapts a `proxy.translate` stream translator (Chat Completions events in, the surface's
    bytes out) to the loop: it parses the model's SSE and hands the events over."""

    def __init__(
        self,
        inner,
        *,
        keepalive: Callable[[], bytes],
        error_kind: Callable[[str], str],
        on_complete: Callable[[], Awaitable[None]] | None = None,
    ):
        self.inner = inner
        self.parser = SSEParser()
        self.keepalive = keepalive
        self.error_kind = error_kind
        self.on_complete = on_complete
        self.has_output = False

    @property
    def stopped(self) -> bool:
        return self.inner.stopped

    @property
    def failed(self) -> bool:
        return self.inner.failed

    def start(self) -> bytes:
        return self.inner.start()

    def feed(self, data: bytes) -> bytes:
        return self._events(self.parser.feed(data))

    def _events(self, events: list) -> bytes:
        inner = self.inner
        out = []
        for event in events:
            if event == DONE:
                continue
            if not self.has_output and event.get("choices"):
                self.has_output = True
            out.append(inner.feed(event))
            if inner.stopped or inner.failed:
                break
        return b"".join(out)

    async def end(self) -> bytes:
        # The upstream's last event may have had no blank line after it (Ollama writes a
        # mid-stream error as bare JSON): what it produces goes to the client like the rest.
        out = self._events(self.parser.flush()) if not self.inner.stopped else b""
        if self.inner.failed:
            return out
        done = self.inner.finish()
        if self.on_complete is not None:
            await self.on_complete()  # e.g. store the response before the client hears it is done
        return out + done

    def fail(self, message: str, code: str) -> bytes:
        return self.inner.error(message, self.error_kind(code))

    def buffered(self) -> int:
        return self.parser.buffered()

    def usage(self) -> tuple[int, int, bool]:
        inner = self.inner
        return inner.input_tokens, inner.output_tokens, inner.usage_estimated
