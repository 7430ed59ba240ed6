"""POST /v1/embeddings in process: the real /v1 app against a scripted model (fake_call.py).

What the model is sent, the vectors the client gets back as floats or as base64 float32 (also
through the official `openai` SDK, which asks for base64 unless told otherwise), the bounds on the
input, and the one usage record each request leaves: the model's prompt tokens, or an estimate.
"""

from __future__ import annotations

import base64
import struct

import httpx
import openai
import orjson
import pytest
from asgiref.sync import sync_to_async

from accounts.actions import create_api_key
from proxy.calls import CallError, Data, Ended, Started
from proxy.handler import GatewayHandler
from proxy.surfaces.embeddings import MAX_INPUT_TOKENS, MAX_INPUTS
from proxy.tunnel.router import OFFLINE_MESSAGE

from .fake_call import whole
from .v1 import V1_DB, call_v1

pytestmark = [V1_DB, pytest.mark.asyncio, pytest.mark.timeout(30)]

PATH = "/v1/embeddings"
# Exact as float32, so that a round trip through base64 gives them back unchanged.
VECTORS = [[0.5, -0.25, 1.0], [0.125, 2.0, -3.5]]


def answer(vectors=VECTORS, *, usage: object = "default", encode=None) -> bytes:
    """An OpenAI-compatible server's embeddings answer (`usage=None`: it reported none)."""
    data = [{"object": "embedding", "index": i, "embedding": encode(v) if encode else v} for i, v in enumerate(vectors)]
    body: dict = {"object": "list", "model": "upstream", "data": data}
    if usage == "default":
        body["usage"] = {"prompt_tokens": 9, "total_tokens": 9}
    elif usage is not None:
        body["usage"] = usage
    return orjson.dumps(body)


