"""Request shapes coding agents send with their default settings (Codex CLI 0.171 on /v1/responses,
Claude Code 2.1 on /v1/messages), translated for a Chat Completions model."""

from __future__ import annotations

import pytest

from proxy.translate.anthropic import count_tokens_prompt, count_tokens_tools
from proxy.translate.anthropic import validate_and_translate_request as messages_request
from proxy.translate.errors import TranslationError
from proxy.translate.responses import ResponsesStreamTranslator
from proxy.translate.responses import validate_and_translate_request as responses_request

from .upstream import parse_sse

OBJ = {"type": "object", "properties": {"id": {"type": "string"}}}
SPAWN = {"type": "function", "name": "spawn_agent", "description": "Start an agent", "strict": False, "parameters": OBJ}
WAIT = {"type": "function", "name": "wait", "description": "Wait for agents", "strict": False, "parameters": OBJ}
SHELL = {"type": "function", "name": "shell", "description": "Run a command", "strict": False, "parameters": OBJ}
NAMESPACE = {"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents", "tools": [SPAWN, WAIT]}


def codex_body(**changes) -> dict:
    body = {
        "model": "gpt-local",
        "instructions": "You are Codex.",
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "<permissions>"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list files"}]},
        ],
        "tools": [SHELL, NAMESPACE, {"type": "web_search", "external_web_access": False}],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "019a-session",
        "client_metadata": {"originator": "codex_cli_rs"},
        "text": {"verbosity": "low"},
    }
    body.update(changes)
    return body


def test_codex_default_request_is_translated_with_namespace_flattened_and_hosted_tools_omitted():
    chat, info = responses_request(codex_body(), upstream_model=None, history=None)

    names = [t["function"]["name"] for t in chat["tools"]]
    assert names == ["shell", "multi_agent_v1__spawn_agent", "multi_agent_v1__wait"]
    assert chat["tools"][1]["function"]["description"] == "Sub-agents\n\nStart an agent"
    assert info.namespaced_tools == {
        "multi_agent_v1__spawn_agent": ("multi_agent_v1", "spawn_agent"),
        "multi_agent_v1__wait": ("multi_agent_v1", "wait"),
    }
    assert info.omitted_tools == ("web_search",)
    assert chat["messages"][0] == {"role": "system", "content": "You are Codex.\n\n<permissions>"}
    assert [m["role"] for m in chat["messages"]] == ["system", "user"]
    assert chat["parallel_tool_calls"] is False and info.store is False
    assert info.tools == codex_body()["tools"]  # the Response echoes what the client sent


def test_every_hosted_tool_type_is_omitted_once_in_order():
    hosted = [
        {"type": "file_search", "vector_store_ids": ["vs_1"]},
        {"type": "code_interpreter", "container": {"type": "auto"}},
        {"type": "web_search_preview"},
        {"type": "mcp", "server_label": "x"},
        {"type": "image_generation"},
        {"type": "computer_use_preview", "display_width": 1, "display_height": 1, "environment": "linux"},
        {"type": "local_shell"},
        {"type": "file_search"},
        {"type": "Weird Type\r\nX-Injected: 1"},
    ]
    chat, info = responses_request(codex_body(tools=hosted), upstream_model=None, history=None)

    assert "tools" not in chat and "tool_choice" not in chat
    assert info.omitted_tools == (
        "file_search",
        "code_interpreter",
        "web_search_preview",
        "mcp",
        "image_generation",
        "computer_use_preview",
        "local_shell",
        "weirdtypex-injected1",
    )


def test_a_namespaced_call_in_the_history_reaches_the_model_under_the_model_s_name():
    history_input = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "spawn"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
        {
            "type": "function_call",
            "id": "fc_1",
            "call_id": "call_1",
            "name": "spawn_agent",
            "namespace": "multi_agent_v1",
            "arguments": "{}",
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "started"},
        {"type": "function_call", "call_id": "call_2", "name": "shell", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_2", "output": "ok"},
    ]
    chat, _ = responses_request(codex_body(input=history_input), upstream_model=None, history=None)

    calls = [m["tool_calls"][0]["function"]["name"] for m in chat["messages"] if m.get("tool_calls")]
    assert calls == ["multi_agent_v1__spawn_agent", "shell"]


def test_tool_choice_may_name_a_namespaced_function():
    choice = {"type": "function", "name": "wait", "namespace": "multi_agent_v1"}
    chat, _ = responses_request(codex_body(tool_choice=choice), upstream_model=None, history=None)
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "multi_agent_v1__wait"}}


