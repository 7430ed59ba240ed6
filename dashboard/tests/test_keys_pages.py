from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.actions import revoke_api_key
from accounts.models import ApiKey, AuditLog
from accounts.once import new_form_token
from accounts.secrets import hash_secret
from deployments.actions import create_api_key

pytestmark = pytest.mark.django_db


def test_the_list_shows_name_prefix_status_models_limits_and_budget(as_owner, org, deployment):
    create_api_key(
        org=org, name="ci", deployments=[deployment], rpm_limit=60, tpm_limit=9000, monthly_budget_micros=25_000_000
    )
    page = as_owner.get(reverse("dashboard:keys")).text
    assert "ci" in page and "60 rpm" in page and "9,000 tpm" in page and "$25.00" in page
    assert "<code>gemma-tunnel</code>" in page
    assert 'badge-ok">active' in page


def test_a_new_org_sees_how_to_start(as_owner, org):
    assert "No API key yet" in as_owner.get(reverse("dashboard:keys")).text


KEY_PAGES = (
    "key_detail",
    "key_edit",
    "key_rotate",
    "key_end_grace",
    "key_pause",
    "key_resume",
    "key_expiry",
    "key_revoke",
)


def test_members_get_403_on_key_pages_and_actions(as_member, key):
    assert as_member.get(reverse("dashboard:keys")).status_code == 403
    assert as_member.post(reverse("dashboard:key_create"), {"name": "mine"}).status_code == 403
    for name in KEY_PAGES:
        url = reverse(f"dashboard:{name}", args=[key.pk])
        assert as_member.post(url, {"name": "renamed", "grace_seconds": "0", "expires_on": ""}).status_code == 403
    key.refresh_from_db()
    assert (key.name, key.revoked_at, key.paused_at, key.previous_prefix) == ("backend", None, None, "")
    assert ApiKey.objects.count() == 1


def test_another_orgs_key_is_a_404(as_outsider, key):
    for name in KEY_PAGES:
        url = reverse(f"dashboard:{name}", args=[key.pk])
        assert as_outsider.get(url).status_code in (404, 405), name  # 405: the POST-only actions
        assert as_outsider.post(url, {"name": "x", "grace_seconds": "0", "expires_on": ""}).status_code == 404
    key.refresh_from_db()
    assert (key.revoked_at, key.name, key.paused_at, key.previous_prefix, key.expires_at) == (
        None,
        "backend",
        None,
        "",
        None,
    )


def test_creating_a_key_shows_the_secret_once(as_admin, org, deployment, admin):
    form = as_admin.get(reverse("dashboard:key_create")).context["form"]
    response = as_admin.post(
        reverse("dashboard:key_create"),
        {
            "form_token": form["form_token"].value(),
            "name": "mobile app",
            "deployments": [deployment.pk],
            "rpm_limit": "120",
            "monthly_budget_micros": "10.5",
        },
    )
    assert response.status_code == 201
    secret = response.context["secret"]
    key = ApiKey.objects.get(name="mobile app")
    assert key.key_hash == hash_secret(secret) and secret.startswith(key.prefix)
    assert (key.org, key.created_by, key.rpm_limit, key.monthly_budget_micros) == (org, admin, 120, 10_500_000)
    assert list(key.allowed_deployments.all()) == [deployment] and not key.all_models
    assert "only time" in response.text and 'data-copy="secret-value"' in response.text
    assert secret not in as_admin.get(reverse("dashboard:keys")).text


def test_a_key_cannot_be_limited_to_another_orgs_model(as_owner, other_deployment):
    response = as_owner.post(
        reverse("dashboard:key_create"),
        {"form_token": new_form_token(), "name": "x", "deployments": [other_deployment.pk]},
    )
    assert response.status_code == 200 and "deployments" in response.context["form"].errors
    assert ApiKey.objects.count() == 0


def test_a_key_with_a_past_expiry_is_refused(as_owner, org):
    yesterday = (timezone.now() - timedelta(days=1)).date().isoformat()
    response = as_owner.post(
        reverse("dashboard:key_create"), {"form_token": new_form_token(), "name": "x", "expires_on": yesterday}
    )
    assert "expires_on" in response.context["form"].errors


def test_editing_changes_access_limits_and_budget(as_owner, key, deployment):
    url = reverse("dashboard:key_edit", args=[key.pk])
    form = as_owner.get(url)
    assert form.status_code == 200 and 'value="backend"' in form.text
    response = as_owner.post(
        url, {"name": "backend-v2", "deployments": [deployment.pk], "tpm_limit": "50000", "monthly_budget_micros": ""}
    )
    assert response.status_code == 302 and response["Location"] == reverse("dashboard:key_detail", args=[key.pk])
    key.refresh_from_db()
    assert (key.name, key.tpm_limit, key.monthly_budget_micros, key.all_models) == ("backend-v2", 50_000, None, False)
    assert AuditLog.objects.filter(action="key.updated", target=key.prefix).exists()


def test_a_revoked_key_cannot_be_edited(as_owner, key):
    revoke_api_key(key=key)
    response = as_owner.post(reverse("dashboard:key_edit", args=[key.pk]), {"name": "zombie"})
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.name == "backend"


def test_revoking_asks_for_confirmation_then_revokes(as_owner, key, owner):
    url = reverse("dashboard:key_revoke", args=[key.pk])
    confirm = as_owner.get(url)
    assert confirm.status_code == 200 and "Revoke API key" in confirm.text and 'method="post"' in confirm.text
    key.refresh_from_db()
    assert key.revoked_at is None
    response = as_owner.post(url, follow=True)
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert "revoked" in response.text
    assert AuditLog.objects.get(action="key.revoked").actor == owner


def test_key_forms_need_a_csrf_token(owner, org, key):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    assert client.post(reverse("dashboard:key_revoke", args=[key.pk])).status_code == 403
    key.refresh_from_db()
    assert key.revoked_at is None


@pytest.mark.parametrize("count", [5, 25])
def test_the_keys_page_makes_a_fixed_number_of_queries(as_owner, org, deployment, count, django_assert_max_num_queries):
    """Session, user, membership (twice: the view and the org switcher), the keys, their models, the
    session's save (in a savepoint: 3 statements); and the spend (rollups, unrolled events) and the
    recent 429s: however many keys."""
    for i in range(count):
        create_api_key(org=org, name=f"k{i}", deployments=[deployment] if i % 2 else None, monthly_budget_micros=10)
    with django_assert_max_num_queries(12):
        response = as_owner.get(reverse("dashboard:keys"))
    assert response.text.count('<tr data-key="') == count
