"""Passing /v1/messages and /v1/responses through to a model server that speaks them natively.

Which path a request takes (`speaks`) follows its deployment's `surface_mode`:

- "translate": never passed through; the surface is translated to Chat Completions.
- "passthrough": always passed through (the owner says the model server speaks every surface).
- "auto": passed through when every live connector of the deployment's pool announced the
  surface in its hello frame (they probe their model server); translated when any did not, or
  when none is connected.

A Responses request is passed through only when Tokios need not keep it: `store` is false and it
has no `previous_response_id`. Tokios stores responses itself (for `previous_response_id` and
GET /v1/responses/{id}), and a model server's own ids and storage are not the gateway's, so every
other Responses request is translated, whatever the mode: a client following the Responses
contract (`store` defaults to true) keeps working, and clients that send the whole conversation
each turn with `store: false` (coding agents) get the model server's own implementation. In
"auto", a request with tools other than plain ones (Codex's `namespace` and hosted tools,
Anthropic server tools) is translated too: see `_only_plain_tools`.

On the native path the request is checked as far as limits and safety need (the model, the
output bound, the stream flag), its `model` replaced by the deployment's upstream model, and the
answer returned as the model server sent it, event by event or as one JSON object, with only its
`model` changed to the deployment's name (as on every surface; llama.cpp puts its weights file's
path there). The
usage the answer carries (Anthropic's `message_start`/`message_delta`, the Responses terminal
event's `response.usage`) is read on the way, bounded like chat usage, and metered; without it the
request is metered on estimates and flagged estimated, as on the translated path. The response
header `x-tokios-surface` says which path ran: `native` or `translated`.
"""

from __future__ import annotations

import orjson
from django.http import HttpResponse, HttpResponseBase

from billing.models import MAX_EVENT_TOKENS
from deployments.models import SurfaceMode

from ..errors import GatewayError
from ..gateway import RequestScope
from ..stream import relay, stream_response
from ..translate import log_odd_usage
from ..translate.anthropic import estimate_tokens
from ..translate.sse import DONE, SSEParser, encode_event
from ..tunnel import presence
from ..upstream import ask_json, open_call, read_body, upstream_error, upstream_model

SURFACE_HEADER = "x-tokios-surface"
MAX_TOKENS_BOUND = 2**31 - 1  # as the translators bound max_tokens / max_output_tokens
DEFAULT_OUTPUT_RESERVATION = 1024  # a Responses request that sets no max_output_tokens
COUNT_RESPONSE_LIMIT = 64 * 1024  # {"input_tokens": n} and little else
KEEPALIVE = b": keep-alive\n\n"
MAX_EVENT_NAME = 64


# --- which path ------------------------------------------------------------------------------------


async def speaks(scope: RequestScope, surface: str) -> bool:
    """Whether this request goes to the model server's own `surface` (a name from the connector
    protocol's SURFACES); says which in the response's `x-tokios-surface` header either way."""
    native = await _native(scope, surface)
    scope.headers[SURFACE_HEADER] = "native" if native else "translated"
    return native


async def _native(scope: RequestScope, surface: str) -> bool:
    if surface == "responses" and not _responses_passable(scope.body):
        return False
    deployment = scope.resolved_deployment()
    match deployment.surface_mode:
        case SurfaceMode.PASSTHROUGH:
            return True
        case SurfaceMode.AUTO:
            if not _only_plain_tools(scope.body, surface):
                return False
            connectors = await presence.live_connectors(deployment.pool)
            return bool(connectors) and all(c.surfaces is not None and surface in c.surfaces for c in connectors)
    return False  # "translate", or a mode this version does not know


def _responses_passable(body: dict) -> bool:
    return body.get("store") is False and body.get("previous_response_id") is None


