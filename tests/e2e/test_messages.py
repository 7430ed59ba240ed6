"""/v1/messages and /v1/messages/count_tokens (Anthropic) through the real tunnel, with the official SDK.

The fake upstream answers deterministically (tests/fakes/fake_upstream.py): `[[words=4]]` is
"w0 w1 w2 w3", `[[tool=NAME]]` a call to NAME with `{"city": "Paris"}`, and so on; every expected
value below follows from that.
"""

from __future__ import annotations

import json
import math
import time

import anthropic
import httpx
import pytest
from anthropic._exceptions import OverloadedError, RequestTooLargeError  # not re-exported at the top level

from tests.e2e import surface_fixtures
from tests.e2e.scripted_upstream import ScriptedUpstream, chunk, sse

settle_usage_writes = surface_fixtures.settle_usage_writes  # autouse
strict_server = surface_fixtures.strict_server

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def sdk(server, key: str | None = None, **kwargs) -> anthropic.Anthropic:
    # An explicit timeout also stops the SDK from computing one from max_tokens.
    return anthropic.Anthropic(api_key=key, base_url=server.url, max_retries=0, timeout=30, **kwargs)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def post(server, key: str | None, body, path: str = "/v1/messages") -> httpx.Response:
    headers = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    if key:
        headers["x-api-key"] = key
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{server.url}{path}", content=content, headers=headers, timeout=30)


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture(autouse=True)
def _no_ambient_anthropic_credentials(monkeypatch):
    # The SDK reads these when a key is not passed: the auth tests must send only what they mean to.
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)


# ---------------------------------------------------------------------------------------------- text


def test_create_returns_the_models_text_as_one_text_block(server, tenant, start_connector):
    start_connector(tenant.token)
    message = sdk(server, tenant.key).messages.create(
        model=tenant.model, max_tokens=100, messages=user("say four words [[words=4]]")
    )
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "w0 w1 w2 w3"
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == tenant.model
    assert message.id.startswith("msg_")
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    assert message.usage.input_tokens == 4  # the fake counts the words of the prompt
    assert message.usage.output_tokens == 4
    assert message._request_id.startswith("req_")


def test_system_prompt_reaches_the_upstream_as_the_first_message(server, tenant, start_connector, fake_upstream):
    start_connector(tenant.token)
    sdk(server, tenant.key).messages.create(
        model=tenant.model, max_tokens=100, system="Be brief.", messages=user("hello [[words=1]]")
    )
    messages = fake_upstream.stats()["last_body"]["messages"]
    assert messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello [[words=1]]"}]


def test_stream_yields_text_deltas_and_the_final_message(server, tenant, start_connector):
    start_connector(tenant.token)
    with sdk(server, tenant.key).messages.stream(
        model=tenant.model, max_tokens=100, messages=user("[[words=6]]")
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert pieces == ["w0", " w1", " w2", " w3", " w4", " w5"]
    assert final.content[0].text == "w0 w1 w2 w3 w4 w5"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 6
    assert final.usage.input_tokens == 1


def test_raw_stream_events_come_in_the_documented_order(server, tenant, start_connector):
    start_connector(tenant.token)
    events = list(
        sdk(server, tenant.key).messages.create(
            model=tenant.model, max_tokens=100, stream=True, messages=user("[[words=2]]")
        )
    )
    kinds = [event.type for event in events if event.type != "ping"]
    assert kinds == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0].message.content == []
    assert events[-2].delta.stop_reason == "end_turn"


# ---------------------------------------------------------------------------------------------- tools


def test_tool_use_block_carries_its_input_as_an_object(server, tenant, start_connector):
    start_connector(tenant.token)
    message = sdk(server, tenant.key).messages.create(
        model=tenant.model,
        max_tokens=100,
        tools=[WEATHER_TOOL],
        messages=user("weather in Paris? [[tool=get_weather]]"),
    )
    assert message.stop_reason == "tool_use"
    [block] = message.content
    assert block.type == "tool_use"
    assert block.name == "get_weather"
    assert block.input == {"city": "Paris"}
    assert block.id.startswith("call_fake")  # the upstream's call id, so the result can go back to it


