"""Hostile /v1 bodies get a 400 in the caller's shape, never a 500, and never reach the model: JSON
nested deeper than the gateway reads, values of the wrong type where a name belongs, numbers outside
the vendor's ranges. And /v1/messages/count_tokens, which asks the owner's model server too, is held
to the key's requests-per-minute like every other call."""

from __future__ import annotations

import json

import pytest

from accounts.actions import create_api_key

from .fake_call import chat_body, streamed, whole
from .v1 import ANTHROPIC, V1_DB, call_v1

pytestmark = [V1_DB, pytest.mark.asyncio, pytest.mark.timeout(30)]

USER = [{"role": "user", "content": "hi"}]
INT32_MAX = 2**31 - 1
CHAT, RESPONSES, MESSAGES, COUNT = (
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/messages",
    "/v1/messages/count_tokens",
)


def template(path: str, model: str) -> dict:
    if path == CHAT:
        return {"model": model, "messages": USER}
    if path == RESPONSES:
        return {"model": model, "input": "hi", "store": False}
    if path == MESSAGES:
        return {"model": model, "max_tokens": 16, "messages": USER}
    return {"model": model, "messages": USER}


def nested(levels: int) -> object:
    """A JSON value `levels` deep: lists inside lists, an object innermost."""
    value: object = {"deep": True}
    for _ in range(levels - 1):
        value = [value]
    return value


def where(path: str, value: object) -> dict:
    """A place in each surface's body whose contents the gateway passes on without reading."""
    if path == CHAT:
        return {"metadata": {"x": value}}
    if path == RESPONSES:
        return {"tools": [{"type": "function", "name": "f", "parameters": {"x": value}}]}
    return {"tools": [{"name": "f", "input_schema": {"x": value}}]}


def assert_openai_400(response, param: str | None, code: str = "invalid_value") -> dict:
    assert response.status == 400, response.body
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error


def assert_anthropic_400(response) -> dict:
    assert response.status == 400, response.body
    data = response.json()
    assert (data["type"], data["error"]["type"]) == ("error", "invalid_request_error")
    return data["error"]


# --- JSON depth -------------------------------------------------------------------------------------

SURFACES = [CHAT, RESPONSES, MESSAGES, COUNT]


@pytest.mark.parametrize("path", SURFACES)
async def test_json_nested_deeper_than_64_levels_is_a_400_before_the_model_is_called(
    key, deployment, upstream, ledger, path
):
    # 65 levels on chat (the body, metadata, then 63), 67 on the others (the tool's containers).
    body = {**template(path, deployment.name), **where(path, nested(63))}

    response = await call_v1("POST", path, body, secret=key.secret, headers=ANTHROPIC)

    if path in (MESSAGES, COUNT):
        assert "nested" in assert_anthropic_400(response)["message"]
    else:
        assert "nested" in assert_openai_400(response, None, code="invalid_json")["message"]
    assert upstream.calls == []
    ledger.only(status_code=400)


@pytest.mark.parametrize("depth", [300, 1000])
async def test_json_orjson_reads_but_cannot_write_is_a_400(key, deployment, upstream, ledger, depth):
    raw = b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "metadata": ' % deployment.name.encode()
    raw += b"[" * depth + b"]" * depth + b"}"

    response = await call_v1("POST", CHAT, raw, secret=key.secret)

    assert_openai_400(response, None, code="invalid_json")
    assert upstream.calls == []


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
async def test_json_64_levels_deep_reaches_the_model(key, deployment, upstream, ledger, path):
    # 64 levels in all: the body and metadata then 62 (chat); the body, tools, the tool and its
    # schema then 60 (messages).
    value = nested(62) if path == CHAT else nested(60)
    body = {**template(path, deployment.name), **where(path, value)}
    upstream.answer(*(whole(chat_body()) if path == CHAT else streamed("ok")))

    response = await call_v1("POST", path, body, secret=key.secret, headers=ANTHROPIC)

    assert response.status == 200, response.body
    assert len(upstream.calls) == 1


# --- values of the wrong type where a name belongs ----------------------------------------------------


@pytest.mark.parametrize("role", [[], {}, ["user"], 7])
async def test_a_chat_role_that_is_not_a_string_is_a_400(key, deployment, upstream, ledger, role):
    body = {"model": deployment.name, "messages": [{"role": role, "content": "hi"}]}

    response = await call_v1("POST", CHAT, body, secret=key.secret)

    assert_openai_400(response, "messages[0].role")
    assert upstream.calls == []


async def test_a_responses_role_that_is_not_a_string_is_a_400(key, deployment, upstream, ledger):
    body = {"model": deployment.name, "input": [{"role": [], "content": "hi"}]}

    response = await call_v1("POST", RESPONSES, body, secret=key.secret)

    assert_openai_400(response, "input[0].role")


@pytest.mark.parametrize("path", [MESSAGES, COUNT])
async def test_a_messages_tool_choice_type_that_is_not_a_string_is_a_400(key, deployment, upstream, ledger, path):
    body = {**template(path, deployment.name), "tool_choice": {"type": []}}

    response = await call_v1("POST", path, body, secret=key.secret, headers=ANTHROPIC)

    assert_anthropic_400(response)
    assert upstream.calls == []


# --- chat numbers: OpenAI's ranges --------------------------------------------------------------------

CHAT_OUT_OF_RANGE = [
    ("temperature", 2.5),
    ("temperature", -1),
    ("top_p", 1.5),
    ("presence_penalty", 2.5),
    ("frequency_penalty", -3),
    ("n", 0),
    ("n", 129),
    ("n", 2**64 - 1),
    ("max_tokens", 0),
    ("max_tokens", INT32_MAX + 1),
    ("max_tokens", 2**64 - 1),
    ("max_completion_tokens", 0),
    ("max_completion_tokens", 2**63),
    ("seed", 2**63),
    ("seed", -(2**63) - 1),
    ("top_logprobs", 21),
    ("top_logprobs", -1),
    ("logprobs", 5),
    ("stop", ["a", "b", "c", "d", "e"]),
    ("stop", [1]),
]


