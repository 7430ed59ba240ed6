"""One connector, many models, in process: a request for a deployment served by another one
(Deployment.served_by) is sent to its server's connectors (the call's pool), asks the model server for
its own `upstream_model`, and leaves a usage record under its own name; /v1/models shows it online
when its server's connectors are."""

from __future__ import annotations

import time

import pytest

from deployments.actions import create_deployment
from proxy.tunnel import presence
from proxy.tunnel.presence import ConnectorInfo

from .fake_call import PROMPT_TOKENS, chat_body, whole
from .v1 import V1_DB, call_v1

pytestmark = [V1_DB, pytest.mark.asyncio, pytest.mark.timeout(30)]


@pytest.fixture
def served(org, deployment):
    return create_deployment(org=org, name="qwen-small", upstream_model="qwen2.5:0.5b", served_by=deployment)


def chat(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "Say hello"}]}


async def test_a_served_deployment_s_request_goes_to_its_server_s_connectors_with_its_own_model(
    key, deployment, served, upstream, ledger
):
    upstream.answer(*whole(chat_body()))

    response = await call_v1("POST", "/v1/chat/completions", chat(served.name), secret=key.secret)

    assert response.status == 200
    assert (upstream.call.deployment_id, upstream.call.body["model"]) == (deployment.id, "qwen2.5:0.5b")
    ledger.only(deployment_id=served.id, input_tokens=PROMPT_TOKENS)


async def test_the_server_s_own_requests_still_go_to_its_pool_with_its_name(key, deployment, served, upstream, ledger):
    upstream.answer(*whole(chat_body()))

    response = await call_v1("POST", "/v1/chat/completions", chat(deployment.name), secret=key.secret)

    assert response.status == 200
    assert (upstream.call.deployment_id, upstream.call.body["model"]) == (deployment.id, deployment.name)
    ledger.only(deployment_id=deployment.id)


async def test_a_served_deployment_is_online_while_its_server_has_a_connector(
    key, deployment, connector_token, served, ledger
):
    before = await call_v1("GET", f"/v1/models/{served.name}", secret=key.secret)
    now = time.time()
    info = ConnectorInfo(
        channel="specific.test!pool",
        deployment_id=deployment.id,
        token_id=connector_token.id,
        connector_id="c-pool",
        version="0.1.0",
        remote="127.0.0.1:1",
        connected_since=now,
        last_heartbeat=now,
        models=["gemma-3-1b", "qwen2.5:0.5b"],
    )
    await presence.publish(info)
    try:
        listed = await call_v1("GET", "/v1/models", secret=key.secret)
        one = await call_v1("GET", f"/v1/models/{served.name}", secret=key.secret)
    finally:
        await presence.withdraw(info)

    assert before.json()["online"] is False
    assert {m["id"]: m["online"] for m in listed.json()["data"]} == {deployment.name: True, served.name: True}
    assert one.json()["online"] is True