@pytest.mark.parametrize(
    ("tools", "param"),
    [
        ([{"type": "namespace", "name": "n"}], "tools[0].tools"),
        ([{"type": "namespace", "tools": [SPAWN]}], "tools[0].name"),
        ([{"type": "namespace", "name": "n", "tools": ["x"]}], "tools[0].tools[0]"),
        ([{"type": "function", "name": "n__spawn_agent"}, {**NAMESPACE, "name": "n"}], "tools[1].tools[0].name"),
        ([{"name": "untyped"}], "tools[0].type"),
    ],
)
def test_malformed_namespaces_are_refused_naming_the_field(tools, param):
    with pytest.raises(TranslationError) as exc:
        responses_request(codex_body(tools=tools), upstream_model=None, history=None)
    assert exc.value.param == param


@pytest.mark.parametrize(("changes", "param"), [({"include": "x"}, "include"), ({"include": [1]}, "include")])
def test_include_must_be_a_list_of_strings(changes, param):
    with pytest.raises(TranslationError) as exc:
        responses_request(codex_body(**changes), upstream_model=None, history=None)
    assert exc.value.param == param


def _tool_call_chunks(name: str) -> list[dict]:
    first = {"index": 0, "id": "call_9", "type": "function", "function": {"name": name, "arguments": '{"id"'}}
    return [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [first]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ': "a"}'}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]


@pytest.mark.parametrize(
    ("model_name", "name", "namespace"),
    [("multi_agent_v1__spawn_agent", "spawn_agent", "multi_agent_v1"), ("shell", "shell", None)],
)
def test_calls_go_back_to_the_client_with_its_names_streamed_and_whole(model_name, name, namespace):
    _, info = responses_request(codex_body(), upstream_model=None, history=None)
    translator = ResponsesStreamTranslator(info)
    raw = translator.start() + b"".join(translator.feed(c) for c in _tool_call_chunks(model_name)) + translator.finish()
    events = [data for _, data in parse_sse(raw)]

    added = next(e for e in events if e["type"] == "response.output_item.added")["item"]
    done = next(e for e in events if e["type"] == "response.output_item.done")["item"]
    args_done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    final = translator.final_response()["output"][0]
    for item in (added, done, final):
        assert (item["name"], item.get("namespace")) == (name, namespace)
    assert args_done["name"] == name and args_done["arguments"] == '{"id": "a"}'
    assert "".join(deltas) == '{"id": "a"}' and final["arguments"] == '{"id": "a"}'
    assert model_name not in (raw.decode() if namespace else "")


# --- Claude Code on /v1/messages -------------------------------------------------------------------


def claude_code_body(**changes) -> dict:
    cached = {"type": "ephemeral"}
    body = {
        "model": "claude-local",
        "max_tokens": 32000,
        "system": [
            {"type": "text", "text": "You are Claude Code.", "cache_control": cached},
            {"type": "text", "text": "Be concise."},
        ],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": cached}]},
            {"role": "system", "content": "<system-reminder>tools changed</system-reminder>"},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
            {"role": "system", "content": [{"type": "text", "text": "Later note", "cache_control": cached}]},
            {"role": "user", "content": "list files"},
        ],
        "tools": [
            {"name": "Bash", "description": "Run", "input_schema": OBJ, "cache_control": cached},
            {"name": "WebFetch", "description": "Fetch", "input_schema": OBJ, "defer_loading": True},
        ],
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
        "metadata": {"user_id": "user_abc_account__session_123"},
        "stream": True,
    }
    body.update(changes)
    return body


def test_claude_code_default_request_merges_system_messages_into_the_leading_one():
    chat, info = messages_request(claude_code_body(), upstream_model=None)

    assert chat["messages"] == [
        {
            "role": "system",
            "content": "You are Claude Code.\n\nBe concise.\n\n<system-reminder>tools changed</system-reminder>"
            "\n\nLater note",
        },
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "list files"},
    ]
    assert [t["function"]["name"] for t in chat["tools"]] == ["Bash", "WebFetch"]
    assert chat["user"] == "user_abc_account__session_123" and chat["reasoning_effort"] == "high"
    assert chat["max_tokens"] == 32000 and info.thinking is True


def test_a_mid_conversation_system_message_without_a_top_level_system_leads():
    body = claude_code_body(system=None)
    body["messages"] = [{"role": "user", "content": "a"}, {"role": "system", "content": "rule"}]
    chat, _ = messages_request(body, upstream_model=None)
    assert chat["messages"] == [{"role": "system", "content": "rule"}, {"role": "user", "content": "a"}]


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"messages": [{"role": "user", "content": "a"}, {"role": "system"}]}, "messages.1.content"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": 3}]}, "messages.1.content"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": [{"type": "image"}]}]},
            "messages.1.content.0.type",
        ),
        ({"output_config": "high"}, "output_config"),
        ({"output_config": {"effort": 3}}, "output_config.effort"),
        ({"context_management": []}, "context_management"),
    ],
)
def test_malformed_claude_code_fields_are_refused_naming_the_field(changes, param):
    with pytest.raises(TranslationError) as exc:
        messages_request(claude_code_body(**changes), upstream_model=None)
    assert exc.value.param == param


