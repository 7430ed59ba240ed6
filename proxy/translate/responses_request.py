"""OpenAI Responses request side: validate the body and its input items, prepend the
stored ``previous_response_id`` chain, build the upstream Chat Completions body
(wire-formats §2.1, §2.2, §6.4).

Only `function` tools (and the functions inside a `namespace`) reach the model. Every other tool type
is a hosted tool a server runs (`web_search`, `file_search`, `code_interpreter`, `mcp`, …) or one the
model cannot be described to (`custom`, `local_shell`, `computer_use_preview`): it is left out of what
the model sees and named in ``omitted_tools`` (the surface's `x-tokios-omitted-tools` header). Their
items in the input or the stored history (`web_search_call`, `computer_call` and its
`computer_call_output`, `mcp_call`, `custom_tool_call` and its output, … : ``HOSTED_TOOL_ITEMS``) are
accepted and stored but not sent to the model, so a conversation that used them on another server
goes on; a call and its output are both left out, so no answer is left without its call.
`item_reference` stays a 400: it needs items this gateway did not store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._common import (
    MAX_INT32,
    check_bool,
    check_int,
    check_number,
    check_str,
    lead_with_one_system_message,
    omitted_tool_type,
)
from .errors import TranslationError

__all__ = [
    "HOSTED_TOOL_ITEMS",
    "NAMESPACE_SEPARATOR",
    "ResponsesRequestInfo",
    "model_tool_name",
    "validate_and_translate_request",
]

_ROLES = frozenset({"user", "assistant", "system", "developer"})
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
_TOOL_CHOICE_STRINGS = frozenset({"auto", "none", "required"})
_METADATA_MAX_KEYS, _METADATA_MAX_KEY, _METADATA_MAX_VALUE = 16, 64, 512
# A function tool inside a `namespace` tool reaches the model as `<namespace>__<name>` (the way
# Codex already names MCP tools, `mcp__server__tool`), so it can never collide with a top-level
# function or one of another namespace; the client's calls come back as `name` + `namespace`.
NAMESPACE_SEPARATOR = "__"
_MAX_TOOLS = 512
# Input items of tools a server runs, or of tool types the model is not shown (module docstring):
# accepted, stored and echoed like any item, never sent to the model.
HOSTED_TOOL_ITEMS = frozenset(
    {
        "web_search_call",
        "file_search_call",
        "code_interpreter_call",
        "image_generation_call",
        "computer_call",
        "computer_call_output",
        "local_shell_call",
        "local_shell_call_output",
        "shell_call",
        "shell_call_output",
        "apply_patch_call",
        "apply_patch_call_output",
        "mcp_call",
        "mcp_list_tools",
        "mcp_approval_request",
        "mcp_approval_response",
        "custom_tool_call",
        "custom_tool_call_output",
    }
)


def model_tool_name(namespace: str | None, name: str) -> str:
    """The name the model sees for a client's function tool (in a namespace or not)."""
    return f"{namespace}{NAMESPACE_SEPARATOR}{name}" if namespace else name


def _default_text() -> dict:
    return {"format": {"type": "text"}}


@dataclass(slots=True)
class ResponsesRequestInfo:
    """Everything the Response object echoes back, plus the normalised input for storage."""

    model: str
    stream: bool = False
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[dict] = field(default_factory=list)
    tool_choice: Any = "auto"
    parallel_tool_calls: bool = True
    text: dict = field(default_factory=_default_text)
    metadata: dict[str, str] = field(default_factory=dict)
    store: bool = True
    previous_response_id: str | None = None
    user: str | None = None
    reasoning: dict | None = None
    truncation: str = "disabled"
    input_items: list[dict] = field(default_factory=list)
    # model's tool name -> (namespace, client's name), for the tools flattened out of namespaces
    namespaced_tools: dict[str, tuple[str, str]] = field(default_factory=dict)
    # types of the tools the model cannot run (hosted tools), left out of what it sees, in order
    omitted_tools: tuple[str, ...] = ()


# ---------------------------------------------------------------------------
# Request validation and translation
# ---------------------------------------------------------------------------


