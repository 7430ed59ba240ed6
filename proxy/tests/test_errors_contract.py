"""The /v1 error contract, surface by surface, in process: every way a request is refused or fails
has its status, its code (OpenAI's shape: Chat Completions, Responses) or error type (Anthropic's:
Messages), the request's id, the retry hints the SDKs read, and exactly one usage record.

Where no connector is involved the request goes through the real tunnel (`TunnelCall`, no
`upstream` fixture): the 503 is the one a client meets when the connector is offline.
"""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async

from accounts.actions import create_api_key
from proxy.calls import Data, Ended, Failed, Started
from proxy.tunnel.router import OFFLINE_MESSAGE

from .fake_call import SILENCE, delta, streamed
from .v1 import ANTHROPIC, V1_DB, call_v1

pytestmark = [V1_DB, pytest.mark.asyncio, pytest.mark.timeout(30)]

SURFACES = ["chat", "responses", "messages"]


def request_for(surface: str, model: str, *, stream: bool = False) -> tuple[str, dict, dict]:
    """(path, body, headers) of a valid request to `surface`."""
    if surface == "chat":
        return (
            "/v1/chat/completions",
            {"model": model, "stream": stream, "messages": [{"role": "user", "content": "Hi"}]},
            {},
        )
    if surface == "responses":
        return "/v1/responses", {"model": model, "stream": stream, "input": "Hi", "store": False}, {}
    body = {"model": model, "stream": stream, "max_tokens": 32, "messages": [{"role": "user", "content": "Hi"}]}
    return "/v1/messages", body, ANTHROPIC


async def send(surface: str, model: str, secret: str | None, *, stream: bool = False, **kwargs):
    path, body, headers = request_for(surface, model, stream=stream)
    return await call_v1("POST", path, body, secret=secret, headers=headers, **kwargs)


def assert_error(response, surface: str, status: int, openai: tuple[str, str | None], anthropic: str) -> dict:
    """The response is an error in the surface's shape: (type, code) for OpenAI's, type for
    Anthropic's. Returns the error object."""
    assert response.status == status, response.body
    request_id = response.headers["x-request-id"]
    assert request_id.startswith("req_") and response.headers["request-id"] == request_id
    data = response.json()
    if surface == "messages":
        assert set(data) == {"type", "error", "request_id"}
        assert (data["type"], data["error"]["type"], data["request_id"]) == ("error", anthropic, request_id)
    else:
        assert set(data) == {"error"} and set(data["error"]) == {"message", "type", "param", "code"}
        assert (data["error"]["type"], data["error"]["code"]) == openai
    assert data["error"]["message"]
    return data["error"]


# --- refused before the model is called -------------------------------------------------------------


@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize("case", ["no key", "unknown key", "revoked key"])
async def test_a_request_without_a_valid_key_is_a_401(surface, case, revoked_key, deployment, upstream, ledger):
    secret = {"no key": None, "unknown key": "sk-tokios-" + "0" * 40, "revoked key": revoked_key.secret}[case]

    response = await send(surface, deployment.name, secret)

    code = "missing_api_key" if case == "no key" else "invalid_api_key"
    error = assert_error(response, surface, 401, ("invalid_request_error", code), "authentication_error")
    if case == "revoked key":
        assert "revoked" in error["message"]
    assert upstream.calls == []
    ledger.only(surface=surface, status_code=401, error_code=code, key_id=None)


@pytest.mark.parametrize("surface", SURFACES)
async def test_the_key_is_also_read_from_x_api_key(surface, key, deployment, upstream, ledger):
    upstream.answer(*streamed("Hi"))
    path, body, headers = request_for(surface, deployment.name, stream=True)

    response = await call_v1("POST", path, body, headers={**headers, "x-api-key": key.secret})

    assert response.status == 200
    ledger.only(key_id=key.pk, status_code=200)


@pytest.mark.parametrize("surface", SURFACES)
async def test_a_model_the_key_may_not_use_is_a_403(surface, restricted_key, granted_deployment, upstream, ledger):
    response = await send(surface, granted_deployment.name, restricted_key.secret)

    error = assert_error(response, surface, 403, ("permission_error", "model_not_allowed"), "permission_error")
    assert granted_deployment.name in error["message"]
    assert upstream.calls == []
    ledger.only(status_code=403, error_code="model_not_allowed", key_id=restricted_key.pk, deployment_id=None)


@pytest.mark.parametrize("surface", SURFACES)
async def test_an_unknown_model_is_a_404(surface, key, deployment, upstream, ledger):
    response = await send(surface, "no-such-model", key.secret)

    error = assert_error(response, surface, 404, ("invalid_request_error", "model_not_found"), "not_found_error")
    assert "no-such-model" in error["message"]
    if surface != "messages":
        assert error["param"] == "model"
    assert upstream.calls == []


@pytest.mark.parametrize("surface", SURFACES)
async def test_a_key_over_its_request_rate_is_a_429_with_the_time_to_retry(surface, org, deployment, upstream, ledger):
    _, secret = await sync_to_async(create_api_key)(org=org, name="one a minute", rpm_limit=1)
    upstream.answer(*streamed("Hi"))
    assert (await send(surface, deployment.name, secret, stream=True)).status == 200
    ledger.forget()

    response = await send(surface, deployment.name, secret, stream=True)

    # OpenAI names the exhausted limit in the type ("requests" or "tokens"), as its API does.
    assert_error(response, surface, 429, ("requests", "rate_limit_exceeded"), "rate_limit_error")
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(upstream.calls) == 1  # the first request's only
    ledger.only(status_code=429, error_code="rate_limit_exceeded")