# --- tools the model cannot run, and their traces in the history -------------------------------------

ANTHROPIC_LEFT_OUT = [
    {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
    {"type": "web_fetch_20250910", "name": "web_fetch"},
    {"type": "code_execution_20250825", "name": "code_execution"},
    {"type": "bash_20250124", "name": "bash"},
    {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
    {"type": "computer_20250124", "name": "computer", "display_width_px": 1024, "display_height_px": 768},
    {"type": "memory_20250818", "name": "memory"},
    {"type": "tool_search_tool_regex_20251119", "name": "tool_search_tool_regex"},
    {"type": "web_search_20250305", "name": "web_search_again"},
    {"type": "Weird Type\r\nX-Injected: 1", "name": "weird"},
]


def test_server_and_schema_less_client_tools_are_left_out_and_named_once_in_order():
    bash = {"name": "Bash", "description": "Run", "input_schema": OBJ}
    custom = {"type": "custom", "name": "Edit", "input_schema": OBJ}
    tools = [ANTHROPIC_LEFT_OUT[0], bash, *ANTHROPIC_LEFT_OUT[1:], custom]
    chat, info = messages_request(claude_code_body(tools=tools), upstream_model=None)

    assert [t["function"]["name"] for t in chat["tools"]] == ["Bash", "Edit"]
    assert info.tool_names == ("Bash", "Edit")
    assert info.omitted_tools == (
        "web_search_20250305",
        "web_fetch_20250910",
        "code_execution_20250825",
        "bash_20250124",
        "text_editor_20250728",
        "computer_20250124",
        "memory_20250818",
        "tool_search_tool_regex_20251119",
        "weirdtypex-injected1",
    )


def test_with_only_left_out_tools_the_model_is_asked_without_tools():
    chat, info = messages_request(claude_code_body(tools=ANTHROPIC_LEFT_OUT[:2]), upstream_model=None)
    assert "tools" not in chat and "tool_choice" not in chat
    assert info.omitted_tools == ("web_search_20250305", "web_fetch_20250910")
    _, plain = messages_request(claude_code_body(), upstream_model=None)
    assert plain.omitted_tools == ()


def test_count_tokens_counts_only_the_tools_the_model_sees():
    body = claude_code_body(tools=[*ANTHROPIC_LEFT_OUT, {"name": "Bash", "input_schema": OBJ}])
    assert [t["function"]["name"] for t in count_tokens_tools(body)] == ["Bash"]
    _, text = count_tokens_prompt(body)
    assert "tool Bash" in text and "web_search" not in text


@pytest.mark.parametrize(
    ("tools", "choice", "words"),
    [
        (
            ANTHROPIC_LEFT_OUT + [{"name": "Bash", "input_schema": OBJ}],
            {"type": "tool", "name": "web_search"},
            "left out",
        ),
        (ANTHROPIC_LEFT_OUT, {"type": "tool", "name": "bash"}, "left out"),
        (ANTHROPIC_LEFT_OUT, {"type": "any"}, "tools with a type are left out"),
    ],
)
def test_a_tool_choice_the_model_cannot_follow_is_refused_saying_why(tools, choice, words):
    with pytest.raises(TranslationError) as exc:
        messages_request(claude_code_body(tools=tools, tool_choice=choice), upstream_model=None)
    assert exc.value.param == ("tool_choice.type" if choice["type"] == "any" else "tool_choice.name")
    assert words in exc.value.message


def test_a_custom_tool_named_like_a_left_out_one_can_be_chosen():
    tools = [ANTHROPIC_LEFT_OUT[3], {"name": "bash", "input_schema": OBJ}]
    chat, _ = messages_request(
        claude_code_body(tools=tools, tool_choice={"type": "tool", "name": "bash"}), upstream_model=None
    )
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "bash"}}


