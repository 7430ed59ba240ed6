"""One owner per request: whatever way a /v1 request ends, its call is cancelled if still running,
its limits reservation is settled once, and exactly one usage record is submitted.

These drive the real /v1 ASGI app (`GatewayHandler`) in process (`v1.call_v1`), so a test can make
the client leave at any moment, with a scripted `UpstreamCall` in place of the tunnel (fake_call.py,
the `upstream` fixture). The org, key and deployment are real rows; `metering.submit`,
`limits.enforce` and `limits.settle` are watched (and still run: the `ledger` fixture), so each
test sees what the request scope handed to billing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import pytest
from asgiref.sync import sync_to_async

from accounts.actions import create_api_key
from accounts.models import ApiKey, Organization
from billing import metering
from billing.metering import UsageRecord
from billing.models import UsageEvent
from deployments.models import Deployment
from proxy.calls import CallError, Data, Ended, Failed, Started
from proxy.surfaces import chat as chat_surface
from proxy.tunnel.router import OFFLINE_MESSAGE
from tests.personas import PRICE_INPUT_MICROS, PRICE_OUTPUT_MICROS

from .fake_call import (
    COMPLETION_TOKENS,
    DONE,
    FINISH,
    PROMPT_TOKENS,
    SILENCE,
    chat_body,
    chunk,
    delta,
    streamed,
)
from .v1 import ANTHROPIC, V1_DB, Exchange, call_v1

pytestmark = [V1_DB, pytest.mark.asyncio, pytest.mark.timeout(60)]

COST = (PROMPT_TOKENS * PRICE_INPUT_MICROS + COMPLETION_TOKENS * PRICE_OUTPUT_MICROS) // 1_000_000
STREAMED_ANSWER = streamed("Hel", "lo")
ANSWER = {"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}
CHAT_BODY = chat_body()


@dataclass
class Tenant:
    org: Organization
    key: ApiKey
    secret: str
    deployment: Deployment

    @property
    def model(self) -> str:
        return self.deployment.name


@pytest.fixture
def tenant(org, deployment) -> Tenant:
    """The personas' org and deployment, with a key that has limits (so there is a reservation)."""
    key, secret = create_api_key(org=org, name="ci", rpm_limit=1000, tpm_limit=1_000_000)
    return Tenant(org=org, key=key, secret=secret, deployment=deployment)


def chat(tenant: Tenant, *, stream: bool = False, **extra) -> dict:
    return {"model": tenant.model, "stream": stream, "messages": [{"role": "user", "content": "Say hello"}], **extra}


