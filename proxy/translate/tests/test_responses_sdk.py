"""The official openai SDK must parse what the Responses translator produces."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from proxy.translate.responses import ResponsesStreamTranslator, validate_and_translate_request

from .upstream import Script, ToolCall, run_upstream

TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    }
]


def client_for(script: Script, seen: list[dict] | None = None) -> openai.OpenAI:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/responses"
        chat, info = validate_and_translate_request(json.loads(request.content), upstream_model=None, history=None)
        if seen is not None:
            seen.append(chat)
        translator = ResponsesStreamTranslator(info)
        raw = run_upstream(translator, script.upstream_bytes())
        if info.stream:
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=raw)
        return httpx.Response(200, json=translator.final_response())

    return openai.OpenAI(
        api_key="x",
        base_url="http://test/v1",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )


def test_stream_helper_text():
    script = Script(text=["Hel", "lo", " world"], usage=(9, 3))
    client = client_for(script)
    with client.responses.stream(model="gpt-local", input="Hi", instructions="Be brief") as stream:
        text_deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert text_deltas == script.text
    assert final.output_text == "".join(script.text)
    assert final.status == "completed" and final.model == "gpt-local" and final.instructions == "Be brief"
    assert (final.usage.input_tokens, final.usage.output_tokens, final.usage.total_tokens) == (9, 3, 12)
    assert final.usage.input_tokens_details.cached_tokens == 0


def test_stream_helper_function_call():
    call = ToolCall("call_77", "get_weather", ['{"city"', ':"Par', 'is"}'])
    client = client_for(Script(tools=[call], finish_reason="tool_calls"))
    with client.responses.stream(model="gpt-local", input="Weather?", tools=TOOLS) as stream:
        arg_snapshots = [e.snapshot for e in stream if e.type == "response.function_call_arguments.delta"]
        final = stream.get_final_response()
    assert arg_snapshots[-1] == call.arguments
    [item] = final.output
    assert (item.type, item.call_id, item.name, item.arguments) == ("function_call", call.id, call.name, call.arguments)
    # the helper parses strict tools' arguments: proves arguments is valid JSON end to end
    assert item.parsed_arguments == json.loads(call.arguments)
    assert final.output_text == ""


def test_stream_helper_text_and_reasoning():
    script = Script(reasoning=["plan"], text=["Done."])
    client = client_for(script)
    with client.responses.stream(model="gpt-local", input="Go") as stream:
        final = stream.get_final_response()
    assert [o.type for o in final.output] == ["reasoning", "message"]
    assert final.output[0].content[0].text == "plan"
    assert final.output_text == "Done."


def test_create_stream_iterates_typed_events():
    script = Script(
        text=["a", "b"], tools=[ToolCall("call_x", "get_weather", ['{"city":"Oslo"}'])], finish_reason="tool_calls"
    )
    client = client_for(script)
    events = list(client.responses.create(model="gpt-local", input="Hi", tools=TOOLS, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "".join(script.text)
    done_items = [e.item for e in events if e.type == "response.output_item.done"]
    assert [i.type for i in done_items] == ["message", "function_call"]
    assert isinstance(events[-1], openai.types.responses.ResponseCompletedEvent)
    assert events[-1].response.output[1].arguments == '{"city":"Oslo"}'


def test_create_non_streaming():
    seen: list[dict] = []
    script = Script(text=["Paris", " is nice"], usage=(40, 4))
    client = client_for(script, seen)
    resp = client.responses.create(model="gpt-local", input="Tell me", max_output_tokens=64, metadata={"a": "b"})
    assert resp.output_text == "".join(script.text)
    assert resp.status == "completed" and resp.incomplete_details is None
    assert resp.max_output_tokens == 64 and resp.metadata == {"a": "b"}
    assert resp.usage.output_tokens == 4
    assert seen[0]["max_tokens"] == 64 and seen[0]["stream"] is True


def test_create_non_streaming_incomplete_on_length():
    script = Script(text=["cut", " off"], finish_reason="length")
    resp = client_for(script).responses.create(model="gpt-local", input="Long story", max_output_tokens=2)
    assert resp.status == "incomplete"
    assert resp.incomplete_details is not None and resp.incomplete_details.reason == "max_output_tokens"
    assert resp.output_text == "cut off"
    assert resp.output[0].status == "incomplete"


def test_stream_helper_without_completed_event_on_length():
    # OpenAI's own behaviour: get_final_response() needs response.completed; the incomplete
    # event still reaches the caller.
    client = client_for(Script(text=["x"], finish_reason="length"))
    with client.responses.stream(model="gpt-local", input="Hi") as stream:
        types = [e.type for e in stream]
        with pytest.raises(RuntimeError):
            stream.get_final_response()
    assert types[-1] == "response.incomplete"


def test_mid_stream_error_raises_api_error():
    def handler(request: httpx.Request) -> httpx.Response:
        _, info = validate_and_translate_request(json.loads(request.content), upstream_model=None, history=None)
        t = ResponsesStreamTranslator(info)
        raw = t.start() + t.feed({"choices": [{"index": 0, "delta": {"content": "par"}}]})
        raw += t.feed({"error": {"message": "upstream crashed", "type": "server_error"}}) + t.finish()
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=raw)

    client = openai.OpenAI(
        api_key="x",
        base_url="http://test/v1",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )
    with pytest.raises(openai.APIError, match="upstream crashed"):
        with client.responses.stream(model="m", input="x") as stream:
            stream.get_final_response()


@pytest.mark.asyncio
async def test_async_client_stream_parses_the_same_bytes():
    script = Script(text=["async", " text"])

    def handler(request: httpx.Request) -> httpx.Response:
        _, info = validate_and_translate_request(json.loads(request.content), upstream_model=None, history=None)
        raw = run_upstream(ResponsesStreamTranslator(info), script.upstream_bytes())
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=raw)

    client = openai.AsyncOpenAI(
        api_key="x",
        base_url="http://test/v1",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
    )
    async with client.responses.stream(model="m", input="x") as stream:
        final = await stream.get_final_response()
    assert final.output_text == "".join(script.text)