def _only_plain_tools(body: dict, surface: str) -> bool:
    """Whether every tool is one the model itself is given: a `function` tool on Responses, a
    custom tool (no `type`, or "custom") on Messages. Model servers' own surfaces (llama.cpp's
    Responses, as probed) silently drop other tool types, so the model would never see the
    functions inside a `namespace` (Codex's multi-agent tools); the translators flatten those for
    the model and list the hosted and server tools they leave out (x-tokios-omitted-tools). So in
    "auto" such requests are translated; "passthrough" passes them anyway (the owner's word)."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        return True
    if surface == "responses":
        return all(isinstance(tool, dict) and tool.get("type") == "function" for tool in tools)
    if surface in ("messages", "count_tokens"):
        return all(isinstance(tool, dict) and tool.get("type", "custom") in ("custom", None) for tool in tools)
    return True


# --- request checks ---------------------------------------------------------------------------------


def _bounded_int(body: dict, name: str, *, required: bool) -> int | None:
    value = body.get(name)
    if value is None:
        if required:
            raise GatewayError(400, f"{name}: Field required", param=name, code="invalid_value")
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_TOKENS_BOUND:
        raise GatewayError(
            400,
            f"{name}: Input should be an integer between 1 and {MAX_TOKENS_BOUND}",
            param=name,
            code="invalid_value",
        )
    return value


def _check_stream(body: dict) -> bool:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise GatewayError(400, "stream: Input should be a valid boolean", param="stream", code="invalid_value")
    return stream is True


def _check_type(body: dict, name: str, kinds: tuple[type, ...], what: str, *, required: bool = False) -> None:
    value = body.get(name)
    if value is None and not required:
        return
    if not isinstance(value, kinds):
        raise GatewayError(400, f"{name}: Input should be {what}", param=name, code="invalid_value")


def _prompt_estimate(body: dict, fields: tuple[str, ...]) -> int:
    return estimate_tokens(orjson.dumps([body.get(name) for name in fields]).decode())


def _upstream_payload(scope: RequestScope) -> dict:
    payload = dict(scope.body)
    payload["model"] = upstream_model(scope)
    return payload


# --- the two surfaces -------------------------------------------------------------------------------


async def create_message(scope: RequestScope) -> HttpResponseBase:
    """POST /v1/messages to a model server that serves it (the model already resolved)."""
    body = scope.body
    max_tokens = _bounded_int(body, "max_tokens", required=True) or 1
    _check_type(body, "messages", (list,), "a valid list", required=True)
    _check_type(body, "system", (str, list), "a string or a list of text blocks")
    stream = _check_stream(body)
    prompt = _prompt_estimate(body, ("system", "messages", "tools"))
    await scope.check_limits(prompt + max_tokens)
    tally = NativeUsage(scope.request_id, prompt)
    if stream:
        return await stream_response(scope, "/messages", _upstream_payload(scope), MessagesStream(scope, tally))
    return await _whole(scope, "/messages", MessageBody(scope, tally))


async def create_response(scope: RequestScope) -> HttpResponseBase:
    """POST /v1/responses to a model server that serves it (the model already resolved; only
    requests with `store: false` and no `previous_response_id` come here, see `speaks`)."""
    body = scope.body
    max_output = _bounded_int(body, "max_output_tokens", required=False)
    _check_type(body, "input", (str, list), "a string or a list of input items", required=True)
    _check_type(body, "instructions", (str,), "a valid string")
    stream = _check_stream(body)
    prompt = _prompt_estimate(body, ("instructions", "input", "tools"))
    await scope.check_limits(prompt + (max_output or DEFAULT_OUTPUT_RESERVATION))
    tally = NativeUsage(scope.request_id, prompt)
    if stream:
        return await stream_response(scope, "/responses", _upstream_payload(scope), ResponsesStream(scope, tally))
    return await _whole(scope, "/responses", ResponseBody(scope, tally))


async def count_tokens(scope: RequestScope) -> int | None:
    """The model server's own /v1/messages/count_tokens answer, bounded; None when it gave none
    (the caller then counts another way, and the header says `translated`)."""
    counted = await _count_tokens(scope)
    if counted is None:
        scope.headers[SURFACE_HEADER] = "translated"
    return counted


async def _count_tokens(scope: RequestScope) -> int | None:
    data = await ask_json(scope, "/messages/count_tokens", _upstream_payload(scope), COUNT_RESPONSE_LIMIT)
    odd: list[str] = []
    counted = _count(data, "input_tokens", odd)
    if odd:
        log_odd_usage(tuple(odd), scope.request_id)
        return None  # not a count: the gateway's own count is better than a clamped one
    return counted


async def _whole(scope: RequestScope, path: str, collector: NativeBody) -> HttpResponseBase:
    call, status = await open_call(scope, path, _upstream_payload(scope))
    if status != 200:
        raise upstream_error(scope, status, await read_body(scope, call))
    scope.usage_source = collector.tally
    async for _ in relay(scope, call, collector, emit=False):
        pass
    if collector.failed:
        scope.record.error_code = "upstream_error"
        raise GatewayError(
            502,
            "The model server sent a response that is not a JSON object.",
            code="upstream_error",
            headers={"x-should-retry": "false"},
        )
    return HttpResponse(collector.result, content_type="application/json")


# --- usage ------------------------------------------------------------------------------------------


def _count(container: object, key: str, odd: list[str]) -> int | None:
    """A token count as the model server reported it: an int in 0..MAX_EVENT_TOKENS (clamped past
    it), None when missing or not a count; anything odd is named in `odd`."""
    value = container.get(key) if isinstance(container, dict) else None
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        if value <= MAX_EVENT_TOKENS:
            return value
        odd.append(f"{key}={value!r}"[:60])
        return MAX_EVENT_TOKENS
    odd.append(f"{key}={value!r}"[:60])
    return None


class NativeUsage:
    """What a native answer reported of its tokens (a `UsageSource`), bounded; estimates for what
    it did not: the prompt estimate for input, the content deltas seen for output."""

    def __init__(self, request_id: str, input_hint: int):
        self.request_id = request_id
        self.input_hint = input_hint
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.output_estimate = 0
        self.odd = False

    def take(self, usage: object, *, input_keys: tuple[str, ...], output: bool) -> None:
        """Read a usage object: `input_keys` summed for the input; output only when `output` (a
        final count, not a placeholder such as `message_start`'s)."""
        odd: list[str] = []
        parts = [_count(usage, key, odd) for key in input_keys]
        if parts[0] is not None:
            self.input_tokens = min(sum(part or 0 for part in parts), MAX_EVENT_TOKENS)
        if output:
            counted = _count(usage, "output_tokens", odd)
            if counted is not None:
                self.output_tokens = counted
        if odd and not self.odd:
            self.odd = True
            log_odd_usage(tuple(odd), self.request_id)

    def usage(self) -> tuple[int, int, bool]:
        estimated = self.odd or self.input_tokens is None or self.output_tokens is None
        return (
            self.input_hint if self.input_tokens is None else self.input_tokens,
            self.output_estimate if self.output_tokens is None else self.output_tokens,
            estimated,
        )


# Anthropic's input_tokens leaves out what the prompt cache served or wrote: the prompt is their sum.
ANTHROPIC_INPUT = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
RESPONSES_INPUT = ("input_tokens",)  # cached tokens are a part of it (input_tokens_details)
RESPONSES_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


# --- streamed answers -------------------------------------------------------------------------------


class NativeStream:
    """The model server's event stream, passed on event by event (a `Translator` for the stream
    loop) while its events are read for usage and errors.

    Each event goes out whole, as its `type` names it, with only the model's name changed to the
    deployment's (a model server may name its weights file there); so a keep-alive never lands
    inside an event the server is half-way through."""

    stopped = False  # the model server applies its own stop sequences
    failed = False  # an error event is the client's to read; the stream ends as the server ends it
    keepalive_event = KEEPALIVE

    def __init__(self, scope: RequestScope, tally: NativeUsage):
        self.record = scope.record
        self.model = scope.resolved_deployment().name
        self.tally = tally
        self.parser = SSEParser()
        self.has_output = False

    def start(self) -> bytes:
        return b""

    def feed(self, data: bytes) -> bytes:
        return self._pass(self.parser.feed(data))

    async def end(self) -> bytes:
        return self._pass(self.parser.flush())

    def _pass(self, events: list[dict | str]) -> bytes:
        out = []
        for event in events:
            if not isinstance(event, dict):
                if event == DONE:  # neither surface ends so, but a server may
                    out.append(b"data: [DONE]\n\n")
                continue
            wrapped = event.get("error")
            if len(event) == 1 and isinstance(wrapped, dict) and wrapped.get("type") == "error":
                event = wrapped  # a Responses `error` event, as the server wrote it (the parser wraps it)
            self.read(event)
            for name in ("message", "response"):  # Anthropic's message_start, the Responses objects
                inner = event.get(name)
                if isinstance(inner, dict) and "model" in inner:
                    inner["model"] = self.model
            out.append(encode_event(_event_name(event), event))
        return b"".join(out)

    def keepalive(self) -> bytes:
        return self.keepalive_event

    def fail(self, message: str, code: str) -> bytes:
        return self.error_event(message, code)

    def buffered(self) -> int:
        return self.parser.buffered()

    def usage(self) -> tuple[int, int, bool]:
        return self.tally.usage()

    def upstream_failed(self) -> None:
        self.record.error_code = self.record.error_code or "upstream_error"

    def read(self, event: dict) -> None:
        raise NotImplementedError

    def error_event(self, message: str, code: str) -> bytes:
        raise NotImplementedError


def _event_name(event: dict) -> str | None:
    """The SSE event name for an event: its `type` (both surfaces name every event so), when that is
    a plain name; a bare error object (`{"error": ...}`) is an `error` event."""
    kind = event.get("type")
    if isinstance(kind, str) and len(kind) <= MAX_EVENT_NAME and kind.isascii():
        if kind.replace("_", "").replace(".", "").isalnum():  # nothing that could end the line
            return kind
    return "error" if "error" in event and kind is None else None


def anthropic_error_type(code: str) -> str:
    if code in ("queue_full", "queue_timeout"):
        return "overloaded_error"
    return "timeout_error" if code in ("upstream_timeout", "request_deadline") else "api_error"


class MessagesStream(NativeStream):
    keepalive_event = encode_event("ping", {"type": "ping"})  # as Anthropic's own streams keep alive

    def read(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "content_block_delta":
            self.has_output = True
            self.tally.output_estimate += 1
        elif kind == "message_start":
            message = event.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            self.tally.take(usage, input_keys=ANTHROPIC_INPUT, output=False)
        elif kind == "message_delta":
            usage = event.get("usage")
            # Newer servers repeat the input count here; `take` keeps the earlier one if not.
            self.tally.take(usage, input_keys=ANTHROPIC_INPUT, output=True)
        elif kind == "error" or "error" in event:
            self.upstream_failed()

    def error_event(self, message: str, code: str) -> bytes:
        error = {"type": anthropic_error_type(code), "message": message}
        return encode_event("error", {"type": "error", "error": error})


class ResponsesStream(NativeStream):
    def __init__(self, scope: RequestScope, tally: NativeUsage):
        super().__init__(scope, tally)
        self.next_sequence = 0

    def read(self, event: dict) -> None:
        kind = event.get("type")
        sequence = event.get("sequence_number")
        if isinstance(sequence, int) and not isinstance(sequence, bool) and 0 <= sequence < MAX_EVENT_TOKENS:
            self.next_sequence = max(self.next_sequence, sequence + 1)
        if isinstance(kind, str) and kind.endswith(".delta"):
            self.has_output = True
            self.tally.output_estimate += 1
        elif kind in RESPONSES_TERMINAL:
            response = event.get("response")
            usage = response.get("usage") if isinstance(response, dict) else None
            self.tally.take(usage, input_keys=RESPONSES_INPUT, output=True)
            if kind == "response.failed":
                self.upstream_failed()
        elif kind == "error" or "error" in event:
            self.upstream_failed()

    def error_event(self, message: str, code: str) -> bytes:
        # Flat fields for typed clients, a nested `error` so that the OpenAI SDK raises.
        error = {"type": "server_error", "code": code, "message": message, "param": None}
        fields = {"code": code, "message": message, "param": None, "error": error}
        return encode_event("error", {"type": "error", "sequence_number": self.next_sequence, **fields})


# --- whole answers ----------------------------------------------------------------------------------


class NativeBody:
    """A non-streamed answer: the model server's JSON object, held until complete, passed on with
    only the model's name changed to the deployment's; its usage read once it is whole."""

    stopped = False

    def __init__(self, scope: RequestScope, tally: NativeUsage):
        self.model = scope.resolved_deployment().name
        self.tally = tally
        self.parts: list[bytes] = []
        self.result = b""
        self.failed = False
        self.has_output = False

    def start(self) -> bytes:
        return b""

    def feed(self, data: bytes) -> bytes:
        self.parts.append(data)
        return b""

    async def end(self) -> bytes:
        self.has_output = True
        raw, self.parts = b"".join(self.parts), []
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            self.failed = True
            return b""
        self.read(data)
        if "model" in data:  # a model server may name its weights file there
            data["model"] = self.model
        self.result = orjson.dumps(data)
        return b""

    def keepalive(self) -> bytes:
        return b""

    def fail(self, message: str, code: str) -> bytes:
        return b""

    def buffered(self) -> int:
        return 0  # the loop counts what a non-streamed answer holds

    def usage(self) -> tuple[int, int, bool]:
        return self.tally.usage()

    def read(self, data: dict) -> None:
        raise NotImplementedError


class MessageBody(NativeBody):
    def read(self, data: dict) -> None:
        self.tally.output_estimate = estimate_tokens(orjson.dumps(data.get("content")).decode())
        self.tally.take(data.get("usage"), input_keys=ANTHROPIC_INPUT, output=True)


class ResponseBody(NativeBody):
    def read(self, data: dict) -> None:
        self.tally.output_estimate = estimate_tokens(orjson.dumps(data.get("output")).decode())
        self.tally.take(data.get("usage"), input_keys=RESPONSES_INPUT, output=True)