# --- the model cannot be reached --------------------------------------------------------------------


@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_without_a_connector_the_request_is_a_503_to_retry_later(surface, stream, key, deployment, ledger):
    response = await send(surface, deployment.name, key.secret, stream=stream)  # the real tunnel: nobody there

    error = assert_error(response, surface, 503, ("server_error", "connector_offline"), "api_error")
    assert error["message"] == OFFLINE_MESSAGE == "Connector offline — the tunnel is not active"
    assert (response.headers["retry-after"], response.headers["x-should-retry"]) == ("1", "true")
    ledger.only(status_code=503, error_code="connector_offline", cancelled=False, deployment_id=deployment.pk)


@pytest.mark.parametrize("surface", SURFACES)
async def test_an_unreachable_model_server_is_a_502_not_worth_retrying(surface, key, deployment, upstream, ledger):
    upstream.answer(Failed("upstream_unreachable", "connection refused"))

    response = await send(surface, deployment.name, key.secret, stream=True)

    error = assert_error(response, surface, 502, ("server_error", "upstream_unreachable"), "api_error")
    assert "connection refused" in error["message"]
    assert response.headers["x-should-retry"] == "false"
    ledger.only(status_code=502, error_code="upstream_unreachable")


@pytest.mark.parametrize("surface", SURFACES)
async def test_a_model_that_never_answers_is_a_504_at_the_first_byte_timeout(
    surface, key, deployment, upstream, ledger, settings
):
    settings.FIRST_BYTE_TIMEOUT = 0.2
    upstream.answer(SILENCE)

    response = await send(surface, deployment.name, key.secret, stream=True)

    assert_error(response, surface, 504, ("server_error", "upstream_timeout"), "timeout_error")
    assert response.headers["x-should-retry"] == "true"
    assert upstream.call.cancels == 1  # the connector is told to give up
    ledger.only(status_code=504, error_code="upstream_timeout", cancelled=False)


# --- the model answers with an HTTP error -----------------------------------------------------------

UPSTREAM_ERRORS = {
    # the model's status and body → status, OpenAI code, Anthropic type, what the message quotes
    "bad request": (
        400,
        b'{"error": {"message": "bad grammar"}}',
        400,
        "upstream_bad_request",
        "invalid_request_error",
        "bad grammar",
    ),
    "context": (
        400,
        b'{"error": {"code": 400, "message": "too long", "type": "exceed_context_size_error"}}',
        400,
        "context_length_exceeded",
        "invalid_request_error",
        "too long",
    ),
    "busy": (429, b'{"error": "slow down"}', 429, "upstream_rate_limited", "rate_limit_error", "slow down"),
    "loading": (503, b'{"message": "Loading model"}', 503, "server_is_overloaded", "overloaded_error", "Loading model"),
    "crashed": (500, b"Internal Server Error", 502, "upstream_error", "api_error", "(HTTP 500): Internal Server Error"),
}


@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize("case", UPSTREAM_ERRORS)
async def test_an_error_answer_from_the_model_is_mapped_to_the_caller_s_error(
    surface, case, key, deployment, upstream, ledger
):
    upstream_status, body, status, code, anthropic_type, quoted = UPSTREAM_ERRORS[case]
    upstream.answer(Started(upstream_status, {}), Data(body), Ended())

    response = await send(surface, deployment.name, key.secret, stream=True)

    if surface == "messages" and upstream_status == 503:
        status = 529  # Anthropic's word for "overloaded, retry"
    openai_type = {400: "invalid_request_error", 429: "rate_limit_error"}.get(status, "server_error")
    error = assert_error(response, surface, status, (openai_type, code), anthropic_type)
    assert quoted in error["message"]
    if status in (429, 503, 529):
        assert response.headers["retry-after"] == "1"
    ledger.only(status_code=status, error_code=code, output_tokens=0, cost_micros=0)


# --- after the response began -----------------------------------------------------------------------


@pytest.mark.parametrize("surface", SURFACES)
async def test_a_failure_after_the_stream_began_is_an_in_band_error_in_the_surface_s_shape(
    surface, key, deployment, upstream, ledger
):
    upstream.answer(Started(200, {}), Data(delta("Hel")), Failed("upstream_timeout", "no tokens for 600 s"))

    response = await send(surface, deployment.name, key.secret, stream=True)

    assert response.status == 200  # the status went out with the first byte
    last = response.events()[-1]
    if surface == "chat":
        assert last["error"]["code"] == "upstream_timeout" and last["error"]["type"] == "server_error"
    elif surface == "responses":
        assert last["type"] == "response.failed" and last["response"]["error"]["code"] == "server_error"
    else:
        assert last["type"] == "error" and last["error"]["type"] == "timeout_error"
    ledger.only(status_code=504, error_code="upstream_timeout", streamed=True)


@pytest.mark.parametrize("surface", SURFACES)
async def test_a_client_that_leaves_mid_stream_cancels_the_call(surface, key, deployment, upstream, ledger):
    upstream.answer(Started(200, {}), Data(delta("Hel")), SILENCE)

    response = await send(surface, deployment.name, key.secret, stream=True, leave_when=upstream.silent)

    assert response.status == 200 and b"Hel" in response.body
    assert upstream.call.cancels == 1 and not upstream.call.reading
    ledger.only(status_code=200, cancelled=True, streamed=True)
