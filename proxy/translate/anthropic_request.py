"""Anthropic Messages request side: validate like Anthropic does and build the upstream
Chat Completions body (wire-formats §3.2, §6.1); ``count_tokens`` prompt rendering (§3.7).

Only custom tools (no `type`, or `"type": "custom"`, with an `input_schema`) reach the model. A tool
with any other `type` is left out of what the model sees and named in ``omitted_tools`` (the
surface's `x-tokios-omitted-tools` header), as /v1/responses does with hosted tools:
- server tools (`web_search_*`, `web_fetch_*`, `code_execution_*`, `tool_search_tool_*`, …) need
  Anthropic's servers to run them;
- Anthropic's schema-less client tools (`bash_*`, `text_editor_*`, `computer_*`, `memory_*`) are run
  by the client, but their input schema is built into Claude models and never sent: a model behind
  Chat Completions cannot know how to call them, so showing it a bare name would only invite
  malformed calls. Clients that want a model to edit files or run commands define custom tools
  (Claude Code does by default).
A `tool_choice` naming a left-out tool is a 400, as naming a tool not in `tools` is. Server tool
blocks in the history (`server_tool_use`, `web_search_tool_result`, `mcp_tool_use`, …) are dropped
the same way, so a conversation that used them elsewhere goes on.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from ._common import (
    MAX_INT32,
    check_bool,
    check_int,
    check_number,
    check_str,
    is_int,
    lead_with_one_system_message,
    omitted_tool_type,
)
from .errors import TranslationError

__all__ = [
    "MessagesRequestInfo",
    "count_tokens_prompt",
    "count_tokens_tools",
    "estimate_tokens",
    "validate_and_translate_request",
]

_IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_DROPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})
# Blocks of server tools in an assistant turn (module docstring): the call and its result, dropped
# together; every `*_tool_result` type but the client's own `tool_result` is one of them.
_SERVER_TOOL_BLOCKS = frozenset({"server_tool_use", "mcp_tool_use", "mcp_tool_result", "container_upload"})
_TOOL_CHOICE = {"auto": "auto", "any": "required", "none": "none"}
# The gateway matches stop sequences on the streamed text itself (holding back any tail that may
# grow into one), so their number and length are what that costs per token, kept small.
_MAX_STOP_SEQUENCES, _MAX_STOP_LENGTH = 16, 128


@dataclass(slots=True)
class MessagesRequestInfo:
    """What the stream translator and the gateway need to know about the client's request."""

    model: str
    stream: bool
    max_tokens: int
    stop_sequences: tuple[str, ...] = ()
    tool_names: tuple[str, ...] = ()
    thinking: bool = False
    user_id: str | None = None
    # types of the tools left out of what the model sees (module docstring), each once, in order
    omitted_tools: tuple[str, ...] = ()


# ---------------------------------------------------------------------------
# Request validation and translation
# ---------------------------------------------------------------------------


