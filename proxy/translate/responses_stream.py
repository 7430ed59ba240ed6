"""OpenAI Responses response side: one stateful translator per request turns upstream
``chat.completion.chunk`` dicts into Responses stream events (wire-formats §2.4, §6.6) and
the final Response object (§2.3, §6.5).
"""

from __future__ import annotations

import time

from ._common import (
    UsageTally,
    is_int,
    new_id,
    tool_call_arguments,
    upstream_error,
)
from .responses_request import ResponsesRequestInfo
from .sse import encode_event

__all__ = ["ResponsesStreamTranslator", "output_text"]

_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
# Upstream error ``type`` → Responses ``error.code`` (§2.3, §6.7).
_ERROR_CODES = {
    "invalid_request_error": "invalid_prompt",
    "exceed_context_size_error": "invalid_prompt",
    "rate_limit_error": "rate_limit_exceeded",
}


class _Item:
    __slots__ = ("kind", "id", "index", "parts", "call_id", "name", "namespace")

    def __init__(
        self, kind: str, item_id: str, index: int, call_id: str = "", name: str = "", namespace: str | None = None
    ) -> None:
        self.kind = kind  # "message" | "function_call" | "reasoning"
        self.id = item_id
        self.index = index
        self.parts: list[str] = []
        self.call_id = call_id
        self.name = name
        self.namespace = namespace  # set for a function of a client's `namespace` tool

    def to_dict(self, status: str) -> dict:
        text = "".join(self.parts)
        if self.kind == "message":
            return {
                "id": self.id,
                "type": "message",
                "status": status,
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
            }
        if self.kind == "function_call":
            return self.call_dict(text, status)
        return {
            "id": self.id,
            "type": "reasoning",
            "summary": [],
            "content": [{"type": "reasoning_text", "text": text}],
            "status": status,
        }

    def call_dict(self, arguments: str, status: str) -> dict:
        """A function_call item with the names the client gave its tool."""
        item = {
            "type": "function_call",
            "id": self.id,
            "call_id": self.call_id,
            "name": self.name,
            "arguments": arguments,
            "status": status,
        }
        if self.namespace is not None:
            item["namespace"] = self.namespace
        return item


