"""POST /v1/responses and GET /v1/responses/{id} (OpenAI Responses) in process, against a scripted model.

The model is always asked for a Chat Completions stream; the client gets a Response object or its
event stream. A stored response can be fetched again, and chained on, by its own organisation only.
"""

from __future__ import annotations

import pytest

from proxy.calls import Data, Ended, Failed, Started

from .fake_call import COMPLETION_TOKENS, DONE, PROMPT_TOKENS, SILENCE, USAGE, delta, finish, streamed, tool_call_deltas
from .v1 import V1_DB, call_v1

pytestmark = [V1_DB, pytest.mark.asyncio, pytest.mark.timeout(30)]

PATH = "/v1/responses"
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def ask(model: str, *, stream: bool = False, **extra) -> dict:
    return {"model": model, "stream": stream, "input": "Say hello", **extra}


def output_text(data: dict) -> str:
    return "".join(part["text"] for item in data["output"] if item["type"] == "message" for part in item["content"])


# --- what the model is sent -------------------------------------------------------------------------


async def test_instructions_input_and_limits_reach_the_model_as_a_chat_completions_stream(
    key, granted_deployment, upstream, ledger
):
    upstream.answer(*streamed("Hi"))
    body = ask(granted_deployment.name, instructions="Be brief.", max_output_tokens=40, tools=[WEATHER_TOOL])

    await call_v1("POST", PATH, body, secret=key.secret)

    sent = upstream.call.body
    assert (upstream.call.path, sent["model"], sent["stream"]) == ("/chat/completions", "qwen3:8b", True)
    assert sent["stream_options"]["include_usage"] is True
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
    assert sent["max_tokens"] == 40
    assert sent["tools"][0]["function"]["name"] == "get_weather"


# --- answers ----------------------------------------------------------------------------------------


async def test_a_whole_response_is_a_completed_response_object_with_usage(key, deployment, upstream, ledger):
    upstream.answer(*streamed("Hel", "lo"))

    response = await call_v1("POST", PATH, ask(deployment.name, store=False), secret=key.secret)

    assert response.status == 200
    data = response.json()
    assert data["id"] == "resp_" + response.headers["x-request-id"][4:]
    assert (data["object"], data["status"], data["error"]) == ("response", "completed", None)
    assert output_text(data) == "Hello"
    assert (data["usage"]["input_tokens"], data["usage"]["output_tokens"]) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    record = ledger.only(surface="responses", status_code=200, streamed=False, cancelled=False, error_code="")
    assert (record.input_tokens, record.output_tokens, record.usage_estimated) == (1000, 500, False)
    assert record.cost_micros == deployment.cost_micros(1000, 500)


async def test_a_streamed_response_is_the_responses_event_sequence(key, deployment, upstream, ledger):
    upstream.answer(*streamed("Hel", "lo"))

    response = await call_v1("POST", PATH, ask(deployment.name, stream=True, store=False), secret=key.secret)

    assert response.headers["content-type"].startswith("text/event-stream")
    events = response.events()
    names = [e["type"] for e in events]
    assert names[0] == "response.created" and names[-1] == "response.completed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == "Hello"
    assert output_text(events[-1]["response"]) == "Hello"
    ledger.only(surface="responses", status_code=200, streamed=True, output_tokens=500)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_tool_call_becomes_a_function_call_item(key, deployment, upstream, ledger, stream):
    pieces = tool_call_deltas("call_3", "get_weather", '{"city": "Oslo"}')
    upstream.answer(Started(200, {}), *(Data(p) for p in pieces), Data(finish("tool_calls") + USAGE + DONE), Ended())

    response = await call_v1("POST", PATH, ask(deployment.name, stream=stream, tools=[WEATHER_TOOL]), secret=key.secret)

    data = response.events()[-1]["response"] if stream else response.json()
    [item] = data["output"]
    assert (item["type"], item["name"], item["arguments"]) == ("function_call", "get_weather", '{"city": "Oslo"}')
    assert item["call_id"] == "call_3"
    if stream:
        arguments = "".join(
            e["delta"] for e in response.events() if e["type"] == "response.function_call_arguments.delta"
        )
        assert arguments == '{"city": "Oslo"}'


async def test_an_answer_cut_by_max_tokens_is_incomplete(key, deployment, upstream, ledger):
    upstream.answer(Started(200, {}), Data(delta("Hel")), Data(finish("length") + USAGE + DONE), Ended())

    data = (await call_v1("POST", PATH, ask(deployment.name, max_output_tokens=1), secret=key.secret)).json()

    assert (data["status"], data["incomplete_details"]) == ("incomplete", {"reason": "max_output_tokens"})
    ledger.only(status_code=200)


