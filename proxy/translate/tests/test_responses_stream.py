from __future__ import annotations

import pytest

from proxy.translate.responses import ResponsesRequestInfo, ResponsesStreamTranslator, output_text

from .upstream import Script, ToolCall, chunk, parse_sse, run_upstream, usage_chunk


def translate(script: Script, **kw):
    t = ResponsesStreamTranslator(ResponsesRequestInfo(model="gpt-local", stream=True), created_at=1741476542, **kw)
    events = parse_sse(run_upstream(t, script.upstream_bytes()))
    return t, events


def assert_well_formed(events):
    """What openai-python's ResponseStreamState relies on (§2.5)."""
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    for name, data in events:
        assert name == data["type"]
    assert events[0][0] == "response.created" and events[0][1]["response"]["output"] == []
    assert events[1][0] == "response.in_progress"
    output: list[dict] = []
    for name, data in events:
        if name == "response.output_item.added":
            assert data["output_index"] == len(output), "output_index is the append position"
            output.append(data["item"])
        elif name in ("response.output_text.delta", "response.output_text.done"):
            assert output[data["output_index"]]["type"] == "message"
            assert data["logprobs"] == []
        elif name == "response.function_call_arguments.delta":
            assert output[data["output_index"]]["type"] == "function_call"
    terminal = events[-1][1]["response"]
    assert [i["id"] for i in terminal["output"]] == [i["id"] for i in output]


def deltas(events, kind):
    return [d["delta"] for e, d in events if e == kind]


def test_text_stream():
    script = Script(text=["Hello", " there"], usage=(10, 2))
    t, events = translate(script)
    assert_well_formed(events)
    names = [e for e, _ in events]
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * len(script.text),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert deltas(events, "response.output_text.delta") == script.text
    done = dict(events)["response.output_text.done"]
    assert done["text"] == "".join(script.text)
    resp = events[-1][1]["response"]
    assert resp["status"] == "completed" and resp["incomplete_details"] is None
    assert resp["created_at"] == 1741476542 and resp["id"].startswith("resp_")
    assert output_text(resp) == "".join(script.text)
    assert resp["output"][0]["id"].startswith("msg_") and resp["output"][0]["status"] == "completed"
    assert resp["usage"] == {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 2,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 12,
    }
    assert t.final_response() == resp
    assert t.status == "completed"


def test_function_call_stream():
    call = ToolCall("call_abc", "get_weather", ['{"city":', '"Paris"}'])
    t, events = translate(Script(tools=[call], finish_reason="tool_calls"))
    assert_well_formed(events)
    added = dict(events)["response.output_item.added"]["item"]
    assert (added["type"], added["call_id"], added["name"], added["arguments"]) == (
        "function_call",
        call.id,
        call.name,
        "",
    )
    assert added["id"].startswith("fc_")
    assert deltas(events, "response.function_call_arguments.delta") == call.fragments
    args_done = dict(events)["response.function_call_arguments.done"]
    assert (args_done["name"], args_done["arguments"]) == (call.name, call.arguments)
    [item] = t.output_items()
    assert item == {
        "type": "function_call",
        "id": added["id"],
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
        "status": "completed",
    }
    assert t.final_response()["status"] == "completed"


def test_text_then_tools_are_separate_items_in_order():
    calls = [ToolCall("call_1", "f", ["{}"]), ToolCall("call_2", "g", ['{"a":1}'])]
    t, events = translate(Script(text=["Sure"], tools=calls, finish_reason="tool_calls"))
    assert_well_formed(events)
    items = t.output_items()
    assert [i["type"] for i in items] == ["message", "function_call", "function_call"]
    assert [i.get("call_id") for i in items[1:]] == ["call_1", "call_2"]
    # the message is closed before the first function call is added
    names = [e for e, _ in events]
    assert names.index("response.output_item.done") < names.index("response.function_call_arguments.delta")


def test_reasoning_item_precedes_the_message():
    script = Script(reasoning=["Hmm", "..."], text=["Yes"], usage=(5, 7))
    t, events = translate(script)
    assert_well_formed(events)
    items = t.output_items()
    assert [i["type"] for i in items] == ["reasoning", "message"]
    assert items[0]["content"] == [{"type": "reasoning_text", "text": "Hmm..."}]
    assert deltas(events, "response.reasoning_text.delta") == script.reasoning
    assert output_text(t.final_response()) == "Yes"


