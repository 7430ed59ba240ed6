"""/v1/responses (OpenAI Responses) through the real tunnel, with the official SDK.

The fake upstream answers deterministically (tests/fakes/fake_upstream.py): `[[words=4]]` is
"w0 w1 w2 w3" and its prompt counts one token per whitespace-separated word; every expected value
below follows from that.
"""

from __future__ import annotations

import json

import openai
import pytest

from tests.e2e import surface_fixtures
from tests.e2e.scripted_upstream import ScriptedUpstream, chunk, sse

settle_usage_writes = surface_fixtures.settle_usage_writes  # autouse
strict_server = surface_fixtures.strict_server

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def client(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=f"{server.url}/v1", max_retries=0, timeout=30)


def upstream_messages(fake_upstream) -> list[dict]:
    return fake_upstream.stats()["last_body"]["messages"]


# ---------------------------------------------------------------------------------------------- create


def test_create_returns_a_completed_response_with_the_models_text(server, tenant, start_connector):
    start_connector(tenant.token)
    response = client(server, tenant.key).responses.create(model=tenant.model, input="say four words [[words=4]]")
    assert response.output_text == "w0 w1 w2 w3"
    assert response.status == "completed"
    assert response.object == "response"
    assert response.id.startswith("resp_")
    assert response.model == tenant.model
    assert response.error is None
    assert response.incomplete_details is None
    [item] = response.output
    assert item.type == "message"
    assert item.role == "assistant"
    assert item.status == "completed"
    assert response._request_id.startswith("req_")


def test_usage_counts_tokens_with_detail_objects(server, tenant, start_connector):
    start_connector(tenant.token)
    response = client(server, tenant.key).responses.create(model=tenant.model, input="three word prompt [[words=5]]")
    usage = response.usage
    assert usage.input_tokens == 4  # the fake counts the words of the prompt
    assert usage.output_tokens == 5
    assert usage.total_tokens == 9
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0


def test_instructions_reach_the_upstream_as_a_system_message(server, tenant, start_connector, fake_upstream):
    start_connector(tenant.token)
    response = client(server, tenant.key).responses.create(
        model=tenant.model, instructions="Answer tersely.", input="hi [[words=1]]"
    )
    assert response.instructions == "Answer tersely."
    assert upstream_messages(fake_upstream) == [
        {"role": "system", "content": "Answer tersely."},
        {"role": "user", "content": "hi [[words=1]]"},
    ]


def test_max_output_tokens_cut_gives_an_incomplete_response(server, tenant, start_connector, fake_upstream):
    start_connector(tenant.token)
    response = client(server, tenant.key).responses.create(
        model=tenant.model, max_output_tokens=16, input="[[words=20]]"
    )
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == " ".join(f"w{i}" for i in range(16))
    assert response.output[0].status == "incomplete"
    assert response.max_output_tokens == 16
    assert fake_upstream.stats()["last_body"]["max_tokens"] == 16


# ---------------------------------------------------------------------------------------------- streaming


def test_stream_helper_gives_text_deltas_and_the_final_response(server, tenant, start_connector):
    start_connector(tenant.token)
    with client(server, tenant.key).responses.stream(model=tenant.model, input="[[words=5]]") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert deltas == ["w0", " w1", " w2", " w3", " w4"]
    assert final.output_text == "w0 w1 w2 w3 w4"
    assert final.status == "completed"
    assert final.usage.output_tokens == 5


def test_raw_stream_numbers_events_from_zero_and_starts_with_created(server, tenant, start_connector):
    start_connector(tenant.token)
    events = list(client(server, tenant.key).responses.create(model=tenant.model, input="[[words=3]]", stream=True))
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert events[0].type == "response.created"
    assert events[0].response.status == "in_progress"
    assert events[0].response.output == []
    assert events[1].type == "response.in_progress"
    assert events[-1].type == "response.completed"
    assert events[-1].response.output[0].content[0].text == "w0 w1 w2"
    assert events[-1].response.id == events[0].response.id


def test_stream_cut_by_max_output_tokens_ends_with_response_incomplete(server, tenant, start_connector):
    start_connector(tenant.token)
    events = list(
        client(server, tenant.key).responses.create(
            model=tenant.model, input="[[words=20]]", max_output_tokens=16, stream=True
        )
    )
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"