def packed(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def unpacked(text: str) -> list[float]:
    raw = base64.b64decode(text)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def embed(model: str, value: object = ("first text", "second text"), **extra) -> dict:
    return {"model": model, "input": list(value) if isinstance(value, tuple) else value, **extra}


# --- what the model is sent -------------------------------------------------------------------------


async def test_the_model_gets_the_input_with_its_own_model_name_and_is_asked_for_floats(
    key, granted_deployment, upstream, ledger
):
    upstream.answer(*whole(answer()))

    response = await call_v1(
        "POST", PATH, embed(granted_deployment.name, encoding_format="base64", dimensions=3), secret=key.secret
    )

    assert response.status == 200
    call = upstream.call
    assert (call.method, call.path, call.deployment_id) == ("POST", "/embeddings", granted_deployment.id)
    assert call.body == {
        "model": "qwen3:8b",
        "input": ["first text", "second text"],
        "encoding_format": "float",
        "dimensions": 3,
    }


# --- what the client gets ---------------------------------------------------------------------------


async def test_floats_come_back_as_floats_with_the_deployment_s_name_and_the_model_s_usage(
    key, deployment, upstream, ledger
):
    upstream.answer(*whole(answer()))

    response = await call_v1("POST", PATH, embed(deployment.name), secret=key.secret)

    assert response.status == 200
    data = response.json()
    assert (data["object"], data["model"]) == ("list", deployment.name)
    assert [item["embedding"] for item in data["data"]] == VECTORS
    assert [(item["object"], item["index"]) for item in data["data"]] == [("embedding", 0), ("embedding", 1)]
    assert data["usage"] == {"prompt_tokens": 9, "total_tokens": 9}
    record = ledger.only(surface="embeddings", status_code=200, streamed=False, error_code="")
    assert (record.input_tokens, record.output_tokens, record.usage_estimated) == (9, 0, False)
    assert record.cost_micros == 1  # 9 input tokens at $0.10 per million, rounded up


async def test_base64_is_little_endian_float32(key, deployment, upstream, ledger):
    upstream.answer(*whole(answer([[0.1, -7.25]])))

    response = await call_v1("POST", PATH, embed(deployment.name, encoding_format="base64"), secret=key.secret)

    vector = response.json()["data"][0]["embedding"]
    assert base64.b64decode(vector) == struct.pack("<2f", 0.1, -7.25)
    assert unpacked(vector) == pytest.approx([0.1, -7.25], rel=1e-7)


async def test_a_model_answering_base64_anyway_is_passed_to_base64_clients_and_unpacked_for_float_ones(
    key, deployment, upstream, ledger
):
    upstream.answer(*whole(answer(encode=packed)))
    upstream.answer(*whole(answer(encode=packed)))

    as_base64 = await call_v1("POST", PATH, embed(deployment.name, encoding_format="base64"), secret=key.secret)
    as_floats = await call_v1("POST", PATH, embed(deployment.name, encoding_format="float"), secret=key.secret)

    assert [item["embedding"] for item in as_base64.json()["data"]] == [packed(v) for v in VECTORS]
    assert [item["embedding"] for item in as_floats.json()["data"]] == VECTORS


async def test_token_ids_and_lists_of_token_ids_are_accepted(key, deployment, upstream, ledger):
    upstream.answer(*whole(answer(VECTORS[:1])))
    upstream.answer(*whole(answer()))

    one = await call_v1("POST", PATH, embed(deployment.name, [1, 2, 3]), secret=key.secret)
    two = await call_v1("POST", PATH, embed(deployment.name, [[1, 2], [3]]), secret=key.secret)

    assert (one.status, two.status) == (200, 200)
    assert [call.body["input"] for call in upstream.calls] == [[1, 2, 3], [[1, 2], [3]]]


# --- usage ------------------------------------------------------------------------------------------


async def test_an_answer_without_usage_is_billed_an_estimate_marked_estimated(key, deployment, upstream, ledger):
    upstream.answer(*whole(answer(usage=None)))

    response = await call_v1("POST", PATH, embed(deployment.name, ["x" * 400]), secret=key.secret)

    assert response.json()["usage"] == {"prompt_tokens": 100, "total_tokens": 100}  # 4 characters a token
    ledger.only(input_tokens=100, output_tokens=0, usage_estimated=True)


@pytest.mark.parametrize(
    ("usage", "recorded"),
    [
        ({"prompt_tokens": "9"}, 2),  # not a count: the estimate, a token for each short text
        ({"prompt_tokens": -4}, 2),
        ({"prompt_tokens": 10**12}, 2**31 - 1),  # clamped, as a chat answer's is
    ],
    ids=["string", "negative", "huge"],
)
async def test_usage_that_is_not_a_count_is_bounded_and_marked_estimated(
    key, deployment, upstream, ledger, usage, recorded
):
    upstream.answer(*whole(answer(usage=usage)))

    response = await call_v1("POST", PATH, embed(deployment.name, ["a", "b"]), secret=key.secret)

    assert response.status == 200
    assert response.json()["usage"]["prompt_tokens"] == recorded
    ledger.only(input_tokens=recorded, output_tokens=0, usage_estimated=True)


# --- bounds and errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"input": None}, "input"),
        ({"input": []}, "input"),
        ({"input": {"text": "hi"}}, "input"),
        ({"input": ["hi", 3]}, "input[1]"),
        ({"input": ["hi", ""]}, "input[1]"),
        ({"input": [1, "hi"]}, "input"),
        ({"input": [1, -1]}, "input"),
        ({"input": [1, True]}, "input"),
        ({"input": [[1], []]}, "input[1]"),
        ({"input": [[1], [2**31]]}, "input[1]"),
        ({"input": [[1], 2]}, "input[1]"),
        ({"input": [1.5]}, "input[0]"),
        ({"input": ["x"] * (MAX_INPUTS + 1)}, "input"),
        ({"input": [list(range(1000))] * (MAX_INPUT_TOKENS // 1000 + 1)}, "input"),
        ({"input": "x" * (MAX_INPUT_TOKENS * 4 + 1)}, "input"),
        ({"encoding_format": "binary"}, "encoding_format"),
        ({"dimensions": 0}, "dimensions"),
        ({"dimensions": "3"}, "dimensions"),
        ({"user": 7}, "user"),
    ],
)
async def test_an_invalid_body_is_a_400_naming_the_parameter_and_never_reaches_the_model(
    key, deployment, upstream, ledger, change, param
):
    body = {**embed(deployment.name), **change}

    response = await call_v1("POST", PATH, body, secret=key.secret)

    assert response.status == 400
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, "invalid_value")
    assert upstream.calls == []
    ledger.only(surface="embeddings", status_code=400, error_code="invalid_value")


async def test_a_key_without_the_model_gets_403_and_an_unknown_model_404(restricted_key, granted_deployment, upstream):
    denied = await call_v1("POST", PATH, embed(granted_deployment.name), secret=restricted_key.secret)
    unknown = await call_v1("POST", PATH, embed("no-such-model"), secret=restricted_key.secret)
    anonymous = await call_v1("POST", PATH, embed(granted_deployment.name))

    assert (denied.status, denied.json()["error"]["type"]) == (403, "permission_error")
    assert (unknown.status, unknown.json()["error"]["code"]) == (404, "model_not_found")
    assert anonymous.status == 401
    assert upstream.calls == []


async def test_the_input_estimate_is_checked_against_tokens_per_minute_before_the_model_is_called(
    org, deployment, upstream, ledger
):
    _, secret = await sync_to_async(create_api_key)(org=org, name="small", tpm_limit=100)
    # A request larger than the whole bucket is admitted while the bucket is full (billing/limits):
    # the first one spends the minute's tokens, the second is refused before the model hears of it.
    upstream.answer(*whole(answer(usage={"prompt_tokens": 100, "total_tokens": 100})))

    first = await call_v1("POST", PATH, embed(deployment.name, "x" * 800), secret=secret)
    second = await call_v1("POST", PATH, embed(deployment.name, "x" * 800), secret=secret)

    assert first.status == 200
    assert second.status == 429
    assert (second.json()["error"]["type"], second.json()["error"]["code"]) == ("tokens", "rate_limit_exceeded")
    assert len(upstream.calls) == 1


async def test_the_model_refusing_the_input_is_a_400_and_an_offline_connector_a_503(key, deployment, upstream, ledger):
    upstream.answer(*whole(b'{"error": {"message": "input is too large", "type": "invalid_request_error"}}', 400))
    upstream.answer(CallError(503, "connector_offline", OFFLINE_MESSAGE))

    refused = await call_v1("POST", PATH, embed(deployment.name), secret=key.secret)
    offline = await call_v1("POST", PATH, embed(deployment.name), secret=key.secret)

    assert (refused.status, refused.json()["error"]["code"]) == (400, "upstream_bad_request")
    assert "input is too large" in refused.json()["error"]["message"]
    assert (offline.status, offline.json()["error"]["code"]) == (503, "connector_offline")
    assert offline.headers["retry-after"] == "1"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"data": "nope"}',
        orjson.dumps({"data": [{"embedding": ["a", "b"]}]}),
        orjson.dumps({"data": [{"embedding": "not base64!"}]}),
        orjson.dumps({"data": [{"embedding": base64.b64encode(b"abc").decode()}]}),  # 3 bytes: no float32
        orjson.dumps({"data": [7]}),
    ],
    ids=["not-json", "no-list", "strings", "bad-base64", "ragged-base64", "not-an-object"],
)
async def test_a_broken_answer_from_the_model_is_a_502(key, deployment, upstream, ledger, body):
    upstream.answer(Started(200, {}), Data(body), Ended())

    response = await call_v1("POST", PATH, embed(deployment.name), secret=key.secret)

    assert (response.status, response.json()["error"]["code"]) == (502, "upstream_error")
    ledger.only(status_code=502, error_code="upstream_error")


