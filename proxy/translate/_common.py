"""Helpers shared by the Anthropic and Responses translators (not public API)."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any, TypeGuard

from .errors import TranslationError
from .sse import dumps


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def is_number(value: Any) -> TypeGuard[int | float]:
    # bool is an int subclass; JSON true must not pass as 1.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def check_number(body: dict, key: str, low: float, high: float | None, param: str | None = None) -> Any:
    value = body.get(key)
    if value is None:
        return None
    name = param or key
    if not is_number(value):
        raise TranslationError(f"{name}: Input should be a valid number", name)
    if value < low or (high is not None and value > high):
        bound = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise TranslationError(f"{name}: Input should be {bound}, got {value}", name)
    return value


MAX_INT32 = 2**31 - 1  # token counts: what the usage table and the model servers hold
log = logging.getLogger("tokios.usage")


def check_int(body: dict, key: str, low: int, high: int, param: str | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    name = param or key
    if not is_int(value):
        raise TranslationError(f"{name}: Input should be a valid integer", name)
    if not low <= value <= high:
        raise TranslationError(f"{name}: Input should be between {low} and {high}, got {value}", name)
    return value


def check_bool(body: dict, key: str, param: str | None = None) -> bool | None:
    value = body.get(key)
    if value is None or isinstance(value, bool):
        return value
    name = param or key
    raise TranslationError(f"{name}: Input should be a valid boolean", name)


def check_str(body: dict, key: str, param: str | None = None, *, required: bool = False) -> str | None:
    value = body.get(key)
    name = param or key
    if value is None:
        if required:
            raise TranslationError(f"{name}: Field required", name)
        return None
    if not isinstance(value, str):
        raise TranslationError(f"{name}: Input should be a valid string", name)
    if required and not value:
        raise TranslationError(f"{name}: String should have at least 1 character", name)
    return value


@dataclass(frozen=True, slots=True)
class ReportedUsage:
    """The token counts of a chat `usage` object, each an integer in 0..MAX_INT32 or None.

    A count past MAX_INT32 is clamped to it; a value that is not a count at all (a string, a float,
    a negative number, a boolean) is None, as if it were missing. Either way `odd` names it
    (`prompt_tokens='999…'`), and whoever bills the request marks its usage estimated."""

    prompt: int | None
    completion: int | None
    cached: int
    reasoning: int
    odd: tuple[str, ...]


def _count(container: object, key: str, odd: list[str]) -> int | None:
    value = container.get(key) if isinstance(container, dict) else None
    if value is None:
        return None
    if is_int(value) and value >= 0:
        if value <= MAX_INT32:
            return value
        odd.append(f"{key}={value!r}"[:60])
        return MAX_INT32
    odd.append(f"{key}={value!r}"[:60])
    return None


def read_usage(usage: object) -> ReportedUsage:
    """The counts of an upstream's chat `usage` object, parsed and bounded (see ReportedUsage)."""
    odd: list[str] = []
    prompt = _count(usage, "prompt_tokens", odd)
    completion = _count(usage, "completion_tokens", odd)
    details = usage.get("prompt_tokens_details") if isinstance(usage, dict) else None
    out_details = usage.get("completion_tokens_details") if isinstance(usage, dict) else None
    cached = _count(details, "cached_tokens", odd) or 0
    reasoning = _count(out_details, "reasoning_tokens", odd) or 0
    return ReportedUsage(prompt, completion, cached, reasoning, tuple(odd))


def log_odd_usage(odd: tuple[str, ...], request: str) -> None:
    log.warning(
        "the model server reported usage that is not a token count in 0..%d (%s) for %s; its usage is recorded "
        "as estimated",
        MAX_INT32,
        ", ".join(odd),
        request or "a request",
    )


def upstream_error(err: Any) -> tuple[str, str]:
    """(message, upstream type) from whatever an upstream put under ``"error"``."""
    if isinstance(err, dict):
        message = err.get("message")
        kind = err.get("type")
        return (
            message if isinstance(message, str) and message else "Upstream error",
            kind if isinstance(kind, str) else "",
        )
    if isinstance(err, str) and err:
        return err, ""
    return "Upstream error", ""


def tool_call_arguments(fn: dict) -> str:
    args = fn.get("arguments")
    if args is None:
        return ""
    if isinstance(args, str):
        return args
    # Some upstreams send an already-parsed object; clients expect a JSON string.
    return dumps(args).decode()


class UsageTally:
    """Token usage as the upstream reports it, with estimates while it has not (or never does).

    Input falls back to the gateway's prompt estimate (`hint`), output to the number of content
    or tool-call deltas seen, which is about one per token for the upstreams we know.
    """

    def __init__(self, input_tokens_hint: int) -> None:
        self._hint = input_tokens_hint
        self._prompt_tokens: int | None = None
        self._completion_tokens: int | None = None
        self._cached_tokens = 0
        self._reasoning_tokens = 0
        self._delta_chunks = 0
        self._odd_usage = False

    @property
    def input_tokens(self) -> int:
        return self._prompt_tokens if self._prompt_tokens is not None else self._hint

    @property
    def output_tokens(self) -> int:
        return self._completion_tokens if self._completion_tokens is not None else self._delta_chunks

    @property
    def usage_estimated(self) -> bool:
        return self._completion_tokens is None or self._odd_usage

    def _take_usage(self, usage: dict) -> None:
        reported = read_usage(usage)
        if reported.prompt is not None:
            self._prompt_tokens = reported.prompt
        if reported.completion is not None:
            self._completion_tokens = reported.completion
        self._cached_tokens = reported.cached
        self._reasoning_tokens = reported.reasoning
        if reported.odd and not self._odd_usage:
            self._odd_usage = True
            # The translators' ids carry the request id ("msg_…" / "resp_…" for "req_…").
            log_odd_usage(reported.odd, str(getattr(self, "message_id", "") or getattr(self, "response_id", "")))


def lead_with_one_system_message(messages: list[dict]) -> list[dict]:
    """`messages` with every system message merged, in order, into one at index 0.

    Many chat templates (Qwen, Llama, Gemma…) refuse a system message anywhere but first, and some
    refuse two in a row; coding agents send instructions mid-conversation (Claude Code's system
    messages, Codex's developer messages). Their texts are joined with a blank line, in the order
    sent, so nothing is lost and the template always gets one system message, first."""
    texts = [m["content"] for m in messages if m["role"] == "system" and m["content"]]
    rest = [m for m in messages if m["role"] != "system"]
    if not texts:
        return rest
    return [{"role": "system", "content": "\n\n".join(texts)}, *rest]


_OMITTED_TYPE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-.")


def omitted_tool_type(kind: Any) -> str:
    """A tool type the model cannot run, as the omitted-tools header may carry it: at most 64
    characters, lower case, only `a-z 0-9 _ - .` (never a separator or a line break)."""
    text = kind.lower()[:64] if isinstance(kind, str) else ""
    text = "".join(c for c in text if c in _OMITTED_TYPE_CHARS)
    return text or "unknown"