@pytest.mark.parametrize(("name", "value"), CHAT_OUT_OF_RANGE)
async def test_a_chat_number_out_of_the_openai_range_is_a_400_naming_it(key, deployment, upstream, ledger, name, value):
    body = {**template(CHAT, deployment.name), name: value}

    # The standard library writes integers of any size, as a client may send them.
    response = await call_v1("POST", CHAT, json.dumps(body).encode(), secret=key.secret)

    assert_openai_400(response, name)
    assert upstream.calls == []


async def test_chat_numbers_at_the_ends_of_their_ranges_reach_the_model(key, deployment, upstream, ledger):
    upstream.answer(*whole(chat_body()))
    ends = {
        "temperature": 2,
        "top_p": 0,
        "presence_penalty": -2,
        "frequency_penalty": 2,
        "n": 128,
        "max_tokens": INT32_MAX,
        "seed": -(2**63),
        "logprobs": True,
        "top_logprobs": 20,
        "stop": ["a", "b", "c", "d"],
    }

    response = await call_v1("POST", CHAT, {**template(CHAT, deployment.name), **ends}, secret=key.secret)

    assert response.status == 200, response.body
    assert {name: upstream.call.body[name] for name in ends} == ends


@pytest.mark.parametrize(("name", "value"), [("temperature", 1.5), ("top_k", 2**64), ("max_tokens", 2**63)])
async def test_a_messages_number_out_of_the_anthropic_range_is_a_400(key, deployment, upstream, ledger, name, value):
    body = {**template(MESSAGES, deployment.name), name: value}

    response = await call_v1("POST", MESSAGES, json.dumps(body).encode(), secret=key.secret, headers=ANTHROPIC)

    assert name in assert_anthropic_400(response)["message"]
    assert upstream.calls == []


async def test_a_responses_temperature_above_2_is_a_400(key, deployment, upstream, ledger):
    body = {**template(RESPONSES, deployment.name), "temperature": 2.5}

    response = await call_v1("POST", RESPONSES, body, secret=key.secret)

    assert_openai_400(response, "temperature")


# --- looked-up names that cannot be ours ------------------------------------------------------------


@pytest.mark.parametrize("previous", ["resp_\x00", "resp_" + "a" * 200])
async def test_a_previous_response_id_that_cannot_exist_is_not_found(key, deployment, upstream, ledger, previous):
    body = {**template(RESPONSES, deployment.name), "previous_response_id": previous}

    response = await call_v1("POST", RESPONSES, body, secret=key.secret)

    assert_openai_400(response, "previous_response_id", code="previous_response_not_found")
    assert upstream.calls == []


@pytest.mark.parametrize("response_id", ["resp_%00", "resp_" + "a" * 200])
async def test_fetching_a_response_id_that_cannot_exist_is_a_404(key, deployment, ledger, response_id):
    response = await call_v1("GET", f"{RESPONSES}/{response_id}", secret=key.secret)

    assert (response.status, response.json()["error"]["code"]) == (404, "not_found")


# --- count_tokens and the rate limits ---------------------------------------------------------------


@pytest.fixture
def limited_key(org, owner):
    key, secret = create_api_key(org=org, name="counted", created_by=owner, rpm_limit=2, tpm_limit=10)
    key.secret = secret
    return key


async def count(key, deployment, upstream):
    upstream.answer(*whole(b'{"prompt": "<user>hi</user>"}'))
    upstream.answer(*whole(b'{"tokens": [1, 2, 3]}'))
    return await call_v1("POST", COUNT, template(COUNT, deployment.name), secret=key.secret, headers=ANTHROPIC)


async def test_count_tokens_is_held_to_the_key_s_requests_per_minute(limited_key, deployment, upstream, ledger):
    first = await count(limited_key, deployment, upstream)
    second = await count(limited_key, deployment, upstream)
    upstream.scripts.clear()
    calls_before = len(upstream.calls)

    third = await call_v1("POST", COUNT, template(COUNT, deployment.name), secret=limited_key.secret, headers=ANTHROPIC)

    assert (first.status, second.status) == (200, 200)
    assert first.headers["anthropic-ratelimit-requests-limit"] == "2"
    assert first.headers["anthropic-ratelimit-requests-remaining"] == "1"
    assert third.status == 429
    assert third.json()["error"]["type"] == "rate_limit_error"
    assert len(upstream.calls) == calls_before  # refused before the model server was asked


async def test_count_tokens_takes_no_tokens_from_the_key_s_tokens_per_minute(limited_key, deployment, upstream, ledger):
    # The key may use 10 tokens a minute: a count of a prompt far longer is still admitted, and
    # leaves the tokens untouched.
    upstream.answer(*whole(b'{"prompt": "<user>' + b"x" * 4000 + b'</user>"}'))
    upstream.answer(*whole(b'{"tokens": [' + b",".join([b"1"] * 1000) + b"]}"))
    body = {"model": deployment.name, "messages": [{"role": "user", "content": "x" * 4000}]}

    response = await call_v1("POST", COUNT, body, secret=limited_key.secret, headers=ANTHROPIC)

    assert (response.status, response.json()) == (200, {"input_tokens": 1000})
    assert response.headers["anthropic-ratelimit-tokens-remaining"] == "10"
    ledger.only(surface="count_tokens", status_code=200, input_tokens=0, output_tokens=0)