async def test_a_number_float32_cannot_hold_is_a_502_for_a_base64_client(key, deployment, upstream, ledger):
    upstream.answer(*whole(answer([[1e39]])))

    response = await call_v1("POST", PATH, embed(deployment.name, encoding_format="base64"), secret=key.secret)

    assert response.status == 502
    assert "float32" in response.json()["error"]["message"]


# --- the official SDK -------------------------------------------------------------------------------


def sdk(secret: str) -> openai.AsyncOpenAI:
    transport = httpx.ASGITransport(app=GatewayHandler())
    return openai.AsyncOpenAI(
        api_key=secret,
        base_url="http://testserver/v1",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=transport, base_url="http://testserver"),
    )


async def test_the_openai_sdk_gets_its_vectors_by_default_through_base64_and_as_floats(
    key, deployment, upstream, ledger
):
    upstream.answer(*whole(answer()))
    upstream.answer(*whole(answer()))
    client = sdk(key.secret)

    default = await client.embeddings.create(model=deployment.name, input=["first text", "second text"])
    floats = await client.embeddings.create(model=deployment.name, input="first text", encoding_format="float")

    assert [item.embedding for item in default.data] == VECTORS
    assert floats.data[0].embedding == VECTORS[0]
    assert (default.model, default.usage.prompt_tokens, default.usage.total_tokens) == (deployment.name, 9, 9)
    assert len(ledger.records) == 2 and {r.surface for r in ledger.records} == {"embeddings"}


async def test_the_openai_sdk_raises_its_own_errors(key, restricted_key, granted_deployment, upstream, ledger):
    with pytest.raises(openai.BadRequestError) as bad:
        await sdk(key.secret).embeddings.create(model=granted_deployment.name, input=[])
    with pytest.raises(openai.PermissionDeniedError):
        await sdk(restricted_key.secret).embeddings.create(model=granted_deployment.name, input="hi")

    assert bad.value.body["param"] == "input"
    assert upstream.calls == []
