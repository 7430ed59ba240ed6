"""Coding agents with their default settings, in process against a scripted model: Codex's namespace
and hosted tools on /v1/responses, Claude Code's mid-conversation system messages on /v1/messages, the
server tools and hosted tools' history items left out of what the model sees, and
`x-should-retry: false` on every 4xx that will not change on retry, on all three surfaces."""

from __future__ import annotations

import pytest

from proxy.calls import Data, Ended, Started

from .fake_call import DONE, USAGE, finish, streamed, tool_call_deltas
from .v1 import ANTHROPIC, V1_DB, call_v1

pytestmark = [V1_DB, pytest.mark.asyncio, pytest.mark.timeout(30)]

OBJ = {"type": "object", "properties": {"id": {"type": "string"}}}
NAMESPACE = {
    "type": "namespace",
    "name": "multi_agent_v1",
    "description": "Sub-agents",
    "tools": [
        {"type": "function", "name": "spawn_agent", "description": "Start", "strict": False, "parameters": OBJ},
        {"type": "function", "name": "wait", "description": "Wait", "strict": False, "parameters": OBJ},
    ],
}
SHELL = {"type": "function", "name": "shell", "description": "Run", "strict": False, "parameters": OBJ}
CODEX_TOOLS = [SHELL, NAMESPACE, {"type": "web_search", "external_web_access": False}, {"type": "file_search"}]


def codex(model: str, *, stream: bool) -> dict:
    return {
        "model": model,
        "instructions": "You are Codex.",
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "<permissions>"}]},
            {"type": "message", "id": "msg_client1", "role": "user", "content": [{"type": "input_text", "text": "go"}]},
        ],
        "tools": CODEX_TOOLS,
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": False,
        "stream": stream,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "019a-session",
        "client_metadata": {"originator": "codex_cli_rs"},
    }


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_codex_s_namespaced_call_comes_back_with_its_names_and_hosted_tools_are_named_in_a_header(
    key, deployment, upstream, ledger, stream
):
    pieces = tool_call_deltas("call_7", "multi_agent_v1__spawn_agent", '{"id": "a1"}')
    upstream.answer(Started(200, {}), *(Data(p) for p in pieces), Data(finish("tool_calls") + USAGE + DONE), Ended())

    response = await call_v1("POST", "/v1/responses", codex(deployment.name, stream=stream), secret=key.secret)

    assert response.status == 200
    assert response.headers["x-tokios-omitted-tools"] == "web_search,file_search"
    sent = upstream.call.body
    assert [t["function"]["name"] for t in sent["tools"]] == [
        "shell",
        "multi_agent_v1__spawn_agent",
        "multi_agent_v1__wait",
    ]
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    data = response.events()[-1]["response"] if stream else response.json()
    [item] = data["output"]
    assert (item["type"], item["name"], item["namespace"], item["call_id"]) == (
        "function_call",
        "spawn_agent",
        "multi_agent_v1",
        "call_7",
    )
    assert item["arguments"] == '{"id": "a1"}'
    if stream:
        events = response.events()
        added = next(e["item"] for e in events if e["type"] == "response.output_item.added")
        done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
        args = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
        assert (added["name"], added["namespace"], done["name"], args) == (
            "spawn_agent",
            "multi_agent_v1",
            "spawn_agent",
            '{"id": "a1"}',
        )
    ledger.only(surface="responses", status_code=200)


async def test_without_hosted_tools_there_is_no_omitted_tools_header(key, deployment, upstream, ledger):
    upstream.answer(*streamed("Hi"))
    body = {**codex(deployment.name, stream=False), "tools": [SHELL]}

    response = await call_v1("POST", "/v1/responses", body, secret=key.secret)

    assert response.status == 200 and "x-tokios-omitted-tools" not in response.headers


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_claude_code_s_mid_conversation_system_message_is_merged_into_the_leading_one(
    key, deployment, upstream, ledger, stream
):
    upstream.answer(*streamed("Hi"))
    body = {
        "model": deployment.name,
        "max_tokens": 32000,
        "stream": stream,
        "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "<system-reminder>new tools</system-reminder>"},
        ],
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": []},
        "output_config": {"effort": "high"},
        "metadata": {"user_id": "user_1_account__session_2"},
        "tools": [{"name": "Bash", "input_schema": OBJ, "defer_loading": True}],
    }

    response = await call_v1("POST", "/v1/messages", body, secret=key.secret, headers=ANTHROPIC)

    assert response.status == 200
    assert upstream.call.body["messages"] == [
        {"role": "system", "content": "You are Claude Code.\n\n<system-reminder>new tools</system-reminder>"},
        {"role": "user", "content": "hi"},
    ]


# --- tools the model cannot run on /v1/messages, and hosted tools' items on /v1/responses ------------

