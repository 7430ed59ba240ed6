"""The management API's key operations beyond create/edit/revoke (api/keys.py): filters, spend and
budget share, rotate, pause and resume, expiry, ending a grace early; audited, owners and admins only."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.actions import create_api_key, create_personal_access_token
from accounts.keys import pause_api_key, rotate_api_key
from accounts.models import ApiKey, AuditLog, Role
from accounts.secrets import hash_secret
from dashboard.tests.request_data import request_event
from dashboard.tests.usage_data import rollup

pytestmark = pytest.mark.django_db

URL = "/api/orgs/acme/keys/"


def prefixes(response) -> set[str]:
    assert response.status_code == 200, response.content
    return {item["prefix"] for item in response.json()["results"]}


def test_the_list_filters_by_status_and_searches(api_owner, org, key, revoked_key):
    paused = pause_api_key(key=create_api_key(org=org, name="Paused One")[0])
    assert prefixes(api_owner.get(URL)) == {key.prefix, revoked_key.prefix, paused.prefix}  # default: all
    assert prefixes(api_owner.get(URL, {"status": "current"})) == {key.prefix, paused.prefix}
    assert prefixes(api_owner.get(URL, {"status": "paused"})) == {paused.prefix}
    assert prefixes(api_owner.get(URL, {"status": "revoked"})) == {revoked_key.prefix}
    assert prefixes(api_owner.get(URL, {"q": "paused"})) == {paused.prefix}
    assert prefixes(api_owner.get(URL, {"q": key.prefix, "status": "active"})) == {key.prefix}


@pytest.mark.parametrize("query", [{"status": "bogus"}, {"q": "x" * 101}])
def test_a_bad_filter_is_a_400(api_owner, key, query):
    response = api_owner.get(URL, query)
    assert response.status_code == 400 and set(response.json()) <= {"status", "q"}


def test_each_key_carries_its_spend_budget_share_and_flags(api_owner, org, key, deployment):
    ApiKey.objects.filter(pk=key.pk).update(monthly_budget_micros=4_000_000)
    rollup(org, key=key, deployment=deployment, requests=2, cost_micros=1_000_000)
    request_event(org, key=key, deployment=deployment, at=timezone.now(), status_code=429, cost_micros=0)
    item = api_owner.get(URL).json()["results"][0]
    assert (item["spent_this_month_micros"], item["budget_used_percent"]) == (1_000_000, 25)
    assert (item["over_budget"], item["rate_limited_recently"], item["status"]) == (False, True, "active")
    rollup(org, key=key, deployment=deployment, days_ago=0, period="hour", requests=1, cost_micros=1)  # hourly: ignored
    ApiKey.objects.filter(pk=key.pk).update(monthly_budget_micros=1_000_000)
    single = api_owner.get(f"{URL}{key.pk}/").json()
    assert (single["budget_used_percent"], single["over_budget"]) == (100, True)
    assert api_owner.get(URL, {"status": "over_budget"}).json()["count"] == 1


def test_the_list_reads_usage_in_a_fixed_number_of_queries(api_owner, org, django_assert_max_num_queries):
    for i in range(30):
        create_api_key(org=org, name=f"k{i}", monthly_budget_micros=100)
    with django_assert_max_num_queries(8):
        assert api_owner.get(URL).json()["count"] == 30


def test_rotate_returns_the_new_secret_and_keeps_the_old_one_for_the_grace(api_admin, key, admin):
    response = api_admin.post(f"{URL}{key.pk}/rotate/", {"grace_seconds": 3600}, format="json")
    assert response.status_code == 200
    body = response.json()
    stored = ApiKey.objects.get(pk=key.pk)
    assert stored.key_hash == hash_secret(body["secret"]) and body["prefix"] == stored.prefix
    assert body["previous_prefix"] == key.prefix and stored.previous_key_hash == hash_secret(key.secret)
    assert body["previous_valid_until"] and stored.previous_secret_valid
    assert AuditLog.objects.get(action="key.rotated").actor == admin
    assert "secret" not in api_admin.get(f"{URL}{key.pk}/").json()


@pytest.mark.parametrize("body", [{}, {"grace_seconds": -1}, {"grace_seconds": 30 * 86400 + 1}, {"grace_seconds": "x"}])
def test_rotate_needs_a_grace_within_bounds(api_owner, key, body):
    response = api_owner.post(f"{URL}{key.pk}/rotate/", body, format="json")
    assert response.status_code == 400 and "grace_seconds" in response.json()
    assert ApiKey.objects.get(pk=key.pk).key_hash == key.key_hash


def test_end_grace_refuses_the_old_secret_now(api_owner, key):
    rotate_api_key(key=key, grace=timedelta(days=1))
    response = api_owner.post(f"{URL}{key.pk}/end-grace/")
    assert response.status_code == 200
    assert not ApiKey.objects.get(pk=key.pk).previous_secret_valid


def test_pause_and_resume(api_owner, key):
    response = api_owner.post(f"{URL}{key.pk}/pause/")
    assert response.status_code == 200 and response.json()["status"] == "paused" and response.json()["paused_at"]
    assert api_owner.post(f"{URL}{key.pk}/pause/").json()["status"] == "paused"  # again: unchanged
    assert api_owner.post(f"{URL}{key.pk}/resume/").json()["status"] == "active"
    assert [e.action for e in AuditLog.objects.filter(action__in=["key.paused", "key.resumed"])] == [
        "key.resumed",
        "key.paused",
    ]


def test_the_expiry_endpoint_sets_and_clears_and_refuses_the_past(api_owner, key):
    later = (timezone.now() + timedelta(days=5)).replace(microsecond=0)
    response = api_owner.post(f"{URL}{key.pk}/expiry/", {"expires_at": later.isoformat()}, format="json")
    assert response.status_code == 200 and ApiKey.objects.get(pk=key.pk).expires_at == later
    past = (timezone.now() - timedelta(hours=1)).isoformat()
    response = api_owner.post(f"{URL}{key.pk}/expiry/", {"expires_at": past}, format="json")
    assert response.status_code == 400 and "future" in str(response.json())
    assert api_owner.post(f"{URL}{key.pk}/expiry/", {"expires_at": None}, format="json").status_code == 200
    assert ApiKey.objects.get(pk=key.pk).expires_at is None
    assert api_owner.post(f"{URL}{key.pk}/expiry/", {}, format="json").status_code == 400
    assert AuditLog.objects.filter(action="key.expiry_changed").count() == 2


def test_patching_a_past_expiry_is_refused(api_owner, key):
    past = (timezone.now() - timedelta(hours=1)).isoformat()
    response = api_owner.patch(f"{URL}{key.pk}/", {"expires_at": past}, format="json")
    assert response.status_code == 400
    assert ApiKey.objects.get(pk=key.pk).expires_at is None


@pytest.mark.parametrize(
    ("path", "body"),
    [("rotate/", {"grace_seconds": 0}), ("pause/", {}), ("resume/", {}), ("expiry/", {"expires_at": None})],
)
def test_a_revoked_key_cannot_be_changed(api_owner, revoked_key, path, body):
    response = api_owner.post(f"{URL}{revoked_key.pk}/{path}", body, format="json")
    assert response.status_code == 400 and "revoked" in str(response.json())


def test_writes_with_a_personal_token_are_audited_with_its_label(org, owner, key):
    from rest_framework.test import APIClient

    token, secret = create_personal_access_token(user=owner, org=org, name="ci", role=Role.ADMIN)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.post(f"{URL}{key.pk}/pause/").status_code == 200
    assert client.post(f"{URL}{key.pk}/rotate/", {"grace_seconds": 60}, format="json").status_code == 200
    labels = set(
        AuditLog.objects.filter(action__in=["key.paused", "key.rotated"]).values_list("actor_label", flat=True)
    )
    assert labels == {token.actor_label}


def test_a_member_token_is_refused(org, member, key):
    from rest_framework.test import APIClient

    _, secret = create_personal_access_token(user=member, org=org, name="mine")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.post(f"{URL}{key.pk}/pause/").status_code == 403
    assert ApiKey.objects.get(pk=key.pk).paused_at is None
