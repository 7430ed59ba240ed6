"""TEST DOUBLE: a fake OpenAI-compatible model server standing in for the model owner's upstream.

This is not a model. It answers deterministically so that tests and benchmarks can check exactly
what went through the tunnel. It is a raw ASGI app (no framework, to stay cheap in throughput
benchmarks), run with uvicorn:

    python -m tests.fakes.fake_upstream --port 8080      # from the repository root

Endpoints (``/v1`` prefix optional, as with llama.cpp):

- ``POST /v1/chat/completions``: streaming and not, shaped as in shared wire-formats.md §1. The
  answer is the words ``w0 w1 ... w7``, one word per stream chunk; ``max_tokens`` /
  ``max_completion_tokens`` below the word count cut it short with ``finish_reason: "length"``.
  ``usage.prompt_tokens`` is the number of whitespace-separated words in all message texts (min 1);
  ``completion_tokens`` the number of words (or tool-call fragments) emitted.
- ``GET /v1/models``: one model, ``fake-model``.
- ``GET /props``, ``GET /slots``: 404, not counted (the connector's slot probe; this fake does not
  say how many slots it has).
- ``POST /tokenize`` -> ``{"tokens": [...]}`` (one id per word of ``content``);
  ``POST /apply-template`` -> ``{"prompt": <message texts joined with newlines>}``.
- Requests from the connector's probe (user agent ``tokios-connector-probe/...``) are answered as
  above but not counted; a POST the fake has no route for is a 404 to them whatever its body.
- ``GET /_fake/stats`` -> ``{"started", "completed", "aborted", "failed", "last_body", "last_headers",
  "last_path"}``;
  ``POST /_fake/reset`` zeroes them. ``aborted`` counts clients that went away before the answer was
  complete (detected while the fake waits, i.e. with ``delay_ms``/``first_delay_ms``); ``failed``
  counts answers cut short on purpose by ``fail_after``.

Directives, read from the last user message when it contains ``[[...]]``, e.g.
``[[words=20 delay_ms=50 first_delay_ms=0 tool=get_weather status=500 fail_after=3 text=Hello_there]]``:

- ``words=N``: answer N words (still capped by max_tokens, then finish_reason ``length``);
- ``delay_ms=N``: sleep between stream chunks; ``first_delay_ms=N``: sleep before anything is sent,
  headers included (for timeout tests);
- ``tool=NAME``: answer with a call to NAME, arguments ``{"city": "Paris"}`` streamed in 2 fragments;
- ``status=CODE``: answer with that HTTP status and a llama.cpp-style error body;
- ``fail_after=K``: streaming only: send K content chunks, then drop the connection (no ``[DONE]``);
- ``text=Hello_there``: answer these words (underscores become spaces) instead of ``w0 w1 ...``.

Without directives there are no delays ("zero think time"): that is the benchmark mode.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

try:
    import orjson

    def _dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

    _loads = orjson.loads
except ImportError:  # pragma: no cover
    import json

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

    _loads = json.loads

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MODEL_ID = "fake-model"
CREATED = 1_700_000_000  # fixed so answers are byte-for-byte deterministic
DEFAULT_WORDS = 8
TOOL_ARGUMENT_FRAGMENTS = ('{"city": ', '"Paris"}')
DIRECTIVES = re.compile(r"\[\[(.*?)\]\]", re.S)

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
DONE = b"data: [DONE]\n\n"


class DropConnection(Exception):
    """Raised after the response started so uvicorn closes the socket mid-body (fail_after)."""


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.started = 0
        self.completed = 0
        self.aborted = 0
        self.failed = 0
        self.last_body: Any = None
        self.last_headers: dict[str, str] = {}
        self.last_path: str | None = None
        self.counter = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "completed": self.completed,
            "aborted": self.aborted,
            "failed": self.failed,
            "last_body": self.last_body,
            "last_headers": self.last_headers,
            "last_path": self.last_path,
        }


stats = Stats()


# ----------------------------------------------------------------------------- helpers


async def read_body(receive: Receive) -> bytes:
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body"):
        return body
    parts = [body]
    while message.get("more_body"):
        message = await receive()
        parts.append(message.get("body", b""))
    return b"".join(parts)


async def respond(send: Send, status: int, payload: bytes, headers: list[tuple[bytes, bytes]] = JSON_HEADERS) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def error_body(code: int, message: str = "fake upstream error", kind: str = "server_error") -> bytes:
    # llama.cpp shape: `code` is the HTTP status as a number, not OpenAI's string.
    return _dumps({"error": {"code": code, "message": message, "type": kind}})


def message_texts(messages: Any) -> list[str]:
    """Text of every message: string contents and `text` parts."""
    texts: list[str] = []
    if not isinstance(messages, list):
        return texts
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(
                part["text"]
                for part in content
                if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
            )
    return texts


def last_user_text(messages: Any) -> str:
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return "\n".join(message_texts([message]))
    return ""


def parse_directives(text: str) -> dict[str, str]:
    if "[[" not in text:
        return {}
    directives: dict[str, str] = {}
    for block in DIRECTIVES.findall(text):
        for item in block.split():
            key, sep, value = item.partition("=")
            if sep:
                directives[key] = value
    return directives


def int_directive(directives: dict[str, str], name: str, default: int) -> int:
    try:
        return int(directives[name])
    except (KeyError, ValueError):
        return default


class Plan:
    """Everything decided about one chat completion before the first byte is sent."""

    __slots__ = ("words", "finish", "tool", "status", "fail_after", "delay", "first_delay", "prompt_tokens")

    def __init__(self, body: dict[str, Any]) -> None:
        messages = body.get("messages")
        directives = parse_directives(last_user_text(messages))
        self.prompt_tokens = max(1, sum(len(text.split()) for text in message_texts(messages)))
        if "text" in directives:
            words = directives["text"].replace("_", " ").split()
        else:
            count = int_directive(directives, "words", DEFAULT_WORDS)
            words = [f"w{i}" for i in range(max(0, count))]
        limit = body.get("max_completion_tokens")
        if not isinstance(limit, int):
            limit = body.get("max_tokens")
        self.finish = "stop"
        if isinstance(limit, int) and not isinstance(limit, bool) and limit < len(words):
            words = words[: max(0, limit)]
            self.finish = "length"
        self.words = words
        self.tool = directives.get("tool")
        if self.tool:
            self.finish = "tool_calls"
        self.status = int_directive(directives, "status", 200)
        self.fail_after = int_directive(directives, "fail_after", -1)
        self.delay = int_directive(directives, "delay_ms", 0) / 1000
        self.first_delay = int_directive(directives, "first_delay_ms", 0) / 1000

    @property
    def completion_tokens(self) -> int:
        return len(TOOL_ARGUMENT_FRAGMENTS) if self.tool else len(self.words)

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    def content_pieces(self) -> list[str]:
        return [word if i == 0 else " " + word for i, word in enumerate(self.words)]


def tool_call_id(number: int) -> str:
    return f"call_fake{number}"


class Disconnect:
    """Watches for the client going away while the fake sleeps; created only when there are delays,
    so the zero-think-time path pays nothing for it."""

    def __init__(self, receive: Receive) -> None:
        self.task = asyncio.ensure_future(self._wait(receive))

    @staticmethod
    async def _wait(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def sleep(self, seconds: float) -> bool:
        """Sleep; True if the client disconnected meanwhile."""
        if seconds > 0:
            await asyncio.wait((self.task,), timeout=seconds)
        return self.task.done()

    def close(self) -> None:
        self.task.cancel()


# ----------------------------------------------------------------------------- chat completions


async def chat_completions(body: Any, receive: Receive, send: Send) -> None:
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        await respond(send, 400, error_body(400, "'messages' is required", "invalid_request_error"))
        stats.completed += 1
        return
    plan = Plan(body)
    stats.counter += 1
    number = stats.counter
    watcher = Disconnect(receive) if plan.delay or plan.first_delay else None
    try:
        if watcher and await watcher.sleep(plan.first_delay):
            stats.aborted += 1
            return
        if plan.status != 200:
            await respond(send, plan.status, error_body(plan.status))
        elif body.get("stream"):
            if not await stream_chat(body, plan, number, send, watcher):
                return
        else:
            await respond(send, 200, _dumps(completion_object(body, plan, number)))
        stats.completed += 1
    finally:
        if watcher:
            watcher.close()


def completion_object(body: dict[str, Any], plan: Plan, number: int) -> dict[str, Any]:
    if plan.tool:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "tool_calls": [
                {
                    "id": tool_call_id(number),
                    "type": "function",
                    "function": {"name": plan.tool, "arguments": "".join(TOOL_ARGUMENT_FRAGMENTS)},
                }
            ],
        }
    else:
        message = {"role": "assistant", "content": "".join(plan.content_pieces()), "refusal": None}
    return {
        "id": f"chatcmpl-fake{number}",
        "object": "chat.completion",
        "created": CREATED,
        "model": body.get("model") or MODEL_ID,
        "system_fingerprint": None,
        "choices": [{"index": 0, "finish_reason": plan.finish, "logprobs": None, "message": message}],
        "usage": plan.usage(),
    }


async def stream_chat(body: dict[str, Any], plan: Plan, number: int, send: Send, watcher: Disconnect | None) -> bool:
    """Stream one answer; False if it ended early (client gone or fail_after)."""
    model = body.get("model") or MODEL_ID
    # Every chunk shares the same envelope: build its two halves once, splice the delta in per chunk.
    head = (
        b'data: {"id":"chatcmpl-fake%d","object":"chat.completion.chunk","created":%d,"model":%s,"system_fingerprint":null,"choices":[{"index":0,"delta":'
        % (
            number,
            CREATED,
            _dumps(model),
        )
    )
    tail = b',"logprobs":null,"finish_reason":null}],"usage":null}\n\n'

    if plan.tool:
        first: dict[str, Any] = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "index": 0,
                    "id": tool_call_id(number),
                    "type": "function",
                    "function": {"name": plan.tool, "arguments": ""},
                }
            ],
        }
        deltas = [{"tool_calls": [{"index": 0, "function": {"arguments": piece}}]} for piece in TOOL_ARGUMENT_FRAGMENTS]
    else:
        first = {"role": "assistant", "content": ""}
        deltas = [{"content": piece} for piece in plan.content_pieces()]

    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
    await send({"type": "http.response.body", "body": head + _dumps(first) + tail, "more_body": True})
    for index, delta in enumerate(deltas):
        if index == plan.fail_after:
            stats.failed += 1
            raise DropConnection
        if watcher and await watcher.sleep(plan.delay):
            stats.aborted += 1
            return False
        await send({"type": "http.response.body", "body": head + _dumps(delta) + tail, "more_body": True})
    if plan.fail_after >= len(deltas):
        stats.failed += 1
        raise DropConnection

    finish = b'%s{},"logprobs":null,"finish_reason":"%s"}],"usage":null}\n\n' % (head, plan.finish.encode())
    end = [finish]
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        end.append(
            b'data: {"id":"chatcmpl-fake%d","object":"chat.completion.chunk","created":%d,"model":%s,"system_fingerprint":null,"choices":[],"usage":%s}\n\n'
            % (number, CREATED, _dumps(model), _dumps(plan.usage()))
        )
    end.append(DONE)
    await send({"type": "http.response.body", "body": b"".join(end), "more_body": False})
    return True


# ----------------------------------------------------------------------------- other endpoints


async def models(send: Send) -> None:
    payload = {
        "object": "list",
        "data": [{"id": MODEL_ID, "object": "model", "created": CREATED, "owned_by": "fake-upstream"}],
    }
    await respond(send, 200, _dumps(payload))


async def tokenize(body: Any, send: Send) -> None:
    content = body.get("content") if isinstance(body, dict) else None
    if not isinstance(content, str):
        await respond(send, 400, error_body(400, "'content' is required", "invalid_request_error"))
        return
    tokens = [zlib.crc32(word.encode()) % 32000 for word in content.split()]
    await respond(send, 200, _dumps({"tokens": tokens}))


async def apply_template(body: Any, send: Send) -> None:
    messages = body.get("messages") if isinstance(body, dict) else None
    await respond(send, 200, _dumps({"prompt": "\n".join(message_texts(messages))}))


def decode_json(raw: bytes) -> Any:
    try:
        return _loads(raw) if raw else None
    except ValueError:
        return None


async def probe(method: str, path: str, raw: bytes, send: Send) -> None:
    """The connector's probe (tokios_connector/probe.py), not counted: this fake has chat
    completions, /tokenize and /apply-template, and a route it has fails on a body that is not JSON."""
    body = decode_json(raw)
    if method == "POST" and path == "/tokenize" and body is not None:
        await tokenize(body, send)
    elif method == "POST" and path in ("/chat/completions", "/tokenize", "/apply-template") and body is None:
        await respond(send, 400, error_body(400, "body must be JSON", "invalid_request_error"))
    elif method == "GET" and path == "/models":
        await models(send)
    else:
        await respond(send, 404, error_body(404, f"no route for {method} {path}", "not_found_error"))


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return  # lifespan is switched off when run by main(); anything else is not for us
    path: str = scope["path"]
    method: str = scope["method"]
    if path.startswith("/_fake/"):
        if path == "/_fake/stats" and method == "GET":
            await respond(send, 200, _dumps(stats.as_dict()))
        elif path == "/_fake/reset" and method == "POST":
            stats.reset()
            await respond(send, 200, b'{"ok":true}')
        else:
            await respond(send, 404, error_body(404, "unknown fake endpoint", "not_found_error"))
        return
    if path.startswith("/v1/"):
        path = path[3:]
    if method == "GET" and path in ("/props", "/slots"):
        # The connector asks llama.cpp how many slots it has (tokios_connector/slots.py): this fake
        # does not say, like vLLM or Ollama, and the question is not model traffic, so not counted.
        await respond(send, 404, error_body(404, f"no route for {method} {scope['path']}", "not_found_error"))
        return
    if any(k == b"user-agent" and v.startswith(b"tokios-connector-probe/") for k, v in scope["headers"]):
        await probe(method, path, await read_body(receive) if method == "POST" else b"", send)
        return

    stats.started += 1
    stats.last_path = f"{method} {scope['path']}"
    stats.last_headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    if method == "POST":
        raw = await read_body(receive)
        body = decode_json(raw)
        stats.last_body = body
        if body is None and path != "/tokenize":
            await respond(send, 400, error_body(400, "body must be JSON", "invalid_request_error"))
            stats.completed += 1
            return
        if path == "/chat/completions":
            await chat_completions(body, receive, send)
            return
        if path == "/tokenize":
            await tokenize(body, send)
        elif path == "/apply-template":
            await apply_template(body, send)
        else:
            await respond(send, 404, error_body(404, f"no route for POST {scope['path']}", "not_found_error"))
    elif method == "GET" and path == "/models":
        await models(send)
    else:
        await respond(send, 404, error_body(404, f"no route for {method} {scope['path']}", "not_found_error"))
    stats.completed += 1


class _HideDrops(logging.Filter):
    """fail_after ends a response by raising; that is the point, not an error worth a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DropConnection)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="fake_upstream", description="TEST DOUBLE: fake OpenAI-compatible upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.getLogger("uvicorn.error").addFilter(_HideDrops())
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        http="httptools",
        lifespan="off",
        access_log=False,
    )


if __name__ == "__main__":
    main()
