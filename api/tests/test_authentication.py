from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.actions import create_personal_access_token, revoke_personal_access_token
from accounts.models import AuditLog, Role

pytestmark = pytest.mark.django_db

KEYS = "/api/orgs/acme/keys/"


def bearer(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def test_anonymous_requests_get_401_with_a_bearer_challenge(org):
    response = APIClient().get(KEYS)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_a_personal_access_token_authenticates_as_its_user(owner, org, key):
    token, secret = create_personal_access_token(user=owner, org=org, role=Role.OWNER, name="ci")
    response = bearer(secret).get(KEYS)
    assert response.status_code == 200
    assert [k["prefix"] for k in response.json()["results"]] == [key.prefix]
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_writes_with_a_token_are_audited_with_its_prefix(owner, org):
    token, secret = create_personal_access_token(user=owner, org=org, role=Role.OWNER, name="ci")
    assert bearer(secret).post(KEYS, {"name": "from ci"}, format="json").status_code == 201
    entry = AuditLog.objects.get(action="key.created")
    assert entry.actor == owner and entry.actor_label == f"api-token:{token.prefix}"


def test_a_token_has_only_its_users_roles(member, org, key):
    _, secret = create_personal_access_token(user=member, org=org, name="ci")
    assert bearer(secret).get(KEYS).status_code == 403
    assert bearer(secret).get("/api/orgs/acme/usage/").status_code == 200


@pytest.mark.parametrize("state", ["revoked", "expired", "unknown", "wrong-prefix", "inactive-user"])
def test_unusable_tokens_get_401(owner, org, state):
    token, secret = create_personal_access_token(user=owner, org=org, role=Role.OWNER, name="ci")
    if state == "revoked":
        revoke_personal_access_token(token=token)
    elif state == "expired":
        token.expires_at = timezone.now() - timedelta(seconds=1)
        token.save()
    elif state == "unknown":
        secret = secret[:-4] + "AAAA"
    elif state == "wrong-prefix":
        secret = "sk-tokios-" + secret.removeprefix("pat-tokios-")
    elif state == "inactive-user":
        owner.is_active = False
        owner.save()
    assert bearer(secret).get(KEYS).status_code == 401


def test_the_session_works_for_reads_and_needs_csrf_for_writes(owner, org):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    assert client.get(KEYS).status_code == 200
    response = client.post(KEYS, {"name": "x"}, content_type="application/json")
    assert response.status_code == 403 and "CSRF" in response.json()["detail"]


def test_a_token_needs_no_csrf(owner, org):
    _, secret = create_personal_access_token(user=owner, org=org, role=Role.OWNER, name="ci")
    client = Client(enforce_csrf_checks=True, HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.post(KEYS, {"name": "x"}, content_type="application/json").status_code == 201


def test_org_list_shows_my_orgs_and_roles(api_admin, org, other_org):
    assert api_admin.get("/api/orgs/").json() == [
        {"slug": "acme", "name": "Acme", "role": "admin", "monthly_budget_micros": None, "share_id": org.share_id}
    ]
