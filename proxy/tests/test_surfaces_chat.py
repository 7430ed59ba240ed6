"""POST /v1/chat/completions in process: the real /v1 app against a scripted model (fake_call.py).

What the model is sent (the body after the surface's changes), what the client gets back streamed
and whole (text and tool calls, ids and names rewritten), and the one usage record each request
leaves, with the model's own token counts or an estimate.
"""

from __future__ import annotations

import orjson
import pytest

from proxy.calls import Data, Ended, Started

from .fake_call import (
    COMPLETION_TOKENS,
    DONE,
    FINISH,
    PROMPT_TOKENS,
    USAGE,
    Delay,
    chat_body,
    chunk,
    delta,
    event,
    finish,
    streamed,
    tool_call_deltas,
    whole,
)
from .v1 import V1_DB, call_v1

pytestmark = [V1_DB, pytest.mark.asyncio, pytest.mark.timeout(30)]

PATH = "/v1/chat/completions"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def chat(model: str, *, stream: bool = False, text: str = "Say hello", **extra) -> dict:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": text}], **extra}


def streamed_text(response) -> str:
    return "".join(c["delta"].get("content") or "" for e in response.events() if "choices" in e for c in e["choices"])


# --- what the model is sent -------------------------------------------------------------------------


async def test_the_model_gets_the_body_with_its_own_model_name_and_usage_asked_for_when_streamed(
    key, granted_deployment, upstream, ledger
):
    upstream.answer(*streamed("Hi"))
    body = chat(granted_deployment.name, stream=True, temperature=0.2, max_completion_tokens=50)

    response = await call_v1("POST", PATH, body, secret=key.secret)

    assert response.status == 200
    call = upstream.call
    assert (call.method, call.path, call.deployment_id) == ("POST", "/chat/completions", granted_deployment.id)
    assert call.request_id == response.headers["x-request-id"]
    assert call.body["model"] == "qwen3:8b"  # the deployment's upstream model, not the name the client used
    assert call.body["stream_options"] == {"include_usage": True}
    assert call.body["max_tokens"] == call.body["max_completion_tokens"] == 50  # Ollama reads only max_tokens
    assert (call.body["temperature"], call.body["messages"]) == (0.2, body["messages"])


async def test_a_deployment_without_an_upstream_model_is_called_by_its_name(key, deployment, upstream, ledger):
    upstream.answer(*whole(chat_body()))

    await call_v1("POST", PATH, chat(deployment.name), secret=key.secret)

    assert upstream.call.body["model"] == deployment.name
    assert "stream_options" not in upstream.call.body


async def test_developer_messages_reach_the_model_as_system_messages(key, deployment, upstream, ledger):
    upstream.answer(*whole(chat_body()))
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]

    await call_v1("POST", PATH, {"model": deployment.name, "messages": messages}, secret=key.secret)

    assert upstream.call.body["messages"] == [{"role": "system", "content": "Be brief."}, messages[1]]


async def test_a_client_s_own_stream_options_are_kept_and_usage_is_asked_for(key, deployment, upstream, ledger):
    upstream.answer(*streamed("Hi"))

    await call_v1(
        "POST",
        PATH,
        chat(deployment.name, stream=True, stream_options={"include_obfuscation": False}),
        secret=key.secret,
    )

    assert upstream.call.body["stream_options"] == {"include_obfuscation": False, "include_usage": True}


# --- a whole answer ---------------------------------------------------------------------------------


async def test_a_whole_answer_carries_this_request_s_id_and_the_deployment_s_name(key, deployment, upstream, ledger):
    upstream.answer(*whole(chat_body()))

    response = await call_v1("POST", PATH, chat(deployment.name), secret=key.secret)

    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    data = response.json()
    assert data["id"] == "chatcmpl-" + response.headers["x-request-id"][4:]
    assert (data["model"], data["object"]) == (deployment.name, "chat.completion")
    assert data["choices"][0]["message"] == {"role": "assistant", "content": "Hello"}
    assert data["usage"] == {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS}
    record = ledger.only(surface="chat", status_code=200, streamed=False, cancelled=False, error_code="")
    assert (record.input_tokens, record.output_tokens, record.usage_estimated) == (1000, 500, False)
    assert (record.key_id, record.org_id, record.deployment_id) == (key.pk, key.org_id, deployment.pk)
    assert record.cost_micros == deployment.cost_micros(1000, 500) > 0


