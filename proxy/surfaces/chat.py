"""POST /v1/chat/completions: validated, passed through to the model, streamed back.

The model speaks this surface already, so its translators pass the model's answer through: the
streamed one rewrites each event's id and model name and hides the usage chunk from a client
that did not ask for it; the non-streamed one holds the body and rewrites the same fields.
"""

from __future__ import annotations

import orjson
from django.http import HttpResponseBase

from ..errors import GatewayError, json_response
from ..gateway import RequestScope
from ..stream import relay, stream_response
from ..translate import log_odd_usage, read_usage
from ..translate.sse import DONE, SSEParser
from ..upstream import open_call, read_body, upstream_error, upstream_model

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
# OpenAI's documented ranges (the SDK's types); the model server gets nothing outside them.
NUMBER_RANGES = {"temperature": (0, 2), "top_p": (0, 1), "frequency_penalty": (-2, 2), "presence_penalty": (-2, 2)}
INT_RANGES = {
    "max_tokens": (1, 2**31 - 1),  # as the usage table stores tokens
    "max_completion_tokens": (1, 2**31 - 1),
    "n": (1, 128),
    "seed": (-(2**63), 2**63 - 1),
    "top_logprobs": (0, 20),
}
MAX_STOP = 4
DEFAULT_OUTPUT_RESERVATION = 1024


def _bad(message: str, param: str) -> GatewayError:
    return GatewayError(400, message, param=param, code="invalid_value")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
        if not isinstance(role, str) or role not in ROLES:
            shown = repr(role[:64]) if isinstance(role, str) else type(role).__name__
            raise _bad(f"messages[{i}].role must be one of {sorted(ROLES)}, got {shown}.", f"messages[{i}].role")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise _bad(f"messages[{i}].content must be a string or an array of parts.", f"messages[{i}].content")
        if content is None and role != "assistant":
            raise _bad(f"messages[{i}].content is required for role {role}.", f"messages[{i}].content")
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise _bad(f"messages[{i}].tool_call_id is required for tool messages.", f"messages[{i}].tool_call_id")
    for name, (low, high) in NUMBER_RANGES.items():
        value = body.get(name)
        if value is not None and (not _is_number(value) or not low <= value <= high):
            raise _bad(f"'{name}' must be a number between {low} and {high}.", name)
    for name, (low, high) in INT_RANGES.items():
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high):
            raise _bad(f"'{name}' must be an integer between {low} and {high}.", name)
    if body.get("logprobs") is not None and not isinstance(body["logprobs"], bool):
        raise _bad("'logprobs' must be a boolean.", "logprobs")
    if "stream" in body and not isinstance(body["stream"], bool) and body["stream"] is not None:
        raise _bad("'stream' must be a boolean.", "stream")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise _bad("'stream_options' must be an object.", "stream_options")
        if not body.get("stream"):
            raise _bad("'stream_options' is only allowed when 'stream' is true.", "stream_options")
    stop = body.get("stop")
    if (
        stop is not None
        and not isinstance(stop, str)
        and not (isinstance(stop, list) and len(stop) <= MAX_STOP and all(isinstance(s, str) for s in stop))
    ):
        raise _bad(f"'stop' must be a string or an array of up to {MAX_STOP} strings.", "stop")
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


def upstream_body(scope: RequestScope, body: dict, *, stream: bool) -> dict:
    payload = dict(body)
    payload["model"] = upstream_model(scope)
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


async def chat_completions(scope: RequestScope) -> HttpResponseBase:
    body = scope.body
    await scope.resolve_model(body.get("model"))
    validate(body)
    stream = body.get("stream") is True
    max_out = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_OUTPUT_RESERVATION
    await scope.check_limits(estimate_prompt_tokens(body["messages"]) + max_out * (body.get("n") or 1))
    if stream:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        streamer = ChatStream(scope, include_usage)
        return await stream_response(scope, "/chat/completions", upstream_body(scope, body, stream=True), streamer)
    call, status = await open_call(scope, "/chat/completions", upstream_body(scope, body, stream=False))
    if status != 200:
        raise upstream_error(scope, status, await read_body(scope, call))
    collector = ChatBody(scope)
    scope.usage_source = collector
    async for _ in relay(scope, call, collector, emit=False):
        pass
    if collector.failed:
        raise GatewayError(502, collector.error_message, code="upstream_error", headers={"x-should-retry": "false"})
    return json_response(collector.result)


