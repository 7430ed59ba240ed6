"""The key list's spend, budget share, statuses, search and filters; the key page; rotate, pause,
resume, expiry; and create forms that make one object however often they are submitted."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.actions import create_api_key, revoke_api_key
from accounts.keys import pause_api_key, rotate_api_key
from accounts.models import ApiKey, AuditLog, SubmittedForm
from accounts.once import new_form_token
from accounts.secrets import hash_secret
from billing.models import RollupWatermark
from deployments.models import ConnectorToken, Deployment

from .request_data import request_event
from .usage_data import rollup

pytestmark = pytest.mark.django_db

KEYS = reverse("dashboard:keys")


def listed(page: str) -> list[str]:
    """The prefixes of the keys a list page shows, in order."""
    return re.findall(r'<tr data-key="([^"]+)"', page)


def status_cell(page: str, key: ApiKey) -> str:
    row = page.split(f'<tr data-key="{key.prefix}">', 1)[1].split("</tr>", 1)[0]
    return row.split('<td class="status">', 1)[1].split("</td>", 1)[0]


def now_event(org, key, **fields):
    return request_event(org, key=key, at=timezone.now() - timedelta(minutes=fields.pop("minutes_ago", 1)), **fields)


# --- the list --------------------------------------------------------------------------------------


def test_revoked_and_expired_keys_are_hidden_until_asked_for(as_owner, org, key, revoked_key):
    expired, _ = create_api_key(org=org, name="old")
    ApiKey.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(days=1))
    paused = pause_api_key(key=create_api_key(org=org, name="on hold")[0])
    assert set(listed(as_owner.get(KEYS).text)) == {key.prefix, paused.prefix}
    assert set(listed(as_owner.get(KEYS, {"status": "all"}).text)) == {
        key.prefix,
        paused.prefix,
        revoked_key.prefix,
        expired.prefix,
    }
    assert listed(as_owner.get(KEYS, {"status": "revoked"}).text) == [revoked_key.prefix]
    assert listed(as_owner.get(KEYS, {"status": "expired"}).text) == [expired.prefix]
    assert listed(as_owner.get(KEYS, {"status": "paused"}).text) == [paused.prefix]
    assert listed(as_owner.get(KEYS, {"status": "active"}).text) == [key.prefix]


def test_an_org_whose_keys_are_all_revoked_is_told_where_they_are(as_owner, revoked_key):
    page = as_owner.get(KEYS).text
    assert "No active or paused key" in page and "?status=all" in page and listed(page) == []


def test_search_by_name_or_prefix(as_owner, org, key):
    other, _ = create_api_key(org=org, name="Mobile App")
    assert listed(as_owner.get(KEYS, {"q": "mobile"}).text) == [other.prefix]
    assert listed(as_owner.get(KEYS, {"q": f"{key.prefix}…"}).text) == [key.prefix]
    page = as_owner.get(KEYS, {"q": "nothing-like-it"}).text
    assert listed(page) == [] and "No key matches" in page


@pytest.mark.parametrize("query", [{"status": "bogus"}, {"page": "0"}, {"page": "9" * 30}, {"q": "x" * 500}])
def test_a_bad_filter_falls_back_to_the_default_list(as_owner, key, query):
    response = as_owner.get(KEYS, query)
    assert response.status_code == 200 and listed(response.text) == [key.prefix]


def test_the_list_pages_by_fifty(as_owner, org):
    for i in range(55):
        create_api_key(org=org, name=f"k{i:02d}")
    first = as_owner.get(KEYS).text
    assert len(listed(first)) == 50 and 'rel="next"' in first and 'rel="prev"' not in first
    second = as_owner.get(KEYS, {"page": "2"}).text
    assert len(listed(second)) == 5 and 'rel="prev"' in second and 'rel="next"' not in second
    assert not set(listed(first)) & set(listed(second))


def test_spend_this_month_counts_rollups_and_events_not_rolled_up_yet(as_owner, org, key, deployment):
    ApiKey.objects.filter(pk=key.pk).update(monthly_budget_micros=10_000_000)  # $10
    rollup(org, key=key, deployment=deployment, requests=3, cost_micros=2_000_000)
    last_month = timezone.now().replace(day=1) - timedelta(days=2)
    request_event(org, key=key, deployment=deployment, at=last_month, cost_micros=9_000_000)
    RollupWatermark.objects.create(name="usage", last_event_id=now_event(org, key, cost_micros=500_000).id)
    now_event(org, key, deployment=deployment, cost_micros=1_500_000)  # above the watermark
    page = as_owner.get(KEYS).text
    row = page.split(f'<tr data-key="{key.prefix}">', 1)[1].split("</tr>", 1)[0]
    assert "$3.50" in row and "35%" in row and 'value="35"' in row
    detail = as_owner.get(reverse("dashboard:key_detail", args=[key.pk])).text
    assert "$3.50 in 4 requests" in detail and '<strong data-testid="budget-percent">35%</strong>' in detail


def test_a_key_at_its_budget_is_over_budget_not_just_active(as_owner, org, key, deployment):
    ApiKey.objects.filter(pk=key.pk).update(monthly_budget_micros=1_000_000)
    rollup(org, key=key, deployment=deployment, requests=1, cost_micros=1_000_000)
    cell = status_cell(as_owner.get(KEYS).text, key)
    assert "over budget" in cell and "badge-bad" in cell
    assert listed(as_owner.get(KEYS, {"status": "over_budget"}).text) == [key.prefix]
    detail = as_owner.get(reverse("dashboard:key_detail", args=[key.pk])).text
    assert "insufficient_quota" in detail and "100%" in detail


def test_a_key_under_its_budget_or_without_one_is_not_over_budget(as_owner, org, key, deployment):
    other, _ = create_api_key(org=org, name="no budget")
    ApiKey.objects.filter(pk=key.pk).update(monthly_budget_micros=1_000_000)
    rollup(org, key=key, deployment=deployment, requests=1, cost_micros=999_999)
    rollup(org, key=other, deployment=deployment, requests=1, cost_micros=50_000_000)
    page = as_owner.get(KEYS).text
    assert "over budget" not in status_cell(page, key) and "over budget" not in status_cell(page, other)
    assert listed(as_owner.get(KEYS, {"status": "over_budget"}).text) == []


def test_a_key_answered_429_in_the_last_hour_is_rate_limited_recently(as_owner, org, key, deployment):
    calm, _ = create_api_key(org=org, name="calm")
    now_event(org, key, deployment=deployment, status_code=429, error_code="rate_limit_exceeded", minutes_ago=5)
    now_event(org, calm, deployment=deployment, status_code=429, error_code="rate_limit_exceeded", minutes_ago=61)
    now_event(org, calm, deployment=deployment, status_code=500, minutes_ago=1)
    page = as_owner.get(KEYS).text
    assert "rate limited recently" in status_cell(page, key)
    assert "rate limited" not in status_cell(page, calm)
    assert listed(as_owner.get(KEYS, {"status": "rate_limited"}).text) == [key.prefix]
    detail = as_owner.get(reverse("dashboard:key_detail", args=[key.pk])).text
    assert "1 request answered 429 in the last hour" in detail


def test_a_revoked_key_shows_no_usage_flags(as_owner, org, revoked_key, deployment):
    ApiKey.objects.filter(pk=revoked_key.pk).update(monthly_budget_micros=0)
    cell = status_cell(as_owner.get(KEYS, {"status": "revoked"}).text, revoked_key)
    assert "revoked" in cell and "over budget" not in cell


# --- the key page and its actions ------------------------------------------------------------------


def test_the_key_page_shows_the_key_and_its_actions(as_owner, key):
    page = as_owner.get(reverse("dashboard:key_detail", args=[key.pk])).text
    assert key.prefix in page and "never" in page
    for name in ("key_edit", "key_rotate", "key_pause", "key_revoke", "key_expiry"):
        assert reverse(f"dashboard:{name}", args=[key.pk]) in page


def test_rotating_shows_the_new_secret_once_and_keeps_the_old_one_for_the_grace(as_admin, key, admin):
    url = reverse("dashboard:key_rotate", args=[key.pk])
    form = as_admin.get(url)
    assert form.status_code == 200 and "24 hours" in form.text and "7 days" in form.text
    token = form.context["form"]["form_token"].value()
    response = as_admin.post(url, {"form_token": token, "grace_seconds": "86400"})
    assert response.status_code == 201 and "no-store" in response["Cache-Control"]
    secret = response.context["secret"]
    stored = ApiKey.objects.get(pk=key.pk)
    assert stored.key_hash == hash_secret(secret) and stored.previous_key_hash == hash_secret(key.secret)
    assert stored.previous_valid_until > timezone.now() + timedelta(hours=23, minutes=59)
    assert "keeps working until" in response.text and key.prefix in response.text
    assert AuditLog.objects.get(action="key.rotated").actor == admin

    again = as_admin.post(url, {"form_token": token, "grace_seconds": "86400"})  # a reload of that page
    assert again.status_code == 200 and "Already done" in again.text and "cannot be shown again" in again.text
    assert secret not in again.text and "sk-tokios-" not in again.text.replace(stored.prefix, "")
    assert ApiKey.objects.get(pk=key.pk).key_hash == stored.key_hash
    assert AuditLog.objects.filter(action="key.rotated").count() == 1
    page = as_admin.get(reverse("dashboard:key_detail", args=[key.pk])).text
    assert "still works until" in page and key.prefix in page


def test_rotating_without_grace_refuses_the_old_secret_at_once(as_owner, key):
    url = reverse("dashboard:key_rotate", args=[key.pk])
    response = as_owner.post(url, {"form_token": new_form_token(), "grace_seconds": "0"})
    assert response.status_code == 201 and "is refused from now on" in response.text
    assert not ApiKey.objects.get(pk=key.pk).previous_secret_valid


@pytest.mark.parametrize("grace", ["-1", "1", "999999999999", "abc"])
def test_a_grace_not_offered_is_a_form_error(as_owner, key, grace):
    response = as_owner.post(
        reverse("dashboard:key_rotate", args=[key.pk]), {"form_token": new_form_token(), "grace_seconds": grace}
    )
    assert response.status_code == 200 and "grace_seconds" in response.context["form"].errors
    assert ApiKey.objects.get(pk=key.pk).key_hash == key.key_hash


def test_ending_the_grace_early(as_owner, key):
    key, _ = rotate_api_key(key=key, grace=timedelta(days=7))
    response = as_owner.post(reverse("dashboard:key_end_grace", args=[key.pk]), follow=True)
    assert "is refused from now on" in response.text
    assert not ApiKey.objects.get(pk=key.pk).previous_secret_valid


def test_pausing_asks_first_then_pauses_and_resuming_brings_it_back(as_owner, key, owner):
    url = reverse("dashboard:key_pause", args=[key.pk])
    confirm = as_owner.get(url)
    assert confirm.status_code == 200 and "key_paused" in confirm.text
    assert ApiKey.objects.get(pk=key.pk).paused_at is None
    page = as_owner.post(url, follow=True).text
    assert ApiKey.objects.get(pk=key.pk).status == "paused"
    assert "Paused since" in page and reverse("dashboard:key_resume", args=[key.pk]) in page
    assert status_cell(as_owner.get(KEYS).text, key).count("paused") == 1
    assert as_owner.get(reverse("dashboard:key_resume", args=[key.pk])).status_code == 405
    as_owner.post(reverse("dashboard:key_resume", args=[key.pk]))
    assert ApiKey.objects.get(pk=key.pk).status == "active"
    assert [e.action for e in AuditLog.objects.filter(action__in=["key.paused", "key.resumed"]).reverse()] == [
        "key.paused",
        "key.resumed",
    ]


def test_the_expiry_can_be_set_cleared_and_not_put_in_the_past(as_owner, key):
    url = reverse("dashboard:key_expiry", args=[key.pk])
    day = (timezone.now() + timedelta(days=10)).date()
    assert as_owner.post(url, {"expires_on": day.isoformat()}).status_code == 302
    assert ApiKey.objects.get(pk=key.pk).expires_at.date() == day
    past = (timezone.now() - timedelta(days=1)).date().isoformat()
    response = as_owner.post(url, {"expires_on": past})
    assert response.status_code == 200 and "expires_on" in response.context["form"].errors
    assert as_owner.post(url, {"expires_on": ""}).status_code == 302
    assert ApiKey.objects.get(pk=key.pk).expires_at is None
    assert AuditLog.objects.filter(action="key.expiry_changed").count() == 2


def test_an_expired_key_comes_back_with_a_later_expiry(as_owner, key):
    ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(days=1))
    assert "Expired on" in as_owner.get(reverse("dashboard:key_detail", args=[key.pk])).text
    day = (timezone.now() + timedelta(days=3)).date().isoformat()
    as_owner.post(reverse("dashboard:key_expiry", args=[key.pk]), {"expires_on": day})
    assert ApiKey.objects.get(pk=key.pk).status == "active"


def test_a_revoked_key_cannot_be_rotated_paused_or_given_an_expiry(as_owner, revoked_key):
    for name, data in (
        ("key_rotate", {"form_token": new_form_token(), "grace_seconds": "0"}),
        ("key_pause", {}),
        ("key_expiry", {"expires_on": ""}),
    ):
        response = as_owner.post(reverse(f"dashboard:{name}", args=[revoked_key.pk]), data)
        assert response.status_code == 302 and response["Location"] == KEYS
    stored = ApiKey.objects.get(pk=revoked_key.pk)
    assert (stored.key_hash, stored.paused_at) == (revoked_key.key_hash, None)
    page = as_owner.get(reverse("dashboard:key_detail", args=[revoked_key.pk])).text
    assert "Revoked on" in page and reverse("dashboard:key_rotate", args=[revoked_key.pk]) not in page


# --- create forms that make one object -------------------------------------------------------------


def test_submitting_the_key_form_twice_makes_one_key(as_owner, owner):
    token = as_owner.get(reverse("dashboard:key_create")).context["form"]["form_token"].value()
    first = as_owner.post(reverse("dashboard:key_create"), {"form_token": token, "name": "once"})
    assert first.status_code == 201
    again = as_owner.post(reverse("dashboard:key_create"), {"form_token": token, "name": "once"})
    assert again.status_code == 200 and "Already done" in again.text and "once" in again.text
    assert first.context["secret"] not in again.text and "no-store" in again["Cache-Control"]
    key = ApiKey.objects.get()
    assert reverse("dashboard:key_detail", args=[key.pk]) in again.text
    assert SubmittedForm.objects.get().object_id == key.pk
    assert AuditLog.objects.filter(action="key.created").count() == 1


def test_each_new_form_page_has_its_own_token(as_owner):
    tokens = {as_owner.get(reverse("dashboard:key_create")).context["form"]["form_token"].value() for _ in range(3)}
    assert len(tokens) == 3


def test_a_form_without_its_token_makes_nothing_and_comes_back_with_a_fresh_one(as_owner):
    response = as_owner.post(reverse("dashboard:key_create"), {"name": "tokenless"})
    assert response.status_code == 200 and "had expired" in response.text
    assert not ApiKey.objects.exists()
    fresh = response.context["form"]["form_token"].value()
    assert re.fullmatch(r"[A-Za-z0-9_-]{16,64}", fresh)
    assert as_owner.post(reverse("dashboard:key_create"), {"form_token": fresh, "name": "tokenless"}).status_code == 201


def test_a_connector_token_form_submitted_twice_makes_one_token(as_owner, deployment):
    url = reverse("dashboard:deployment_token_create", args=[deployment.pk])
    token = as_owner.get(reverse("dashboard:deployment_detail", args=[deployment.pk])).context["token_form"]
    data = {"form_token": token["form_token"].value(), "name": "gpu-9"}
    first = as_owner.post(url, data)
    again = as_owner.post(url, data)
    assert (first.status_code, again.status_code) == (201, 200)
    assert "Already done" in again.text and first.context["secret"] not in again.text
    assert reverse("dashboard:deployment_detail", args=[deployment.pk]) in again.text
    assert ConnectorToken.objects.filter(name="gpu-9").count() == 1


def test_a_deployment_form_submitted_twice_says_already_created_not_name_taken(as_owner, org):
    data = {"form_token": new_form_token(), "name": "once-model", "price_input_micros": "0", "price_output_micros": "0"}
    assert as_owner.post(reverse("dashboard:deployment_create"), data).status_code == 302
    again = as_owner.post(reverse("dashboard:deployment_create"), data)
    assert again.status_code == 200 and "Already done" in again.text and "already exists" not in again.text
    assert Deployment.objects.filter(name="once-model").count() == 1


def test_another_persons_token_is_theirs(as_owner, as_admin):
    token = new_form_token()
    as_owner.post(reverse("dashboard:key_create"), {"form_token": token, "name": "owner's"})
    assert as_admin.post(reverse("dashboard:key_create"), {"form_token": token, "name": "admin's"}).status_code == 201
    assert ApiKey.objects.count() == 2


def test_already_created_in_another_org_links_nowhere(as_owner, org, owner, other_org):
    token = new_form_token()
    as_owner.post(reverse("dashboard:key_create"), {"form_token": token, "name": "acme key"})
    key = ApiKey.objects.get()
    SubmittedForm.objects.filter(token=token).update(object_id=key.pk + 1000)  # not one of this org's
    again = as_owner.post(reverse("dashboard:key_create"), {"form_token": token, "name": "acme key"})
    assert "Already done" in again.text and "Go to the key" not in again.text


def test_revoking_from_the_key_page_returns_to_the_list(as_owner, key):
    response = as_owner.post(reverse("dashboard:key_revoke", args=[key.pk]))
    assert response.status_code == 302 and response["Location"] == KEYS
    key.refresh_from_db()
    revoke_api_key(key=key)  # twice: no second audit row
    assert AuditLog.objects.filter(action="key.revoked").count() == 1