def test_length_gives_incomplete():
    t, events = translate(Script(text=["trunc"], finish_reason="length"))
    assert_well_formed(events)
    assert events[-1][0] == "response.incomplete"
    resp = t.final_response()
    assert resp["status"] == "incomplete" and resp["incomplete_details"] == {"reason": "max_output_tokens"}
    assert resp["output"][0]["status"] == "incomplete"
    assert t.status == "incomplete"


def test_missing_usage_is_estimated():
    script = Script(text=["a", "b", "c"], usage=None)
    t, events = translate(script, input_tokens_hint=11)
    assert t.usage_estimated
    usage = events[-1][1]["response"]["usage"]
    assert usage["output_tokens"] == script.content_chunk_count == t.output_tokens
    assert usage["input_tokens"] == 11 and usage["total_tokens"] == 11 + script.content_chunk_count


def test_cached_and_reasoning_token_details_come_from_upstream_usage():
    t = ResponsesStreamTranslator(ResponsesRequestInfo(model="m"))
    t.start()
    t.feed(chunk({"content": "x"}, "stop"))
    t.feed(usage_chunk(100, 20, cached=64, reasoning=12))
    usage = t.final_response()["usage"]
    assert usage["input_tokens_details"] == {"cached_tokens": 64}
    assert usage["output_tokens_details"] == {"reasoning_tokens": 12}
    assert not t.usage_estimated


def test_upstream_error_mid_stream():
    t = ResponsesStreamTranslator(ResponsesRequestInfo(model="m"))
    out = t.start() + t.feed(chunk({"content": "part"}))
    out += t.feed({"error": {"message": "boom", "type": "server_error", "code": 500}})
    out += t.finish()
    events = parse_sse(out)
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    name, err = events[-2]
    assert name == "error"
    assert (err["code"], err["message"], err["param"]) == ("server_error", "boom", None)
    assert err["error"]["message"] == "boom" and err["error"]["code"] == "server_error"
    name, failed = events[-1]
    assert name == "response.failed"
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {"code": "server_error", "message": "boom"}
    assert failed["response"]["output"][0]["status"] == "incomplete"
    assert t.status == "failed" and t.feed(chunk({"content": "x"})) == b"" and t.finish() == b""


def test_error_before_any_output_still_starts_with_response_created():
    t = ResponsesStreamTranslator(ResponsesRequestInfo(model="m"))
    events = parse_sse(t.error("upstream refused", code="invalid_prompt"))
    assert [e for e, _ in events] == ["response.created", "response.in_progress", "error", "response.failed"]
    assert events[2][1]["error"]["type"] == "invalid_request_error"


def test_keepalive_is_a_comment():
    ka = ResponsesStreamTranslator(ResponsesRequestInfo(model="m")).keepalive()
    assert ka.startswith(b":") and ka.endswith(b"\n\n")


def test_echo_fields_appear_in_every_snapshot():
    info = ResponsesRequestInfo(
        model="gpt-local",
        instructions="be nice",
        max_output_tokens=99,
        temperature=0.5,
        tools=[{"type": "function", "name": "f", "parameters": {}}],
        tool_choice="required",
        metadata={"k": "v"},
        store=False,
        previous_response_id="resp_prev",
        user="u",
    )
    t = ResponsesStreamTranslator(info, response_id="resp_fixed")
    events = parse_sse(t.start() + t.feed(chunk({"content": "x"})) + t.finish())
    for snapshot in (events[0][1]["response"], events[-1][1]["response"]):
        assert snapshot["id"] == "resp_fixed"
        assert (snapshot["instructions"], snapshot["max_output_tokens"], snapshot["temperature"]) == (
            "be nice",
            99,
            0.5,
        )
        assert snapshot["tools"] == info.tools and snapshot["tool_choice"] == "required"
        assert (snapshot["metadata"], snapshot["store"], snapshot["previous_response_id"], snapshot["user"]) == (
            {"k": "v"},
            False,
            "resp_prev",
            "u",
        )
        assert snapshot["object"] == "response" and snapshot["model"] == "gpt-local"


@pytest.mark.parametrize("emit", [True, False])
def test_final_response_is_the_same_with_or_without_events(emit):
    script = Script(reasoning=["r"], text=["Hi"], tools=[ToolCall("c", "f", ["{}"])], finish_reason="tool_calls")
    t = ResponsesStreamTranslator(ResponsesRequestInfo(model="m"), response_id="resp_1", created_at=1, emit_events=emit)
    out = t.start() + b"".join(t.feed(c) for c in script.chunks())
    assert (out != b"") is emit
    resp = t.final_response()
    assert [i["type"] for i in resp["output"]] == ["reasoning", "message", "function_call"]
    assert resp["usage"]["output_tokens"] == script.usage[1]