def messages(tenant: Tenant, *, stream: bool = False) -> dict:
    return {"model": tenant.model, "stream": stream, "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}]}


def responses(tenant: Tenant, *, stream: bool = False) -> dict:
    return {"model": tenant.model, "stream": stream, "input": "Say hello"}


SURFACES: dict[str, tuple[str, Callable[..., dict], dict[str, str]]] = {
    "chat": ("/v1/chat/completions", chat, {}),
    "messages": ("/v1/messages", messages, ANTHROPIC),
    "responses": ("/v1/responses", responses, {}),
}


async def send(tenant: Tenant, surface: str, *, stream: bool = False, **kwargs) -> Exchange:
    path, body, headers = SURFACES[surface]
    return await call_v1("POST", path, body(tenant, stream=stream), secret=tenant.secret, headers=headers, **kwargs)


def assert_belongs_to(record: UsageRecord, tenant: Tenant, response: Exchange) -> None:
    assert record.request_id == response.headers["x-request-id"] == response.headers["request-id"]
    assert (record.org_id, record.key_id) == (tenant.org.pk, tenant.key.pk)
    assert record.deployment_id == tenant.deployment.pk


# --- a request that succeeds ------------------------------------------------------------------------


def answered(surface: str, response: Exchange, stream: bool) -> str:
    """The text the client got."""
    if not stream:
        data = response.json()
        return {
            "chat": lambda: data["choices"][0]["message"]["content"],
            "messages": lambda: data["content"][0]["text"],
            "responses": lambda: data["output"][0]["content"][0]["text"],
        }[surface]()
    text = ""
    for event in response.events():
        if surface == "chat":
            text += "".join(c["delta"].get("content") or "" for c in event["choices"])
        elif event.get("type") in ("content_block_delta", "response.output_text.delta"):
            text += event["delta"]["text"] if surface == "messages" else event["delta"]
    return text


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("surface", ["chat", "messages", "responses"])
async def test_a_request_that_succeeds_is_recorded_once_with_its_usage_and_cost(
    tenant, upstream, ledger, surface, stream
):
    if surface == "chat" and not stream:
        upstream.answer(Started(200, {}), Data(CHAT_BODY), Ended(12, 3))
    else:
        upstream.answer(*STREAMED_ANSWER)  # Messages and Responses always ask the model for a stream

    response = await send(tenant, surface, stream=stream)

    assert response.status == 200
    assert answered(surface, response, stream) == "Hello"
    record = ledger.only(surface=surface, status_code=200, streamed=stream, cancelled=False, error_code="")
    assert_belongs_to(record, tenant, response)
    assert (record.input_tokens, record.output_tokens, record.usage_estimated) == (1000, 500, False)
    assert record.cost_micros == COST == tenant.deployment.cost_micros(1000, 500)
    assert record.ttft_ms is not None and record.latency_ms >= record.ttft_ms
    assert ledger.reserved[0] is not None  # the key has limits: there was a reservation to settle
    assert upstream.call.cancels == 0 and upstream.call.finished


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_absurd_token_counts_from_the_model_are_bounded_before_the_cost_is_worked_out(
    tenant, upstream, ledger, stream
):
    most = 2**64 - 1  # the largest integer JSON parsing keeps an integer (beyond it comes a float)
    huge = {"prompt_tokens": most, "completion_tokens": most}
    if stream:
        usage = chunk([], usage={**huge, "total_tokens": most})
        upstream.answer(Started(200, {}), Data(delta("Hi") + FINISH + usage + DONE), Ended(1, 1))
    else:
        body = orjson.dumps({"id": "up-1", "object": "chat.completion", "choices": [ANSWER], "usage": huge})
        upstream.answer(Started(200, {}), Data(body), Ended(1, 1))

    response = await send(tenant, "chat", stream=stream)

    assert response.status == 200
    record = ledger.only(surface="chat", status_code=200)
    assert record.input_tokens == record.output_tokens == 2**31 - 1
    assert 0 < record.cost_micros <= 2**63 - 1
    assert record.cost_micros == tenant.deployment.cost_micros(2**31 - 1, 2**31 - 1)


async def test_the_reservation_is_settled_with_the_tokens_the_request_really_used(tenant, upstream, ledger):
    _, secret = await sync_to_async(create_api_key)(org=tenant.org, name="tpm", tpm_limit=10_000)
    upstream.answer(*STREAMED_ANSWER)
    upstream.answer(*STREAMED_ANSWER)
    first = await call_v1("POST", "/v1/chat/completions", chat(tenant, stream=True), secret=secret)
    estimate = 10_000 - int(first.headers["x-ratelimit-remaining-tokens"])

    second = await call_v1("POST", "/v1/chat/completions", chat(tenant, stream=True), secret=secret)

    assert estimate < PROMPT_TOKENS + COMPLETION_TOKENS  # so the first request used more than it reserved
    remaining = int(second.headers["x-ratelimit-remaining-tokens"])
    after_real_usage = 10_000 - (PROMPT_TOKENS + COMPLETION_TOKENS) - estimate
    assert after_real_usage <= remaining < after_real_usage + 250  # (the bucket refills 1/6 token per ms)
    assert [reservation for reservation, _ in ledger.settled] == ledger.reserved


# --- a request refused before the model is called ---------------------------------------------------


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("no key", 401, "missing_api_key"),
        ("unknown key", 401, "invalid_api_key"),
        ("unknown model", 404, "model_not_found"),
        ("no messages", 400, "invalid_value"),
        ("not json", 400, "invalid_json"),
    ],
)
async def test_a_request_refused_before_the_call_is_recorded_once_without_calling_the_model(
    tenant, upstream, ledger, case, status, code
):
    body: dict | bytes = chat(tenant)
    secret = {"no key": None, "unknown key": "sk-tokios-" + "0" * 40}.get(case, tenant.secret)
    if case == "unknown model":
        body["model"] = "no-such-model"
    elif case == "no messages":
        del body["messages"]
    elif case == "not json":
        body = b"{not json"

    response = await call_v1("POST", "/v1/chat/completions", body, secret=secret)

    assert (response.status, response.json()["error"]["code"]) == (status, code)
    assert upstream.calls == []
    record = ledger.only(surface="chat", status_code=status, error_code=code, cancelled=False, output_tokens=0)
    assert record.request_id == response.headers["x-request-id"]
    authenticated = status != 401
    assert record.key_id == (tenant.key.pk if authenticated else None)
    assert record.org_id == (tenant.org.pk if authenticated else None)
    assert record.deployment_id == (tenant.deployment.pk if case == "no messages" else None)
    assert ledger.reserved == []  # refused before the limits were asked


