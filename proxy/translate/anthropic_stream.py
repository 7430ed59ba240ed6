"""Anthropic Messages response side: one stateful translator per request turns upstream
``chat.completion.chunk`` dicts into Anthropic SSE events (wire-formats §3.4, §6.3) and, for
non-streaming clients, into the final Message object (§3.3, §6.2).
"""

from __future__ import annotations

import json

from ._common import (
    UsageTally,
    is_int,
    new_id,
    tool_call_arguments,
    upstream_error,
)
from .anthropic_request import MessagesRequestInfo
from .sse import encode_event

__all__ = ["MessagesStreamTranslator"]

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
# Upstream error ``type`` (llama.cpp / OpenAI vocabulary) → Anthropic error type (§6.7).
_ERROR_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "exceed_context_size_error": "invalid_request_error",
    "unavailable_error": "overloaded_error",
    "service_unavailable_error": "overloaded_error",
    "rate_limit_error": "overloaded_error",
    "timeout_error": "timeout_error",
}


class _Block:
    __slots__ = ("kind", "index", "parts", "tool_id", "name")

    def __init__(self, kind: str, index: int, tool_id: str = "", name: str = "") -> None:
        self.kind = kind  # "text" | "thinking" | "tool_use"
        self.index = index
        self.parts: list[str] = []
        self.tool_id = tool_id
        self.name = name

    def to_content(self) -> dict:
        if self.kind == "text":
            return {"type": "text", "text": "".join(self.parts)}
        if self.kind == "thinking":
            return {"type": "thinking", "thinking": "".join(self.parts), "signature": ""}
        raw = "".join(self.parts)
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {}
        return {
            "type": "tool_use",
            "id": self.tool_id,
            "name": self.name,
            "input": parsed if isinstance(parsed, dict) else {},
        }


_SIGNATURE_DELTA = {"type": "signature_delta", "signature": ""}