async def test_a_whole_answer_with_tool_calls_is_passed_through(key, deployment, upstream, ledger):
    tool_call = {
        "id": "call_7",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
    }
    message = {"role": "assistant", "content": None, "tool_calls": [tool_call]}
    upstream.answer(*whole(chat_body(message, finish_reason="tool_calls")))

    response = await call_v1("POST", PATH, chat(deployment.name, tools=[WEATHER_TOOL]), secret=key.secret)

    choice = response.json()["choices"][0]
    assert (choice["finish_reason"], choice["message"]["tool_calls"]) == ("tool_calls", [tool_call])
    assert upstream.call.body["tools"] == [WEATHER_TOOL]
    ledger.only(status_code=200, output_tokens=COMPLETION_TOKENS)


async def test_a_whole_answer_without_usage_gets_an_estimate_and_is_recorded_as_estimated(
    key, deployment, upstream, ledger
):
    upstream.answer(*whole(chat_body(usage=None)))

    response = await call_v1("POST", PATH, chat(deployment.name, text="x" * 400), secret=key.secret)

    usage = response.json()["usage"]
    assert usage["prompt_tokens"] == 100 + 4  # ~4 characters a token, and 4 a message
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    record = ledger.only(status_code=200, usage_estimated=True)
    assert record.input_tokens == 104


async def test_a_whole_answer_that_is_not_json_is_a_502(key, deployment, upstream, ledger):
    upstream.answer(*whole(b"<html>bad gateway</html>"))

    response = await call_v1("POST", PATH, chat(deployment.name), secret=key.secret)

    assert (response.status, response.json()["error"]["code"]) == (502, "upstream_error")
    assert response.headers["x-should-retry"] == "false"
    ledger.only(status_code=502, error_code="upstream_error")


async def test_a_whole_answer_arriving_in_pieces_is_put_together(key, deployment, upstream, ledger):
    body = chat_body()
    upstream.answer(Started(200, {}), *(Data(body[i : i + 7]) for i in range(0, len(body), 7)), Ended())

    response = await call_v1("POST", PATH, chat(deployment.name), secret=key.secret)

    assert response.json()["choices"][0]["message"]["content"] == "Hello"


# --- a streamed answer ------------------------------------------------------------------------------


async def test_a_streamed_answer_is_relayed_with_this_request_s_id_and_name_and_ends_with_done(
    key, deployment, upstream, ledger
):
    upstream.answer(*streamed("Hel", "lo", " there"))

    response = await call_v1("POST", PATH, chat(deployment.name, stream=True), secret=key.secret)

    assert response.status == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert streamed_text(response) == "Hello there"
    events = response.events()
    completion_id = "chatcmpl-" + response.headers["x-request-id"][4:]
    assert {e["id"] for e in events} == {completion_id}
    assert {e["model"] for e in events} == {deployment.name}
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in e for e in events)  # the client did not ask for it
    assert response.body.endswith(DONE) and response.body.count(DONE) == 1
    record = ledger.only(surface="chat", status_code=200, streamed=True, cancelled=False, error_code="")
    assert (record.input_tokens, record.output_tokens, record.usage_estimated) == (1000, 500, False)
    assert record.ttft_ms is not None


async def test_a_client_that_asks_for_usage_gets_the_usage_chunk(key, deployment, upstream, ledger):
    upstream.answer(*streamed("Hi"))

    body = chat(deployment.name, stream=True, stream_options={"include_usage": True})
    response = await call_v1("POST", PATH, body, secret=key.secret)

    last = response.events()[-1]
    assert (last["choices"], last["usage"]["completion_tokens"]) == ([], COMPLETION_TOKENS)


async def test_usage_on_the_finish_chunk_is_taken_and_hidden_from_a_client_that_did_not_ask(
    key, deployment, upstream, ledger
):
    # Older llama.cpp: the usage rides on the chunk that finishes the answer, and no [DONE] is sent.
    last = chunk(
        [{"index": 0, "delta": {}, "finish_reason": "stop"}], usage={"prompt_tokens": 7, "completion_tokens": 3}
    )
    upstream.answer(Started(200, {}), Data(delta("Hi")), Data(last), Ended())

    response = await call_v1("POST", PATH, chat(deployment.name, stream=True), secret=key.secret)

    assert all("usage" not in e for e in response.events())
    assert response.body.endswith(DONE)  # added for the model that did not send it
    ledger.only(input_tokens=7, output_tokens=3, usage_estimated=False)


async def test_a_streamed_answer_without_usage_is_estimated_from_its_deltas(key, deployment, upstream, ledger):
    upstream.answer(Started(200, {}), *(Data(delta(w)) for w in ("a", "b", "c", "d")), Data(FINISH + DONE), Ended())

    await call_v1("POST", PATH, chat(deployment.name, stream=True), secret=key.secret)

    ledger.only(output_tokens=4, usage_estimated=True)  # 5 chunks with a delta, the last only finishes


