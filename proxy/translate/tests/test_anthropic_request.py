from __future__ import annotations

import copy
import json

import pytest

from proxy.translate.anthropic import count_tokens_prompt, estimate_tokens, validate_and_translate_request
from proxy.translate.errors import TranslationError

BASE = {"model": "claude-local", "max_tokens": 256, "messages": [{"role": "user", "content": "Hi"}]}
TOOL = {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {}}}


def translate(**changes):
    body = copy.deepcopy(BASE)
    body.update(changes)
    return validate_and_translate_request(body, upstream_model=None)


def user(*blocks):
    return {"role": "user", "content": list(blocks)}


def assistant(*blocks):
    return {"role": "assistant", "content": list(blocks)}


INVALID = [
    ({"max_tokens": None}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": "100"}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"model": None}, "model"),
    ({"model": 3}, "model"),
    ({"messages": None}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": {"role": "user"}}, "messages"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]}, "messages.1.role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"messages": [{"role": "user"}]}, "messages.0.content"),
    ({"messages": [user({"type": "text", "text": "a"}, {"type": "video"})]}, "messages.0.content.1.type"),
    ({"messages": [user({"text": "no type"})]}, "messages.0.content.0.type"),
    ({"messages": [user({"type": "text", "text": 1})]}, "messages.0.content.0.text"),
    ({"messages": [user({"type": "document", "source": {"type": "text", "data": "x"}})]}, "messages.0.content.0.type"),
    (
        {"messages": [user({"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": "x"}})]},
        "messages.0.content.0.source.media_type",
    ),
    (
        {"messages": [user({"type": "image", "source": {"type": "file", "file_id": "f"}})]},
        "messages.0.content.0.source.type",
    ),
    ({"messages": [user({"type": "tool_use", "id": "t", "name": "n", "input": {}})]}, "messages.0.content.0.type"),
    (
        {
            "messages": [
                user({"type": "text", "text": "q"}),
                assistant({"type": "tool_use", "id": "t", "name": "n", "input": "x"}),
            ]
        },
        "messages.1.content.0.input",
    ),
    ({"messages": [user({"type": "tool_result", "content": "x"})]}, "messages.0.content.0.tool_use_id"),
    (
        {"messages": [user({"type": "tool_result", "tool_use_id": "t", "content": [{"type": "video"}]})]},
        "messages.0.content.0.content.0.type",
    ),
    ({"messages": [{"role": "user", "content": []}]}, "messages.0.content"),
    ({"messages": [assistant({"type": "thinking", "thinking": "x", "signature": "s"})]}, "messages"),
    ({"system": 5}, "system"),
    ({"system": [{"type": "image", "source": {}}]}, "system.0.type"),
    ({"stop_sequences": "END"}, "stop_sequences"),
    ({"stop_sequences": ["a", 2]}, "stop_sequences.1"),
    ({"stop_sequences": [""]}, "stop_sequences.0"),
    ({"temperature": 1.5}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": -0.1}, "top_p"),
    ({"top_k": 1.5}, "top_k"),
    ({"stream": "yes"}, "stream"),
    ({"tools": [{"name": "x"}]}, "tools.0.input_schema"),
    ({"tools": [{"input_schema": {}}]}, "tools.0.name"),
    ({"tools": [TOOL, {"type": 7, "name": "web_search"}]}, "tools.1.type"),
    ({"tools": [TOOL, TOOL]}, "tools.1.name"),
    ({"tools": [TOOL], "tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
    ({"tools": [TOOL], "tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice.name"),
    ({"tools": [TOOL], "tool_choice": {"type": "tool"}}, "tool_choice.name"),
    ({"tool_choice": {"type": "any"}}, "tool_choice.type"),
    ({"metadata": {"user_id": 7}}, "metadata.user_id"),
    ({"metadata": "u"}, "metadata"),
    ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens"),
]


@pytest.mark.parametrize(("changes", "param"), INVALID)
def test_invalid_requests_name_the_field(changes, param):
    with pytest.raises(TranslationError) as exc:
        translate(**changes)
    assert exc.value.param == param
    assert exc.value.message.startswith(param + ": ")


def test_document_blocks_are_rejected_with_a_clear_message():
    with pytest.raises(TranslationError, match="document blocks are not supported"):
        translate(messages=[user({"type": "document", "source": {"type": "text", "data": "x"}})])


def test_non_object_body_is_rejected():
    with pytest.raises(TranslationError):
        validate_and_translate_request([], upstream_model=None)  # type: ignore[arg-type]


def test_minimal_request_streams_upstream_with_usage():
    chat, info = translate()
    assert chat == {
        "model": "claude-local",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 256,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert info.model == "claude-local" and info.max_tokens == 256 and info.stream is False


def test_upstream_model_replaces_the_client_model_only_upstream():
    chat, info = validate_and_translate_request({**BASE, "stream": True}, upstream_model="qwen3-8b-q4")
    assert chat["model"] == "qwen3-8b-q4"
    assert info.model == "claude-local" and info.stream is True


def test_stop_sequences_stay_in_the_gateway():
    chat, info = translate(stop_sequences=["END", "###", "END"])
    assert "stop" not in chat
    assert info.stop_sequences == ("END", "###")


def test_sampling_parameters_pass_through():
    chat, _ = translate(temperature=0.2, top_p=0.9, top_k=40, metadata={"user_id": "u-1"})
    assert (chat["temperature"], chat["top_p"], chat["top_k"], chat["user"]) == (0.2, 0.9, 40, "u-1")


def test_system_string_and_blocks_become_one_leading_system_message():
    chat, _ = translate(system="Be brief.")
    assert chat["messages"][0] == {"role": "system", "content": "Be brief."}
    blocks = [{"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "B"}]
    chat, _ = translate(system=blocks)
    assert chat["messages"][0] == {"role": "system", "content": "A\n\nB"}
    assert chat["messages"][1]["role"] == "user"


def test_text_blocks_collapse_to_a_string():
    chat, _ = translate(messages=[user({"type": "text", "text": "one"}, {"type": "text", "text": "two"})])
    assert chat["messages"] == [{"role": "user", "content": "one\n\ntwo"}]


def test_images_become_image_url_parts():
    chat, _ = translate(
        messages=[
            user(
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
                {"type": "image", "source": {"type": "url", "url": "https://x.test/cat.jpg"}},
            )
        ]
    )
    assert chat["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
        {"type": "image_url", "image_url": {"url": "https://x.test/cat.jpg"}},
    ]


def test_tool_use_and_tool_results_translate_in_chat_order():
    tool_input = {"city": "Paris", "unit": "°C"}
    chat, _ = translate(
        tools=[TOOL],
        messages=[
            user({"type": "text", "text": "Weather in Paris and Rome?"}),
            assistant(
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": tool_input},
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}},
            ),
            user(
                {"type": "text", "text": "Here you go"},
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18°C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [{"type": "text", "text": "down"}],
                    "is_error": True,
                },
            ),
        ],
    )
    msgs = chat["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "tool", "user"]
    calls = msgs[1]["tool_calls"]
    assert msgs[1]["content"] == "Checking."
    assert [c["id"] for c in calls] == ["toolu_1", "toolu_2"]
    assert json.loads(calls[0]["function"]["arguments"]) == tool_input
    assert calls[0]["type"] == "function" and calls[0]["function"]["name"] == "get_weather"
    assert msgs[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "18°C"}
    assert msgs[3] == {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: down"}
    assert msgs[4] == {"role": "user", "content": "Here you go"}


def test_assistant_with_only_tool_use_has_null_content():
    chat, _ = translate(
        messages=[
            user({"type": "text", "text": "q"}),
            assistant({"type": "tool_use", "id": "t", "name": "f", "input": {}}),
        ]
    )
    assert chat["messages"][1]["content"] is None


def test_assistant_with_only_thinking_is_dropped():
    chat, _ = translate(
        messages=[
            {"role": "user", "content": "q"},
            assistant({"type": "redacted_thinking", "data": "xx"}),
            {"role": "user", "content": "again"},
        ]
    )
    assert [m["content"] for m in chat["messages"]] == ["q", "again"]


def test_tool_result_images_follow_the_tool_messages():
    png = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}}
    chat, _ = translate(
        messages=[
            user({"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "shot"}, png]})
        ]
    )
    assert chat["messages"][0] == {"role": "tool", "tool_call_id": "t1", "content": "shot"}
    assert chat["messages"][1]["role"] == "user"
    assert chat["messages"][1]["content"][0]["image_url"]["url"] == "data:image/png;base64,AAA"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
    ],
)
def test_tool_choice_maps_to_chat(choice, expected):
    chat, info = translate(tools=[TOOL], tool_choice=choice)
    assert chat["tool_choice"] == expected
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "Weather", "parameters": TOOL["input_schema"]},
        }
    ]
    assert info.tool_names == ("get_weather",)


