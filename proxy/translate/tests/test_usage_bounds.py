"""Token counts from the model server are parsed and bounded before anything uses them.

A count is an integer in 0..2^31-1. A larger integer is clamped to 2^31-1; anything else (a string,
a float, a negative number, a boolean) is not a count: the estimate stands in for it. Either way the
request's usage is marked estimated and the oddity is logged once.
"""

from __future__ import annotations

import logging

import pytest

from proxy.translate._common import MAX_INT32, read_usage
from proxy.translate.anthropic import MessagesRequestInfo, MessagesStreamTranslator
from proxy.translate.responses import ResponsesRequestInfo, ResponsesStreamTranslator

from .upstream import chunk

ODD = ["999999999999999999999999999999", 1e30, 12.0, -5, True, {"n": 1}, [3]]


def usage_event(prompt, completion, **details) -> dict:
    return {**chunk(), "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion, **details}}


def test_counts_in_range_are_taken_as_they_are():
    usage = read_usage({"prompt_tokens": 0, "completion_tokens": MAX_INT32})
    assert (usage.prompt, usage.completion, usage.odd) == (0, MAX_INT32, ())


def test_missing_counts_are_not_odd_they_are_just_missing():
    usage = read_usage({"total_tokens": 3})
    assert (usage.prompt, usage.completion, usage.cached, usage.reasoning, usage.odd) == (None, None, 0, 0, ())


@pytest.mark.parametrize("value", ODD)
def test_a_value_that_is_not_a_count_is_dropped_and_named(value):
    usage = read_usage({"prompt_tokens": value, "completion_tokens": 4})
    assert (usage.prompt, usage.completion) == (None, 4)
    assert len(usage.odd) == 1 and usage.odd[0].startswith("prompt_tokens=")
    assert len(usage.odd[0]) < 80  # a long value is shortened in the log


def test_an_integer_past_the_bound_is_clamped_and_named():
    usage = read_usage(
        {
            "prompt_tokens": 2**64,
            "completion_tokens": 10**30,
            "prompt_tokens_details": {"cached_tokens": 2**40},
            "completion_tokens_details": {"reasoning_tokens": -1},
        }
    )
    assert (usage.prompt, usage.completion, usage.cached, usage.reasoning) == (MAX_INT32, MAX_INT32, MAX_INT32, 0)
    assert [o.split("=")[0] for o in usage.odd] == [
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "reasoning_tokens",
    ]


@pytest.mark.parametrize("translator", ["messages", "responses"])
@pytest.mark.parametrize("value", ["999999999999999999999999999999", -3, 7.5])
def test_a_translated_stream_with_an_odd_count_is_estimated_and_logged_once(translator, value, caplog):
    caplog.set_level(logging.WARNING)
    t = (
        MessagesStreamTranslator(MessagesRequestInfo(model="m", stream=True, max_tokens=10), input_tokens_hint=11)
        if translator == "messages"
        else ResponsesStreamTranslator(ResponsesRequestInfo(model="m"), input_tokens_hint=11)
    )
    t.start()
    t.feed(chunk({"content": "hi"}))
    t.feed(usage_event(value, 5))
    t.feed(usage_event(value, 5))  # some servers repeat usage: one line is enough

    assert (t.input_tokens, t.output_tokens, t.usage_estimated) == (11, 5, True)
    lines = [r.getMessage() for r in caplog.records if "prompt_tokens=" in r.getMessage()]
    assert len(lines) == 1 and "estimated" in lines[0]


def test_a_translated_stream_with_a_count_past_the_bound_is_clamped_and_estimated():
    t = ResponsesStreamTranslator(ResponsesRequestInfo(model="m"), input_tokens_hint=11)
    t.start()
    t.feed(usage_event(2**64, 10**30, prompt_tokens_details={"cached_tokens": "lots"}))

    assert (t.input_tokens, t.output_tokens, t.usage_estimated) == (MAX_INT32, MAX_INT32, True)
    usage = t.final_response()["usage"]
    assert usage["input_tokens_details"] == {"cached_tokens": 0}
    assert usage["total_tokens"] == 2 * MAX_INT32


def test_a_clean_stream_is_not_estimated():
    t = MessagesStreamTranslator(MessagesRequestInfo(model="m", stream=True, max_tokens=10), input_tokens_hint=11)
    t.start()
    t.feed(usage_event(6, 5))
    assert (t.input_tokens, t.output_tokens, t.usage_estimated) == (6, 5, False)