def validate_and_translate_request(
    body: dict, *, upstream_model: str | None, history: list[dict] | None
) -> tuple[dict, ResponsesRequestInfo]:
    """Validate a Responses body; return (Chat Completions body, info).

    ``history`` is the already-resolved item list of the ``previous_response_id`` chain
    (prior input items then output items, oldest first). The old responses' instructions
    are not reused, as on OpenAI. Raises TranslationError naming the offending field.
    """
    if not isinstance(body, dict):
        raise TranslationError("Request body must be a JSON object.")
    model = check_str(body, "model", required=True)
    for key in ("conversation", "prompt"):
        if body.get(key) is not None:
            raise TranslationError(f"{key}: not supported by this gateway", key)
    if body.get("background"):
        raise TranslationError("background: background responses are not supported by this gateway", "background")

    instructions = check_str(body, "instructions")
    previous_response_id = check_str(body, "previous_response_id")
    raw_input = body.get("input")
    if raw_input is None:
        if not history:
            raise TranslationError("input: Field required", "input")
        input_items: list[dict] = []
    elif isinstance(raw_input, str):
        input_items = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": raw_input}]}]
    elif isinstance(raw_input, list):
        input_items = _normalise_items(raw_input, "input")
    else:
        raise TranslationError("input: Input should be a string or a list of input items", "input")

    messages: list[dict] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    if history:
        try:
            _items_to_chat(_normalise_items(history, "history"), "history", messages)
        except TranslationError as exc:
            # Stored items were valid once; a failure here is a gateway bug, but the client
            # can only act on the id that brought them in.
            raise TranslationError(
                f"previous_response_id: stored conversation is unusable ({exc.message})", "previous_response_id"
            ) from exc
    _items_to_chat(input_items, "input", messages)
    if not any(m["role"] != "system" for m in messages):
        raise TranslationError("input: at least one input item is required", "input")
    messages = lead_with_one_system_message(messages)

    max_output_tokens = check_int(body, "max_output_tokens", 1, MAX_INT32)
    check_int(body, "top_logprobs", 0, 20)  # accepted, not sent: no log probabilities come back
    temperature = check_number(body, "temperature", 0.0, 2.0)
    top_p = check_number(body, "top_p", 0.0, 1.0)
    stream = check_bool(body, "stream")
    parallel = check_bool(body, "parallel_tool_calls")
    store = check_bool(body, "store")
    user = check_str(body, "user") or check_str(body, "safety_identifier")
    metadata = _metadata(body.get("metadata"))
    client_tools, chat_tools, namespaced, omitted = _tools(body.get("tools"))
    tool_choice, chat_tool_choice = _tool_choice(body.get("tool_choice"), chat_tools)
    text, response_format = _text_config(body.get("text"))
    reasoning = body.get("reasoning")
    effort = None
    if reasoning is not None:
        if not isinstance(reasoning, dict):
            raise TranslationError("reasoning: Input should be a valid dictionary", "reasoning")
        effort = check_str(reasoning, "effort", "reasoning.effort")
        check_str(reasoning, "summary", "reasoning.summary")  # accepted; no summaries come back
    include = body.get("include")
    if include is not None and (not isinstance(include, list) or not all(isinstance(v, str) for v in include)):
        # Accepted whatever it names (e.g. reasoning.encrypted_content): a model without
        # hidden reasoning has nothing more to include.
        raise TranslationError("include: Input should be a list of strings", "include")
    truncation = body.get("truncation") or "disabled"
    if truncation not in ("auto", "disabled"):
        raise TranslationError("truncation: Input should be 'auto' or 'disabled'", "truncation")

    chat: dict[str, Any] = {
        "model": upstream_model or model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if max_output_tokens is not None:
        chat["max_tokens"] = max_output_tokens
    if temperature is not None:
        chat["temperature"] = temperature
    if top_p is not None:
        chat["top_p"] = top_p
    if chat_tools:
        chat["tools"] = chat_tools
        if chat_tool_choice is not None:
            chat["tool_choice"] = chat_tool_choice
        if parallel is not None:
            chat["parallel_tool_calls"] = parallel
    if response_format is not None:
        chat["response_format"] = response_format
    if user:
        chat["user"] = user
    if effort:
        chat["reasoning_effort"] = effort

    info = ResponsesRequestInfo(
        model=model,  # type: ignore[arg-type]  # required=True returned a str
        stream=bool(stream),
        instructions=instructions,
        max_output_tokens=max_output_tokens,
        temperature=temperature,
        top_p=top_p,
        tools=client_tools,
        tool_choice=tool_choice,
        parallel_tool_calls=True if parallel is None else parallel,
        text=text,
        metadata=metadata,
        store=True if store is None else store,
        previous_response_id=previous_response_id,
        user=user,
        reasoning={"effort": effort, "summary": reasoning.get("summary")} if reasoning else None,
        truncation=truncation,
        input_items=input_items,
        namespaced_tools=namespaced,
        omitted_tools=omitted,
    )
    return chat, info


def _normalise_items(items: list, label: str) -> list[dict]:
    """Validate item shapes and return them in canonical form (``type`` set, parts lists)."""
    out: list[dict] = []
    for i, item in enumerate(items):
        path = f"{label}[{i}]"
        if not isinstance(item, dict):
            raise TranslationError(f"{path}: Input should be a valid dictionary", path)
        kind = item.get("type")
        if kind is None and "role" in item:
            kind = "message"
        if not isinstance(kind, str | None):
            raise TranslationError(f"{path}.type: Input should be a valid string", f"{path}.type")
        if kind == "message":
            role = item.get("role")
            if not isinstance(role, str) or role not in _ROLES:
                raise TranslationError(
                    f"{path}.role: Input should be 'user', 'assistant', 'system' or 'developer'", f"{path}.role"
                )
            content = item.get("content")
            if isinstance(content, str):
                part: dict[str, Any] = (
                    {"type": "output_text", "text": content, "annotations": []}
                    if role == "assistant"
                    else {"type": "input_text", "text": content}
                )
                item = {**item, "type": "message", "content": [part]}
            elif isinstance(content, list):
                for j, part in enumerate(content):
                    _check_part(part, role, f"{path}.content[{j}]")
                if "type" not in item:
                    item = {**item, "type": "message"}
            else:
                raise TranslationError(
                    f"{path}.content: Input should be a string or a list of content parts", f"{path}.content"
                )
        elif kind == "function_call":
            check_str(item, "call_id", f"{path}.call_id", required=True)
            check_str(item, "name", f"{path}.name", required=True)
            check_str(item, "namespace", f"{path}.namespace")
            args = item.get("arguments")
            if not isinstance(args, str):
                raise TranslationError(f"{path}.arguments: Input should be a valid string", f"{path}.arguments")
        elif kind == "function_call_output":
            check_str(item, "call_id", f"{path}.call_id", required=True)
            output = item.get("output")
            if isinstance(output, list):
                for j, part in enumerate(output):
                    _check_part(part, "user", f"{path}.output[{j}]")
            elif not isinstance(output, str):
                raise TranslationError(
                    f"{path}.output: Input should be a string or a list of content parts", f"{path}.output"
                )
        elif kind == "reasoning" or kind in HOSTED_TOOL_ITEMS:
            pass  # accepted and stored, never sent upstream
        elif kind == "item_reference":
            raise TranslationError(
                f"{path}.type: item_reference is not supported; send the item itself", f"{path}.type"
            )
        elif kind is None:
            raise TranslationError(f"{path}.type: Field required", f"{path}.type")
        else:
            raise TranslationError(
                f"{path}.type: input item type '{kind}' is not supported by this gateway", f"{path}.type"
            )
        out.append(item)
    return out


def _check_part(part: Any, role: str, path: str) -> None:
    if not isinstance(part, dict):
        raise TranslationError(f"{path}: Input should be a valid dictionary", path)
    kind = part.get("type")
    if not isinstance(kind, str):
        raise TranslationError(f"{path}.type: Field required (a string)", f"{path}.type")
    if kind in _TEXT_PARTS:
        if not isinstance(part.get("text"), str):
            raise TranslationError(f"{path}.text: Input should be a valid string", f"{path}.text")
    elif kind == "refusal" and role == "assistant":
        if not isinstance(part.get("refusal"), str):
            raise TranslationError(f"{path}.refusal: Input should be a valid string", f"{path}.refusal")
    elif kind == "input_image":
        if role != "user":
            raise TranslationError(f"{path}.type: input_image is only allowed in user content", f"{path}.type")
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            if part.get("file_id"):
                raise TranslationError(
                    f"{path}.file_id: file ids are not supported by this gateway; send image_url (a URL or data URI)",
                    f"{path}.file_id",
                )
            raise TranslationError(f"{path}.image_url: Field required", f"{path}.image_url")
        detail = part.get("detail")
        if detail is not None and detail not in ("auto", "low", "high"):
            raise TranslationError(f"{path}.detail: Input should be 'auto', 'low' or 'high'", f"{path}.detail")
    elif kind == "input_file":
        raise TranslationError(
            f"{path}.type: input_file is not supported by this gateway; send the text as input_text", f"{path}.type"
        )
    else:
        raise TranslationError(f"{path}.type: unsupported content part type '{kind}'", f"{path}.type")


def _chat_content(parts: list[dict]) -> tuple[str | list[dict], bool]:
    """Chat content from Responses parts; the flag says whether any part is an image."""
    chat_parts: list[dict] = []
    has_image = False
    for part in parts:
        kind = part["type"]
        if kind == "input_image":
            has_image = True
            image: dict[str, Any] = {"url": part["image_url"]}
            if part.get("detail"):
                image["detail"] = part["detail"]
            chat_parts.append({"type": "image_url", "image_url": image})
        elif kind == "refusal":
            chat_parts.append({"type": "text", "text": part["refusal"]})
        else:
            chat_parts.append({"type": "text", "text": part["text"]})
    if has_image:
        return chat_parts, True
    return "\n\n".join(p["text"] for p in chat_parts), False


def _items_to_chat(items: list[dict], label: str, messages: list[dict]) -> None:
    deferred_images: list[dict] = []  # images returned by tools, shown after the tool turn

    def flush_images() -> None:
        if deferred_images:
            messages.append({"role": "user", "content": list(deferred_images)})
            deferred_images.clear()

    for item in items:
        kind = item.get("type")
        if kind != "function_call_output":
            flush_images()
        if kind == "message":
            role = item["role"]
            content, _ = _chat_content(item["content"])
            messages.append({"role": "system" if role == "developer" else role, "content": content})
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {
                    "name": model_tool_name(item.get("namespace"), item["name"]),
                    "arguments": item["arguments"],
                },
            }
            last = messages[-1] if messages else None
            # A prior turn's text and its calls (separate items) are one assistant turn
            # to the chat template; two assistant messages in a row break many templates.
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item["output"]
            if isinstance(output, list):
                texts = []
                for part in output:
                    if part["type"] == "input_image":
                        deferred_images.extend(_chat_content([part])[0])  # type: ignore[arg-type]
                    else:
                        texts.append(part["text"])
                output = "\n\n".join(texts)
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": output})
        # reasoning items: dropped (no upstream field to carry them back); hosted tools' items:
        # dropped (the model has none of those tools; a call and its output both go)
    flush_images()


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TranslationError("metadata: Input should be a valid dictionary", "metadata")
    if len(value) > _METADATA_MAX_KEYS:
        raise TranslationError(f"metadata: at most {_METADATA_MAX_KEYS} keys are allowed", "metadata")
    for key, val in value.items():
        if len(key) > _METADATA_MAX_KEY:
            raise TranslationError(
                f"metadata: key '{key[:20]}…' is longer than {_METADATA_MAX_KEY} characters", "metadata"
            )
        if not isinstance(val, str):
            raise TranslationError(f"metadata.{key}: Input should be a valid string", f"metadata.{key}")
        if len(val) > _METADATA_MAX_VALUE:
            raise TranslationError(f"metadata.{key}: longer than {_METADATA_MAX_VALUE} characters", f"metadata.{key}")
    return value


