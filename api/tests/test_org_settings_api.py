"""GET/PATCH/PUT /api/orgs/<org>/settings/: owners change, admins read, members 403, outsiders 404;
the model's bounds (400, never 500); audited; new API keys get the defaults unless they name their own."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from accounts.actions import create_personal_access_token
from accounts.models import MAX_BUDGET_MICROS, MAX_RATE_LIMIT, AuditAction, AuditLog, Organization, Role
from accounts.org_settings import update_org_settings
from alerts.actions import update_settings
from dashboard.tests.usage_data import rollup

pytestmark = pytest.mark.django_db

URL = "/api/orgs/acme/settings/"


def test_owners_and_admins_read_the_settings_with_the_alert_rules(api_owner, api_admin, org, owner):
    update_org_settings(org=org, actor=owner, monthly_budget_micros=9_000_000, default_key_rpm_limit=30)
    update_settings(org=org, budget_thresholds=[80])
    rollup(org, cost_micros=1234)
    for client in (api_owner, api_admin):
        body = client.get(URL).json()
        assert body["slug"] == "acme" and body["name"] == "Acme"
        assert body["monthly_budget_micros"] == 9_000_000 and body["rpm_limit"] is None
        assert body["default_key_rpm_limit"] == 30 and body["default_key_budget_micros"] is None
        assert body["spent_this_month_micros"] == 1234
        assert body["alert_rules"]["budget_thresholds"] == [80]
        assert body["alert_rules_url"].endswith("/api/orgs/acme/alerts/settings/")


def test_members_are_refused_and_outsiders_see_no_such_org(api_member, api_outsider, org):
    assert api_member.get(URL).status_code == 403
    assert api_member.patch(URL, {"rpm_limit": 5}, format="json").status_code == 403
    assert api_outsider.get(URL).status_code == 404
    assert api_outsider.patch(URL, {"rpm_limit": 5}, format="json").status_code == 404
    assert Organization.objects.get(pk=org.pk).rpm_limit is None


def test_admins_cannot_change_the_settings(api_admin, org):
    response = api_admin.patch(URL, {"monthly_budget_micros": 1}, format="json")
    assert response.status_code == 403
    assert Organization.objects.get(pk=org.pk).monthly_budget_micros is None


def test_an_owner_patches_some_settings_and_the_change_is_audited(api_owner, org, owner):
    response = api_owner.patch(URL, {"monthly_budget_micros": 50_000_000, "tpm_limit": 100_000}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["monthly_budget_micros"] == 50_000_000 and response.json()["tpm_limit"] == 100_000
    fresh = Organization.objects.get(pk=org.pk)
    assert (fresh.monthly_budget_micros, fresh.tpm_limit, fresh.name) == (50_000_000, 100_000, "Acme")
    response = api_owner.patch(URL, {"monthly_budget_micros": None}, format="json")
    assert response.status_code == 200 and response.json()["monthly_budget_micros"] is None
    entries = AuditLog.objects.filter(action=AuditAction.ORG_SETTINGS_UPDATED).order_by("id")
    assert [e.detail for e in entries] == [
        {"monthly_budget_micros": {"old": None, "new": 50_000_000}, "tpm_limit": {"old": None, "new": 100_000}},
        {"monthly_budget_micros": {"old": 50_000_000, "new": None}},
    ]
    assert all(e.actor == owner for e in entries)


def test_a_token_acting_as_owner_is_named_in_the_audit_log(owner, org):
    token, secret = create_personal_access_token(user=owner, org=org, role=Role.OWNER, name="terraform")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.patch(URL, {"rpm_limit": 100}, format="json").status_code == 200
    entry = AuditLog.objects.get(action=AuditAction.ORG_SETTINGS_UPDATED)
    assert entry.actor_label == token.actor_label


def test_a_token_acting_as_admin_cannot_change_them(owner, org):
    _, secret = create_personal_access_token(user=owner, org=org, role=Role.ADMIN, name="read only")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.get(URL).status_code == 200
    assert client.patch(URL, {"rpm_limit": 100}, format="json").status_code == 403


@pytest.mark.parametrize(
    "body",
    [
        {"rpm_limit": MAX_RATE_LIMIT + 1},
        {"tpm_limit": -5},
        {"default_key_rpm_limit": 2**63},
        {"monthly_budget_micros": MAX_BUDGET_MICROS + 1},
        {"default_key_budget_micros": -1},
        {"monthly_budget_micros": 10**40},
        {"monthly_budget_micros": 1.5},
        {"rpm_limit": "lots"},
        {"rpm_limit": True},
        {"rpm_limit": [1]},
        {"name": ""},
        {"name": None},
        {"name": "x" * 201},
        {"name": "a\x00b"},
    ],
)
def test_bad_values_are_a_400_and_change_nothing(api_owner, org, body):
    response = api_owner.patch(URL, body, format="json")
    assert response.status_code == 400, response.content
    assert set(response.json()) <= set(body) | {"detail"}
    fresh = Organization.objects.get(pk=org.pk)
    assert fresh.name == "Acme" and fresh.rpm_limit is None and fresh.monthly_budget_micros is None
    assert not AuditLog.objects.filter(action=AuditAction.ORG_SETTINGS_UPDATED).exists()


def test_a_body_that_is_not_an_object_is_a_400(api_owner, org):
    assert api_owner.patch(URL, [1, 2], format="json").status_code == 400
    assert api_owner.patch(URL, "null", content_type="application/json").status_code == 400


def test_read_only_fields_are_ignored(api_owner, org):
    response = api_owner.patch(URL, {"slug": "hijack", "spent_this_month_micros": 5}, format="json")
    assert response.status_code == 200 and Organization.objects.get(pk=org.pk).slug == "acme"


def test_new_api_keys_get_the_defaults_unless_they_name_their_own(api_owner, org, owner):
    update_org_settings(
        org=org, actor=owner, default_key_rpm_limit=60, default_key_tpm_limit=6000, default_key_budget_micros=2_000_000
    )
    plain = api_owner.post("/api/orgs/acme/keys/", {"name": "plain"}, format="json").json()
    assert (plain["rpm_limit"], plain["tpm_limit"], plain["monthly_budget_micros"]) == (60, 6000, 2_000_000)
    own = api_owner.post(
        "/api/orgs/acme/keys/", {"name": "own", "rpm_limit": 5, "monthly_budget_micros": None}, format="json"
    ).json()
    assert (own["rpm_limit"], own["tpm_limit"], own["monthly_budget_micros"]) == (5, 6000, None)
