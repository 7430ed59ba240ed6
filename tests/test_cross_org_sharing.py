"""Sharing a model with an organisation one does not belong to, by its share ID, on both surfaces
(the dashboard's grant form and the management API), and that organisation's key then calling the
model on /v1: the real /v1 app in process, against the scripted model of proxy/tests/fake_call.py."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from billing import metering
from billing.metering import UsageRecord
from proxy.access import clear_local_cache
from proxy.tests.fake_call import Upstream, chat_body, whole
from proxy.tests.v1 import Exchange, call_v1

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


def grant_on_the_dashboard(owner, deployment, value: str) -> int:
    client = Client()
    client.force_login(owner)
    return client.post(reverse("dashboard:deployment_grant_create", args=[deployment.pk]), {"org": value}).status_code


def grant_through_the_api(owner, deployment, value: str) -> int:
    client = APIClient()
    client.force_authenticate(owner)
    url = f"/api/orgs/{deployment.org.slug}/deployments/{deployment.pk}/grants/"
    return client.post(url, {"org": value}, format="json").status_code


@pytest.fixture
def upstream(settings):
    """The scripted model (TEST DOUBLE) where the gateway would open a tunnel call; no cached
    access from an earlier test's key of the same id."""
    fake = Upstream()
    settings.UPSTREAM_CALL = fake
    clear_local_cache()
    yield fake
    clear_local_cache()


@pytest.fixture
def usage(monkeypatch) -> list[UsageRecord]:
    """The usage records the requests hand to metering, kept here instead of written: who is billed
    is what this module checks; the writer has its own tests."""
    records: list[UsageRecord] = []
    monkeypatch.setattr(metering, "submit", records.append)
    return records


def chat(secret: str, model: str) -> Exchange:
    async def one_request() -> Exchange:
        try:
            body = {"model": model, "messages": [{"role": "user", "content": "Say hello"}]}
            return await call_v1("POST", "/v1/chat/completions", body, secret=secret)
        finally:
            await sync_to_async(connections.close_all)()  # the request path's thread

    return asyncio.run(one_request())


@pytest.mark.parametrize(
    ("grant", "created"),
    [pytest.param(grant_on_the_dashboard, 302, id="dashboard"), pytest.param(grant_through_the_api, 201, id="api")],
)
def test_a_model_shared_by_share_id_answers_the_other_orgs_key(
    owner, deployment, other_org, other_key, upstream, usage, grant, created
):
    assert chat(other_key.secret, deployment.name).status == 403  # not theirs, not shared yet

    assert grant(owner, deployment, other_org.share_id) == created

    upstream.answer(*whole(chat_body()))
    response = chat(other_key.secret, deployment.name)
    assert response.status == 200
    assert response.json()["model"] == deployment.name
    assert response.json()["choices"][0]["message"]["content"] == "Hello"
    assert upstream.call.deployment_id == deployment.id
    billed = usage[-1]
    assert (billed.status_code, billed.org_id, billed.key_id, billed.deployment_id) == (
        200,
        other_org.id,
        other_key.id,
        deployment.id,
    )


@pytest.mark.parametrize("grant", [grant_on_the_dashboard, grant_through_the_api], ids=["dashboard", "api"])
def test_another_orgs_slug_shares_nothing(owner, deployment, other_org, other_key, upstream, usage, grant):
    assert grant(owner, deployment, other_org.slug) in (200, 400)  # the form again / the API's 400
    assert chat(other_key.secret, deployment.name).status == 403