def _tools(value: Any) -> tuple[list[dict], list[dict], dict[str, tuple[str, str]], tuple[str, ...]]:
    """(echo value, chat tools, namespaced names, omitted tool types).

    Function tools go to the model as they are; the function tools of a `namespace` tool go as
    `<namespace>__<name>`; any other type is a hosted tool (web_search, file_search, code_interpreter,
    mcp, …) the model cannot run: left out of what it sees and named in `omitted_tools`."""
    if value is None:
        return [], [], {}, ()
    if not isinstance(value, list):
        raise TranslationError("tools: Input should be a valid list", "tools")
    if len(value) > _MAX_TOOLS:
        raise TranslationError(f"tools: at most {_MAX_TOOLS} tools are supported", "tools")
    chat: list[dict] = []
    names: set[str] = set()
    namespaced: dict[str, tuple[str, str]] = {}
    omitted: dict[str, None] = {}
    for i, tool in enumerate(value):
        path = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise TranslationError(f"{path}: Input should be a valid dictionary", path)
        kind = tool.get("type")
        if not isinstance(kind, str) or not kind:
            raise TranslationError(f"{path}.type: Field required (a string)", f"{path}.type")
        if kind == "function":
            chat.append(_function_tool(tool, path, None, names))
        elif kind == "namespace":
            space = check_str(tool, "name", f"{path}.name", required=True)
            members = tool.get("tools")
            if not isinstance(members, list):
                raise TranslationError(f"{path}.tools: Input should be a valid list", f"{path}.tools")
            if len(members) > _MAX_TOOLS:
                raise TranslationError(f"{path}.tools: at most {_MAX_TOOLS} tools are supported", f"{path}.tools")
            space_description = check_str(tool, "description", f"{path}.description")
            for j, member in enumerate(members):
                mpath = f"{path}.tools[{j}]"
                if not isinstance(member, dict):
                    raise TranslationError(f"{mpath}: Input should be a valid dictionary", mpath)
                if member.get("type") != "function":
                    omitted[omitted_tool_type(member.get("type"))] = None
                    continue
                fn_tool = _function_tool(member, mpath, space, names, space_description)
                namespaced[fn_tool["function"]["name"]] = (space, member["name"])  # type: ignore[assignment]
                chat.append(fn_tool)
        else:
            omitted[omitted_tool_type(kind)] = None
    return value, chat, namespaced, tuple(omitted)