async def test_a_request_over_its_limit_is_recorded_once_and_settles_nothing(tenant, upstream, ledger):
    key, secret = await sync_to_async(create_api_key)(org=tenant.org, name="one a minute", rpm_limit=1)
    upstream.answer(*STREAMED_ANSWER)
    await call_v1("POST", "/v1/chat/completions", chat(tenant, stream=True), secret=secret)
    ledger.forget()

    response = await call_v1("POST", "/v1/chat/completions", chat(tenant, stream=True), secret=secret)

    assert response.status == 429
    assert len(upstream.calls) == 1  # the first request's
    record = ledger.only(status_code=429, error_code="rate_limit_exceeded", key_id=key.pk)
    assert ledger.settled == [(None, record)]


# --- the model answers with an error ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("surface", "upstream_status", "status", "code"),
    [
        ("chat", 400, 400, "upstream_bad_request"),
        ("chat", 500, 502, "upstream_error"),
        ("chat", 503, 503, "server_is_overloaded"),
        ("messages", 503, 529, "server_is_overloaded"),
    ],
)
async def test_an_upstream_error_status_is_recorded_once_as_the_client_saw_it(
    tenant, upstream, ledger, surface, upstream_status, status, code
):
    error = orjson.dumps({"error": {"message": "no can do", "type": "server_error"}})
    upstream.answer(Started(upstream_status, {}), Data(error), Ended())

    response = await send(tenant, surface, stream=True)

    assert response.status == status
    assert "no can do" in response.json()["error"]["message"]
    record = ledger.only(status_code=status, error_code=code, cancelled=False, output_tokens=0, cost_micros=0)
    assert_belongs_to(record, tenant, response)
    assert upstream.call.cancels == 0


