"""Routing through real processes (proxy/failover.py, proxy/routing.py): a request whose connector
cannot reach its model server is served by the deployment's other connector (x-tokios-retried); one
conversation's requests stay on one connector; a deployment without a connector hands a key that
opted in to its fallback (x-tokios-fallback), and a key that did not still gets the 503."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.e2e.conftest import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


def ask(server, key: str, model: str, conversation: str) -> httpx.Response:
    body = {
        "model": model,
        "prompt_cache_key": conversation,
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "Say hello"}],
    }
    return httpx.post(
        f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def events(request_ids: list[str]) -> dict:
    """The usage rows of these requests, once the server wrote them."""
    from billing.models import UsageEvent

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        rows = {e.request_id: e for e in UsageEvent.objects.filter(request_id__in=request_ids)}
        if len(rows) == len(request_ids):
            return rows
        time.sleep(0.2)
    raise AssertionError(f"only {len(rows)} of {len(request_ids)} usage rows were written")


def test_a_request_its_connector_cannot_serve_is_retried_on_the_other(server, tenant, start_connector):
    refused = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there: connection refused
    start_connector(tenant.token, upstream=refused)
    start_connector(tenant.new_token())

    # Conversations spread over both connectors (rendezvous): a dozen reach the broken one at
    # least once unless routing ignores the key (a chance of 1 in 4096).
    answers = [ask(server, tenant.key, tenant.model, f"conversation-{n}") for n in range(12)]

    assert [a.status_code for a in answers] == [200] * 12
    serving = {a.headers["x-tokios-connector"] for a in answers}
    assert len(serving) == 1  # only the healthy connector ever served
    retried = [a for a in answers if a.headers.get("x-tokios-retried") == "1"]
    assert retried, "no request reached the connector whose model server refuses"
    rows = events([a.headers["x-request-id"] for a in answers])
    assert {rid for rid, row in rows.items() if row.retried} == {a.headers["x-request-id"] for a in retried}
    assert all(row.connector_id in serving and row.status_code == 200 for row in rows.values())


def test_one_conversation_stays_on_one_connector(server, tenant, start_connector):
    start_connector(tenant.token)
    start_connector(tenant.new_token())

    same = [ask(server, tenant.key, tenant.model, "one-conversation") for _ in range(6)]
    spread = [ask(server, tenant.key, tenant.model, f"conversation-{n}") for n in range(12)]

    assert all(a.status_code == 200 for a in same + spread)
    assert len({a.headers["x-tokios-connector"] for a in same}) == 1
    assert len({a.headers["x-tokios-connector"] for a in spread}) == 2  # both connectors take conversations
    assert not any("x-tokios-retried" in a.headers for a in same + spread)


def test_a_deployment_without_a_connector_falls_back_for_keys_that_opted_in(server, tenant, start_connector):
    from accounts.models import ApiKey
    from accounts.secrets import hash_secret
    from deployments.actions import create_connector_token, create_deployment
    from deployments.models import DeploymentFallback

    backup = create_deployment(
        org=tenant.org, name=f"{tenant.model}-backup", price_input_micros=3_000_000, price_output_micros=0
    )
    DeploymentFallback.objects.create(deployment=tenant.deployment, fallback=backup, position=0)
    start_connector(create_connector_token(deployment=backup, name="backup")[1])
    opted_in = tenant.make_key(name="with fallbacks")
    key = ApiKey.objects.get(key_hash=hash_secret(opted_in))
    key.use_fallbacks = True
    key.save(update_fields=["use_fallbacks"])

    served = ask(server, opted_in, tenant.model, "c1")
    refused = ask(server, tenant.key, tenant.model, "c1")

    assert served.status_code == 200, served.text
    assert served.headers["x-tokios-fallback"] == backup.name
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "connector_offline"
    assert "x-tokios-fallback" not in refused.headers
    rows = events([served.headers["x-request-id"], refused.headers["x-request-id"]])
    row = rows[served.headers["x-request-id"]]
    assert (row.served_by_fallback, row.deployment_id, row.requested_model, row.api_key_id) == (
        True,
        backup.pk,
        tenant.model,
        key.pk,
    )
    assert row.cost_micros == -(-row.input_tokens * 3_000_000 // 1_000_000) > 0  # priced as the fallback
    other = rows[refused.headers["x-request-id"]]
    assert (other.served_by_fallback, other.deployment_id) == (False, tenant.deployment.pk)
