"""Canned upstream Chat Completions streams (wire-formats §1.4 shape) and SSE test helpers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from proxy.translate.sse import SSEParser

CHUNK_BASE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1727346168, "model": "upstream-m"}


def chunk(delta: dict | None = None, finish_reason: str | None = None) -> dict:
    return {
        **CHUNK_BASE,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}],
        "usage": None,
    }


def usage_chunk(prompt: int, completion: int, *, cached: int = 0, reasoning: int = 0) -> dict:
    return {
        **CHUNK_BASE,
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        },
    }


@dataclass
class ToolCall:
    id: str
    name: str
    fragments: list[str]

    @property
    def arguments(self) -> str:
        return "".join(self.fragments)


@dataclass
class Script:
    """One upstream answer: what it says, and the chunks that carry it."""

    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tools: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = "stop"
    usage: tuple[int, int] | None = (14, 9)
    reasoning_field: str = "reasoning_content"

    def chunks(self) -> list[dict]:
        out = [chunk({"role": "assistant", "content": None if self.reasoning else ""})]
        out += [chunk({self.reasoning_field: piece}) for piece in self.reasoning]
        out += [chunk({"content": piece}) for piece in self.text]
        for k, call in enumerate(self.tools):
            out.append(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": k,
                                "id": call.id,
                                "type": "function",
                                "function": {"name": call.name, "arguments": ""},
                            }
                        ]
                    }
                )
            )
            out += [chunk({"tool_calls": [{"index": k, "function": {"arguments": f}}]}) for f in call.fragments]
        if self.finish_reason:
            out.append(chunk({}, self.finish_reason))
        if self.usage:
            out.append(usage_chunk(*self.usage))
        return out

    @property
    def content_chunk_count(self) -> int:
        return len(self.text) + len(self.reasoning) + sum(1 + len(t.fragments) for t in self.tools)

    def upstream_bytes(self) -> bytes:
        return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in self.chunks()) + b"data: [DONE]\n\n"


def run_upstream(translator, raw: bytes, *, piece: int = 7) -> bytes:
    """What the gateway does: parse the upstream bytes in small reads, feed the translator
    until ``[DONE]`` or a stop sequence, then finish."""
    parser = SSEParser()
    out = [translator.start()]
    done = False
    for i in range(0, len(raw), piece):
        for payload in parser.feed(raw[i : i + piece]):
            if payload == "[DONE]":
                done = True
                break
            out.append(translator.feed(payload))
            if getattr(translator, "stopped", False):
                done = True
                break
        if done:
            break
    if not done:
        for payload in parser.flush():
            if payload != "[DONE]":
                out.append(translator.feed(payload))
    out.append(translator.finish())
    return b"".join(out)


def parse_sse(raw: bytes) -> list[tuple[str | None, dict]]:
    """Client-side view of our SSE output: (event name, data) per frame. Also checks the
    framing rules both SDK decoders rely on (§0.2)."""
    assert raw.endswith(b"\n\n"), "every frame must end with a blank line"
    events = []
    for frame in raw.decode().split("\n\n")[:-1]:
        if frame.startswith(":"):
            continue
        name = None
        data = None
        for line in frame.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                assert data is None, "one data line per frame"
                data = json.loads(line[6:])
            else:
                raise AssertionError(f"unexpected line {line!r}")
        assert data is not None, "data-less events crash the SDK decoders"
        events.append((name, data))
    return events
