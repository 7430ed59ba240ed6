"""The management API's deployment state: disable and enable (POST), delete (DELETE, answered with
what went with it), the connect history with uptime (GET …/history/), and the token label of each
live connector. Audited; owners and admins only, members 403, another org 404."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.actions import create_personal_access_token
from accounts.models import AuditLog, Role
from alerts.models import ConnectorEvent
from dashboard.tests.conftest import connector_info
from deployments.actions import grant_model
from deployments.models import ConnectorToken, Deployment

pytestmark = pytest.mark.django_db

URL = "/api/orgs/acme/deployments/"


def test_disable_and_enable_answer_the_deployment_and_audit_the_token(owner, org, deployment):
    token, secret = create_personal_access_token(
        user=owner, org=org, role=Role.OWNER, name="ci", expires_at=timezone.now() + timedelta(days=1)
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")

    body = client.post(f"{URL}{deployment.pk}/disable/").json()
    assert body["name"] == "gemma-tunnel" and body["disabled_at"] is not None
    assert client.get(f"{URL}{deployment.pk}/").json()["disabled_at"] == body["disabled_at"]
    again = client.post(f"{URL}{deployment.pk}/disable/")
    assert again.status_code == 200 and again.json()["disabled_at"] == body["disabled_at"]  # no second switch

    assert client.post(f"{URL}{deployment.pk}/enable/").json()["disabled_at"] is None
    entries = AuditLog.objects.filter(action__in=["deployment.disabled", "deployment.enabled"])
    label = f"api-token:{token.prefix}"
    assert [(e.action, e.actor_label) for e in entries] == [
        ("deployment.enabled", label),
        ("deployment.disabled", label),
    ]


def test_a_switch_cannot_be_made_through_a_price_update(api_owner, deployment):
    response = api_owner.patch(f"{URL}{deployment.pk}/", {"disabled_at": "2026-01-01T00:00:00Z"}, format="json")
    assert response.status_code == 200
    assert Deployment.objects.get(pk=deployment.pk).disabled_at is None


def test_delete_answers_what_went_with_it(api_admin, deployment, connector_token, restricted_key, other_org):
    grant_model(deployment=deployment, org=other_org)

    response = api_admin.delete(f"{URL}{deployment.pk}/")

    assert response.status_code == 200
    assert response.json() == {
        "name": "gemma-tunnel",
        "active_tokens": 1,
        "token_prefixes": [connector_token.prefix],
        "granted_orgs": ["globex"],
        "limited_keys": 1,
        "stranded_keys": 1,
        "stranded_key_names": ["gemma only"],
        "served_deployments": [],
    }
    assert not Deployment.objects.filter(name="gemma-tunnel").exists() and not ConnectorToken.objects.exists()
    assert api_admin.get(f"{URL}{deployment.pk}/").status_code == 404
    assert AuditLog.objects.filter(action="deployment.deleted", target="gemma-tunnel").count() == 1


def test_members_get_403_and_outsiders_404(api_member, api_outsider, deployment):
    for client, status in ((api_member, 403), (api_outsider, 404)):
        assert client.post(f"{URL}{deployment.pk}/disable/").status_code == status
        assert client.post(f"{URL}{deployment.pk}/enable/").status_code == status
        assert client.get(f"{URL}{deployment.pk}/history/").status_code == status
        assert client.delete(f"{URL}{deployment.pk}/").status_code == status
    assert Deployment.objects.filter(pk=deployment.pk, disabled_at__isnull=True).exists()


def test_another_orgs_deployment_under_my_slug_is_a_404(api_owner, other_deployment):
    assert api_owner.post(f"{URL}{other_deployment.pk}/disable/").status_code == 404
    assert api_owner.delete(f"{URL}{other_deployment.pk}/").status_code == 404
    assert Deployment.objects.filter(pk=other_deployment.pk, disabled_at__isnull=True).exists()


def test_history_has_causes_in_words_and_uptime(api_owner, deployment, connector_token, live):
    Deployment.objects.filter(pk=deployment.pk).update(created_at=timezone.now() - timedelta(days=30))
    now = timezone.now()
    ConnectorEvent.objects.create(
        deployment=deployment, kind="connected", connector_id="c1", token=connector_token, at=now - timedelta(hours=12)
    )
    ConnectorEvent.objects.create(
        deployment=deployment,
        kind="disconnected",
        connector_id="c1",
        token=connector_token,
        at=now - timedelta(hours=6),
        close_code=1006,
    )

    body = api_owner.get(f"{URL}{deployment.pk}/history/").json()

    assert [e["kind"] for e in body["events"]] == ["disconnected", "connected"]
    newest = body["events"][0]
    assert (newest["connector_id"], newest["token_label"], newest["close_code"]) == ("c1", "gpu-box", 1006)
    assert newest["cause"].startswith("connection lost")
    day, week = body["uptime"]
    assert (day["window"], week["window"]) == ("24h", "7d")
    assert day["percent"] == pytest.approx(25.0, abs=0.01)
    assert day["measured_seconds"] == 86400 and day["up_seconds"] == pytest.approx(6 * 3600, abs=2)
    assert week["approximate"] is False
    assert len(api_owner.get(f"{URL}{deployment.pk}/history/?limit=1").json()["events"]) == 1


@pytest.mark.parametrize("limit", ["0", "501", "-1", "abc", str(2**64)])
def test_a_history_limit_out_of_bounds_is_a_400(api_owner, deployment, limit):
    response = api_owner.get(f"{URL}{deployment.pk}/history/", {"limit": limit})
    assert response.status_code == 400 and "limit" in response.json()


def test_live_connectors_carry_their_tokens_label(api_owner, deployment, connector_token, live):
    live[deployment.id] = [connector_info(deployment, token_id=connector_token.pk)]
    connector = api_owner.get(f"{URL}{deployment.pk}/").json()["connectors"][0]
    assert (connector["token_id"], connector["token_label"]) == (connector_token.pk, "gpu-box")