async def test_streamed_tool_calls_are_relayed_piece_by_piece(key, deployment, upstream, ledger):
    pieces = tool_call_deltas("call_7", "get_weather", '{"city": "Oslo"}', pieces=3)
    upstream.answer(Started(200, {}), *(Data(p) for p in pieces), Data(finish("tool_calls") + USAGE + DONE), Ended())

    response = await call_v1("POST", PATH, chat(deployment.name, stream=True, tools=[WEATHER_TOOL]), secret=key.secret)

    calls = [c["delta"]["tool_calls"][0] for e in response.events() for c in e["choices"] if "tool_calls" in c["delta"]]
    assert (calls[0]["id"], calls[0]["function"]["name"]) == ("call_7", "get_weather")
    assert "".join(c["function"]["arguments"] for c in calls) == '{"city": "Oslo"}'
    assert response.events()[-1]["choices"][0]["finish_reason"] == "tool_calls"
    ledger.only(status_code=200, output_tokens=COMPLETION_TOKENS)


async def test_events_split_across_chunks_and_joined_in_one_are_relayed_whole(key, deployment, upstream, ledger):
    stream = delta("one") + delta("two") + delta("three") + FINISH + USAGE + DONE
    upstream.answer(Started(200, {}), *(Data(stream[i : i + 5]) for i in range(0, len(stream), 5)), Ended())

    response = await call_v1("POST", PATH, chat(deployment.name, stream=True), secret=key.secret)

    assert streamed_text(response) == "onetwothree"
    assert response.body.count(DONE) == 1


async def test_keep_alive_comments_go_out_while_the_model_thinks(key, deployment, upstream, ledger, settings):
    settings.KEEPALIVE_INTERVAL = 0.05
    upstream.answer(Started(200, {}), Delay(0.3), *streamed("Hi")[1:])

    response = await call_v1("POST", PATH, chat(deployment.name, stream=True), secret=key.secret)

    assert response.body.startswith(b": keep-alive\n\n")
    assert response.body.count(b": keep-alive\n\n") >= 2
    assert streamed_text(response) == "Hi"
    ledger.only(status_code=200, error_code="")


async def test_an_error_event_from_the_model_is_relayed_in_openai_s_shape(key, deployment, upstream, ledger):
    error = event({"error": {"message": "out of memory", "code": 500}})
    upstream.answer(Started(200, {}), Data(delta("Hel")), Data(error), Ended())

    response = await call_v1("POST", PATH, chat(deployment.name, stream=True), secret=key.secret)

    assert response.status == 200
    relayed = response.events()[-1]
    assert relayed == {"error": {"message": "out of memory", "type": "server_error", "param": None, "code": "500"}}
    ledger.only(status_code=200, error_code="upstream_error", streamed=True)


# --- what the surface refuses -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "tool", "content": "42"}]}, "messages[0].tool_call_id"),
        ({"temperature": "hot"}, "temperature"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"n": True}, "n"),
        ({"stream": "yes"}, "stream"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stop": [1, 2]}, "stop"),
        ({"tools": {"type": "function"}}, "tools"),
    ],
)
async def test_an_invalid_body_is_a_400_naming_the_parameter_and_never_reaches_the_model(
    key, deployment, upstream, ledger, change, param
):
    response = await call_v1("POST", PATH, {**chat(deployment.name), **change}, secret=key.secret)

    assert response.status == 400
    error = response.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, "invalid_value", "invalid_request_error")
    assert upstream.calls == []
    ledger.only(status_code=400, error_code="invalid_value", deployment_id=deployment.pk)


async def test_the_body_is_not_json_at_all(key, deployment, upstream, ledger):
    for raw, fragment in ((b"[1, 2]", "must be a JSON object"), (b"", "empty"), (b'{"model": ', "could not parse")):
        response = await call_v1("POST", PATH, raw, secret=key.secret)
        assert (response.status, response.json()["error"]["code"]) == (400, "invalid_json")
        assert fragment in response.json()["error"]["message"]
    assert upstream.calls == []


async def test_a_model_answer_mixing_bytes_and_text_is_relayed_byte_exact(key, deployment, upstream, ledger):
    text = "naïve café — 日本語 🙂"
    encoded = delta(text)
    cut = encoded.index("日".encode()) + 1  # in the middle of a character
    upstream.answer(Started(200, {}), Data(encoded[:cut]), Data(encoded[cut:] + FINISH + USAGE + DONE), Ended())

    response = await call_v1("POST", PATH, chat(deployment.name, stream=True), secret=key.secret)

    assert streamed_text(response) == text
    assert orjson.loads(response.body.split(b"\n\n")[0][6:])["choices"][0]["delta"]["content"] == text