class MessagesStreamTranslator(UsageTally):
    """Chat Completions chunks → Anthropic Messages SSE and final Message (§6.3).

    One instance per request. ``emit_events=False`` skips SSE encoding for non-streaming
    clients that only want ``final_message()``.
    """

    def __init__(
        self,
        info: MessagesRequestInfo,
        *,
        message_id: str | None = None,
        input_tokens_hint: int = 0,
        emit_events: bool = True,
    ) -> None:
        super().__init__(input_tokens_hint)
        self.info = info
        self.message_id = message_id or new_id("msg_")
        self._emit = emit_events
        self._blocks: list[_Block] = []
        self._open: _Block | None = None
        self._tools: dict[int, _Block] = {}
        self._stops = info.stop_sequences
        self._prefixes = frozenset(s[:k] for s in self._stops for k in range(1, len(s)))
        self._max_hold = max((len(s) for s in self._stops), default=1) - 1
        self._held = ""
        self._stop_reason: str | None = None
        self._stop_sequence: str | None = None
        self._started = False
        self._start_held = False  # message_start waits for the next event out (see `start`)
        self._stopped = False
        self._finished = False
        self.failed = False
        self.error_message: str | None = None
        self.error_type: str | None = None

    # -- public API --------------------------------------------------------

    @property
    def stopped(self) -> bool:
        """A stop sequence matched; the gateway should cancel the upstream."""
        return self._stopped

    def start(self, *, hold: bool = False) -> bytes:
        """``message_start``. With ``hold``, nothing yet: it goes out just before the next event
        (a content event, a ping, the end or an error), with the input tokens known by then
        (`exact_input_tokens`); the first token is not delayed by it."""
        self._started = True
        if not self._emit:
            return b""
        if hold:
            self._start_held = True
            return b""
        return self._message_start()

    def exact_input_tokens(self, count: int) -> None:
        """The prompt's size from the model's own tokenizer, learnt while the model works:
        ``message_start`` says it if it is still held back, and it stands in for the model's own
        count if that never comes (in place of the estimate given as ``input_tokens_hint``)."""
        self._hint = count

    @property
    def start_held(self) -> bool:
        return self._start_held

    def _release_start(self) -> bytes:
        if not self._start_held:
            return b""
        self._start_held = False
        return self._message_start()

    def _message_start(self) -> bytes:
        return encode_event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": self.message_id,
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": self.info.model,
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": self._hint,
                        "output_tokens": 0,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 0,
                    },
                },
            },
        )

    def ping(self) -> bytes:
        return self._release_start() + encode_event("ping", {"type": "ping"}) if self._emit else b""

    def feed(self, chunk: dict) -> bytes:
        if self._finished or self.failed or not isinstance(chunk, dict):
            return b""
        if self._start_held:
            return self._release_start() + self._feed(chunk)
        return self._feed(chunk)

    def _feed(self, chunk: dict) -> bytes:
        err = chunk.get("error")
        if err:
            message, kind = upstream_error(err)
            return self.error(message, _ERROR_TYPES.get(kind, "api_error"))
        usage = chunk.get("usage")
        if usage:
            self._take_usage(usage)
        if self._stopped:
            return b""
        choices = chunk.get("choices")
        if not choices:
            return b""
        choice = choices[0]
        out: list[bytes] = []
        delta = choice.get("delta")
        if delta:
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            content = delta.get("content")
            refusal = delta.get("refusal")
            tool_calls = delta.get("tool_calls")
            if reasoning or content or refusal or tool_calls:
                self._delta_chunks += 1
                if reasoning and isinstance(reasoning, str):
                    self._thinking(reasoning, out)
                if content and isinstance(content, str):
                    self._text(content, out)
                if refusal and isinstance(refusal, str) and not self._stopped:
                    self._text(refusal, out)
                if tool_calls and isinstance(tool_calls, list) and not self._stopped:
                    self._tool_calls(tool_calls, out)
        finish_reason = choice.get("finish_reason")
        if finish_reason and not self._stopped:
            self._flush_held(out)
            self._close(out)
            self._stop_reason = _STOP_REASONS.get(finish_reason, "end_turn")
        if not out:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)

    def finish(self) -> bytes:
        """Close everything: ``message_delta`` (stop reason, usage) then ``message_stop``."""
        if self._finished or self.failed:
            return b""
        self._finished = True
        out: list[bytes] = [self._release_start()]
        if not self._started:
            out.append(self.start())
        if not self._stopped:
            self._flush_held(out)
        self._close(out)
        if self._emit:
            out.append(
                encode_event(
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": self.stop_reason, "stop_sequence": self._stop_sequence},
                        "usage": {
                            "input_tokens": self.input_tokens,
                            "output_tokens": self.output_tokens,
                            "cache_creation_input_tokens": 0,
                            "cache_read_input_tokens": 0,
                        },
                    },
                )
            )
            out.append(encode_event("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    def error(self, message: str, error_type: str = "api_error") -> bytes:
        """An in-stream ``error`` event; nothing (no ``message_stop``) may follow it."""
        if self._finished or self.failed:
            return b""
        self.failed = True
        self.error_message = message
        self.error_type = error_type
        if not self._emit:
            return b""
        event = encode_event("error", {"type": "error", "error": {"type": error_type, "message": message}})
        return self._release_start() + event

    @property
    def stop_reason(self) -> str:
        return self._stop_reason or "end_turn"

    def final_message(self) -> dict:
        """The complete non-streaming Message (§3.3)."""
        if not self._finished and not self.failed:
            emit, self._emit = self._emit, False
            try:
                self.finish()
            finally:
                self._emit = emit
        return {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.info.model,
            "content": [b.to_content() for b in self._blocks],
            "stop_reason": self.stop_reason,
            "stop_sequence": self._stop_sequence,
            "usage": {
                "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        }

    # -- internals ---------------------------------------------------------

    def _open_block(self, block: _Block, content_block: dict, out: list[bytes]) -> None:
        self._close(out)
        self._blocks.append(block)
        self._open = block
        if self._emit:
            out.append(
                encode_event(
                    "content_block_start",
                    {"type": "content_block_start", "index": block.index, "content_block": content_block},
                )
            )

    def _close(self, out: list[bytes]) -> None:
        block = self._open
        if block is None:
            return
        self._open = None
        if self._emit:
            if block.kind == "thinking":
                # Upstreams have no signature; the SDK still expects the delta before stop.
                out.append(
                    encode_event(
                        "content_block_delta",
                        {"type": "content_block_delta", "index": block.index, "delta": _SIGNATURE_DELTA},
                    )
                )
            out.append(encode_event("content_block_stop", {"type": "content_block_stop", "index": block.index}))

    def _flush_held(self, out: list[bytes]) -> None:
        if self._held:
            held, self._held = self._held, ""
            self._emit_text(held, out)

    def _thinking(self, text: str, out: list[bytes]) -> None:
        block = self._open
        if block is None or block.kind != "thinking":
            self._flush_held(out)
            block = _Block("thinking", len(self._blocks))
            self._open_block(block, {"type": "thinking", "thinking": "", "signature": ""}, out)
        block.parts.append(text)
        if self._emit:
            out.append(
                encode_event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": block.index,
                        "delta": {"type": "thinking_delta", "thinking": text},
                    },
                )
            )

    def _emit_text(self, text: str, out: list[bytes]) -> None:
        block = self._open
        if block is None or block.kind != "text":
            block = _Block("text", len(self._blocks))
            self._open_block(block, {"type": "text", "text": ""}, out)
        block.parts.append(text)
        if self._emit:
            out.append(
                encode_event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": block.index,
                        "delta": {"type": "text_delta", "text": text},
                    },
                )
            )

    def _text(self, text: str, out: list[bytes]) -> None:
        if not self._stops:
            self._emit_text(text, out)
            return
        s = self._held + text if self._held else text
        match_seq: str | None = None
        match_pos = match_end = 0
        for seq in self._stops:
            pos = s.find(seq)
            if pos >= 0:
                end = pos + len(seq)
                # The sequence that completes first is the one generation would have stopped on.
                if match_seq is None or end < match_end or (end == match_end and pos < match_pos):
                    match_seq, match_pos, match_end = seq, pos, end
        if match_seq is not None:
            self._held = ""
            if match_pos:
                self._emit_text(s[:match_pos], out)
            self._close(out)
            self._stop_reason = "stop_sequence"
            self._stop_sequence = match_seq
            self._stopped = True
            return
        # Hold back the longest tail that may still grow into a stop sequence, no more.
        hold = 0
        prefixes = self._prefixes
        for k in range(min(len(s), self._max_hold), 0, -1):
            if s[-k:] in prefixes:
                hold = k
                break
        if hold:
            self._held = s[-hold:]
            s = s[:-hold]
        else:
            self._held = ""
        if s:
            self._emit_text(s, out)

    def _tool_calls(self, tool_calls: list, out: list[bytes]) -> None:
        for pos, call in enumerate(tool_calls):
            if not isinstance(call, dict):
                continue
            key = call.get("index")
            if not is_int(key):
                key = pos
            fn = call.get("function") or {}
            args = tool_call_arguments(fn)
            block = self._tools.get(key)
            if block is None:
                self._flush_held(out)
                block = _Block("tool_use", len(self._blocks), call.get("id") or new_id("toolu_"), fn.get("name") or "")
                self._tools[key] = block
                self._open_block(
                    block,
                    {"type": "tool_use", "id": block.tool_id, "name": block.name, "input": {}},
                    out,
                )
            if not args:
                continue
            block.parts.append(args)
            # A fragment for an already-closed call (upstream interleaving calls) can only
            # reach the final object: Anthropic blocks cannot be reopened.
            if self._emit and block is self._open:
                out.append(
                    encode_event(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": block.index,
                            "delta": {"type": "input_json_delta", "partial_json": args},
                        },
                    )
                )