def test_streamed_response_is_stored_and_retrievable(server, tenant, start_connector):
    start_connector(tenant.token)
    sdk = client(server, tenant.key)
    with sdk.responses.stream(model=tenant.model, input="[[words=2]]") as stream:
        final = stream.get_final_response()
    assert sdk.responses.retrieve(final.id).output_text == "w0 w1"


def test_upstream_dropping_mid_stream_raises_from_the_sdk_stream(server, tenant, start_connector):
    start_connector(tenant.token)
    received = []
    with pytest.raises(openai.APIError):
        for event in client(server, tenant.key).responses.create(
            model=tenant.model, input="[[words=8 fail_after=2]]", stream=True
        ):
            if event.type == "response.output_text.delta":
                received.append(event.delta)
    assert received == ["w0", " w1"]


def test_last_upstream_event_without_a_blank_line_still_reaches_the_stream(server, tenant, start_connector):
    answer = sse(
        chunk({"role": "assistant", "content": "Hello"}),
        chunk({"content": " world"}, "stop"),
        trailing_blank_line=False,
    )
    with ScriptedUpstream({"/v1/chat/completions": lambda body: (200, "text/event-stream", answer)}) as upstream:
        start_connector(tenant.token, upstream=upstream.base)
        with client(server, tenant.key).responses.stream(model=tenant.model, input="hi") as stream:
            deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
            final = stream.get_final_response()
    assert deltas == ["Hello", " world"]
    assert final.output_text == "Hello world"


def test_unframed_upstream_error_at_the_end_of_a_stream_raises_from_the_sdk_stream(server, tenant, start_connector):
    # Ollama writes an error met mid-generation as bare JSON, without `data:` framing.
    answer = sse(
        chunk({"role": "assistant", "content": "Hello"}),
        '{"error":"model runner has unexpectedly stopped"}',
        trailing_blank_line=False,
    )
    kinds = []
    with ScriptedUpstream({"/v1/chat/completions": lambda body: (200, "text/event-stream", answer)}) as upstream:
        start_connector(tenant.token, upstream=upstream.base)
        with pytest.raises(openai.APIError) as info:
            for event in client(server, tenant.key).responses.create(model=tenant.model, input="hi", stream=True):
                kinds.append(event.type)
    assert "response.output_text.delta" in kinds
    assert "model runner has unexpectedly stopped" in str(info.value)


# ---------------------------------------------------------------------------------------------- tools


def test_function_call_is_an_output_item_with_json_arguments(server, tenant, start_connector):
    start_connector(tenant.token)
    response = client(server, tenant.key).responses.create(
        model=tenant.model, tools=[WEATHER_TOOL], input="weather? [[tool=get_weather]]"
    )
    [call] = response.output
    assert call.type == "function_call"
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert call.call_id.startswith("call_fake")
    assert call.id.startswith("fc_")
    assert response.status == "completed"


def test_streamed_function_call_arguments_are_accumulated(server, tenant, start_connector):
    start_connector(tenant.token)
    with client(server, tenant.key).responses.stream(
        model=tenant.model, tools=[WEATHER_TOOL], input="[[tool=get_weather]]"
    ) as stream:
        final = stream.get_final_response()
    [call] = final.output
    assert (call.type, call.name, json.loads(call.arguments)) == ("function_call", "get_weather", {"city": "Paris"})


