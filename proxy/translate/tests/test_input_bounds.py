"""Hostile values in the Responses and Messages request validators: every one is a TranslationError
naming the field (a 400 in the caller's shape), never another exception (a 500), and every number is
held to the range the vendor documents before it reaches the model."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from proxy.translate import anthropic, responses
from proxy.translate.errors import TranslationError

INT32_MAX = 2**31 - 1
RESPONSES_BASE = {"model": "gpt-local", "input": "Hi"}
MESSAGES_BASE = {"model": "claude-local", "max_tokens": 256, "messages": [{"role": "user", "content": "Hi"}]}


def responses_body(**changes) -> dict:
    return {**copy.deepcopy(RESPONSES_BASE), **changes}


def messages_body(**changes) -> dict:
    return {**copy.deepcopy(MESSAGES_BASE), **changes}


def user_blocks(*blocks) -> list[dict]:
    return [{"role": "user", "content": list(blocks)}]


# --- values that are not strings where a string is looked up in a set --------------------------------

UNHASHABLE_RESPONSES = [
    ({"input": [{"role": [], "content": "hi"}]}, "input[0].role"),
    ({"input": [{"role": {}, "content": "hi"}]}, "input[0].role"),
    ({"input": [{"type": "message", "role": ["user"], "content": "hi"}]}, "input[0].role"),
    ({"input": [{"role": "user", "content": [{"type": {}, "text": "hi"}]}]}, "input[0].content[0].type"),
    ({"input": [{"role": "user", "content": [{"type": [], "text": "hi"}]}]}, "input[0].content[0].type"),
    (
        {"input": [{"type": "function_call_output", "call_id": "c", "output": [{"type": [1]}]}]},
        "input[0].output[0].type",
    ),
    ({"input": [{"type": [], "role": "user", "content": "hi"}]}, "input[0].type"),
    ({"tool_choice": ["auto"]}, "tool_choice"),
    ({"truncation": ["auto"]}, "truncation"),
]


@pytest.mark.parametrize(("changes", "param"), UNHASHABLE_RESPONSES)
def test_responses_rejects_a_list_or_object_where_a_name_belongs(changes, param):
    with pytest.raises(TranslationError) as info:
        responses.validate_and_translate_request(responses_body(**changes), upstream_model=None, history=None)
    assert info.value.param == param


IMAGE: dict[str, Any] = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
UNHASHABLE_MESSAGES = [
    ({"messages": [{"role": [], "content": "hi"}]}, "messages.0.role"),
    ({"tool_choice": {"type": []}}, "tool_choice.type"),
    ({"tool_choice": {"type": {"a": 1}}}, "tool_choice.type"),
    ({"messages": user_blocks({**IMAGE, "source": {**IMAGE["source"], "media_type": []}})}, None),
    ({"messages": user_blocks({**IMAGE, "source": {**IMAGE["source"], "type": {}}})}, None),
    ({"messages": user_blocks({"type": []})}, "messages.0.content.0.type"),
    ({"thinking": {"type": []}}, "thinking.type"),
    ({"tools": [{"type": [], "name": "f", "input_schema": {}}]}, "tools.0.type"),
]


@pytest.mark.parametrize(("changes", "param"), UNHASHABLE_MESSAGES)
def test_messages_rejects_a_list_or_object_where_a_name_belongs(changes, param):
    with pytest.raises(TranslationError) as info:
        anthropic.validate_and_translate_request(messages_body(**changes), upstream_model=None)
    assert param is None or info.value.param == param


@pytest.mark.parametrize(("changes", "param"), UNHASHABLE_MESSAGES)
def test_count_tokens_rejects_the_same_values(changes, param):
    body = messages_body(**changes)
    del body["max_tokens"]
    with pytest.raises(TranslationError) as info:
        anthropic.count_tokens_prompt(body)
    assert param is None or info.value.param == param


# --- numbers: the vendor's ranges ---------------------------------------------------------------------

RESPONSES_OUT_OF_RANGE = [
    ("temperature", 2.5),
    ("temperature", -0.1),
    ("top_p", 1.5),
    ("top_p", -1),
    ("max_output_tokens", 0),
    ("max_output_tokens", INT32_MAX + 1),
    ("max_output_tokens", 2**64),
    ("max_output_tokens", 1.5),
    ("top_logprobs", 21),
    ("top_logprobs", -1),
    ("top_logprobs", True),
]


@pytest.mark.parametrize(("name", "value"), RESPONSES_OUT_OF_RANGE)
def test_responses_rejects_a_number_out_of_the_openai_range(name, value):
    with pytest.raises(TranslationError) as info:
        responses.validate_and_translate_request(responses_body(**{name: value}), upstream_model=None, history=None)
    assert info.value.param == name


@pytest.mark.parametrize(
    ("name", "value", "sent_as"),
    [
        ("temperature", 2, "temperature"),
        ("temperature", 0, "temperature"),
        ("top_p", 1, "top_p"),
        ("max_output_tokens", INT32_MAX, "max_tokens"),
        ("top_logprobs", 20, None),  # accepted, not sent: local servers give no log probabilities here
    ],
)
def test_responses_accepts_the_ends_of_each_range(name, value, sent_as):
    chat, _ = responses.validate_and_translate_request(
        responses_body(**{name: value}), upstream_model=None, history=None
    )
    assert sent_as is None or chat[sent_as] == value


MESSAGES_OUT_OF_RANGE = [
    ("temperature", 1.5),
    ("temperature", -0.5),
    ("top_p", 1.01),
    ("top_k", -1),
    ("top_k", INT32_MAX + 1),
    ("top_k", 2**64),
    ("max_tokens", INT32_MAX + 1),
    ("max_tokens", 2**64 - 1),
]


@pytest.mark.parametrize(("name", "value"), MESSAGES_OUT_OF_RANGE)
def test_messages_rejects_a_number_out_of_the_anthropic_range(name, value):
    with pytest.raises(TranslationError) as info:
        anthropic.validate_and_translate_request(messages_body(**{name: value}), upstream_model=None)
    assert info.value.param == name


def test_messages_accepts_the_ends_of_each_range():
    chat, info = anthropic.validate_and_translate_request(
        messages_body(temperature=1, top_p=0, top_k=0, max_tokens=INT32_MAX), upstream_model=None
    )
    assert (chat["temperature"], chat["top_p"], chat["top_k"], info.max_tokens) == (1, 0, 0, INT32_MAX)


def test_a_thinking_budget_above_32_bits_is_rejected():
    thinking = {"type": "enabled", "budget_tokens": 2**63}
    with pytest.raises(TranslationError) as info:
        anthropic.validate_and_translate_request(messages_body(thinking=thinking), upstream_model=None)
    assert info.value.param == "thinking.budget_tokens"


# --- stop sequences: the gateway matches them itself, so their number and length are bounded ----------


@pytest.mark.parametrize(
    ("stops", "param"),
    [
        (["x"] * 17, "stop_sequences"),
        (["a" * 129], "stop_sequences.0"),
        (["ok", "b" * 10_000], "stop_sequences.1"),
    ],
)
def test_too_many_or_too_long_stop_sequences_are_rejected(stops, param):
    with pytest.raises(TranslationError) as info:
        anthropic.validate_and_translate_request(messages_body(stop_sequences=stops), upstream_model=None)
    assert info.value.param == param


def test_sixteen_stop_sequences_of_128_characters_are_accepted():
    stops = [chr(ord("a") + i) * 128 for i in range(16)]
    _, info = anthropic.validate_and_translate_request(messages_body(stop_sequences=stops), upstream_model=None)
    assert info.stop_sequences == tuple(stops)
