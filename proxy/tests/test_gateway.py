"""What every /v1 response carries, whatever became of the request: its id (as `x-request-id` and
`request-id`), the rate-limit headers the limiter wrote, and an error body in the caller's shape
(OpenAI's for Chat Completions and Responses, Anthropic's for Messages)."""

from __future__ import annotations

import orjson
import pytest
from asgiref.sync import sync_to_async
from django.http import StreamingHttpResponse
from django.test import RequestFactory

from accounts.actions import create_api_key, create_org
from deployments.actions import create_deployment
from proxy import gateway
from proxy.access import clear_local_cache
from proxy.errors import GatewayError, json_response
from proxy.gateway import RequestScope
from proxy.surfaces import chat as chat_surface
from tests.v1_client import call_v1

RATE_HEADERS = {"x-ratelimit-limit-requests": "60", "x-ratelimit-reset-requests": "1s"}


def request_scope() -> RequestScope:
    scope = RequestScope(RequestFactory().post("/v1/chat/completions"))
    scope.headers = dict(RATE_HEADERS)  # as limits.enforce leaves them
    return scope


# --- the scope's headers ----------------------------------------------------------------------------


def test_the_id_and_rate_limit_headers_reach_the_response_and_read_case_insensitively():
    scope = request_scope()

    response = scope.finish_headers(json_response({"ok": True}))

    sent = dict(response.items())  # what Django's ASGI handler encodes and sends
    assert sent["x-request-id"] == sent["request-id"] == scope.request_id
    assert sent["x-ratelimit-limit-requests"] == "60"
    assert response["X-RateLimit-Reset-Requests"] == "1s"
    assert sent["Content-Type"] == "application/json"


def test_streamed_and_error_responses_carry_them_too():
    scope = request_scope()

    streamed = scope.finish_headers(
        StreamingHttpResponse(iter([b"data: [DONE]\n\n"]), content_type="text/event-stream")
    )
    error = scope.error_response(
        GatewayError(429, "slow down", code="rate_limit_exceeded", headers={"retry-after": "2"})
    )

    assert (streamed["x-request-id"], streamed["x-ratelimit-limit-requests"]) == (scope.request_id, "60")
    assert (error.status_code, error["retry-after"], error["x-request-id"]) == (429, "2", scope.request_id)
    assert error["request-id"] == scope.request_id
    assert error["x-ratelimit-reset-requests"] == "1s"
    assert orjson.loads(error.content) == {
        "error": {"message": "slow down", "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}
    }


def test_an_error_for_the_messages_surface_has_anthropic_s_shape_and_names_the_request():
    scope = request_scope()
    scope.anthropic = True

    error = scope.error_response(GatewayError(429, "slow down", code="rate_limit_exceeded"))

    assert orjson.loads(error.content) == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow down"},
        "request_id": scope.request_id,
    }
    assert error["x-ratelimit-limit-requests"] == "60"


def test_request_ids_sort_by_when_they_were_made_and_do_not_repeat_within_a_millisecond(monkeypatch):
    clock = iter([1_764_000_000_000_000_000, 1_764_000_000_000_400_000, 1_764_000_000_001_000_000])
    monkeypatch.setattr(gateway.time, "time_ns", lambda: next(clock))
    first, same_ms, next_ms = (gateway.new_request_id() for _ in range(3))

    assert first[:16] == same_ms[:16] == f"req_{1_764_000_000_000:012x}"  # the millisecond, in hex
    assert first < next_ms and same_ms < next_ms
    assert len(first) == 36 and int(first[4:], 16) >= 0
    monkeypatch.setattr(gateway.time, "time_ns", lambda: 1_764_000_000_000_000_000)
    assert len({gateway.new_request_id() for _ in range(10_000)}) == 10_000  # the random part


# --- through the /v1 app ----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_usage_records(settings):
    settings.METERING_ENABLED = False  # these look at responses; test_request_scope at what is recorded


@pytest.fixture
def org(db):
    clear_local_cache()  # access records are cached by key hash and model name
    org = create_org(slug="acme", name="Acme")
    create_deployment(org=org, name="gemma-small")
    return org


@pytest.fixture
def secret(org) -> str:
    return create_api_key(org=org, name="ci")[1]


def chat(model: str = "gemma-small") -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


CHAT, MESSAGES = "/v1/chat/completions", "/v1/messages"
ANTHROPIC = {"anthropic-version": "2023-06-01"}
NO_KEY = {"authorization": ""}
MESSAGE = {"model": "gemma-small", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}

