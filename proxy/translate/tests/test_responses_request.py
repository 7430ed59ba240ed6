from __future__ import annotations

import copy

import pytest

from proxy.translate.errors import TranslationError
from proxy.translate.responses import validate_and_translate_request

BASE = {"model": "gpt-local", "input": "Hi"}
FN = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather",
    "parameters": {"type": "object", "properties": {}},
    "strict": True,
}


def translate(history=None, **changes):
    body = copy.deepcopy(BASE)
    body.update(changes)
    return validate_and_translate_request(body, upstream_model=None, history=history)


INVALID = [
    ({"model": None}, "model"),
    ({"input": None}, "input"),
    ({"input": 5}, "input"),
    ({"input": []}, "input"),
    ({"input": ["hi"]}, "input[0]"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"input": [{"role": "user", "content": 5}]}, "input[0].content"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0].content[0].type"),
    (
        {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
        "input[0].content[0].file_id",
    ),
    ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input[0].content[0].image_url"),
    ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input[0].content[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_text", "text": None}]}]}, "input[0].content[0].text"),
    (
        {"input": [{"type": "message", "role": "system", "content": [{"type": "input_image", "image_url": "u"}]}]},
        "input[0].content[0].type",
    ),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]}, "input[0].arguments"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": 3}]}, "input[0].output"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"input": [{"type": "compaction_summary", "id": "cs"}]}, "input[0].type"),
    ({"instructions": 3}, "instructions"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"max_output_tokens": 1.5}, "max_output_tokens"),
    ({"temperature": 2.5}, "temperature"),
    ({"top_p": 2}, "top_p"),
    ({"tools": [FN, {"type": 7}]}, "tools[1].type"),
    ({"tools": [{"type": "function"}]}, "tools[0].name"),
    ({"tools": [{"type": "function", "name": "f", "parameters": []}]}, "tools[0].parameters"),
    ({"tools": [FN, FN]}, "tools[1].name"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [FN], "tool_choice": {"type": "function", "name": "other"}}, "tool_choice.name"),
    ({"tools": [FN], "tool_choice": {"type": "file_search"}}, "tool_choice"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
    ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"metadata": {"k": 1}}, "metadata.k"),
    ({"metadata": [1]}, "metadata"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"store": "no"}, "store"),
    ({"previous_response_id": 12}, "previous_response_id"),
    ({"user": 1}, "user"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"background": True}, "background"),
    ({"truncation": "middle"}, "truncation"),
]


@pytest.mark.parametrize(("changes", "param"), INVALID)
def test_invalid_requests_name_the_field(changes, param):
    with pytest.raises(TranslationError) as exc:
        translate(**changes)
    assert exc.value.param == param
    assert exc.value.message.startswith(param)


def test_string_input_becomes_one_user_message():
    chat, info = translate(max_output_tokens=50, temperature=0.3, top_p=0.8, user="u1")
    assert chat == {
        "model": "gpt-local",
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 50,
        "temperature": 0.3,
        "top_p": 0.8,
        "user": "u1",
    }
    assert info.input_items == [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}]
    assert (info.max_output_tokens, info.temperature, info.top_p, info.user) == (50, 0.3, 0.8, "u1")


def test_defaults_echoed_in_info():
    chat, info = translate()
    assert (info.store, info.parallel_tool_calls, info.tool_choice, info.tools) == (True, True, "auto", [])
    assert info.text == {"format": {"type": "text"}} and info.metadata == {} and info.stream is False
    assert "max_tokens" not in chat


def test_instructions_and_developer_messages_become_one_leading_system_message():
    # Chat templates take one system message, first: every system/developer text joins it, in order.
    chat, _ = translate(
        instructions="Be terse.",
        input=[
            {"role": "developer", "content": "Rule"},
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "A"},
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Later"}]},
            {"role": "user", "content": "Q2"},
        ],
    )
    assert chat["messages"] == [
        {"role": "system", "content": "Be terse.\n\nRule\n\nLater"},
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "Q2"},
    ]


def test_message_parts_and_images():
    chat, info = translate(
        input=[
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AAA", "detail": "low"},
                ],
            }
        ]
    )
    assert chat["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA", "detail": "low"}},
    ]
    assert info.input_items[0]["content"][1]["type"] == "input_image"