def _function_tool(
    tool: dict, path: str, namespace: str | None, names: set[str], namespace_description: str | None = None
) -> dict:
    name = check_str(tool, "name", f"{path}.name", required=True)
    model_name = model_tool_name(namespace, name)  # type: ignore[arg-type]  # required=True: a str
    if model_name in names:
        raise TranslationError(f"{path}.name: duplicate tool name '{model_name}'", f"{path}.name")
    names.add(model_name)
    params = tool.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise TranslationError(f"{path}.parameters: Input should be a valid dictionary", f"{path}.parameters")
    description = check_str(tool, "description", f"{path}.description")
    if namespace_description:
        # A flat tool has no field for its namespace's description; it opens the tool's own.
        description = f"{namespace_description}\n\n{description}" if description else namespace_description
    strict = check_bool(tool, "strict", f"{path}.strict")
    fn: dict[str, Any] = {"name": model_name}
    if description:
        fn["description"] = description
    fn["parameters"] = params if params is not None else {"type": "object", "properties": {}}
    if strict is not None:
        fn["strict"] = strict
    return {"type": "function", "function": fn}


def _tool_choice(value: Any, chat_tools: list[dict]) -> tuple[Any, Any]:
    """(echo value, chat value)."""
    if value is None:
        return "auto", None
    if isinstance(value, str):
        if value not in _TOOL_CHOICE_STRINGS:
            raise TranslationError("tool_choice: Input should be 'auto', 'none' or 'required'", "tool_choice")
        if value == "required" and not chat_tools:
            raise TranslationError("tool_choice: 'required' needs at least one tool in tools", "tool_choice")
        return value, value
    if isinstance(value, dict) and value.get("type") == "function":
        name = check_str(value, "name", "tool_choice.name", required=True)
        name = model_tool_name(check_str(value, "namespace", "tool_choice.namespace"), name)  # type: ignore[arg-type]
        if not any(t["function"]["name"] == name for t in chat_tools):
            raise TranslationError(f"tool_choice.name: no function tool named '{name}' in tools", "tool_choice.name")
        return value, {"type": "function", "function": {"name": name}}
    raise TranslationError(
        "tool_choice: only 'auto', 'none', 'required' or {type: 'function', name} are supported", "tool_choice"
    )