# (method, path, body, headers beyond the key, status, error code or Anthropic error type)
EXITS = {
    "no key": ("POST", CHAT, chat(), NO_KEY, 401, "missing_api_key"),
    "unknown key": ("POST", CHAT, chat(), {"authorization": "Bearer sk-tokios-nope"}, 401, "invalid_api_key"),
    "unknown model": ("POST", CHAT, chat("nope"), {}, 404, "model_not_found"),
    "not json": ("POST", CHAT, b"{", {}, 400, "invalid_json"),
    "invalid body": ("POST", CHAT, {"model": "gemma-small"}, {}, 400, "invalid_value"),
    "no connector": ("POST", CHAT, chat(), {}, 503, "connector_offline"),
    "no such route": ("POST", "/v1/nope", chat(), {}, 404, None),
    "wrong method": ("DELETE", CHAT, b"", {}, 405, "method_not_allowed"),
    "responses, unknown model": ("POST", "/v1/responses", {"model": "nope", "input": "hi"}, {}, 404, "model_not_found"),
    "messages, no key": ("POST", MESSAGES, MESSAGE, {**ANTHROPIC, **NO_KEY}, 401, "authentication_error"),
    "messages, unknown model": ("POST", MESSAGES, {**MESSAGE, "model": "nope"}, ANTHROPIC, 404, "not_found_error"),
    "messages, invalid body": ("POST", MESSAGES, {"model": "gemma-small"}, ANTHROPIC, 400, "invalid_request_error"),
    "messages, no connector": ("POST", MESSAGES, MESSAGE, ANTHROPIC, 503, "api_error"),
    "messages, wrong method": ("GET", MESSAGES, b"", ANTHROPIC, 405, "invalid_request_error"),
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("case", EXITS)
async def test_every_error_names_its_request_and_has_the_caller_s_shape(secret, case):
    method, path, body, headers, status, code = EXITS[case]
    headers = {"authorization": f"Bearer {secret}", **headers}
    if not headers["authorization"]:
        del headers["authorization"]

    response = await call_v1(method, path, body, **headers)

    assert response.status_code == status
    request_id = response.headers["x-request-id"]
    assert request_id.startswith("req_") and response.headers["request-id"] == request_id
    data = response.json()
    if "anthropic-version" in headers:
        assert (data["type"], data["error"]["type"], data["request_id"]) == ("error", code, request_id)
        assert data["error"]["message"]
    else:
        assert set(data) == {"error"} and set(data["error"]) == {"message", "type", "param", "code"}
        assert (data["error"]["code"], bool(data["error"]["message"])) == (code, True)
        assert data["error"]["type"] == ("server_error" if status >= 500 else "invalid_request_error")


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_body_over_the_limit_is_a_413_in_the_caller_s_shape(secret, settings):
    settings.MAX_BODY_BYTES = 100
    big = {**chat(), "messages": [{"role": "user", "content": "x" * 200}]}

    response = await call_v1("POST", "/v1/chat/completions", big, authorization=f"Bearer {secret}")
    anthropic = await call_v1(
        "POST", "/v1/messages", {**MESSAGE, "system": "x" * 200}, authorization=f"Bearer {secret}", **ANTHROPIC
    )

    assert response.status_code == anthropic.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert anthropic.json()["error"]["type"] == "request_too_large"
    assert anthropic.json()["request_id"] == anthropic.headers["x-request-id"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_bug_in_a_surface_is_a_500_that_names_the_request(secret, monkeypatch):
    async def broken(scope):
        raise RuntimeError("a bug")

    monkeypatch.setattr(chat_surface, "chat_completions", broken)

    response = await call_v1("POST", "/v1/chat/completions", chat(), authorization=f"Bearer {secret}")

    assert response.status_code == 500
    error = response.json()["error"]
    assert (error["code"], error["type"]) == ("internal_error", "server_error")
    assert response.headers["x-request-id"] in error["message"]
    assert "a bug" not in error["message"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_request_that_was_admitted_carries_the_rate_limit_headers_on_its_error(org):
    _, secret = await sync_to_async(create_api_key)(org=org, name="limited", rpm_limit=5)

    response = await call_v1("POST", "/v1/chat/completions", chat(), authorization=f"Bearer {secret}")

    assert response.status_code == 503  # admitted, then no connector
    assert response.headers["x-ratelimit-limit-requests"] == "5"
    assert int(response.headers["x-ratelimit-remaining-requests"]) < 5