def test_function_calls_and_outputs_round_trip():
    items = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "type": "message",
            "role": "assistant",
            "id": "msg_1",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Checking.", "annotations": []}],
        },
        {
            "type": "function_call",
            "id": "fc_1",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city":"Paris"}',
        },
        {
            "type": "function_call",
            "id": "fc_2",
            "call_id": "call_2",
            "name": "get_weather",
            "arguments": '{"city":"Rome"}',
        },
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
        {
            "type": "function_call_output",
            "call_id": "call_2",
            "output": [{"type": "input_text", "text": "21"}, {"type": "input_text", "text": "C"}],
        },
    ]
    chat, info = translate(input=items, tools=[FN])
    msgs = chat["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "tool"]
    assert msgs[1]["content"] == "Checking."
    assert msgs[1]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}},
    ]
    assert msgs[2] == {"role": "tool", "tool_call_id": "call_1", "content": "18C"}
    assert msgs[3] == {"role": "tool", "tool_call_id": "call_2", "content": "21\n\nC"}
    assert len(info.input_items) == len(items)


def test_function_call_without_preceding_text_gets_null_content():
    chat, _ = translate(
        input=[
            {"role": "user", "content": "q"},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        ]
    )
    assert chat["messages"][1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
    }


def test_images_in_function_output_follow_the_tool_messages():
    chat, _ = translate(
        input=[
            {"type": "function_call", "call_id": "c", "name": "shot", "arguments": "{}"},
            {
                "type": "function_call_output",
                "call_id": "c",
                "output": [{"type": "input_image", "image_url": "https://x.test/a.png"}],
            },
            {"role": "user", "content": "describe"},
        ]
    )
    assert [m["role"] for m in chat["messages"]] == ["assistant", "tool", "user", "user"]
    assert chat["messages"][2]["content"][0]["image_url"]["url"] == "https://x.test/a.png"


def test_tools_flat_to_nested_and_tool_choice():
    chat, info = translate(
        tools=[FN], tool_choice={"type": "function", "name": "get_weather"}, parallel_tool_calls=False
    )
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather",
                "parameters": FN["parameters"],
                "strict": True,
            },
        }
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["parallel_tool_calls"] is False
    assert info.tools == [FN] and info.tool_choice == {"type": "function", "name": "get_weather"}
    assert info.parallel_tool_calls is False


@pytest.mark.parametrize("choice", ["auto", "none", "required"])
def test_string_tool_choice_passes_through(choice):
    chat, info = translate(tools=[FN], tool_choice=choice)
    assert chat["tool_choice"] == choice and info.tool_choice == choice


def test_json_schema_format_becomes_response_format():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    text = {"format": {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}}
    chat, info = translate(text=text)
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "thing", "schema": schema, "strict": True},
    }
    assert info.text == text


def test_json_object_format():
    chat, _ = translate(text={"format": {"type": "json_object"}})
    assert chat["response_format"] == {"type": "json_object"}
    chat, _ = translate(text={"format": {"type": "text"}})
    assert "response_format" not in chat


def test_history_is_prepended_after_instructions():
    history = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "My name is Ada."}]},
        {
            "type": "message",
            "role": "assistant",
            "id": "msg_a",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Hi Ada!", "annotations": [], "logprobs": []}],
        },
    ]
    chat, info = translate(
        history=history, instructions="New rules", input="What is my name?", previous_response_id="resp_1"
    )
    assert chat["messages"] == [
        {"role": "system", "content": "New rules"},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hi Ada!"},
        {"role": "user", "content": "What is my name?"},
    ]
    assert info.previous_response_id == "resp_1"
    assert len(info.input_items) == 1  # only the new input is stored as this response's input


def test_history_allows_missing_input():
    history = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}]}]
    chat, info = translate(history=history, input=None)
    assert chat["messages"] == [{"role": "user", "content": "x"}] and info.input_items == []


def test_broken_history_is_reported_on_previous_response_id():
    with pytest.raises(TranslationError) as exc:
        translate(history=[{"type": "bogus"}], previous_response_id="resp_x")
    assert exc.value.param == "previous_response_id"


def test_metadata_store_and_reasoning_are_kept():
    chat, info = translate(metadata={"team": "a"}, store=False, reasoning={"effort": "low"}, safety_identifier="sid")
    assert info.metadata == {"team": "a"} and info.store is False
    assert info.reasoning == {"effort": "low", "summary": None}
    assert chat["reasoning_effort"] == "low" and chat["user"] == "sid"


def test_upstream_model_override():
    chat, info = validate_and_translate_request({**BASE, "stream": True}, upstream_model="llama-3.1-8b", history=None)
    assert chat["model"] == "llama-3.1-8b" and info.model == "gpt-local" and info.stream is True