def test_tool_result_goes_back_to_the_upstream_as_a_tool_message(server, tenant, start_connector, fake_upstream):
    start_connector(tenant.token)
    client = sdk(server, tenant.key)
    question = user("weather in Paris? [[tool=get_weather]]")
    first = client.messages.create(model=tenant.model, max_tokens=100, tools=[WEATHER_TOOL], messages=question)
    call = first.content[0]

    second = client.messages.create(
        model=tenant.model,
        max_tokens=100,
        tools=[WEATHER_TOOL],
        messages=[
            *question,
            {"role": "assistant", "content": [block.model_dump() for block in first.content]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21 C"},
                    {"type": "text", "text": "so? [[text=It_is_sunny]]"},
                ],
            },
        ],
    )
    assert second.content[0].text == "It is sunny"
    assert second.stop_reason == "end_turn"
    sent = fake_upstream.stats()["last_body"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "user"]
    assert sent[1]["tool_calls"] == [
        {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    ]
    assert sent[2] == {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}


# ---------------------------------------------------------------------------------------------- stops


def test_stop_sequence_ends_the_turn_with_the_text_before_it(server, tenant, start_connector):
    start_connector(tenant.token)
    message = sdk(server, tenant.key).messages.create(
        model=tenant.model, max_tokens=100, stop_sequences=["w3"], messages=user("[[words=8]]")
    )
    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == "w3"
    assert message.content[0].text == "w0 w1 w2 "


def test_streamed_stop_sequence_reports_the_matched_sequence(server, tenant, start_connector):
    start_connector(tenant.token)
    with sdk(server, tenant.key).messages.stream(
        model=tenant.model, max_tokens=100, stop_sequences=["nope", "w2 w3"], messages=user("[[words=8]]")
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "w0 w1 "
    assert final.stop_reason == "stop_sequence"
    assert final.stop_sequence == "w2 w3"


def test_stop_sequence_cancels_the_upstream_request_early(server, tenant, start_connector, fake_upstream):
    start_connector(tenant.token)
    fake_upstream.reset()
    started = time.monotonic()
    message = sdk(server, tenant.key).messages.create(
        model=tenant.model, max_tokens=500, stop_sequences=["w3"], messages=user("[[words=200 delay_ms=20]]")
    )
    assert message.stop_reason == "stop_sequence"
    assert time.monotonic() - started < 3  # 200 words at 20 ms would take 4 s
    assert wait_until(lambda: fake_upstream.stats()["aborted"] == 1)
    assert fake_upstream.stats()["completed"] == 0


def test_max_tokens_cuts_the_answer_with_stop_reason_max_tokens(server, tenant, start_connector, fake_upstream):
    start_connector(tenant.token)
    message = sdk(server, tenant.key).messages.create(model=tenant.model, max_tokens=3, messages=user("[[words=8]]"))
    assert message.stop_reason == "max_tokens"
    assert message.stop_sequence is None
    assert message.content[0].text == "w0 w1 w2"
    assert message.usage.output_tokens == 3
    assert fake_upstream.stats()["last_body"]["max_tokens"] == 3


# ---------------------------------------------------------------------------------------------- auth and headers


def test_x_api_key_authenticates(server, tenant, start_connector):
    start_connector(tenant.token)
    client = sdk(server, tenant.key)
    assert client.auth_headers == {"X-Api-Key": tenant.key}
    assert (
        client.messages.create(model=tenant.model, max_tokens=10, messages=user("[[words=1]]")).content[0].text == "w0"
    )


def test_bearer_token_authenticates(server, tenant, start_connector):
    start_connector(tenant.token)
    client = anthropic.Anthropic(auth_token=tenant.key, base_url=server.url, max_retries=0, timeout=30)
    assert "X-Api-Key" not in client.auth_headers
    assert client.auth_headers == {"Authorization": f"Bearer {tenant.key}"}
    assert (
        client.messages.create(model=tenant.model, max_tokens=10, messages=user("[[words=2]]")).content[0].text
        == "w0 w1"
    )


def test_beta_client_with_query_and_beta_headers_is_accepted(server, tenant, start_connector):
    start_connector(tenant.token)
    client = sdk(server, tenant.key)
    message = client.beta.messages.create(
        model=tenant.model,
        max_tokens=10,
        betas=["prompt-caching-2024-07-31", "some-future-flag-2099-01-01"],
        messages=user("[[words=3]]"),
    )
    assert message.content[0].text == "w0 w1 w2"
    raw = client.beta.messages.with_raw_response.create(
        model=tenant.model, max_tokens=10, betas=["interleaved-thinking-2025-05-14"], messages=user("[[words=1]]")
    )
    assert raw.http_request.url.params["beta"] == "true"
    assert raw.http_request.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    assert raw.status_code == 200


def test_beta_count_tokens_is_accepted(server, tenant, start_connector):
    start_connector(tenant.token)
    count = sdk(server, tenant.key).beta.messages.count_tokens(
        model=tenant.model, betas=["token-counting-2024-11-01"], messages=user("one two three")
    )
    assert count.input_tokens == 3


# ---------------------------------------------------------------------------------------------- errors


def assert_anthropic_error(exc: anthropic.APIStatusError, status: int, error_type: str) -> dict:
    body = exc.response.json()
    assert exc.status_code == status
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert exc.response.headers["request-id"].startswith("req_")
    assert body["request_id"] == exc.response.headers["request-id"]
    assert exc.request_id == exc.response.headers["request-id"]
    return body


class TestErrors:
    def test_missing_max_tokens_is_a_bad_request_naming_it(self, server, tenant):
        with pytest.raises(anthropic.BadRequestError) as info:
            sdk(server, tenant.key).messages.create(model=tenant.model, max_tokens=anthropic.omit, messages=user("x"))
        body = assert_anthropic_error(info.value, 400, "invalid_request_error")
        assert "max_tokens" in body["error"]["message"]

    def test_malformed_json_is_a_bad_request_in_anthropic_shape(self, server, tenant):
        response = post(server, tenant.key, b'{"model": ')
        assert response.status_code == 400
        body = response.json()
        assert body["type"] == "error"
        assert body["error"]["type"] == "invalid_request_error"
        assert "JSON" in body["error"]["message"]
        assert response.headers["request-id"] == body["request_id"]

    def test_unknown_key_is_an_authentication_error(self, server, tenant):
        with pytest.raises(anthropic.AuthenticationError) as info:
            sdk(server, "sk-tokios-not-a-key").messages.create(model=tenant.model, max_tokens=10, messages=user("x"))
        assert_anthropic_error(info.value, 401, "authentication_error")

    def test_missing_key_is_an_authentication_error(self, server, tenant):
        response = post(server, None, {"model": tenant.model, "max_tokens": 10, "messages": user("x")})
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"

    def test_other_orgs_model_is_permission_denied(self, server, tenant):
        outsider = tenant.make_key(org=tenant.new_org())
        with pytest.raises(anthropic.PermissionDeniedError) as info:
            sdk(server, outsider).messages.create(model=tenant.model, max_tokens=10, messages=user("x"))
        assert_anthropic_error(info.value, 403, "permission_error")

    def test_unknown_model_is_not_found(self, server, tenant):
        with pytest.raises(anthropic.NotFoundError) as info:
            sdk(server, tenant.key).messages.create(model="no-such-model", max_tokens=10, messages=user("x"))
        body = assert_anthropic_error(info.value, 404, "not_found_error")
        assert "no-such-model" in body["error"]["message"]

    def test_body_over_the_limit_is_request_too_large(self, strict_server, tenant):
        with pytest.raises(RequestTooLargeError) as info:
            sdk(strict_server, tenant.key).messages.create(model=tenant.model, max_tokens=10, messages=user("x" * 2000))
        assert_anthropic_error(info.value, 413, "request_too_large")

    def test_no_connector_is_503_with_the_contract_message(self, server, tenant):
        with pytest.raises(anthropic.InternalServerError) as info:
            sdk(server, tenant.key).messages.create(model=tenant.model, max_tokens=10, messages=user("x"))
        body = assert_anthropic_error(info.value, 503, "api_error")
        assert "Connector offline — the tunnel is not active" in body["error"]["message"]
        assert "Connector offline — the tunnel is not active" in str(info.value)

    def test_no_connector_on_a_stream_is_503_before_any_event(self, server, tenant):
        with pytest.raises(anthropic.InternalServerError) as info:
            with sdk(server, tenant.key).messages.stream(
                model=tenant.model, max_tokens=10, messages=user("x")
            ) as stream:
                stream.get_final_message()
        assert info.value.status_code == 503

    def test_upstream_failure_is_502(self, server, tenant, start_connector):
        start_connector(tenant.token)
        with pytest.raises(anthropic.InternalServerError) as info:
            sdk(server, tenant.key).messages.create(model=tenant.model, max_tokens=10, messages=user("[[status=500]]"))
        assert_anthropic_error(info.value, 502, "api_error")
        assert info.value.response.headers["x-should-retry"] == "false"

    def test_upstream_loading_is_overloaded_529(self, server, tenant, start_connector):
        start_connector(tenant.token)
        with pytest.raises(OverloadedError) as info:
            sdk(server, tenant.key).messages.create(model=tenant.model, max_tokens=10, messages=user("[[status=503]]"))
        assert_anthropic_error(info.value, 529, "overloaded_error")
        assert info.value.response.headers["retry-after"] == "1"

    def test_upstream_dropping_mid_stream_raises_from_the_sdk_stream(self, server, tenant, start_connector):
        start_connector(tenant.token)
        received = []
        with pytest.raises(anthropic.APIStatusError) as info:
            with sdk(server, tenant.key).messages.stream(
                model=tenant.model, max_tokens=100, messages=user("[[words=8 fail_after=2]]")
            ) as stream:
                for text in stream.text_stream:
                    received.append(text)
        assert received == ["w0", " w1"]
        assert info.value.body["type"] == "error"
        assert info.value.body["error"]["type"] == "api_error"

    def test_connector_killed_mid_stream_raises_promptly(self, server, tenant, start_connector):
        conn = start_connector(tenant.token)
        received = []
        started = time.monotonic()
        with pytest.raises(anthropic.APIStatusError) as info:
            with sdk(server, tenant.key).messages.stream(
                model=tenant.model, max_tokens=1000, messages=user("[[words=200 delay_ms=50]]")
            ) as stream:
                for text in stream.text_stream:
                    received.append(text)
                    if len(received) == 3:
                        conn.kill()
        assert 3 <= len(received) < 200
        assert time.monotonic() - started < 6
        message = str(info.value).lower()
        assert "tunnel" in message or "connector" in message


def test_last_upstream_event_without_a_blank_line_still_reaches_the_stream(server, tenant, start_connector):
    answer = sse(
        chunk({"role": "assistant", "content": "Hello"}),
        chunk({"content": " world"}, "stop"),
        trailing_blank_line=False,
    )
    with ScriptedUpstream({"/v1/chat/completions": lambda body: (200, "text/event-stream", answer)}) as upstream:
        start_connector(tenant.token, upstream=upstream.base)
        with sdk(server, tenant.key).messages.stream(model=tenant.model, max_tokens=10, messages=user("hi")) as stream:
            pieces = list(stream.text_stream)
            final = stream.get_final_message()
    assert pieces == ["Hello", " world"]
    assert final.content[0].text == "Hello world"


def test_unframed_upstream_error_at_the_end_of_a_stream_raises_from_the_sdk_stream(server, tenant, start_connector):
    # Ollama writes an error met mid-generation as bare JSON, without `data:` framing.
    answer = sse(
        chunk({"role": "assistant", "content": "Hello"}),
        '{"error":"model runner has unexpectedly stopped"}',
        trailing_blank_line=False,
    )
    received = []
    with ScriptedUpstream({"/v1/chat/completions": lambda body: (200, "text/event-stream", answer)}) as upstream:
        start_connector(tenant.token, upstream=upstream.base)
        with pytest.raises(anthropic.APIStatusError) as info:
            with sdk(server, tenant.key).messages.stream(
                model=tenant.model, max_tokens=10, messages=user("hi")
            ) as stream:
                for text in stream.text_stream:
                    received.append(text)
    assert received == ["Hello"]
    assert info.value.body["error"]["message"] == "model runner has unexpectedly stopped"


def test_upstream_going_silent_is_a_504_timeout_for_a_non_streaming_request(strict_server, tenant, start_connector):
    srv = strict_server  # 1 s upstream timeout
    start_connector(tenant.token, srv=srv)
    with pytest.raises(anthropic.InternalServerError) as info:
        sdk(srv, tenant.key).messages.create(
            model=tenant.model, max_tokens=10, messages=user("[[words=3 delay_ms=3000]]")
        )
    assert_anthropic_error(info.value, 504, "timeout_error")


# ---------------------------------------------------------------------------------------------- count_tokens


@pytest.fixture
def upstream_without_tokenizer():
    # vLLM, Ollama and hosted OpenAI-compatible servers have no /tokenize or /apply-template: 404.
    with ScriptedUpstream() as upstream:
        yield upstream


def test_count_tokens_is_exact_from_the_upstreams_tokenizer(server, tenant, start_connector, fake_upstream):
    start_connector(tenant.token)
    raw = sdk(server, tenant.key).messages.with_raw_response.count_tokens(
        model=tenant.model, system="be brief", messages=user("one two three four")
    )
    count = raw.parse()
    # The fake renders the prompt as the message texts joined by newlines and counts its words.
    assert count.input_tokens == 6
    assert raw.headers["x-tokios-token-count"] == "exact"
    assert not (count.model_extra or {}).get("estimated")
    assert fake_upstream.stats()["last_path"] == "POST /tokenize"


def test_count_tokens_estimates_when_the_upstream_cannot_tokenize(
    server, tenant, start_connector, upstream_without_tokenizer
):
    start_connector(tenant.token, upstream=upstream_without_tokenizer.base)
    raw = sdk(server, tenant.key).messages.with_raw_response.count_tokens(
        model=tenant.model, messages=user("one two three four")
    )
    count = raw.parse()
    assert raw.headers["x-tokios-token-count"] == "estimated"
    assert count.model_extra["estimated"] is True
    # The documented estimate: one token per 4 UTF-8 bytes of the rendered prompt, rounded up.
    assert count.input_tokens == math.ceil(len(b"user: one two three four") / 4)
    # (Besides the connector's question for its slot count, GET /props and /slots, on connect.)
    asked = [path for path, _ in upstream_without_tokenizer.requests if path not in ("/props", "/slots")]
    assert asked == ["/apply-template"]


def test_count_tokens_renders_the_tool_definitions_with_the_upstreams_template(server, tenant, start_connector):
    def apply_template(body):
        # Like llama.cpp's /apply-template with a tool-aware chat template: tools are part of the prompt.
        texts = [m["content"] for m in body["messages"]]
        if body.get("tools"):
            texts.append(json.dumps(body["tools"]))
        return 200, "application/json", json.dumps({"prompt": "\n".join(texts)}).encode()

    def tokenize(body):
        return 200, "application/json", json.dumps({"tokens": list(range(len(body["content"].split())))}).encode()

    with ScriptedUpstream({"/apply-template": apply_template, "/tokenize": tokenize}) as upstream:
        start_connector(tenant.token, upstream=upstream.base)
        count = sdk(server, tenant.key).messages.count_tokens(
            model=tenant.model, tools=[WEATHER_TOOL], messages=user("one two three")
        )
    [rendered] = upstream.bodies("/apply-template")
    assert rendered["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": WEATHER_TOOL["description"],
                "parameters": WEATHER_TOOL["input_schema"],
            },
        }
    ]
    assert count.input_tokens == 3 + len(json.dumps(rendered["tools"]).split())


def test_count_tokens_estimates_while_the_connector_is_offline(server, tenant):
    raw = sdk(server, tenant.key).messages.with_raw_response.count_tokens(model=tenant.model, messages=user("one two"))
    assert raw.headers["x-tokios-token-count"] == "estimated"
    assert raw.parse().model_extra["estimated"] is True
