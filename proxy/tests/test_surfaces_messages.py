"""POST /v1/messages and /v1/messages/count_tokens (Anthropic) in process, against a scripted model.

The model is always asked for a Chat Completions stream; the client gets Anthropic's message object
or its event stream, built by proxy/translate. Errors are Anthropic's shape, with the request id.
"""

from __future__ import annotations

import pytest

from proxy.calls import Data, Ended, Failed, Started

from .fake_call import (
    COMPLETION_TOKENS,
    DONE,
    PROMPT_TOKENS,
    SILENCE,
    USAGE,
    delta,
    finish,
    streamed,
    tool_call_deltas,
    usage,
    whole,
)
from .v1 import ANTHROPIC, V1_DB, call_v1

pytestmark = [V1_DB, pytest.mark.asyncio, pytest.mark.timeout(30)]

PATH = "/v1/messages"
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def message(model: str, *, stream: bool = False, **extra) -> dict:
    return {
        "model": model,
        "max_tokens": 64,
        "stream": stream,
        "messages": [{"role": "user", "content": "Hi"}],
        **extra,
    }


async def send(key, body: dict, **kwargs):
    return await call_v1("POST", PATH, body, secret=key.secret, headers=ANTHROPIC, **kwargs)


def streamed_text(response) -> str:
    return "".join(
        e["delta"]["text"]
        for e in response.events()
        if e["type"] == "content_block_delta" and e["delta"]["type"] == "text_delta"
    )


# --- what the model is sent -------------------------------------------------------------------------


async def test_the_model_is_asked_for_a_chat_completions_stream_with_the_system_prompt_first(
    key, granted_deployment, upstream, ledger
):
    upstream.answer(*streamed("Hi"))
    body = message(granted_deployment.name, system="Be brief.", temperature=0.5, tools=[WEATHER_TOOL])

    await send(key, body)

    sent = upstream.call.body
    assert (upstream.call.path, sent["model"], sent["stream"]) == ("/chat/completions", "qwen3:8b", True)
    assert sent["stream_options"]["include_usage"] is True
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert sent["max_tokens"] == 64 and sent["temperature"] == 0.5
    assert sent["tools"][0]["type"] == "function"
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["tools"][0]["function"]["parameters"] == WEATHER_TOOL["input_schema"]


