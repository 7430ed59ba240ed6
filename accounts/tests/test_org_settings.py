"""accounts.org_settings.update_org_settings: the model's bounds on every value, one audit entry with
the values before and after, nothing written when nothing changed."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from accounts.models import MAX_BUDGET_MICROS, MAX_RATE_LIMIT, AuditAction, AuditLog, Organization
from accounts.org_settings import update_org_settings

pytestmark = pytest.mark.django_db


def settings_entries(org) -> list[AuditLog]:
    return list(AuditLog.objects.for_org(org).filter(action=AuditAction.ORG_SETTINGS_UPDATED))


def test_it_saves_the_settings_and_audits_old_and_new_values(org, owner):
    update_org_settings(
        org=org,
        actor=owner,
        monthly_budget_micros=50_000_000,
        rpm_limit=600,
        default_key_tpm_limit=20_000,
        default_key_budget_micros=5_000_000,
    )
    fresh = Organization.objects.get(pk=org.pk)
    assert (fresh.monthly_budget_micros, fresh.rpm_limit, fresh.tpm_limit) == (50_000_000, 600, None)
    assert fresh.key_defaults() == {"rpm_limit": None, "tpm_limit": 20_000, "monthly_budget_micros": 5_000_000}
    assert org.monthly_budget_micros == 50_000_000  # the caller's copy too
    (entry,) = settings_entries(org)
    assert entry.actor == owner and entry.target == "acme"
    assert entry.detail == {
        "monthly_budget_micros": {"old": None, "new": 50_000_000},
        "rpm_limit": {"old": None, "new": 600},
        "default_key_tpm_limit": {"old": None, "new": 20_000},
        "default_key_budget_micros": {"old": None, "new": 5_000_000},
    }


def test_clearing_a_budget_is_audited_with_the_value_it_had(org, owner):
    update_org_settings(org=org, actor=owner, monthly_budget_micros=7)
    update_org_settings(org=org, actor_label="api-token:pat-tokios-abc", monthly_budget_micros=None, name=" Acme Ltd ")
    assert Organization.objects.get(pk=org.pk).monthly_budget_micros is None
    latest = settings_entries(org)[0]
    assert latest.actor_label == "api-token:pat-tokios-abc"
    assert latest.detail == {
        "name": {"old": "Acme", "new": "Acme Ltd"},
        "monthly_budget_micros": {"old": 7, "new": None},
    }


def test_saving_the_same_values_writes_no_audit_entry(org, owner):
    update_org_settings(org=org, actor=owner, rpm_limit=10)
    update_org_settings(org=org, actor=owner, rpm_limit=10, name="Acme")
    assert len(settings_entries(org)) == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rpm_limit", MAX_RATE_LIMIT + 1),
        ("tpm_limit", -1),
        ("default_key_rpm_limit", MAX_RATE_LIMIT + 1),
        ("default_key_tpm_limit", 2**40),
        ("monthly_budget_micros", MAX_BUDGET_MICROS + 1),
        ("monthly_budget_micros", -1),
        ("default_key_budget_micros", MAX_BUDGET_MICROS + 1),
        ("name", ""),
        ("name", "   "),
        ("name", "x" * 201),
        ("rpm_limit", "many"),
    ],
)
def test_values_out_of_the_models_bounds_are_refused_and_nothing_changes(org, owner, field, value):
    with pytest.raises(ValidationError) as caught:
        update_org_settings(org=org, actor=owner, **{field: value})
    assert field in caught.value.message_dict
    fresh = Organization.objects.get(pk=org.pk)
    assert fresh.name == "Acme"
    assert all(getattr(fresh, name) is None for name in Organization.SETTINGS_FIELDS if name != "name")
    assert settings_entries(org) == []


def test_the_largest_values_the_model_allows_are_accepted(org, owner):
    update_org_settings(
        org=org,
        actor=owner,
        rpm_limit=MAX_RATE_LIMIT,
        tpm_limit=MAX_RATE_LIMIT,
        monthly_budget_micros=MAX_BUDGET_MICROS,
        default_key_budget_micros=0,
    )
    fresh = Organization.objects.get(pk=org.pk)
    assert (fresh.rpm_limit, fresh.monthly_budget_micros, fresh.default_key_budget_micros) == (
        MAX_RATE_LIMIT,
        MAX_BUDGET_MICROS,
        0,
    )


def test_it_refuses_fields_that_are_not_settings(org, owner):
    with pytest.raises(ValidationError, match="slug"):
        update_org_settings(org=org, actor=owner, slug="hijack")
    with pytest.raises(ValidationError, match="share_id"):
        update_org_settings(org=org, actor=owner, share_id="org_x")
    assert Organization.objects.get(pk=org.pk).slug == "acme"