def test_function_call_output_with_previous_response_id_reaches_the_upstream_as_a_tool_message(
    server, tenant, start_connector, fake_upstream
):
    start_connector(tenant.token)
    sdk = client(server, tenant.key)
    first = sdk.responses.create(model=tenant.model, tools=[WEATHER_TOOL], input="weather? [[tool=get_weather]]")
    call = first.output[0]
    second = sdk.responses.create(
        model=tenant.model,
        tools=[WEATHER_TOOL],
        previous_response_id=first.id,
        input=[
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"},
            {"role": "user", "content": "so? [[text=It_is_sunny]]"},
        ],
    )
    assert second.output_text == "It is sunny"
    assert second.previous_response_id == first.id
    sent = upstream_messages(fake_upstream)
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "user"]
    assert sent[1]["tool_calls"] == [
        {"id": call.call_id, "type": "function", "function": {"name": "get_weather", "arguments": call.arguments}}
    ]
    assert sent[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny, 21 C"}


def test_function_call_output_in_full_input_reaches_the_upstream_as_a_tool_message(
    server, tenant, start_connector, fake_upstream
):
    start_connector(tenant.token)
    sdk = client(server, tenant.key)
    question = {"role": "user", "content": "weather? [[tool=get_weather]]"}
    first = sdk.responses.create(model=tenant.model, tools=[WEATHER_TOOL], input=[question], store=False)
    call = first.output[0]
    sdk.responses.create(
        model=tenant.model,
        tools=[WEATHER_TOOL],
        store=False,
        input=[
            question,
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
    )
    sent = upstream_messages(fake_upstream)
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["id"] == call.call_id
    assert sent[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}


# ---------------------------------------------------------------------------------------------- storage and chains


def test_previous_response_id_chain_of_three_replays_the_whole_conversation(
    server, tenant, start_connector, fake_upstream
):
    start_connector(tenant.token)
    sdk = client(server, tenant.key)
    first = sdk.responses.create(model=tenant.model, instructions="Old rules.", input="first [[words=2]]")
    second = sdk.responses.create(model=tenant.model, previous_response_id=first.id, input="second [[words=3]]")
    third = sdk.responses.create(
        model=tenant.model, previous_response_id=second.id, instructions="New rules.", input="third [[words=1]]"
    )
    assert third.output_text == "w0"
    # Instructions are not inherited along a chain (as on OpenAI): only the newest request's count.
    assert upstream_messages(fake_upstream) == [
        {"role": "system", "content": "New rules."},
        {"role": "user", "content": "first [[words=2]]"},
        {"role": "assistant", "content": "w0 w1"},
        {"role": "user", "content": "second [[words=3]]"},
        {"role": "assistant", "content": "w0 w1 w2"},
        {"role": "user", "content": "third [[words=1]]"},
    ]
    assert third.usage.input_tokens == 2 + 2 + 2 + 3 + 2 + 2  # words of every message the upstream saw


def test_a_stored_response_can_be_retrieved(server, tenant, start_connector):
    start_connector(tenant.token)
    sdk = client(server, tenant.key)
    created = sdk.responses.create(model=tenant.model, input="[[words=3]]", metadata={"ticket": "T-1"})
    fetched = sdk.responses.retrieve(created.id)
    assert fetched.id == created.id
    assert fetched.status == "completed"
    assert fetched.output_text == "w0 w1 w2"
    assert fetched.metadata == {"ticket": "T-1"}
    assert fetched.usage.total_tokens == created.usage.total_tokens


def test_store_false_is_not_retrievable(server, tenant, start_connector):
    start_connector(tenant.token)
    sdk = client(server, tenant.key)
    created = sdk.responses.create(model=tenant.model, input="[[words=2]]", store=False)
    assert created.store is False
    assert created.output_text == "w0 w1"
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(created.id)


def test_store_false_cannot_be_chained(server, tenant, start_connector):
    start_connector(tenant.token)
    sdk = client(server, tenant.key)
    created = sdk.responses.create(model=tenant.model, input="[[words=2]]", store=False)
    with pytest.raises(openai.BadRequestError) as info:
        sdk.responses.create(model=tenant.model, previous_response_id=created.id, input="next")
    assert info.value.code == "previous_response_not_found"


def test_another_orgs_key_cannot_retrieve_a_response(server, tenant, start_connector):
    start_connector(tenant.token)
    created = client(server, tenant.key).responses.create(model=tenant.model, input="[[words=2]]")
    outsider = tenant.make_key(org=tenant.new_org())
    with pytest.raises(openai.NotFoundError) as info:
        client(server, outsider).responses.retrieve(created.id)
    assert info.value.status_code == 404
    assert "w0 w1" not in info.value.response.text


def test_another_orgs_key_cannot_chain_on_a_response_even_with_access_to_the_model(server, tenant, start_connector):
    from deployments.actions import grant_model

    other = tenant.new_org()
    grant_model(deployment=tenant.deployment, org=other)  # before any request caches the deployment
    start_connector(tenant.token)
    created = client(server, tenant.key).responses.create(model=tenant.model, input="secret [[words=2]]")
    outsider = client(server, tenant.make_key(org=other))
    assert outsider.responses.create(model=tenant.model, input="[[words=1]]").output_text == "w0"  # the grant works
    with pytest.raises(openai.BadRequestError) as info:
        outsider.responses.create(model=tenant.model, previous_response_id=created.id, input="what did they say?")
    assert info.value.status_code == 400
    assert info.value.code == "previous_response_not_found"
    assert info.value.param == "previous_response_id"


def test_unknown_previous_response_id_is_a_bad_request(server, tenant, start_connector):
    with pytest.raises(openai.BadRequestError) as info:
        client(server, tenant.key).responses.create(
            model=tenant.model, previous_response_id="resp_does_not_exist", input="x"
        )
    assert info.value.code == "previous_response_not_found"
    assert info.value.body["message"] == "Previous response with id 'resp_does_not_exist' not found."


# ---------------------------------------------------------------------------------------------- errors


def assert_openai_error(exc: openai.APIStatusError, status: int, error_type: str, code: str | None) -> dict:
    body = exc.response.json()
    assert exc.status_code == status
    assert set(body) == {"error"}
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    assert body["error"]["type"] == error_type
    assert body["error"]["code"] == code
    assert exc.response.headers["x-request-id"].startswith("req_")
    return body["error"]


class TestErrors:
    def test_unknown_key_is_401(self, server, tenant):
        with pytest.raises(openai.AuthenticationError) as info:
            client(server, "sk-tokios-not-a-key").responses.create(model=tenant.model, input="x")
        assert_openai_error(info.value, 401, "invalid_request_error", "invalid_api_key")

    def test_other_orgs_model_is_403(self, server, tenant):
        outsider = tenant.make_key(org=tenant.new_org())
        with pytest.raises(openai.PermissionDeniedError) as info:
            client(server, outsider).responses.create(model=tenant.model, input="x")
        assert_openai_error(info.value, 403, "permission_error", "model_not_allowed")

    def test_unknown_model_is_404(self, server, tenant):
        with pytest.raises(openai.NotFoundError) as info:
            client(server, tenant.key).responses.create(model="no-such-model", input="x")
        error = assert_openai_error(info.value, 404, "invalid_request_error", "model_not_found")
        assert error["param"] == "model"

    def test_missing_input_is_400_naming_it(self, server, tenant):
        with pytest.raises(openai.BadRequestError) as info:
            client(server, tenant.key).responses.create(model=tenant.model)
        error = assert_openai_error(info.value, 400, "invalid_request_error", "invalid_value")
        assert error["param"] == "input"

    def test_no_connector_is_503_with_the_contract_message(self, server, tenant):
        with pytest.raises(openai.InternalServerError) as info:
            client(server, tenant.key).responses.create(model=tenant.model, input="x")
        error = assert_openai_error(info.value, 503, "server_error", "connector_offline")
        assert error["message"] == "Connector offline — the tunnel is not active"

    def test_upstream_failure_is_502(self, server, tenant, start_connector):
        start_connector(tenant.token)
        with pytest.raises(openai.InternalServerError) as info:
            client(server, tenant.key).responses.create(model=tenant.model, input="[[status=500]]")
        assert_openai_error(info.value, 502, "server_error", "upstream_error")

    def test_upstream_going_silent_is_a_504_for_a_non_streaming_request(self, strict_server, tenant, start_connector):
        srv = strict_server  # 1 s upstream timeout
        start_connector(tenant.token, srv=srv)
        with pytest.raises(openai.InternalServerError) as info:
            client(srv, tenant.key).responses.create(model=tenant.model, input="[[words=3 delay_ms=3000]]")
        assert_openai_error(info.value, 504, "server_error", "upstream_timeout")

    def test_body_over_the_limit_is_413(self, strict_server, tenant):
        with pytest.raises(openai.APIStatusError) as info:
            client(strict_server, tenant.key).responses.create(model=tenant.model, input="x" * 2000)
        assert_openai_error(info.value, 413, "invalid_request_error", "request_too_large")
