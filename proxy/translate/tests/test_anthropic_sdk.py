"""The official anthropic SDK must parse what the translator produces."""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest

from proxy.translate.anthropic import MessagesStreamTranslator, validate_and_translate_request

from .upstream import Script, ToolCall, run_upstream

TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]


def client_for(script: Script, seen: list[dict]) -> anthropic.Anthropic:
    """A client whose transport plays the gateway: translate the SDK's request, run the
    canned upstream through the translator, answer SSE or JSON as the client asked."""

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/messages"
        body = json.loads(request.content)
        chat, info = validate_and_translate_request(body, upstream_model="upstream-m")
        seen.append(chat)
        translator = MessagesStreamTranslator(info, input_tokens_hint=0)
        raw = run_upstream(translator, script.upstream_bytes())
        if info.stream:
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=raw)
        return httpx.Response(200, json=translator.final_message())

    return anthropic.Anthropic(
        api_key="x",
        base_url="http://test",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )


def test_stream_helper_text_and_final_message():
    script = Script(text=["Hello", " there", "!"], usage=(21, 3))
    seen: list[dict] = []
    client = client_for(script, seen)
    with client.messages.stream(
        model="claude-local", max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        streamed = list(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == script.text
    assert final.content[0].type == "text" and final.content[0].text == "".join(script.text)
    assert final.stop_reason == "end_turn" and final.stop_sequence is None
    assert (final.usage.input_tokens, final.usage.output_tokens) == script.usage
    assert final.model == "claude-local" and final.id.startswith("msg_")
    assert seen[0]["stream"] is True and seen[0]["model"] == "upstream-m"


def test_stream_helper_tool_use_input_is_parsed():
    call = ToolCall("call_CTf1", "get_weather", ['{"ci', 'ty": "Pa', 'ris"}'])
    client = client_for(Script(text=["Checking."], tools=[call], finish_reason="tool_calls"), [])
    with client.messages.stream(
        model="claude-local", max_tokens=64, tools=TOOLS, messages=[{"role": "user", "content": "Weather?"}]
    ) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["text", "tool_use"]
    tool = final.content[1]
    assert (tool.id, tool.name, tool.input) == (call.id, call.name, json.loads(call.arguments))
    assert final.stop_reason == "tool_use"


def test_stream_helper_reports_the_matched_stop_sequence():
    script = Script(text=["one two ", "ST", "OP three"], usage=None)
    client = client_for(script, [])
    with client.messages.stream(
        model="claude-local", max_tokens=64, stop_sequences=["STOP"], messages=[{"role": "user", "content": "count"}]
    ) as stream:
        text = stream.get_final_text()
        final = stream.get_final_message()
    full = "".join(script.text)
    assert text == full[: full.index("STOP")]
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "STOP")
    assert final.usage.output_tokens >= 1


def test_stream_helper_thinking_block():
    script = Script(reasoning=["Let me", " think"], text=["42"])
    client = client_for(script, [])
    with client.messages.stream(
        model="claude-local", max_tokens=64, messages=[{"role": "user", "content": "?"}]
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "thinking" and final.content[0].thinking == "".join(script.reasoning)
    assert final.content[1].text == "42"


def test_create_non_streaming_message():
    call = ToolCall("call_1", "get_weather", ['{"city":', '"Oslo"}'])
    script = Script(text=["Sure."], tools=[call], finish_reason="tool_calls", usage=(30, 12))
    client = client_for(script, [])
    msg = client.messages.create(
        model="claude-local", max_tokens=64, tools=TOOLS, messages=[{"role": "user", "content": "Oslo?"}]
    )
    assert isinstance(msg, anthropic.types.Message)
    assert msg.content[0].text == "Sure."
    assert msg.content[1].input == json.loads(call.arguments)
    assert msg.stop_reason == "tool_use"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (30, 12)
    assert msg.usage.cache_read_input_tokens == 0


def test_create_with_stream_yields_raw_events_in_order():
    script = Script(text=["a", "b"], finish_reason="length")
    client = client_for(script, [])
    events = list(
        client.messages.create(
            model="claude-local", max_tokens=2, stream=True, messages=[{"role": "user", "content": "x"}]
        )
    )
    types = [e.type for e in events]
    assert types[0] == "message_start" and types[-1] == "message_stop"
    assert [e.delta.text for e in events if e.type == "content_block_delta"] == script.text
    assert next(e for e in events if e.type == "message_delta").delta.stop_reason == "max_tokens"


def test_mid_stream_error_raises_in_the_sdk():
    def handler(request: httpx.Request) -> httpx.Response:
        _, info = validate_and_translate_request(json.loads(request.content), upstream_model=None)
        t = MessagesStreamTranslator(info)
        raw = t.start() + t.feed({"choices": [{"index": 0, "delta": {"content": "part"}}]})
        raw += t.feed({"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}}) + t.finish()
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=raw)

    client = anthropic.Anthropic(
        api_key="x",
        base_url="http://test",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )
    with pytest.raises(anthropic.APIStatusError) as exc:
        with client.messages.stream(model="m", max_tokens=8, messages=[{"role": "user", "content": "x"}]) as stream:
            stream.get_final_message()
    assert exc.value.body["error"] == {"type": "overloaded_error", "message": "Loading model"}


@pytest.mark.asyncio
async def test_async_client_stream_parses_the_same_bytes():
    script = Script(
        text=["async", " text"],
        tools=[ToolCall("call_z", "get_weather", ['{"city":"Lima"}'])],
        finish_reason="tool_calls",
    )

    def handler(request: httpx.Request) -> httpx.Response:
        _, info = validate_and_translate_request(json.loads(request.content), upstream_model=None)
        raw = run_upstream(MessagesStreamTranslator(info), script.upstream_bytes())
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=raw)

    client = anthropic.AsyncAnthropic(
        api_key="x",
        base_url="http://test",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
    )
    async with client.messages.stream(
        model="m", max_tokens=8, tools=TOOLS, messages=[{"role": "user", "content": "x"}]
    ) as stream:
        texts = [t async for t in stream.text_stream]
        final = await stream.get_final_message()
    assert texts == script.text
    assert final.content[1].input == {"city": "Lima"}