def _text_config(value: Any) -> tuple[dict, dict | None]:
    """(echo value, chat response_format)."""
    if value is None:
        return _default_text(), None
    if not isinstance(value, dict):
        raise TranslationError("text: Input should be a valid dictionary", "text")
    fmt = value.get("format")
    if fmt is None:
        return {**value, "format": {"type": "text"}}, None
    if not isinstance(fmt, dict):
        raise TranslationError("text.format: Input should be a valid dictionary", "text.format")
    kind = fmt.get("type")
    if kind == "text":
        return value, None
    if kind == "json_object":
        return value, {"type": "json_object"}
    if kind == "json_schema":
        name = check_str(fmt, "name", "text.format.name", required=True)
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise TranslationError("text.format.schema: Field required (a JSON schema object)", "text.format.schema")
        json_schema: dict[str, Any] = {"name": name, "schema": schema}
        description = check_str(fmt, "description", "text.format.description")
        if description:
            json_schema["description"] = description
        strict = check_bool(fmt, "strict", "text.format.strict")
        if strict is not None:
            json_schema["strict"] = strict
        return value, {"type": "json_schema", "json_schema": json_schema}
    raise TranslationError(
        "text.format.type: Input should be 'text', 'json_object' or 'json_schema'", "text.format.type"
    )