async def test_a_tool_result_reaches_the_model_as_a_tool_message(key, deployment, upstream, ledger):
    upstream.answer(*streamed("Sunny."))
    turns = [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "12 °C"}]},
    ]

    response = await send(key, {**message(deployment.name), "messages": turns, "tools": [WEATHER_TOOL]})

    assert response.status == 200
    sent = upstream.call.body["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "toolu_1"
    assert sent[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert sent[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "12 °C"}


# --- answers ----------------------------------------------------------------------------------------


async def test_a_whole_message_is_anthropic_s_message_object_with_the_model_s_usage(key, deployment, upstream, ledger):
    upstream.answer(*streamed("Hel", "lo"))

    response = await send(key, message(deployment.name))

    assert response.status == 200
    data = response.json()
    assert data["id"] == "msg_" + response.headers["x-request-id"][4:]
    assert (data["type"], data["role"], data["model"]) == ("message", "assistant", deployment.name)
    assert data["content"] == [{"type": "text", "text": "Hello"}]
    assert (data["stop_reason"], data["stop_sequence"]) == ("end_turn", None)
    assert (data["usage"]["input_tokens"], data["usage"]["output_tokens"]) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    record = ledger.only(surface="messages", status_code=200, streamed=False, cancelled=False, error_code="")
    assert (record.input_tokens, record.output_tokens, record.usage_estimated) == (1000, 500, False)
    assert record.cost_micros == deployment.cost_micros(1000, 500)


async def test_a_streamed_message_is_anthropic_s_event_sequence(key, deployment, upstream, ledger):
    upstream.answer(*streamed("Hel", "lo"))

    response = await send(key, message(deployment.name, stream=True))

    assert response.status == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    names = response.event_names()
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_start") == names.count("content_block_stop") == 1
    assert [e["type"] for e in response.events()] == names
    assert streamed_text(response) == "Hello"
    delta_event = response.events()[-2]
    assert delta_event["delta"]["stop_reason"] == "end_turn"
    assert delta_event["usage"]["output_tokens"] == COMPLETION_TOKENS
    ledger.only(surface="messages", status_code=200, streamed=True, input_tokens=1000, output_tokens=500)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_tool_call_becomes_a_tool_use_block(key, deployment, upstream, ledger, stream):
    pieces = tool_call_deltas("call_9", "get_weather", '{"city": "Oslo"}')
    upstream.answer(Started(200, {}), *(Data(p) for p in pieces), Data(finish("tool_calls") + USAGE + DONE), Ended())

    response = await send(key, message(deployment.name, stream=stream, tools=[WEATHER_TOOL]))

    if stream:
        events = response.events()
        start = next(e for e in events if e["type"] == "content_block_start")
        assert start["content_block"]["type"] == "tool_use"
        assert start["content_block"]["name"] == "get_weather"
        partial = "".join(e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta")
        assert partial == '{"city": "Oslo"}'
        assert events[-2]["delta"]["stop_reason"] == "tool_use"
    else:
        data = response.json()
        [block] = data["content"]
        assert (block["type"], block["name"], block["input"]) == ("tool_use", "get_weather", {"city": "Oslo"})
        assert block["id"]
        assert data["stop_reason"] == "tool_use"
    ledger.only(status_code=200, output_tokens=COMPLETION_TOKENS)


async def test_a_stop_sequence_ends_the_answer_there_and_stops_the_model(key, deployment, upstream, ledger):
    upstream.answer(Started(200, {}), Data(delta("one two ")), Data(delta("STOP three")), SILENCE)

    response = await send(key, message(deployment.name, stop_sequences=["STOP"]))

    data = response.json()
    assert data["content"] == [{"type": "text", "text": "one two "}]
    assert (data["stop_reason"], data["stop_sequence"]) == ("stop_sequence", "STOP")
    assert "stop" not in upstream.call.body  # matched here, so the one that matched can be named
    assert upstream.call.cancels == 1  # the model need not go on
    record = ledger.only(status_code=200, cancelled=False, usage_estimated=True)
    assert record.output_tokens >= 1


async def test_a_message_without_usage_from_the_model_is_estimated(key, deployment, upstream, ledger):
    upstream.answer(Started(200, {}), Data(delta("Hello there")), Data(finish() + DONE), Ended())

    response = await send(key, message(deployment.name))

    assert response.json()["usage"]["output_tokens"] >= 1
    ledger.only(status_code=200, usage_estimated=True)


async def test_the_model_s_reported_usage_wins_over_the_estimate(key, deployment, upstream, ledger):
    upstream.answer(Started(200, {}), Data(delta("Hi") + finish() + usage(11, 2) + DONE), Ended())

    response = await send(key, message(deployment.name))

    assert response.json()["usage"]["input_tokens"] == 11
    ledger.only(input_tokens=11, output_tokens=2, usage_estimated=False)


# --- errors in Anthropic's shape --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": "hi"}, "messages"),
        ({"stop_sequences": [""]}, "stop_sequences.0"),
    ],
)
async def test_an_invalid_body_is_an_anthropic_400_and_never_reaches_the_model(
    key, deployment, upstream, ledger, change, param
):
    body = {k: v for k, v in {**message(deployment.name), **change}.items() if v is not None}

    response = await send(key, body)

    assert response.status == 400
    data = response.json()
    assert (data["type"], data["error"]["type"]) == ("error", "invalid_request_error")
    assert param.split(".")[0] in data["error"]["message"]
    assert data["request_id"] == response.headers["request-id"]
    assert upstream.calls == []
    ledger.only(status_code=400, error_code="invalid_request_error")


async def test_a_failure_mid_stream_is_an_error_event_and_no_message_stop(key, deployment, upstream, ledger):
    upstream.answer(Started(200, {}), Data(delta("Hel")), Failed("upstream_error", "reset by peer"))

    response = await send(key, message(deployment.name, stream=True))

    assert response.status == 200
    names = response.event_names()
    assert names[-1] == "error" and "message_stop" not in names
    error = response.events()[-1]
    assert error["error"]["type"] == "api_error" and "reset by peer" in error["error"]["message"]
    ledger.only(status_code=200, error_code="upstream_error", streamed=True)


async def test_a_stream_that_goes_quiet_ends_with_an_anthropic_timeout_error_event(
    key, deployment, upstream, ledger, settings
):
    settings.UPSTREAM_TIMEOUT = 0.2
    upstream.answer(Started(200, {}), Data(delta("Hel")), SILENCE)

    response = await send(key, message(deployment.name, stream=True))

    assert response.events()[-1]["error"]["type"] == "timeout_error"
    ledger.only(status_code=504, error_code="upstream_timeout")
    assert upstream.call.cancels == 1


async def test_pings_go_out_while_the_model_thinks(key, deployment, upstream, ledger, settings):
    settings.KEEPALIVE_INTERVAL = 0.05
    upstream.answer(Started(200, {}), SILENCE)
    settings.UPSTREAM_TIMEOUT = 0.3

    response = await send(key, message(deployment.name, stream=True))

    names = response.event_names()
    assert names[0] == "message_start" and names.count("ping") >= 2 and names[-1] == "error"


async def test_an_error_event_in_the_model_s_stream_is_a_502_for_a_whole_message(key, deployment, upstream, ledger):
    upstream.answer(
        Started(200, {}), Data(delta("Hel") + b'data: {"error": {"message": "CUDA out of memory"}}\n\n'), Ended()
    )

    response = await send(key, message(deployment.name))

    assert response.status == 502
    data = response.json()
    assert data["error"]["type"] == "api_error" and "CUDA out of memory" in data["error"]["message"]
    ledger.only(status_code=502, error_code="upstream_error")


# --- count_tokens -----------------------------------------------------------------------------------


async def test_count_tokens_asks_the_model_s_tokenizer_with_the_tools(key, deployment, upstream, ledger):
    upstream.answer(*whole(b'{"prompt": "<user>Hi</user>"}'))
    upstream.answer(*whole(b'{"tokens": [1, 2, 3, 4, 5, 6]}'))
    body = {"model": deployment.name, "messages": [{"role": "user", "content": "Hi"}], "tools": [WEATHER_TOOL]}

    response = await call_v1("POST", PATH + "/count_tokens", body, secret=key.secret, headers=ANTHROPIC)

    assert (response.status, response.json()) == (200, {"input_tokens": 6})
    assert response.headers["x-tokios-token-count"] == "exact"
    template, tokenize = upstream.calls
    assert template.path == "/apply-template" and template.body["tools"][0]["function"]["name"] == "get_weather"
    assert tokenize.path == "/tokenize" and tokenize.body == {"content": "<user>Hi</user>", "add_special": True}
    ledger.only(surface="count_tokens", status_code=200, output_tokens=0)


@pytest.mark.parametrize(
    "script",
    [
        [Started(404, {}), Data(b'{"error": "not found"}'), Ended()],  # Ollama, vLLM: no such endpoint
        [Failed("path_not_allowed")],  # an older connector
        [Started(200, {}), Data(b"not json"), Ended()],
    ],
    ids=["404", "refused", "garbage"],
)
async def test_count_tokens_falls_back_to_a_marked_estimate(key, deployment, upstream, ledger, script):
    upstream.answer(*script)
    body = {"model": deployment.name, "messages": [{"role": "user", "content": "x" * 400}]}

    response = await call_v1("POST", PATH + "/count_tokens", body, secret=key.secret, headers=ANTHROPIC)

    assert response.status == 200
    data = response.json()
    assert data["estimated"] is True and 90 <= data["input_tokens"] <= 130
    assert response.headers["x-tokios-token-count"] == "estimated"
    ledger.only(surface="count_tokens", status_code=200)


async def test_count_tokens_needs_a_model_the_key_may_use(restricted_key, granted_deployment, upstream, ledger):
    body = {"model": granted_deployment.name, "messages": [{"role": "user", "content": "Hi"}]}

    response = await call_v1("POST", PATH + "/count_tokens", body, secret=restricted_key.secret, headers=ANTHROPIC)

    assert (response.status, response.json()["error"]["type"]) == (403, "permission_error")
    assert upstream.calls == []
