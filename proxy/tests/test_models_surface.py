"""GET /v1/models and /v1/models/{id} in process: exactly the deployments a key may call, in the
caller's shape (OpenAI's list, or Anthropic's with `anthropic-version`), each marked online when a
connector serves it. No call to a model is made."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from proxy.tunnel import presence
from proxy.tunnel.presence import ConnectorInfo

from .v1 import ANTHROPIC, V1_DB, call_v1

pytestmark = [V1_DB, pytest.mark.asyncio, pytest.mark.timeout(30)]


def ids(response) -> list[str]:
    return [model["id"] for model in response.json()["data"]]


async def test_a_key_lists_its_org_s_models_and_those_granted_to_it_but_no_other_org_s(
    key, deployment, granted_deployment, other_deployment, upstream, ledger
):
    response = await call_v1("GET", "/v1/models", secret=key.secret)

    assert response.status == 200
    assert ids(response) == sorted([deployment.name, granted_deployment.name])
    assert response.json()["object"] == "list"
    entry = response.json()["data"][0]
    assert entry == {
        "id": deployment.name,
        "object": "model",
        "created": int(deployment.created_at.timestamp()),
        "owned_by": "tokios",
        "online": False,
    }
    assert upstream.calls == []
    ledger.only(surface="models", status_code=200, key_id=key.pk, deployment_id=None, input_tokens=0)


async def test_a_restricted_key_lists_only_its_models(restricted_key, deployment, granted_deployment, upstream, ledger):
    response = await call_v1("GET", "/v1/models", secret=restricted_key.secret)

    assert ids(response) == [deployment.name]


async def test_the_other_org_sees_only_its_own(other_key, deployment, other_deployment, granted_deployment, ledger):
    response = await call_v1("GET", "/v1/models", secret=other_key.secret)

    assert ids(response) == sorted([other_deployment.name, granted_deployment.name])


async def test_anthropic_s_list_shape(key, deployment, granted_deployment, ledger):
    response = await call_v1("GET", "/v1/models", secret=key.secret, headers=ANTHROPIC)

    data = response.json()
    assert (data["has_more"], data["first_id"], data["last_id"]) == (False, deployment.name, granted_deployment.name)
    first = data["data"][0]
    assert (first["type"], first["id"], first["display_name"]) == ("model", deployment.name, deployment.name)
    assert datetime.strptime(first["created_at"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=UTC
    ) == deployment.created_at.replace(microsecond=0)


async def test_an_empty_list_in_anthropic_s_shape_has_no_first_or_last(other_key, ledger):
    response = await call_v1("GET", "/v1/models", secret=other_key.secret, headers=ANTHROPIC)

    assert response.json() == {"data": [], "has_more": False, "first_id": None, "last_id": None}


async def test_a_model_with_a_live_connector_is_online(key, deployment, connector_token, ledger):
    now = time.time()
    info = ConnectorInfo(
        channel="specific.test!online",
        deployment_id=deployment.id,
        token_id=connector_token.id,
        connector_id="c-1",
        version="0.1.0",
        remote="127.0.0.1:1",
        connected_since=now,
        last_heartbeat=now,
    )
    await presence.publish(info)
    try:
        listed = await call_v1("GET", "/v1/models", secret=key.secret)
        one = await call_v1("GET", f"/v1/models/{deployment.name}", secret=key.secret)
    finally:
        await presence.withdraw(info)

    assert listed.json()["data"][0]["online"] is True
    assert one.json()["online"] is True


@pytest.mark.parametrize("anthropic", [False, True], ids=["openai", "anthropic"])
async def test_one_model_the_key_may_call(key, granted_deployment, ledger, anthropic):
    response = await call_v1(
        "GET", f"/v1/models/{granted_deployment.name}", secret=key.secret, headers=ANTHROPIC if anthropic else {}
    )

    assert response.status == 200
    assert response.json()["id"] == granted_deployment.name
    assert response.json()["type" if anthropic else "object"] == "model"


@pytest.mark.parametrize("anthropic", [False, True], ids=["openai", "anthropic"])
async def test_a_model_the_key_may_not_call_is_a_404_like_one_that_does_not_exist(
    restricted_key, granted_deployment, other_deployment, ledger, anthropic
):
    headers = ANTHROPIC if anthropic else {}
    other = await call_v1("GET", f"/v1/models/{other_deployment.name}", secret=restricted_key.secret, headers=headers)
    granted = await call_v1(
        "GET", f"/v1/models/{granted_deployment.name}", secret=restricted_key.secret, headers=headers
    )
    missing = await call_v1("GET", "/v1/models/no-such-model", secret=restricted_key.secret, headers=headers)

    assert other.status == granted.status == missing.status == 404
    for response in (other, granted, missing):
        data = response.json()
        if anthropic:
            assert (data["type"], data["error"]["type"]) == ("error", "not_found_error")
            assert data["request_id"] == response.headers["x-request-id"]
        else:
            assert (data["error"]["code"], data["error"]["param"]) == ("model_not_found", "model")
    assert (
        missing.json()["error"]["message"].replace("no-such-model", other_deployment.name)
        == other.json()["error"]["message"]
    )


async def test_listing_needs_a_valid_key(revoked_key, deployment, ledger):
    for secret, code in ((None, "missing_api_key"), (revoked_key.secret, "invalid_api_key")):
        response = await call_v1("GET", "/v1/models", secret=secret)
        assert (response.status, response.json()["error"]["code"]) == (401, code)