def test_server_tool_blocks_in_the_history_are_dropped_and_the_rest_kept():
    body = claude_code_body(system=None)
    body["messages"] = [
        {"role": "user", "content": "news?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Searching."},
                {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "news"}},
                {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": [{"type": "x"}]},
                {"type": "mcp_tool_use", "id": "mcptoolu_1", "name": "t", "server_name": "s", "input": {}},
                {"type": "mcp_tool_result", "tool_use_id": "mcptoolu_1", "content": []},
                {"type": "bash_code_execution_tool_result", "tool_use_id": "srvtoolu_2", "content": {}},
                {"type": "text", "text": "Here it is."},
                {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"id": "ls"}},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "a.txt"}]},
    ]
    chat, _ = messages_request(body, upstream_model=None)

    assert chat["messages"] == [
        {"role": "user", "content": "news?"},
        {
            "role": "assistant",
            "content": "Searching.\n\nHere it is.",
            "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "Bash", "arguments": '{"id": "ls"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "a.txt"},
    ]


def test_a_server_tool_block_is_still_refused_in_a_user_message():
    body = claude_code_body()
    body["messages"] = [{"role": "user", "content": [{"type": "web_search_tool_result", "tool_use_id": "s"}]}]
    with pytest.raises(TranslationError) as exc:
        messages_request(body, upstream_model=None)
    assert exc.value.param == "messages.0.content.0.type"


HOSTED_ITEMS = [
    {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search", "query": "q"}},
    {"type": "file_search_call", "id": "fs_1", "queries": ["q"], "status": "completed"},
    {"type": "code_interpreter_call", "id": "ci_1", "code": "1+1", "container_id": "c", "status": "completed"},
    {"type": "image_generation_call", "id": "ig_1", "result": "b64", "status": "completed"},
    {"type": "computer_call", "id": "cu_1", "call_id": "cc_1", "action": {"type": "click"}, "status": "completed"},
    {"type": "computer_call_output", "call_id": "cc_1", "output": {"type": "computer_screenshot"}},
    {"type": "local_shell_call", "id": "ls_1", "call_id": "lc_1", "action": {"type": "exec"}, "status": "completed"},
    {"type": "local_shell_call_output", "id": "lso_1", "call_id": "lc_1", "output": "ok"},
    {"type": "mcp_list_tools", "id": "ml_1", "server_label": "s", "tools": []},
    {"type": "mcp_approval_request", "id": "ma_1", "server_label": "s", "name": "t", "arguments": "{}"},
    {"type": "mcp_approval_response", "approval_request_id": "ma_1", "approve": True},
    {"type": "mcp_call", "id": "mc_1", "server_label": "s", "name": "t", "arguments": "{}", "output": "x"},
    {"type": "custom_tool_call", "call_id": "ct_1", "name": "apply_patch", "input": "*** Begin Patch"},
    {"type": "custom_tool_call_output", "call_id": "ct_1", "output": "Done"},
    {"type": "shell_call", "call_id": "sc_1", "action": {"commands": ["ls"]}},
    {"type": "shell_call_output", "call_id": "sc_1", "output": []},
    {"type": "apply_patch_call", "call_id": "ap_1", "operation": {}},
    {"type": "apply_patch_call_output", "call_id": "ap_1", "output": "ok"},
]


def _said(role: str, text: str) -> dict:
    kind = "output_text" if role == "assistant" else "input_text"
    return {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}


def test_hosted_tools_items_in_the_input_and_the_history_are_kept_but_not_sent_to_the_model():
    history = [_said("user", "find it"), *HOSTED_ITEMS[:6], _said("assistant", "Found it.")]
    given = [
        _said("user", "and now?"),
        *HOSTED_ITEMS[6:],
        {"type": "function_call", "call_id": "call_1", "name": "shell", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "listed"},
    ]
    chat, info = responses_request(codex_body(input=given), upstream_model=None, history=history)

    assert [(m["role"], m.get("content")) for m in chat["messages"]] == [
        ("system", "You are Codex."),
        ("user", "find it"),
        ("assistant", "Found it."),
        ("user", "and now?"),
        ("assistant", None),
        ("tool", "listed"),
    ]
    assert chat["messages"][4]["tool_calls"][0]["id"] == "call_1"
    assert [item["type"] for item in info.input_items] == [item["type"] for item in given]  # stored as sent


def test_an_input_of_hosted_tools_items_only_is_no_conversation():
    with pytest.raises(TranslationError) as exc:
        responses_request(codex_body(instructions=None, input=HOSTED_ITEMS[:2]), upstream_model=None, history=None)
    assert exc.value.param == "input"


@pytest.mark.parametrize("kind", ["item_reference", "compaction_summary", None])
def test_items_the_gateway_cannot_replay_are_still_refused(kind):
    with pytest.raises(TranslationError) as exc:
        responses_request(codex_body(input=[{"type": kind, "id": "x"}]), upstream_model=None, history=None)
    assert exc.value.param == "input[0].type"
