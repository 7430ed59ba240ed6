from __future__ import annotations

import json

import pytest

from proxy.translate.anthropic import MessagesRequestInfo, MessagesStreamTranslator

from .upstream import Script, ToolCall, chunk, parse_sse, run_upstream, usage_chunk


def info(**kw) -> MessagesRequestInfo:
    return MessagesRequestInfo(**{"model": "claude-local", "stream": True, "max_tokens": 100, **kw})


def translate(script: Script, *, piece: int = 7, **kw):
    t = MessagesStreamTranslator(info(**kw), input_tokens_hint=5)
    events = parse_sse(run_upstream(t, script.upstream_bytes(), piece=piece))
    return t, events


def assert_well_formed(events):
    """The ordering the SDK's accumulate_event relies on (§3.5)."""
    names = [e for e, _ in events]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    for name, data in events:
        assert data["type"] == name
    open_index = None
    next_index = 0
    for name, data in events:
        if name == "content_block_start":
            assert open_index is None, "blocks never interleave"
            assert data["index"] == next_index, "indices open strictly in order"
            open_index = data["index"]
            next_index += 1
        elif name == "content_block_delta":
            assert data["index"] == open_index
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
    assert open_index is None


def blocks(events):
    """Rebuild content blocks from events the way a client would."""
    out = []
    for name, data in events:
        if name == "content_block_start":
            out.append({**data["content_block"], "_json": ""})
        elif name == "content_block_delta":
            d = data["delta"]
            b = out[data["index"]]
            if d["type"] == "text_delta":
                b["text"] += d["text"]
            elif d["type"] == "thinking_delta":
                b["thinking"] += d["thinking"]
            elif d["type"] == "input_json_delta":
                b["_json"] += d["partial_json"]
    return out


def message_delta(events):
    return next(d for e, d in events if e == "message_delta")