@pytest.mark.parametrize(
    ("first", "status", "code"),
    [
        (Failed("upstream_unreachable", "connection refused"), 502, "upstream_unreachable"),
        (Failed("overloaded"), 503, "overloaded"),
        (CallError(503, "connector_offline", OFFLINE_MESSAGE), 503, "connector_offline"),
    ],
    ids=["unreachable", "overloaded", "offline"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_call_that_fails_before_it_starts_is_a_gateway_error_recorded_once(
    tenant, upstream, ledger, first, status, code, stream
):
    upstream.answer(first)

    response = await send(tenant, "chat", stream=stream)

    assert (response.status, response.json()["error"]["code"]) == (status, code)
    assert response.headers["x-should-retry"] == ("true" if status == 503 else "false")
    # Nobody left and nothing was running: this request was refused, not cancelled.
    record = ledger.only(status_code=status, error_code=code, streamed=False, cancelled=False)
    assert_belongs_to(record, tenant, response)
    assert ledger.reserved[0] is not None


# --- the call fails or stalls once the response began -----------------------------------------------


async def test_a_call_that_fails_mid_stream_ends_with_an_in_band_error_and_is_recorded_once(tenant, upstream, ledger):
    upstream.answer(Started(200, {}), Data(delta("Hel")), Failed("connector_disconnected", "socket closed"))

    response = await send(tenant, "chat", stream=True)

    assert response.status == 200
    first, error = response.events()
    assert first["choices"][0]["delta"]["content"] == "Hel"
    assert error["error"]["code"] == "connector_disconnected"
    assert not response.body.endswith(DONE)
    # The response had begun as a 200; one delta and no usage report: estimated.
    record = ledger.only(status_code=200, error_code="connector_disconnected", streamed=True, cancelled=False)
    assert_belongs_to(record, tenant, response)
    assert record.usage_estimated
    assert upstream.call.cancels == 0


async def test_a_call_that_fails_mid_stream_on_the_messages_surface_ends_with_an_anthropic_error_event(
    tenant, upstream, ledger
):
    upstream.answer(Started(200, {}), Data(delta("Hel")), Failed("connector_disconnected"))

    response = await send(tenant, "messages", stream=True)

    assert response.status == 200
    assert response.events()[-1]["type"] == "error"
    assert "message_stop" not in response.body.decode()
    ledger.only(status_code=200, error_code="connector_disconnected", cancelled=False)


async def test_a_call_that_fails_mid_body_without_streaming_is_a_502_recorded_once(tenant, upstream, ledger):
    upstream.answer(Started(200, {}), Data(CHAT_BODY[:20]), Failed("upstream_error", "reset by peer"))

    response = await send(tenant, "chat")

    assert (response.status, response.json()["error"]["code"]) == (502, "upstream_error")
    ledger.only(status_code=502, error_code="upstream_error", cancelled=False)


async def test_a_model_that_goes_quiet_mid_stream_is_cut_off_at_the_idle_timeout(tenant, upstream, ledger, settings):
    settings.UPSTREAM_TIMEOUT = 0.2
    upstream.answer(Started(200, {}), Data(delta("Hel")), SILENCE)

    response = await send(tenant, "chat", stream=True)

    assert response.status == 200
    assert response.events()[-1]["error"]["code"] == "upstream_timeout"
    ledger.only(status_code=504, error_code="upstream_timeout", streamed=True)
    assert upstream.call.cancels == 1  # the model is told to stop


@pytest.mark.parametrize("surface", ["chat", "messages"])
async def test_a_request_past_its_deadline_before_the_answer_is_a_504_request_deadline(
    tenant, upstream, ledger, settings, surface
):
    settings.REQUEST_DEADLINE = 0.3
    upstream.answer(Started(200, {}), SILENCE)

    response = await send(tenant, surface)

    assert response.status == 504
    error = response.json()["error"]
    if surface == "messages":
        assert error["type"] == "timeout_error"  # Anthropic's error bodies have no code
    else:
        assert (error["type"], error["code"]) == ("server_error", "request_deadline")
    assert response.headers["x-should-retry"] == "false"
    ledger.only(status_code=504, error_code="request_deadline", cancelled=False)
    assert upstream.call.cancels == 1


async def test_a_request_past_its_deadline_before_the_model_started_is_a_504_request_deadline(
    tenant, upstream, ledger, settings
):
    settings.REQUEST_DEADLINE = 0.3
    upstream.answer(SILENCE)  # the first byte timeout is far away: the deadline is what ends the wait

    response = await send(tenant, "chat")

    assert (response.status, response.json()["error"]["code"]) == (504, "request_deadline")
    assert response.headers["x-should-retry"] == "false"
    ledger.only(status_code=504, error_code="request_deadline")
    assert upstream.call.cancels == 1


async def test_a_stream_past_its_deadline_ends_with_an_in_band_request_deadline_error(
    tenant, upstream, ledger, settings
):
    settings.REQUEST_DEADLINE = 0.3
    upstream.answer(Started(200, {}), Data(delta("Hel")), SILENCE)

    response = await send(tenant, "chat", stream=True)

    assert response.status == 200
    assert response.events()[-1]["error"]["code"] == "request_deadline"
    ledger.only(status_code=504, error_code="request_deadline", streamed=True)
    assert upstream.call.cancels == 1


@pytest.mark.parametrize("surface", ["chat", "responses"])
async def test_a_whole_response_larger_than_the_server_holds_is_a_502_and_the_call_is_cancelled(
    tenant, upstream, ledger, settings, surface
):
    settings.MAX_RESPONSE_BYTES = 200
    upstream.answer(Started(200, {}), *[Data(delta("word ")) for _ in range(10)], SILENCE)

    response = await send(tenant, surface)

    assert (response.status, response.json()["error"]["code"]) == (502, "response_too_large")
    ledger.only(status_code=502, error_code="response_too_large", cancelled=False)
    assert upstream.call.cancels == 1
    assert upstream.call.items  # the rest was never read


# --- the client leaves, or the server stops the request ---------------------------------------------


@pytest.mark.parametrize("surface", ["chat", "messages", "responses"])
async def test_a_client_that_leaves_mid_stream_cancels_the_call_once_and_is_recorded_as_cancelled(
    tenant, upstream, ledger, surface
):
    upstream.answer(Started(200, {}), Data(delta("Hel")), Data(delta("lo")), SILENCE)

    response = await send(tenant, surface, stream=True, leave_when=upstream.silent)

    assert response.status == 200
    assert "lo" in response.body.decode()
    record = ledger.only(status_code=200, streamed=True, cancelled=True, usage_estimated=True)
    assert_belongs_to(record, tenant, response)
    assert record.output_tokens >= 1  # billed for what was generated
    assert record.cost_micros == tenant.deployment.cost_micros(record.input_tokens, record.output_tokens)
    assert upstream.call.cancels == 1
    assert not upstream.call.reading  # nothing reads the call after the request ended


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_client_that_leaves_before_the_response_began_is_recorded_as_499(tenant, upstream, ledger, stream):
    upstream.answer(SILENCE)  # the model has not answered yet

    response = await send(tenant, "chat", stream=stream, leave_when=upstream.silent)

    assert response.status is None  # nothing was sent
    record = ledger.only(status_code=499, cancelled=True, streamed=False, deployment_id=tenant.deployment.pk)
    assert upstream.call.cancels == 1
    assert not upstream.call.reading
    await metering.flush()
    event = await sync_to_async(UsageEvent.objects.get)()
    assert (event.request_id, event.status_code, event.cancelled) == (record.request_id, 499, True)
    assert (event.org_id, event.api_key_id) == (tenant.org.pk, tenant.key.pk)


async def test_a_client_that_leaves_while_a_whole_answer_is_read_is_recorded_as_499(tenant, upstream, ledger):
    upstream.answer(Started(200, {}), Data(CHAT_BODY[:20]), SILENCE)

    response = await send(tenant, "chat", leave_when=upstream.silent)

    assert response.status is None
    ledger.only(status_code=499, cancelled=True)
    assert upstream.call.cancels == 1


async def test_a_failure_in_the_gateway_while_the_model_works_cancels_the_call_and_is_recorded_once(
    tenant, upstream, ledger, monkeypatch
):
    def broken(scope):
        raise RuntimeError("a bug")

    monkeypatch.setattr(chat_surface, "ChatBody", broken)
    upstream.answer(Started(200, {}), SILENCE)

    response = await send(tenant, "chat")

    assert (response.status, response.json()["error"]["code"]) == (500, "internal_error")
    assert response.headers["x-request-id"] in response.json()["error"]["message"]
    ledger.only(status_code=500, error_code="internal_error", cancelled=True)
    assert upstream.call.cancels == 1


async def test_a_server_that_cancels_the_request_mid_stream_still_ends_it_once(tenant, upstream, ledger):
    # What uvicorn does to requests still running when a graceful shutdown runs out of time.
    upstream.answer(Started(200, {}), Data(delta("Hel")), SILENCE)
    running = asyncio.ensure_future(send(tenant, "chat", stream=True))
    await asyncio.wait_for(upstream.silent.wait(), 5)

    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    await asyncio.sleep(0.05)

    ledger.only(status_code=200, cancelled=True)
    assert upstream.call.cancels == 1
    assert not upstream.call.reading  # the response's task did not outlive the request


async def test_a_server_that_cancels_the_request_while_it_cancels_the_call_still_records_it(tenant, upstream, ledger):
    upstream.cancel_takes = 1.0
    upstream.answer(Started(200, {}), Data(delta("Hel")), SILENCE)
    leave = asyncio.Event()
    running = asyncio.ensure_future(send(tenant, "chat", stream=True, leave_when=leave))
    await asyncio.wait_for(upstream.silent.wait(), 5)
    leave.set()  # the client goes; the request's scope sends the cancel…
    for _ in range(100):
        if upstream.call.cancels:
            break
        await asyncio.sleep(0.01)

    running.cancel()  # …and the server shuts down before that is done
    with pytest.raises(asyncio.CancelledError):
        await running

    ledger.only(status_code=200, cancelled=True)


# --- requests that are not a model's answer ---------------------------------------------------------


async def test_a_token_count_that_asks_the_model_twice_is_recorded_once(tenant, upstream, ledger):
    upstream.answer(Started(200, {}), Data(b'{"prompt": "<user>Hi</user>"}'), Ended())
    upstream.answer(Started(200, {}), Data(b'{"tokens": [1, 2, 3, 4, 5]}'), Ended())
    body = {"model": tenant.model, "messages": [{"role": "user", "content": "Hi"}]}

    response = await call_v1("POST", "/v1/messages/count_tokens", body, secret=tenant.secret, headers=ANTHROPIC)

    assert (response.status, response.json()) == (200, {"input_tokens": 5})
    assert [call.path for call in upstream.calls] == ["/apply-template", "/tokenize"]
    record = ledger.only(surface="count_tokens", status_code=200, cancelled=False)
    assert_belongs_to(record, tenant, response)
    assert len(ledger.reserved) == 1  # a count takes a request from the rate limits (and no tokens)


async def test_listing_models_is_recorded_once_without_a_call(tenant, upstream, ledger):
    response = await call_v1("GET", "/v1/models", secret=tenant.secret)

    assert response.status == 200
    assert [m["id"] for m in response.json()["data"]] == [tenant.model]
    record = ledger.only(surface="models", status_code=200, key_id=tenant.key.pk, deployment_id=None)
    assert record.request_id == response.headers["x-request-id"]
    assert upstream.calls == []


async def test_a_method_no_route_allows_is_answered_with_an_id_and_not_metered(tenant, upstream, ledger):
    response = await call_v1("GET", "/v1/chat/completions", secret=tenant.secret)

    assert response.status == 405
    assert response.headers["x-request-id"].startswith("req_")
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert ledger.records == [] and ledger.settled == []
