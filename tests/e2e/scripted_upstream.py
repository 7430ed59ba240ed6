"""TEST DOUBLE: a tiny scripted upstream for the few e2e tests the shared fake cannot express.

tests/fakes/fake_upstream.py is the upstream for almost every test. This one answers fixed bytes
per path, so a test can reproduce a specific real server's quirk: an OpenAI-compatible server
without llama.cpp's /tokenize and /apply-template (vLLM, Ollama), a llama.cpp-like template that
renders tool definitions, or a stream whose last event has no blank line after it (Ollama writes
its mid-stream error JSON that way), or an embeddings endpoint (`embeddings()`: vectors computed
from the input, not by any model). It runs in a thread of the test process; the connector
reaches it over real HTTP like any upstream. Every request is recorded as (path, parsed body),
except the connector's probe (user agent `tokios-connector-probe/...`), which a route answers 400
when its body is not JSON.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable
from typing import Any

Answer = tuple[int, str, bytes]  # status, content type, body


class ScriptedUpstream:
    def __init__(self, routes: dict[str, Callable[[Any], Answer]] | None = None):
        self.routes = dict(routes or {})
        self.requests: list[tuple[str, Any]] = []
        self.headers: list[tuple[str, dict[str, str]]] = []  # (path, lower-cased request headers)
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 - the stdlib's naming
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                route = upstream.routes.get(self.path)
                probing = self.headers.get("user-agent", "").startswith("tokios-connector-probe/")
                if not probing:  # the connector's probe (tokios_connector/probe.py) is not recorded
                    upstream.requests.append((self.path, body))
                    upstream.headers.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                if route is not None and probing and isinstance(body, bytes):
                    status, kind, payload = 400, "application/json", b'{"error": {"message": "bad JSON", "code": 400}}'
                elif route is None:
                    status, kind, payload = 404, "application/json", b'{"error": {"message": "Not Found", "code": 404}}'
                else:
                    status, kind, payload = route(body)
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST  # noqa: N815

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def bodies(self, path: str) -> list[Any]:
        return [body for p, body in self.requests if p == path]

    def __enter__(self) -> ScriptedUpstream:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def sse(*events: dict | str, trailing_blank_line: bool = True) -> bytes:
    """An upstream chat stream: each event a `data:` line; a str is written raw (no framing)."""
    frames = [e if isinstance(e, str) else "data: " + json.dumps(e) for e in events]
    text = "\n\n".join(frames)
    return (text + "\n\n" if trailing_blank_line else text).encode()


def chunk(delta: dict, finish_reason: str | None = None) -> dict:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "scripted",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def embedding_for(item: str | list[int], index: int) -> list[float]:
    """The vector the scripted /v1/embeddings gives one input: small whole numbers, exact in float32,
    so that a test can predict it and a base64 round trip returns it unchanged."""
    if isinstance(item, str):
        return [float(len(item)), float(len(item.split())), float(index), -1.0]
    return [float(len(item)), float(sum(item) % 1024), float(index), -1.0]


def embeddings(*, with_usage: bool = True) -> Callable[[Any], Answer]:
    """A route answering /v1/embeddings deterministically (TEST DOUBLE, not a model): one
    `embedding_for` vector per input, always as floats whatever `encoding_format` asked, and
    `prompt_tokens` counting the words of text inputs and the ids of token inputs."""

    def answer(body: Any) -> Answer:
        value = body.get("input") if isinstance(body, dict) else None
        if isinstance(value, str) or (isinstance(value, list) and value and isinstance(value[0], int)):
            items = [value]
        elif isinstance(value, list) and value:
            items = value
        else:
            return 400, "application/json", b'{"error": {"message": "input is required", "code": 400}}'
        data = [
            {"object": "embedding", "index": i, "embedding": embedding_for(item, i)} for i, item in enumerate(items)
        ]
        reply: dict[str, Any] = {"object": "list", "model": body.get("model"), "data": data}
        if with_usage:
            tokens = sum(len(item.split()) if isinstance(item, str) else len(item) for item in items)
            reply["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        return 200, "application/json", json.dumps(reply).encode()

    return answer