def test_text_stream():
    script = Script(text=["Hello", " there", ", friend"], usage=(14, 3))
    t, events = translate(script)
    assert_well_formed(events)
    start = events[0][1]["message"]
    assert start["content"] == [] and start["model"] == "claude-local" and start["id"].startswith("msg_")
    assert start["usage"] == {
        "input_tokens": 5,
        "output_tokens": 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    [block] = blocks(events)
    assert block["type"] == "text" and block["text"] == "".join(script.text)
    delta = message_delta(events)
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 3 and delta["usage"]["input_tokens"] == 14
    assert (t.input_tokens, t.output_tokens, t.usage_estimated) == (14, 3, False)


def test_tool_call_stream():
    call = ToolCall("call_CTf1", "get_weather", ['{"', 'city":"Par', 'is"}'])
    t, events = translate(Script(tools=[call], finish_reason="tool_calls"))
    assert_well_formed(events)
    [block] = blocks(events)
    assert (block["type"], block["id"], block["name"], block["input"]) == ("tool_use", call.id, call.name, {})
    assert block["_json"] == call.arguments
    assert message_delta(events)["delta"]["stop_reason"] == "tool_use"
    final = t.final_message()
    assert final["content"] == [
        {"type": "tool_use", "id": call.id, "name": call.name, "input": json.loads(call.arguments)}
    ]
    assert final["stop_reason"] == "tool_use"


def test_text_then_two_tools_get_consecutive_blocks():
    calls = [ToolCall("call_a", "f", ['{"x":', "1}"]), ToolCall("call_b", "g", ["{}"])]
    t, events = translate(Script(text=["Let me ", "check."], tools=calls, finish_reason="tool_calls"))
    assert_well_formed(events)
    got = blocks(events)
    assert [b["type"] for b in got] == ["text", "tool_use", "tool_use"]
    assert got[0]["text"] == "Let me check."
    assert [b["_json"] for b in got[1:]] == [c.arguments for c in calls]
    final = t.final_message()["content"]
    assert [b.get("id") for b in final[1:]] == ["call_a", "call_b"]
    assert final[1]["input"] == {"x": 1}


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_becomes_a_thinking_block_before_text(field):
    script = Script(reasoning=["Think", "ing..."], text=["Answer"], reasoning_field=field)
    t, events = translate(script)
    assert_well_formed(events)
    got = blocks(events)
    assert [b["type"] for b in got] == ["thinking", "text"]
    assert got[0]["thinking"] == "Thinking..." and got[1]["text"] == "Answer"
    # the thinking block gets its (empty) signature delta right before it stops
    stop0 = next(i for i, (e, d) in enumerate(events) if e == "content_block_stop" and d["index"] == 0)
    assert events[stop0 - 1][1]["delta"] == {"type": "signature_delta", "signature": ""}
    assert t.final_message()["content"][0] == {"type": "thinking", "thinking": "Thinking...", "signature": ""}


def test_length_maps_to_max_tokens():
    t, events = translate(Script(text=["cut"], finish_reason="length"))
    assert message_delta(events)["delta"]["stop_reason"] == "max_tokens"
    assert t.final_message()["stop_reason"] == "max_tokens"


def test_content_filter_maps_to_refusal():
    t, events = translate(Script(text=["no"], finish_reason="content_filter"))
    assert message_delta(events)["delta"]["stop_reason"] == "refusal"


@pytest.mark.parametrize("piece", [1, 3, 64, 10_000])
def test_stop_sequence_split_across_chunks(piece):
    script = Script(text=["The answer is 4", "2. E", "ND", " and more"], usage=None)
    t, events = translate(script, piece=piece, stop_sequences=("END",))
    assert_well_formed(events)
    full = "".join(script.text)
    expected = full[: full.index("END")]
    [block] = blocks(events)
    assert block["text"] == expected
    assert message_delta(events)["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}
    assert t.stopped
    # nothing after the stop: the translator ignores whatever the upstream still sends
    assert t.feed(chunk({"content": "late"})) == b""
    assert t.final_message()["content"] == [{"type": "text", "text": expected}]


def test_partial_stop_sequence_that_does_not_complete_is_released():
    script = Script(text=["E", "N", "ough said"])
    t, events = translate(script, stop_sequences=("END",))
    assert_well_formed(events)
    assert blocks(events)[0]["text"] == "ENough said"
    assert not t.stopped
    assert message_delta(events)["delta"]["stop_reason"] == "end_turn"


def test_held_back_tail_is_flushed_at_the_end():
    script = Script(text=["trailing E", "N"])
    _t, events = translate(script, stop_sequences=("END",))
    assert blocks(events)[0]["text"] == "trailing EN"


def test_held_back_text_is_never_emitted_early():
    t = MessagesStreamTranslator(info(stop_sequences=("STOP",)))
    t.start()
    out = parse_sse(t.feed(chunk({"content": "abc ST"})))
    assert [d["delta"]["text"] for e, d in out if e == "content_block_delta"] == ["abc "]


def test_the_stop_sequence_that_completes_first_wins():
    script = Script(text=["xx AB", "C"])
    t, events = translate(script, stop_sequences=("ABC", "B"))
    assert message_delta(events)["delta"]["stop_sequence"] == "B"
    assert blocks(events)[0]["text"] == "xx A"


def test_stop_sequence_at_the_very_start_gives_no_text_block():
    t, events = translate(Script(text=["END", "x"]), stop_sequences=("END",))
    assert_well_formed(events)
    assert blocks(events) == []
    assert t.final_message()["stop_sequence"] == "END"


def test_missing_usage_is_estimated_from_delta_chunks():
    script = Script(text=["a", "b", "c", "d"], usage=None)
    t, events = translate(script)
    assert t.usage_estimated
    assert t.output_tokens == script.content_chunk_count
    assert t.input_tokens == 5  # the hint
    assert message_delta(events)["usage"]["output_tokens"] == script.content_chunk_count


def test_usage_on_the_finish_chunk_is_taken_too():
    # pre-Aug-2025 llama.cpp attached usage to the finish chunk
    t = MessagesStreamTranslator(info())
    t.start()
    t.feed(chunk({"content": "hi"}))
    c = chunk({}, "stop")
    c["usage"] = {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8}
    t.feed(c)
    t.finish()
    assert (t.input_tokens, t.output_tokens, t.usage_estimated) == (7, 1, False)


def test_upstream_error_mid_stream_emits_error_and_no_message_stop():
    t = MessagesStreamTranslator(info())
    out = t.start() + t.feed(chunk({"content": "partial"}))
    out += t.feed({"error": {"message": "context overflow", "type": "exceed_context_size_error", "code": 400}})
    out += t.finish()
    events = parse_sse(out)
    assert events[-1] == (
        "error",
        {"type": "error", "error": {"type": "invalid_request_error", "message": "context overflow"}},
    )
    assert "message_stop" not in [e for e, _ in events]
    assert t.failed and t.feed(chunk({"content": "more"})) == b""


def test_error_method_defaults_to_api_error():
    t = MessagesStreamTranslator(info())
    t.start()
    [(name, data)] = parse_sse(t.error("upstream went away"))
    assert name == "error" and data["error"] == {"type": "api_error", "message": "upstream went away"}
    assert t.error("again") == b""


def test_ollama_whole_tool_call_in_one_chunk():
    t = MessagesStreamTranslator(info())
    call = {"index": 0, "id": "call_9", "type": "function", "function": {"name": "f", "arguments": '{"a": [1, 2]}'}}
    out = t.start() + t.feed(chunk({"role": "assistant", "tool_calls": [call]})) + t.feed(chunk({}, "tool_calls"))
    events = parse_sse(out + t.finish())
    assert_well_formed(events)
    assert blocks(events)[0]["_json"] == call["function"]["arguments"]
    assert t.final_message()["content"][0]["input"] == {"a": [1, 2]}


def test_unparseable_tool_arguments_give_empty_input():
    t, _ = translate(Script(tools=[ToolCall("c", "f", ['{"broken": '])], finish_reason="tool_calls"))
    assert t.final_message()["content"][0]["input"] == {}


def test_missing_tool_call_id_gets_a_toolu_id():
    t = MessagesStreamTranslator(info())
    t.feed(chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{}"}}]}))
    assert t.final_message()["content"][0]["id"].startswith("toolu_")


def test_non_streaming_mode_emits_nothing_but_builds_the_same_message():
    script = Script(
        reasoning=["r"],
        text=["Hello", " world"],
        tools=[ToolCall("c1", "f", ['{"k":', '"v"}'])],
        finish_reason="tool_calls",
    )
    quiet = MessagesStreamTranslator(info(), message_id="msg_fixed", emit_events=False)
    loud = MessagesStreamTranslator(info(), message_id="msg_fixed")
    for c in script.chunks():
        assert quiet.feed(c) == b""
        loud.feed(c)
    assert quiet.finish() == b""
    assert quiet.final_message() == loud.final_message()
    msg = quiet.final_message()
    assert [b["type"] for b in msg["content"]] == ["thinking", "text", "tool_use"]
    assert msg["usage"] == {
        "input_tokens": 14,
        "output_tokens": 9,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def test_final_message_without_finish_call_is_complete():
    t = MessagesStreamTranslator(info(stop_sequences=("ZZZ",)))
    t.feed(chunk({"content": "ends with Z"}))
    msg = t.final_message()
    assert msg["content"] == [{"type": "text", "text": "ends with Z"}]
    assert msg["stop_reason"] == "end_turn"
    assert t.finish() == b""  # already finished


def test_ping_is_an_event_the_sdk_skips():
    assert parse_sse(MessagesStreamTranslator(info()).ping()) == [("ping", {"type": "ping"})]


def test_usage_chunk_after_stop_is_still_recorded():
    t = MessagesStreamTranslator(info(stop_sequences=("X",)))
    t.feed(chunk({"content": "aXb"}))
    assert t.stopped
    t.feed(usage_chunk(10, 4))
    assert (t.input_tokens, t.output_tokens, t.usage_estimated) == (10, 4, False)