def validate_and_translate_request(body: dict, *, upstream_model: str | None) -> tuple[dict, MessagesRequestInfo]:
    """Validate an Anthropic Messages body; return (Chat Completions body, info).

    Stop sequences are deliberately not sent upstream as ``stop``: the gateway matches them
    on the streamed text so it can report which one ended the turn (llama.cpp cannot).
    Raises TranslationError naming the offending field.
    """
    if not isinstance(body, dict):
        raise TranslationError("Request body must be a JSON object.")
    model = check_str(body, "model", required=True)
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise TranslationError("max_tokens: Field required", "max_tokens")
    if not is_int(max_tokens):
        raise TranslationError("max_tokens: Input should be a valid integer", "max_tokens")
    if max_tokens < 1:
        raise TranslationError("max_tokens: Input should be greater than or equal to 1", "max_tokens")
    if max_tokens > MAX_INT32:
        raise TranslationError(f"max_tokens: Input should be less than or equal to {MAX_INT32}", "max_tokens")

    messages, tool_set, tool_choice, parallel = _conversation(body)
    tools = tool_set.chat

    stop_sequences = body.get("stop_sequences")
    stops: tuple[str, ...] = ()
    if stop_sequences is not None:
        if not isinstance(stop_sequences, list):
            raise TranslationError("stop_sequences: Input should be a valid list", "stop_sequences")
        if len(stop_sequences) > _MAX_STOP_SEQUENCES:
            raise TranslationError(
                f"stop_sequences: at most {_MAX_STOP_SEQUENCES} stop sequences are supported", "stop_sequences"
            )
        for i, seq in enumerate(stop_sequences):
            if not isinstance(seq, str):
                raise TranslationError(f"stop_sequences.{i}: Input should be a valid string", f"stop_sequences.{i}")
            if not seq:
                raise TranslationError(f"stop_sequences.{i}: stop sequences must be non-empty", f"stop_sequences.{i}")
            if len(seq) > _MAX_STOP_LENGTH:
                raise TranslationError(
                    f"stop_sequences.{i}: at most {_MAX_STOP_LENGTH} characters are supported", f"stop_sequences.{i}"
                )
        stops = tuple(dict.fromkeys(stop_sequences))

    temperature = check_number(body, "temperature", 0.0, 1.0)
    top_p = check_number(body, "top_p", 0.0, 1.0)
    top_k = check_int(body, "top_k", 0, MAX_INT32)
    stream = check_bool(body, "stream")

    user_id = None
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise TranslationError("metadata: Input should be a valid dictionary", "metadata")
        user_id = check_str(metadata, "user_id", "metadata.user_id")

    thinking = _thinking(body.get("thinking"))
    effort = _output_effort(body.get("output_config"))
    if body.get("context_management") is not None and not isinstance(body["context_management"], dict):
        raise TranslationError("context_management: Input should be a valid dictionary", "context_management")
    # context_management is accepted and not acted on: the gateway keeps no context to edit.

    chat: dict[str, Any] = {
        "model": upstream_model or model,
        "messages": messages,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if temperature is not None:
        chat["temperature"] = temperature
    if top_p is not None:
        chat["top_p"] = top_p
    if top_k is not None:
        chat["top_k"] = top_k
    if tools:
        chat["tools"] = tools
        if tool_choice is not None:
            chat["tool_choice"] = tool_choice
        if parallel is False:
            chat["parallel_tool_calls"] = False
    if user_id:
        chat["user"] = user_id
    if effort:
        chat["reasoning_effort"] = effort  # as /v1/responses forwards reasoning.effort

    info = MessagesRequestInfo(
        model=model,  # type: ignore[arg-type]  # check_str(required=True) returned a str
        stream=bool(stream),
        max_tokens=max_tokens,
        stop_sequences=stops,
        tool_names=tuple(t["function"]["name"] for t in tools),
        thinking=thinking,
        user_id=user_id,
        omitted_tools=tool_set.omitted,
    )
    return chat, info


def _thinking(value: Any) -> bool:
    if value is None:
        return False
    if not isinstance(value, dict):
        raise TranslationError("thinking: Input should be a valid dictionary", "thinking")
    kind = value.get("type")
    if kind not in ("enabled", "disabled", "adaptive"):
        raise TranslationError("thinking.type: Input should be 'enabled', 'disabled' or 'adaptive'", "thinking.type")
    if kind == "enabled":
        budget = value.get("budget_tokens")
        if not is_int(budget) or not 1 <= budget <= MAX_INT32:
            raise TranslationError(
                f"thinking.budget_tokens: Input should be an integer between 1 and {MAX_INT32}",
                "thinking.budget_tokens",
            )
    return kind != "disabled"


def _output_effort(value: Any) -> str | None:
    """`output_config.effort`, accepted (and forwarded as the model's reasoning effort)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TranslationError("output_config: Input should be a valid dictionary", "output_config")
    return check_str(value, "effort", "output_config.effort")


@dataclass(slots=True)
class _Tools:
    chat: list[dict]  # the custom tools, as Chat Completions tools
    omitted: tuple[str, ...] = ()  # the left-out tools' types, for the header
    omitted_names: frozenset[str] = frozenset()  # and their names, for tool_choice


def _conversation(body: dict) -> tuple[list[dict], _Tools, Any, bool | None]:
    """Messages, tools and tool_choice shared by /v1/messages and count_tokens."""
    messages = body.get("messages")
    if messages is None:
        raise TranslationError("messages: Field required", "messages")
    if not isinstance(messages, list):
        raise TranslationError("messages: Input should be a valid list", "messages")
    if not messages:
        raise TranslationError("messages: at least one message is required", "messages")

    out: list[dict] = []
    system = _system_text(body.get("system"))
    if system is not None:
        out.append({"role": "system", "content": system})
    for i, msg in enumerate(messages):
        path = f"messages.{i}"
        if not isinstance(msg, dict):
            raise TranslationError(f"{path}: Input should be a valid dictionary", path)
        role = msg.get("role")
        if role not in ("user", "assistant", "system"):
            raise TranslationError(f"{path}.role: Input should be 'user', 'assistant' or 'system'", f"{path}.role")
        content = msg.get("content")
        if role == "system":
            # Mid-conversation instructions (Claude Code sends them); merged below into the one
            # leading system message, the only place every chat template takes one.
            text = _system_text(content, f"{path}.content")
            if text is None and not isinstance(content, (str, list)):
                raise TranslationError(f"{path}.content: Field required", f"{path}.content")
            if text:
                out.append({"role": "system", "content": text})
        elif isinstance(content, str):
            out.append({"role": role, "content": content})
        elif isinstance(content, list):
            if not content:
                raise TranslationError(f"{path}.content: List should have at least 1 item", f"{path}.content")
            if role == "user":
                _user_blocks(content, path, out)
            else:
                _assistant_blocks(content, path, out)
        elif content is None:
            raise TranslationError(f"{path}.content: Field required", f"{path}.content")
        else:
            raise TranslationError(
                f"{path}.content: Input should be a valid string or a list of content blocks", f"{path}.content"
            )

    if not any(m["role"] != "system" for m in out):
        raise TranslationError("messages: no message has content the model can use", "messages")
    out = lead_with_one_system_message(out)
    tools = _tools(body.get("tools"))
    tool_choice, parallel = _tool_choice(body.get("tool_choice"), tools)
    return out, tools, tool_choice, parallel


def _system_text(system: Any, label: str = "system") -> str | None:
    if system is None:
        return None
    if isinstance(system, str):
        return system or None
    if not isinstance(system, list):
        raise TranslationError(f"{label}: Input should be a valid string or a list of text blocks", label)
    texts = []
    for i, block in enumerate(system):
        path = f"{label}.{i}"
        if not isinstance(block, dict):
            raise TranslationError(f"{path}: Input should be a valid dictionary", path)
        if block.get("type") != "text":
            raise TranslationError(f"{path}.type: Input should be 'text'", f"{path}.type")
        text = block.get("text")
        if not isinstance(text, str):
            raise TranslationError(f"{path}.text: Input should be a valid string", f"{path}.text")
        texts.append(text)
    return "\n\n".join(texts) if texts else None


def _block_type(block: Any, path: str) -> str:
    if not isinstance(block, dict):
        raise TranslationError(f"{path}: Input should be a valid dictionary", path)
    kind = block.get("type")
    if not isinstance(kind, str):
        raise TranslationError(f"{path}.type: Field required", f"{path}.type")
    if kind == "document":
        raise TranslationError(
            f"{path}.type: document blocks are not supported by this gateway; send the text as a text block",
            f"{path}.type",
        )
    return kind


def _text_of(block: dict, path: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise TranslationError(f"{path}.text: Input should be a valid string", f"{path}.text")
    return text


def _image_part(block: dict, path: str) -> dict:
    source = block.get("source")
    if not isinstance(source, dict):
        raise TranslationError(f"{path}.source: Field required", f"{path}.source")
    kind = source.get("type")
    if kind == "base64":
        media_type = source.get("media_type")
        if not isinstance(media_type, str) or media_type not in _IMAGE_MEDIA_TYPES:
            raise TranslationError(
                f"{path}.source.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'",
                f"{path}.source.media_type",
            )
        data = source.get("data")
        if not isinstance(data, str) or not data:
            raise TranslationError(f"{path}.source.data: Field required", f"{path}.source.data")
        url = f"data:{media_type};base64,{data}"
    elif kind == "url":
        link = source.get("url")
        if not isinstance(link, str) or not link:
            raise TranslationError(f"{path}.source.url: Field required", f"{path}.source.url")
        url = link
    else:
        raise TranslationError(f"{path}.source.type: Input should be 'base64' or 'url'", f"{path}.source.type")
    return {"type": "image_url", "image_url": {"url": url}}


def _parts_content(parts: list[dict]) -> str | list[dict]:
    # Plain strings are what every local chat template handles; keep parts only for images.
    if all(p["type"] == "text" for p in parts):
        return "\n\n".join(p["text"] for p in parts)
    return parts


def _user_blocks(blocks: list, path: str, out: list[dict]) -> None:
    tool_messages: list[dict] = []
    parts: list[dict] = []
    for j, block in enumerate(blocks):
        bpath = f"{path}.content.{j}"
        kind = _block_type(block, bpath)
        if kind == "text":
            parts.append({"type": "text", "text": _text_of(block, bpath)})
        elif kind == "image":
            parts.append(_image_part(block, bpath))
        elif kind == "tool_result":
            tool_messages.append(_tool_result(block, bpath, parts))
        elif kind in _DROPPED_BLOCKS:
            continue
        elif kind == "tool_use":
            raise TranslationError(
                f"{bpath}.type: tool_use blocks are only allowed in assistant messages", f"{bpath}.type"
            )
        else:
            raise TranslationError(f"{bpath}.type: unsupported content block type '{kind}'", f"{bpath}.type")
    # Chat templates require tool results right after the assistant's tool calls, so they
    # go before whatever else the user said in the same turn.
    out.extend(tool_messages)
    if parts:
        out.append({"role": "user", "content": _parts_content(parts)})


def _tool_result(block: dict, path: str, user_parts: list[dict]) -> dict:
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str) or not tool_use_id:
        raise TranslationError(f"{path}.tool_use_id: Field required", f"{path}.tool_use_id")
    is_error = check_bool(block, "is_error", f"{path}.is_error")
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts = []
        for k, item in enumerate(content):
            ipath = f"{path}.content.{k}"
            kind = _block_type(item, ipath)
            if kind == "text":
                texts.append(_text_of(item, ipath))
            elif kind == "image":
                # Chat `tool` messages carry text only; the image joins the user turn that
                # follows the tool messages, where vision models can see it.
                user_parts.append(_image_part(item, ipath))
            else:
                raise TranslationError(
                    f"{ipath}.type: tool_result content supports only text and image blocks", f"{ipath}.type"
                )
        text = "\n\n".join(texts)
    else:
        raise TranslationError(f"{path}.content: Input should be a valid string or a list of blocks", f"{path}.content")
    if is_error:
        text = "Error: " + text if text else "Error"
    return {"role": "tool", "tool_call_id": tool_use_id, "content": text}


def _assistant_blocks(blocks: list, path: str, out: list[dict]) -> None:
    texts: list[str] = []
    tool_calls: list[dict] = []
    for j, block in enumerate(blocks):
        bpath = f"{path}.content.{j}"
        kind = _block_type(block, bpath)
        if kind == "text":
            texts.append(_text_of(block, bpath))
        elif kind == "tool_use":
            tool_id = block.get("id")
            if not isinstance(tool_id, str) or not tool_id:
                raise TranslationError(f"{bpath}.id: Field required", f"{bpath}.id")
            name = block.get("name")
            if not isinstance(name, str) or not name:
                raise TranslationError(f"{bpath}.name: Field required", f"{bpath}.name")
            tool_input = block.get("input")
            if not isinstance(tool_input, dict):
                raise TranslationError(f"{bpath}.input: Input should be a valid dictionary", f"{bpath}.input")
            tool_calls.append(
                {
                    "id": tool_id,
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps(tool_input, ensure_ascii=False)},
                }
            )
        elif kind in _DROPPED_BLOCKS or _is_server_tool_block(kind):
            continue
        elif kind in ("tool_result", "image"):
            raise TranslationError(f"{bpath}.type: {kind} blocks are only allowed in user messages", f"{bpath}.type")
        else:
            raise TranslationError(f"{bpath}.type: unsupported content block type '{kind}'", f"{bpath}.type")
    if not texts and not tool_calls:
        return  # e.g. only thinking blocks: nothing the upstream can use
    msg: dict[str, Any] = {"role": "assistant", "content": "\n\n".join(texts) if texts else None}
    if tool_calls:
        msg["tool_calls"] = tool_calls
    out.append(msg)


def _is_server_tool_block(kind: str) -> bool:
    return kind in _SERVER_TOOL_BLOCKS or (kind.endswith("_tool_result") and kind != "tool_result")


def _tools(tools: Any) -> _Tools:
    """The custom tools for the model; any other `type` is left out and named (module docstring)."""
    if tools is None:
        return _Tools([])
    if not isinstance(tools, list):
        raise TranslationError("tools: Input should be a valid list", "tools")
    out = []
    seen: set[str] = set()
    omitted: dict[str, None] = {}
    omitted_names: set[str] = set()
    for i, tool in enumerate(tools):
        path = f"tools.{i}"
        if not isinstance(tool, dict):
            raise TranslationError(f"{path}: Input should be a valid dictionary", path)
        kind = tool.get("type")
        if not isinstance(kind, str | None):
            raise TranslationError(f"{path}.type: Input should be a valid string", f"{path}.type")
        if kind not in (None, "custom"):
            omitted[omitted_tool_type(kind)] = None
            if isinstance(tool.get("name"), str):
                omitted_names.add(tool["name"])
            continue
        name = check_str(tool, "name", f"{path}.name", required=True)
        if name in seen:
            raise TranslationError(f"{path}.name: tool names must be unique, '{name}' is repeated", f"{path}.name")
        seen.add(name)  # type: ignore[arg-type]
        schema = tool.get("input_schema")
        if schema is None:
            raise TranslationError(f"{path}.input_schema: Field required", f"{path}.input_schema")
        if not isinstance(schema, dict):
            raise TranslationError(f"{path}.input_schema: Input should be a valid dictionary", f"{path}.input_schema")
        description = check_str(tool, "description", f"{path}.description")
        fn: dict[str, Any] = {"name": name}
        if description:
            fn["description"] = description
        fn["parameters"] = schema
        out.append({"type": "function", "function": fn})
    return _Tools(out, tuple(omitted), frozenset(omitted_names - seen))


def _tool_choice(choice: Any, tool_set: _Tools) -> tuple[Any, bool | None]:
    tools = tool_set.chat
    if choice is None:
        return None, None
    if not isinstance(choice, dict):
        raise TranslationError("tool_choice: Input should be a valid dictionary", "tool_choice")
    kind = choice.get("type")
    parallel = check_bool(choice, "disable_parallel_tool_use", "tool_choice.disable_parallel_tool_use")
    parallel = None if parallel is None else not parallel
    if not isinstance(kind, str):
        raise TranslationError("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'", "tool_choice.type")
    if kind in _TOOL_CHOICE:
        if kind == "any" and not tools:
            left_out = " the model can call (tools with a type are left out)" if tool_set.omitted else " in tools"
            raise TranslationError(f"tool_choice.type: 'any' requires at least one tool{left_out}", "tool_choice.type")
        return _TOOL_CHOICE[kind], parallel
    if kind == "tool":
        name = check_str(choice, "name", "tool_choice.name", required=True)
        if name in tool_set.omitted_names:
            raise TranslationError(
                f"tool_choice.name: tool '{name}' is not a custom tool and is left out of what the model sees "
                "(x-tokios-omitted-tools), so the model cannot call it",
                "tool_choice.name",
            )
        if not any(t["function"]["name"] == name for t in tools):
            raise TranslationError(f"tool_choice.name: no tool named '{name}' in tools", "tool_choice.name")
        return {"type": "function", "function": {"name": name}}, parallel
    raise TranslationError("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'", "tool_choice.type")


# ---------------------------------------------------------------------------
# count_tokens
# ---------------------------------------------------------------------------


def count_tokens_prompt(body: dict) -> tuple[list[dict], str]:
    """Validate a ``/v1/messages/count_tokens`` body; return (chat messages, flat text).

    The flat text renders roles, tool definitions, tool calls and results the way they
    roughly reach the model, for a tokenizer or ``estimate_tokens``. Images render as a
    ``[image]`` marker only: their real cost depends on pixel size we don't decode.
    """
    if not isinstance(body, dict):
        raise TranslationError("Request body must be a JSON object.")
    check_str(body, "model", required=True)
    messages, tool_set, _choice, _parallel = _conversation(body)
    tools = tool_set.chat
    _thinking(body.get("thinking"))
    pieces: list[str] = []
    for tool in tools:
        fn = tool["function"]
        pieces.append(
            f"tool {fn['name']}: {fn.get('description', '')}\n{json.dumps(fn['parameters'], ensure_ascii=False)}"
        )
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, list):
            content = "\n".join(p["text"] if p["type"] == "text" else "[image]" for p in content)
        pieces.append(f"{msg['role']}: {content or ''}")
        for call in msg.get("tool_calls") or ():
            pieces.append(f"{call['function']['name']}({call['function']['arguments']})")
    return messages, "\n".join(pieces)


def count_tokens_tools(body: dict) -> list[dict]:
    """The request's tools as Chat Completions tools, for a tokenizer's chat template."""
    return _tools(body.get("tools")).chat


def estimate_tokens(text: str) -> int:
    """Token estimate without a tokenizer: one token per 4 UTF-8 bytes, rounded up.

    Byte length rather than character length keeps CJK text (3 bytes a character, roughly
    one token each with modern vocabularies) from being undercounted fourfold.
    """
    if not text:
        return 0
    return math.ceil(len(text.encode("utf-8")) / 4)
