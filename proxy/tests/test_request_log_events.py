"""What the request log reads from a request's usage event: the model name the client sent (also when
the answer is a 404 or a 403, with no deployment) and the connector that took the call.

Through the real /v1 app in process (`call_v1`) and the real usage writer, down to the stored row
(SQLite here; PostgreSQL's JSON insert with DATABASE_URL set).
"""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async

from accounts.actions import create_api_key
from billing import metering
from billing.models import UsageEvent
from deployments.actions import create_api_key as create_limited_api_key
from deployments.actions import create_deployment
from proxy.calls import CallError, Failed
from proxy.tunnel.router import OFFLINE_MESSAGE

from .fake_call import CONNECTOR_ID, chat_body, whole
from .v1 import ANTHROPIC, V1_DB, call_v1

pytestmark = [V1_DB, pytest.mark.asyncio, pytest.mark.timeout(60)]


def chat(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "Say hello"}]}


async def stored(response) -> UsageEvent:
    await metering.flush()
    return await sync_to_async(UsageEvent.objects.get)(request_id=response.headers["x-request-id"])


@pytest.fixture
def secret(org, deployment) -> str:
    return create_api_key(org=org, name="ci")[1]


async def test_a_404_for_an_unknown_model_records_the_name_the_client_sent(secret, upstream, ledger):
    response = await call_v1("POST", "/v1/chat/completions", chat("gpt-4o-mini"), secret=secret)

    assert response.status == 404
    event = await stored(response)
    assert (event.status_code, event.error_code) == (404, "model_not_found")
    assert (event.requested_model, event.deployment_id, event.connector_id) == ("gpt-4o-mini", None, "")
    assert upstream.calls == []


async def test_a_403_for_a_model_the_key_may_not_use_records_its_name(org, owner, deployment, upstream, ledger):
    other = await sync_to_async(create_deployment)(org=org, name="llama-big")
    _, secret = await sync_to_async(create_limited_api_key)(
        org=org, name="gemma only", created_by=owner, deployments=[deployment]
    )
    body = {"model": other.name, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}

    response = await call_v1("POST", "/v1/messages", body, secret=secret, headers=ANTHROPIC)

    assert response.status == 403
    event = await stored(response)
    assert (event.requested_model, event.deployment_id, event.status_code) == ("llama-big", None, 403)
    assert event.surface == "messages" and event.error_code


async def test_an_answered_request_records_its_model_and_the_connector_that_served_it(
    secret, deployment, upstream, ledger
):
    upstream.answer(*whole(chat_body()))

    response = await call_v1("POST", "/v1/chat/completions", chat(deployment.name), secret=secret)

    assert response.status == 200
    event = await stored(response)
    assert (event.requested_model, event.deployment_id) == (deployment.name, deployment.pk)
    assert event.connector_id == CONNECTOR_ID
    assert (event.input_tokens, event.output_tokens) == (1000, 500)


async def test_a_connector_that_took_the_call_and_failed_is_named_and_none_when_no_connector_took_it(
    secret, deployment, upstream, ledger
):
    upstream.answer(Failed("upstream_unreachable", "connection refused"))
    upstream.answer(CallError(503, "connector_offline", OFFLINE_MESSAGE))

    failed = await call_v1("POST", "/v1/chat/completions", chat(deployment.name), secret=secret)
    offline = await call_v1("POST", "/v1/chat/completions", chat(deployment.name), secret=secret)

    assert (failed.status, offline.status) == (502, 503)
    assert (await stored(failed)).connector_id == CONNECTOR_ID
    event = await stored(offline)
    assert (event.connector_id, event.error_code, event.requested_model) == ("", "connector_offline", deployment.name)


async def test_a_long_model_name_is_cut_and_a_nul_dropped_so_the_row_is_written_as_it_is(secret, upstream, ledger):
    long_name = "m" * 300
    cut = await call_v1("POST", "/v1/chat/completions", chat(long_name), secret=secret)
    nul = await call_v1("POST", "/v1/chat/completions", chat("bad\x00name"), secret=secret)

    assert cut.status == nul.status == 404
    assert (await stored(cut)).requested_model == "m" * 200
    event = await stored(nul)
    # Not the `usage_invalid` copy PostgreSQL's refusal of a NUL would have forced.
    assert (event.requested_model, event.error_code) == ("badname", "model_not_found")


async def test_a_request_without_a_model_records_none(secret, upstream, ledger):
    response = await call_v1("POST", "/v1/chat/completions", {"model": 42, "messages": []}, secret=secret)

    assert response.status == 400
    assert (await stored(response)).requested_model == ""
