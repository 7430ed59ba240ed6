"""The organisation settings page: owners edit budget, limits and new-key defaults (audited); admins
read them; members are refused; the overview's "No monthly budget set" leads here; a new key's form
starts with the defaults; the alert rules are summarised with a link to where they are edited."""

from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.models import AuditAction, AuditLog, Organization
from accounts.org_settings import update_org_settings
from alerts.actions import update_settings

pytestmark = pytest.mark.django_db

URL = reverse("dashboard:org_settings")
VALID = {
    "name": "Acme Research",
    "monthly_budget_micros": "125.50",
    "rpm_limit": "600",
    "tpm_limit": "",
    "default_key_rpm_limit": "60",
    "default_key_tpm_limit": "",
    "default_key_budget_micros": "10",
}


def test_an_owner_sets_the_budget_limits_and_key_defaults(as_owner, org, owner):
    page = as_owner.get(URL)
    assert page.status_code == 200 and 'name="monthly_budget_micros"' in page.text
    response = as_owner.post(URL, VALID)
    assert response.status_code == 302 and response.url == URL
    fresh = Organization.objects.get(pk=org.pk)
    assert fresh.name == "Acme Research"
    assert (fresh.monthly_budget_micros, fresh.rpm_limit, fresh.tpm_limit) == (125_500_000, 600, None)
    assert fresh.key_defaults() == {"rpm_limit": 60, "tpm_limit": None, "monthly_budget_micros": 10_000_000}
    entry = AuditLog.objects.get(action=AuditAction.ORG_SETTINGS_UPDATED)
    assert entry.actor == owner and entry.org == org
    assert entry.detail["monthly_budget_micros"] == {"old": None, "new": 125_500_000}
    assert "tpm_limit" not in entry.detail  # unchanged: empty before and after
    assert "Settings saved." in as_owner.get(URL).text


def test_the_form_shows_the_saved_values_in_dollars(as_owner, org, owner):
    update_org_settings(org=org, actor=owner, monthly_budget_micros=2_500_000, default_key_tpm_limit=9000)
    page = as_owner.get(URL).text
    assert 'value="2.5"' in page and 'value="9000"' in page


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("monthly_budget_micros", "-1", "greater than or equal to 0"),
        ("monthly_budget_micros", "1000000001", "less than or equal to"),
        ("monthly_budget_micros", "0.0000001", "decimal place"),
        ("rpm_limit", "0", "greater than or equal to 1"),
        ("rpm_limit", "1000000001", "less than or equal to"),
        ("default_key_tpm_limit", "1e3", "whole number"),
        ("name", "", "required"),
    ],
)
def test_bad_values_come_back_with_an_error_summary_and_change_nothing(as_owner, org, field, value, message):
    response = as_owner.post(URL, {**VALID, field: value})
    assert response.status_code == 400
    assert "data-error-summary" in response.text and message in response.text
    fresh = Organization.objects.get(pk=org.pk)
    assert fresh.name == "Acme" and fresh.monthly_budget_micros is None
    assert not AuditLog.objects.filter(action=AuditAction.ORG_SETTINGS_UPDATED).exists()


def test_admins_read_the_settings_but_cannot_change_them(as_admin, org, owner):
    update_org_settings(org=org, actor=owner, monthly_budget_micros=40_000_000, rpm_limit=1200)
    page = as_admin.get(URL)
    assert page.status_code == 200
    assert "<form" not in page.text.split('id="settings-heading"')[1].split("</section>")[0]
    assert "$40.00" in page.text and "1,200" in page.text and "owner@acme.test" in page.text
    assert as_admin.post(URL, VALID).status_code == 403
    assert Organization.objects.get(pk=org.pk).name == "Acme"


def test_members_are_refused(as_member, org):
    assert as_member.get(URL).status_code == 403
    assert as_member.post(URL, VALID).status_code == 403
    assert Organization.objects.get(pk=org.pk).name == "Acme"


def test_an_outsider_only_ever_changes_their_own_org(as_outsider, org, other_org):
    assert "Acme" not in as_outsider.get(URL).text
    assert as_outsider.post(URL, {**VALID, "name": "Globex 2"}).status_code == 302
    assert Organization.objects.get(pk=other_org.pk).name == "Globex 2"
    assert Organization.objects.get(pk=org.pk).name == "Acme"


def test_the_overview_links_a_missing_budget_to_the_settings(as_owner, as_admin, as_member, org):
    assert f'href="{URL}">Set one</a>' in as_owner.get(reverse("dashboard:overview")).text
    assert f'href="{URL}">Settings</a>' in as_admin.get(reverse("dashboard:overview")).text
    member_page = as_member.get(reverse("dashboard:overview")).text
    assert "No monthly budget set" in member_page and f'href="{URL}"' not in member_page


def test_the_navigation_shows_settings_to_owners_and_admins_only(as_owner, as_member, org):
    assert f'href="{URL}"' in as_owner.get(reverse("dashboard:usage")).text
    assert f'href="{URL}"' not in as_member.get(reverse("dashboard:usage")).text


def test_a_new_keys_form_starts_with_the_org_defaults(as_owner, org, owner):
    update_org_settings(
        org=org, actor=owner, default_key_rpm_limit=77, default_key_tpm_limit=8800, default_key_budget_micros=3_000_000
    )
    page = as_owner.get(reverse("dashboard:key_create")).text
    assert 'name="rpm_limit" value="77"' in page
    assert 'name="tpm_limit" value="8800"' in page
    assert 'name="monthly_budget_micros" value="3"' in page


def test_the_alert_rules_are_summarised_with_a_link_to_edit_them(as_owner, org, owner):
    update_settings(org=org, actor=owner, budget_thresholds=[90, 25], connector_down_enabled=False)
    page = as_owner.get(URL).text
    section = page.split('id="alert-rules"')[1]
    assert "at 25 %, 90 % of a monthly budget" in section
    assert "No connector</dt><dd>off" in section
    assert f'href="{reverse("dashboard:alerts")}#rules-heading"' in section


def test_changing_alert_rules_is_audited_with_old_and_new_values(as_admin, org, admin):
    response = as_admin.post(
        reverse("dashboard:alert_settings"),
        {
            "email_enabled": "on",
            "budget_enabled": "on",
            "budget_thresholds": "75, 100",
            "connector_down_enabled": "on",
            "connector_down_minutes": "5",
            "flapping_enabled": "on",
            "flapping_connects": "5",
            "flapping_window_minutes": "15",
            "error_rate_enabled": "on",
            "error_rate_percent": "10",
            "error_rate_window_minutes": "15",
            "error_rate_min_requests": "20",
        },
    )
    assert response.status_code == 302, response.content
    entry = AuditLog.objects.get(action=AuditAction.ALERT_RULES_UPDATED)
    assert entry.actor == admin
    assert entry.detail == {"budget_thresholds": {"old": [50, 80, 100], "new": [75, 100]}}