# --- stored responses -------------------------------------------------------------------------------


async def test_a_stored_response_can_be_fetched_and_chained_on_by_its_org_only(
    key, other_key, deployment, other_deployment, upstream, ledger
):
    upstream.answer(*streamed("Paris"))
    first = (await call_v1("POST", PATH, ask(deployment.name, input="Capital of France?"), secret=key.secret)).json()

    fetched = await call_v1("GET", f"{PATH}/{first['id']}", secret=key.secret)
    elsewhere = await call_v1("GET", f"{PATH}/{first['id']}", secret=other_key.secret)

    assert (fetched.status, fetched.json()) == (200, first)
    assert (elsewhere.status, elsewhere.json()["error"]["code"]) == (404, "not_found")

    upstream.answer(*streamed("About 2 million."))
    follow_up = ask(deployment.name, input="Its population?", previous_response_id=first["id"])
    second = await call_v1("POST", PATH, follow_up, secret=key.secret)

    assert second.status == 200
    history = [(m["role"], m["content"]) for m in upstream.calls[1].body["messages"]]
    assert history == [("user", "Capital of France?"), ("assistant", "Paris"), ("user", "Its population?")]
    # globex, on a model of its own, cannot chain on acme's conversation.
    chained_elsewhere = await call_v1(
        "POST", PATH, {**follow_up, "model": other_deployment.name}, secret=other_key.secret
    )
    assert chained_elsewhere.json()["error"]["code"] == "previous_response_not_found"
    assert len(upstream.calls) == 2


async def test_a_response_not_stored_cannot_be_fetched(key, deployment, upstream, ledger):
    upstream.answer(*streamed("Hi"))
    made = (await call_v1("POST", PATH, ask(deployment.name, store=False), secret=key.secret)).json()

    response = await call_v1("GET", f"{PATH}/{made['id']}", secret=key.secret)

    assert (response.status, response.json()["error"]["param"]) == (404, "response_id")


@pytest.mark.parametrize(("previous", "code"), [("resp_nope", "previous_response_not_found"), (7, None)])
async def test_an_unknown_previous_response_is_a_400_before_the_model_is_called(
    key, deployment, upstream, ledger, previous, code
):
    response = await call_v1("POST", PATH, ask(deployment.name, previous_response_id=previous), secret=key.secret)

    error = response.json()["error"]
    assert (response.status, error["param"], error["code"]) == (400, "previous_response_id", code)
    assert upstream.calls == []


# --- errors -----------------------------------------------------------------------------------------


async def test_an_invalid_body_is_a_400_naming_the_parameter(key, deployment, upstream, ledger):
    response = await call_v1("POST", PATH, ask(deployment.name, max_output_tokens=0), secret=key.secret)

    error = response.json()["error"]
    assert (response.status, error["param"], error["code"]) == (400, "max_output_tokens", "invalid_value")
    assert upstream.calls == []


async def test_a_failure_mid_stream_is_an_error_event_then_response_failed(key, deployment, upstream, ledger):
    upstream.answer(Started(200, {}), Data(delta("Hel")), Failed("connector_disconnected", "socket closed"))

    response = await call_v1("POST", PATH, ask(deployment.name, stream=True, store=False), secret=key.secret)

    assert response.status == 200
    *_, error, failed = response.events()
    assert error["type"] == "error" and error["error"]["type"] == "server_error"
    assert "socket closed" in error["message"]
    assert failed["type"] == "response.failed" and failed["response"]["status"] == "failed"
    assert "response.completed" not in [e["type"] for e in response.events()]
    ledger.only(status_code=200, error_code="connector_disconnected", streamed=True)


async def test_a_stream_past_its_deadline_fails_in_band(key, deployment, upstream, ledger, settings):
    settings.REQUEST_DEADLINE = 0.3
    upstream.answer(Started(200, {}), Data(delta("Hel")), SILENCE)

    response = await call_v1("POST", PATH, ask(deployment.name, stream=True), secret=key.secret)

    failed = response.events()[-1]
    assert failed["type"] == "response.failed"
    assert "longer than this server allows" in failed["response"]["error"]["message"]
    ledger.only(status_code=504, error_code="request_deadline")
    assert upstream.call.cancels == 1


async def test_a_failed_response_is_not_stored(key, deployment, upstream, ledger):
    upstream.answer(Started(200, {}), Data(delta("Hel")), Failed("upstream_error"))

    response = await call_v1("POST", PATH, ask(deployment.name, stream=True), secret=key.secret)
    response_id = response.events()[-1]["response"]["id"]

    assert (await call_v1("GET", f"{PATH}/{response_id}", secret=key.secret)).status == 404