class _ChatTranslator:
    """What both chat translators share: the ids and name the client sees, and usage."""

    stopped = False

    def __init__(self, scope: RequestScope):
        self.record = scope.record
        self.request_id = scope.request_id
        self.completion_id = "chatcmpl-" + scope.request_id[4:]
        self.model = scope.resolved_deployment().name
        self.messages = scope.body.get("messages") or []
        self.prompt_tokens: int | None = None  # as the model reported them, parsed and bounded
        self.completion_tokens: int | None = None
        self.odd_usage = False
        self.deltas = 0
        self.failed = False
        self.has_output = False

    def take_usage(self, usage: object) -> bool:
        """Read the model's usage; True if it was clean (both counts there, and counts)."""
        reported = read_usage(usage)
        if reported.prompt is not None:
            self.prompt_tokens = reported.prompt
        if reported.completion is not None:
            self.completion_tokens = reported.completion
        if reported.odd and not self.odd_usage:
            self.odd_usage = True
            log_odd_usage(reported.odd, self.request_id)
        return not reported.odd and reported.prompt is not None and reported.completion is not None

    def usage(self) -> tuple[int, int, bool]:
        prompt = self.prompt_tokens if self.prompt_tokens is not None else estimate_prompt_tokens(self.messages)
        if self.completion_tokens is None:
            # Chunks that carried a delta approximate generated tokens when no usage arrived.
            return prompt, max(0, self.deltas - 1), True
        return prompt, self.completion_tokens, self.odd_usage

    def usage_shown(self) -> dict:
        """The usage a client is shown in place of one that was missing or not counts: what is recorded."""
        prompt, completion, _ = self.usage()
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def keepalive(self) -> bytes:
        return b": keep-alive\n\n"

    def start(self) -> bytes:
        return b""


class ChatStream(_ChatTranslator):
    def __init__(self, scope: RequestScope, include_usage: bool):
        super().__init__(scope)
        self.include_usage = include_usage
        self.parser = SSEParser()
        self.done = False

    def feed(self, data: bytes) -> bytes:
        return self._relay(self.parser.feed(data))

    async def end(self) -> bytes:
        # The last event may come without a blank line after it.
        out = self._relay(self.parser.flush())
        return out if self.done else out + b"data: [DONE]\n\n"

    def fail(self, message: str, code: str) -> bytes:
        return _error_event(message, code)

    def buffered(self) -> int:
        return self.parser.buffered()

    def _relay(self, events: list) -> bytes:
        out = []
        for event in events:
            if event == DONE:
                self.done = True
                out.append(b"data: [DONE]\n\n")
                continue
            if "error" in event:
                self.record.error_code = "upstream_error"
                out.append(b"data: " + orjson.dumps(_normalise_stream_error(event)) + b"\n\n")
                continue
            choices = event.get("choices")
            if event.get("usage"):
                # Older llama.cpp put usage on the finish chunk; the SDK wants it on the last only.
                clean = self.take_usage(event["usage"])
                if not choices and not self.include_usage:
                    continue
                if not clean and self.include_usage:
                    event["usage"] = self.usage_shown()
            if not self.include_usage:
                event.pop("usage", None)
            if choices:
                self.has_output = True
                self.deltas += 1
            event["id"] = self.completion_id
            event["model"] = self.model
            out.append(b"data: " + orjson.dumps(event) + b"\n\n")
        return b"".join(out)


class ChatBody(_ChatTranslator):
    """A non-streamed answer: the model's JSON object, held until it is complete."""

    def __init__(self, scope: RequestScope):
        super().__init__(scope)
        self.parts: list[bytes] = []
        self.size = 0
        self.result: dict = {}
        self.error_message = ""

    def feed(self, data: bytes) -> bytes:
        self.parts.append(data)
        self.size += len(data)
        return b""

    def buffered(self) -> int:
        return 0  # the loop counts what a non-streamed response holds

    async def end(self) -> bytes:
        self.has_output = True
        try:
            data = orjson.loads(b"".join(self.parts))
        except orjson.JSONDecodeError:
            data = None
        self.parts = []
        if not isinstance(data, dict):
            self.failed = True
            self.error_message = "The model server sent a response that is not a JSON object."
            return b""
        data["model"] = self.model
        data["id"] = self.completion_id
        data.setdefault("object", "chat.completion")
        if not self.take_usage(data.get("usage")):
            data["usage"] = self.usage_shown()
        self.result = data
        return b""

    def fail(self, message: str, code: str) -> bytes:
        return b""


def _error_event(message: str, code: str) -> bytes:
    error = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    return b"data: " + orjson.dumps(error) + b"\n\n"


def _normalise_stream_error(event: dict) -> dict:
    err = event.get("error")
    if not isinstance(err, dict):
        err = {"message": str(err)}
    return {
        "error": {
            "message": str(err.get("message") or "the model server failed")[:2000],
            "type": "server_error",
            "param": None,
            "code": str(err.get("code"))[:64] if err.get("code") is not None else None,
        }
    }