LEFT_OUT = [
    {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
    {"type": "bash_20250124", "name": "bash"},
    {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
]


def claude_code(model: str, *, stream: bool, **changes) -> dict:
    body = {
        "model": model,
        "max_tokens": 1024,
        "stream": stream,
        "messages": [
            {"role": "user", "content": "news?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "q"}},
                    {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
                    {"type": "text", "text": "Nothing new."},
                ],
            },
            {"role": "user", "content": "list files"},
        ],
        "tools": [LEFT_OUT[0], {"name": "Bash", "input_schema": OBJ}, *LEFT_OUT[1:]],
    }
    body.update(changes)
    return body


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_server_tools_on_messages_are_left_out_and_named_in_a_header(key, deployment, upstream, ledger, stream):
    upstream.answer(*streamed("Hi"))

    response = await call_v1(
        "POST", "/v1/messages", claude_code(deployment.name, stream=stream), secret=key.secret, headers=ANTHROPIC
    )

    assert response.status == 200
    assert response.headers["x-tokios-omitted-tools"] == "web_search_20250305,bash_20250124,text_editor_20250728"
    sent = upstream.call.body
    assert [t["function"]["name"] for t in sent["tools"]] == ["Bash"]
    assert sent["messages"] == [
        {"role": "user", "content": "news?"},
        {"role": "assistant", "content": "Nothing new."},
        {"role": "user", "content": "list files"},
    ]
    ledger.only(surface="messages", status_code=200)


async def test_messages_without_server_tools_have_no_omitted_tools_header(key, deployment, upstream, ledger):
    upstream.answer(*streamed("Hi"))
    body = claude_code(deployment.name, stream=False, tools=[{"name": "Bash", "input_schema": OBJ}])

    response = await call_v1("POST", "/v1/messages", body, secret=key.secret, headers=ANTHROPIC)

    assert response.status == 200 and "x-tokios-omitted-tools" not in response.headers


async def test_the_omitted_tools_header_holds_whole_names_within_256_characters(key, deployment, upstream, ledger):
    upstream.answer(*streamed("Hi"))
    long_types = [{"type": f"server_tool_{i}_" + "x" * 60, "name": f"t{i}"} for i in range(6)]
    body = claude_code(deployment.name, stream=False, tools=long_types)

    response = await call_v1("POST", "/v1/messages", body, secret=key.secret, headers=ANTHROPIC)

    shown = response.headers["x-tokios-omitted-tools"]
    assert len(shown) <= 256
    assert shown.split(",") == [t["type"][:64] for t in long_types[: len(shown.split(","))]]
    assert len(shown.split(",")) == 3  # a fourth 64-character name would pass 256


async def test_choosing_a_left_out_tool_on_messages_is_a_400_before_the_model_is_called(
    key, deployment, upstream, ledger
):
    body = claude_code(deployment.name, stream=True, tool_choice={"type": "tool", "name": "web_search"})

    response = await call_v1("POST", "/v1/messages", body, secret=key.secret, headers=ANTHROPIC)

    assert response.status == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and "left out" in error["message"]
    assert upstream.calls == []


async def test_a_responses_conversation_that_used_hosted_tools_goes_on_without_them(key, deployment, upstream, ledger):
    searched = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "find it"}]},
        {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search", "query": "q"}},
        {"type": "computer_call", "id": "cu_1", "call_id": "cc_1", "action": {"type": "click"}, "status": "completed"},
        {"type": "computer_call_output", "call_id": "cc_1", "output": {"type": "computer_screenshot"}},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Found it."}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "and now?"}]},
    ]
    upstream.answer(*streamed("Here."))
    first = await call_v1("POST", "/v1/responses", {"model": deployment.name, "input": searched}, secret=key.secret)
    upstream.answer(*streamed("Done."))
    follow = {"model": deployment.name, "input": "thanks", "previous_response_id": first.json()["id"]}
    second = await call_v1("POST", "/v1/responses", follow, secret=key.secret)

    assert (first.status, second.status) == (200, 200)
    assert [(m["role"], m["content"]) for m in upstream.calls[1].body["messages"]] == [
        ("user", "find it"),
        ("assistant", "Found it."),
        ("user", "and now?"),
        ("assistant", "Here."),
        ("user", "thanks"),
    ]


# --- x-should-retry ---------------------------------------------------------------------------------

SURFACES = {
    "chat": ("/v1/chat/completions", {}, {"messages": [{"role": "user", "content": "hi"}]}),
    "responses": ("/v1/responses", {}, {"input": "hi"}),
    "messages": ("/v1/messages", ANTHROPIC, {"max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}),
}


@pytest.mark.parametrize("surface", SURFACES)
async def test_an_invalid_request_says_not_to_retry(key, deployment, upstream, ledger, surface):
    path, headers, body = SURFACES[surface]
    bad = {**body, "model": deployment.name, "temperature": "hot"}

    response = await call_v1("POST", path, bad, secret=key.secret, headers=headers)

    assert response.status == 400
    assert response.headers["x-should-retry"] == "false"


@pytest.mark.parametrize("surface", SURFACES)
async def test_an_unknown_model_says_not_to_retry(key, deployment, upstream, ledger, surface):
    path, headers, body = SURFACES[surface]

    response = await call_v1("POST", path, {**body, "model": "no-such-model"}, secret=key.secret, headers=headers)

    assert 400 <= response.status < 500 and response.status not in (408, 409, 429)
    assert response.headers["x-should-retry"] == "false"


@pytest.mark.parametrize("surface", SURFACES)
async def test_a_missing_key_says_not_to_retry(surface):
    path, headers, body = SURFACES[surface]

    response = await call_v1("POST", path, {**body, "model": "m"}, headers=headers)

    assert response.status == 401 and response.headers["x-should-retry"] == "false"


async def test_an_unknown_route_and_a_wrong_method_say_not_to_retry(key):
    unknown = await call_v1("POST", "/v1/nothing-here", {}, secret=key.secret)
    wrong = await call_v1("GET", "/v1/chat/completions", secret=key.secret)

    assert (unknown.status, unknown.headers["x-should-retry"]) == (404, "false")
    assert (wrong.status, wrong.headers["x-should-retry"]) == (405, "false")