def test_disable_parallel_tool_use_sets_parallel_tool_calls_false():
    chat, _ = translate(tools=[TOOL], tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    assert chat["parallel_tool_calls"] is False
    chat, _ = translate(tools=[TOOL], tool_choice={"type": "auto"})
    assert "parallel_tool_calls" not in chat


def test_auto_tool_choice_without_tools_is_dropped():
    chat, _ = translate(tool_choice={"type": "auto"})
    assert "tool_choice" not in chat and "tools" not in chat


def test_thinking_is_recorded_not_sent():
    chat, info = translate(thinking={"type": "enabled", "budget_tokens": 2048})
    assert info.thinking is True
    assert "thinking" not in chat


def test_count_tokens_needs_no_max_tokens_and_renders_everything():
    body = {
        "model": "m",
        "system": "SYS-TEXT",
        "tools": [TOOL],
        "messages": [
            {"role": "user", "content": "USER-TEXT"},
            assistant({"type": "tool_use", "id": "t", "name": "get_weather", "input": {"city": "CITY-ARG"}}),
            user({"type": "tool_result", "tool_use_id": "t", "content": "RESULT-TEXT"}),
        ],
    }
    messages, text = count_tokens_prompt(body)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool"]
    for needle in ("SYS-TEXT", "USER-TEXT", "CITY-ARG", "RESULT-TEXT", "get_weather", "Weather"):
        assert needle in text


def test_count_tokens_validates_like_messages():
    with pytest.raises(TranslationError) as exc:
        count_tokens_prompt({"model": "m", "messages": [{"role": "bot", "content": "x"}]})
    assert exc.value.param == "messages.0.role"


def test_estimate_tokens_scales_with_bytes():
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    assert estimate_tokens("x" * 4000) == 1000
    # CJK: 3 bytes per character, so not undercounted fourfold
    assert estimate_tokens("日本語" * 100) == 225