class ResponsesStreamTranslator(UsageTally):
    """Chat Completions chunks → Responses stream events and final Response (§6.6).

    One instance per request. ``emit_events=False`` skips SSE encoding for non-streaming
    clients that only want ``final_response()``.
    """

    stopped = False  # Responses has no stop sequences; the gateway reads this on both surfaces

    def __init__(
        self,
        info: ResponsesRequestInfo,
        *,
        response_id: str | None = None,
        created_at: int | None = None,
        input_tokens_hint: int = 0,
        emit_events: bool = True,
    ) -> None:
        super().__init__(input_tokens_hint)
        self.info = info
        self.response_id = response_id or new_id("resp_")
        self.created_at = created_at if created_at is not None else int(time.time())
        self._emit = emit_events
        self._seq = 0
        self._output: list[dict] = []
        self._open: _Item | None = None
        self._tools: dict[int, _Item] = {}
        self._finish_reason: str | None = None
        self._started = False
        self._status = "in_progress"
        self._final: dict | None = None
        self.error_message: str | None = None
        self.error_code: str | None = None
        # Echo fields are built once; every snapshot shares them (they are never mutated).
        self._echo = {
            "instructions": info.instructions,
            "max_output_tokens": info.max_output_tokens,
            "model": info.model,
            "parallel_tool_calls": info.parallel_tool_calls,
            "previous_response_id": info.previous_response_id,
            "reasoning": info.reasoning or {"effort": None, "summary": None},
            "store": info.store,
            "temperature": info.temperature,
            "text": info.text,
            "tool_choice": info.tool_choice,
            "tools": info.tools,
            "top_p": info.top_p,
            "truncation": info.truncation,
            "user": info.user,
            "metadata": info.metadata,
        }

    # -- public API --------------------------------------------------------

    @property
    def status(self) -> str:
        return self._status

    @property
    def failed(self) -> bool:
        return self._status == "failed"

    def start(self) -> bytes:
        self._started = True
        if not self._emit:
            return b""
        snapshot = self._response("in_progress", usage=None)
        return self._event("response.created", {"response": snapshot}) + self._event(
            "response.in_progress", {"response": snapshot}
        )

    def keepalive(self) -> bytes:
        return b": keep-alive\n\n"

    def feed(self, chunk: dict) -> bytes:
        if self._status != "in_progress" or not isinstance(chunk, dict):
            return b""
        err = chunk.get("error")
        if err:
            message, kind = upstream_error(err)
            return self.error(message, _ERROR_CODES.get(kind, "server_error"))
        usage = chunk.get("usage")
        if usage:
            self._take_usage(usage)
        choices = chunk.get("choices")
        if not choices:
            return b""
        choice = choices[0]
        out: list[bytes] = []
        delta = choice.get("delta")
        if delta:
            reasoning_text = delta.get("reasoning_content") or delta.get("reasoning")
            content = delta.get("content")
            refusal = delta.get("refusal")
            tool_calls = delta.get("tool_calls")
            if reasoning_text or content or refusal or tool_calls:
                self._delta_chunks += 1
                if reasoning_text and isinstance(reasoning_text, str):
                    self._reasoning(reasoning_text, out)
                if content and isinstance(content, str):
                    self._text(content, out)
                if refusal and isinstance(refusal, str):
                    self._text(refusal, out)
                if tool_calls and isinstance(tool_calls, list):
                    self._tool_calls(tool_calls, out)
        finish_reason = choice.get("finish_reason")
        if finish_reason:
            self._finish_reason = finish_reason
            self._close(out)
        if not out:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)

    def finish(self) -> bytes:
        """Close open items and emit ``response.completed`` or ``response.incomplete``."""
        if self._status != "in_progress":
            return b""
        out: list[bytes] = []
        if not self._started:
            out.append(self.start())
        self._close(out)
        reason = _INCOMPLETE.get(self._finish_reason or "")
        self._status = "incomplete" if reason else "completed"
        self._final = self._response(
            self._status,
            usage=self._usage(),
            incomplete_details={"reason": reason} if reason else None,
            completed_at=int(time.time()) if not reason else None,
        )
        if self._emit:
            out.append(self._event(f"response.{self._status}", {"response": self._final}))
        return b"".join(out)

    def error(self, message: str, code: str = "server_error") -> bytes:
        """An ``error`` event (flat fields for typed clients, nested ``error`` so openai-python
        raises) followed by ``response.failed``."""
        if self._status != "in_progress":
            return b""
        out: list[bytes] = []
        if not self._started:
            out.append(self.start())
        open_item = self._open
        if open_item is not None:
            self._open = None
            self._output.append(open_item.to_dict("incomplete"))
        self._status = "failed"
        self.error_message = message
        self.error_code = code
        self._final = self._response("failed", usage=self._usage(), error={"code": code, "message": message})
        if self._emit:
            error_type = "invalid_request_error" if code == "invalid_prompt" else "server_error"
            out.append(
                self._event(
                    "error",
                    {
                        "code": code,
                        "message": message,
                        "param": None,
                        "error": {"type": error_type, "code": code, "message": message, "param": None},
                    },
                )
            )
            out.append(self._event("response.failed", {"response": self._final}))
        return b"".join(out)

    def final_response(self) -> dict:
        """The full Response object, as carried by the terminal event."""
        if self._final is None:
            emit, self._emit = self._emit, False
            try:
                self.finish()
            finally:
                self._emit = emit
        assert self._final is not None
        return self._final

    def output_items(self) -> list[dict]:
        """Output items closed so far (all of them after ``finish()``), for storage."""
        return list(self._output)

    # -- internals ---------------------------------------------------------

    def _event(self, kind: str, fields: dict) -> bytes:
        seq = self._seq
        self._seq = seq + 1
        return encode_event(kind, {"type": kind, "sequence_number": seq, **fields})

    def _usage(self) -> dict:
        inp, outp = self.input_tokens, self.output_tokens
        return {
            "input_tokens": inp,
            "input_tokens_details": {"cached_tokens": self._cached_tokens},
            "output_tokens": outp,
            "output_tokens_details": {"reasoning_tokens": self._reasoning_tokens},
            "total_tokens": inp + outp,
        }

    def _response(
        self,
        status: str,
        *,
        usage: dict | None,
        error: dict | None = None,
        incomplete_details: dict | None = None,
        completed_at: int | None = None,
    ) -> dict:
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": completed_at,
            "error": error,
            "incomplete_details": incomplete_details,
            **self._echo,
            "output": list(self._output),
            "usage": usage,
        }

    def _item_status(self) -> str:
        return "incomplete" if self._finish_reason in _INCOMPLETE else "completed"

    def _open_item(self, item: _Item, added: dict, out: list[bytes]) -> None:
        self._close(out)
        self._open = item
        if self._emit:
            out.append(self._event("response.output_item.added", {"output_index": item.index, "item": added}))

    def _close(self, out: list[bytes]) -> None:
        item = self._open
        if item is None:
            return
        self._open = None
        done = item.to_dict(self._item_status())
        self._output.append(done)
        if not self._emit:
            return
        ident = {"item_id": item.id, "output_index": item.index}
        if item.kind == "function_call":
            out.append(
                self._event(
                    "response.function_call_arguments.done",
                    {**ident, "name": item.name, "arguments": done["arguments"]},
                )
            )
        else:
            part = done["content"][0]
            if item.kind == "message":
                out.append(
                    self._event(
                        "response.output_text.done",
                        {**ident, "content_index": 0, "text": part["text"], "logprobs": []},
                    )
                )
            else:
                out.append(
                    self._event("response.reasoning_text.done", {**ident, "content_index": 0, "text": part["text"]})
                )
            out.append(self._event("response.content_part.done", {**ident, "content_index": 0, "part": part}))
        out.append(self._event("response.output_item.done", {"output_index": item.index, "item": done}))

    def _reasoning(self, text: str, out: list[bytes]) -> None:
        item = self._open
        if item is None or item.kind != "reasoning":
            self._close(out)
            item = _Item("reasoning", new_id("rs_"), len(self._output))
            self._open_item(
                item, {"id": item.id, "type": "reasoning", "summary": [], "content": [], "status": "in_progress"}, out
            )
            if self._emit:
                out.append(
                    self._event(
                        "response.content_part.added",
                        {
                            "item_id": item.id,
                            "output_index": item.index,
                            "content_index": 0,
                            "part": {"type": "reasoning_text", "text": ""},
                        },
                    )
                )
        item.parts.append(text)
        if self._emit:
            out.append(
                self._event(
                    "response.reasoning_text.delta",
                    {"item_id": item.id, "output_index": item.index, "content_index": 0, "delta": text},
                )
            )

    def _text(self, text: str, out: list[bytes]) -> None:
        item = self._open
        if item is None or item.kind != "message":
            self._close(out)
            item = _Item("message", new_id("msg_"), len(self._output))
            self._open_item(
                item,
                {"id": item.id, "type": "message", "status": "in_progress", "role": "assistant", "content": []},
                out,
            )
            if self._emit:
                out.append(
                    self._event(
                        "response.content_part.added",
                        {
                            "item_id": item.id,
                            "output_index": item.index,
                            "content_index": 0,
                            "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                        },
                    )
                )
        item.parts.append(text)
        if self._emit:
            seq = self._seq
            self._seq = seq + 1
            out.append(
                encode_event(
                    "response.output_text.delta",
                    {
                        "type": "response.output_text.delta",
                        "sequence_number": seq,
                        "item_id": item.id,
                        "output_index": item.index,
                        "content_index": 0,
                        "delta": text,
                        "logprobs": [],
                    },
                )
            )

    def _tool_calls(self, tool_calls: list, out: list[bytes]) -> None:
        for pos, call in enumerate(tool_calls):
            if not isinstance(call, dict):
                continue
            key = call.get("index")
            if not is_int(key):
                key = pos
            fn = call.get("function") or {}
            args = tool_call_arguments(fn)
            item = self._tools.get(key)
            if item is None:
                self._close(out)
                model_name = fn.get("name")
                if not isinstance(model_name, str):
                    model_name = ""
                namespace: str | None = None
                name = model_name
                if model_name in self.info.namespaced_tools:
                    namespace, name = self.info.namespaced_tools[model_name]
                item = _Item(
                    "function_call",
                    new_id("fc_"),
                    len(self._output),
                    call_id=call.get("id") or new_id("call_"),
                    name=name,
                    namespace=namespace,
                )
                self._tools[key] = item
                self._open_item(item, item.call_dict("", "in_progress"), out)
            if not args:
                continue
            if item is not self._open:
                # Closed items are already emitted and stored; a late fragment from an
                # upstream that interleaves calls cannot be applied to them.
                continue
            item.parts.append(args)
            if self._emit:
                out.append(
                    self._event(
                        "response.function_call_arguments.delta",
                        {"item_id": item.id, "output_index": item.index, "delta": args},
                    )
                )


def output_text(response: dict) -> str:
    """Concatenated ``output_text`` of a Response dict (the SDK property, for logs/storage)."""
    return "".join(
        part["text"]
        for item in response.get("output", ())
        if item.get("type") == "message"
        for part in item.get("content", ())
        if part.get("type") == "output_text"
    )
