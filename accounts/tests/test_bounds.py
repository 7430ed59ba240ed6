"""Limits and budgets are bounded by the model's validators, so every way of setting them (the
Django admin's forms, the API's serializers, the actions the dashboard and commands call) refuses
a number the limits' arithmetic could not carry."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from accounts.actions import create_api_key, update_api_key
from accounts.models import MAX_BUDGET_MICROS, MAX_RATE_LIMIT, ApiKey, Organization, User, validate_org_slug

pytestmark = pytest.mark.django_db

TOO_BIG = {
    "rpm_limit": MAX_RATE_LIMIT + 1,
    "tpm_limit": MAX_RATE_LIMIT + 1,
    "monthly_budget_micros": MAX_BUDGET_MICROS + 1,
}


def test_the_bounds_fit_the_columns_and_the_arithmetic():
    assert MAX_RATE_LIMIT <= 2**31 - 1  # a PositiveIntegerField is 32 bits on PostgreSQL
    assert MAX_BUDGET_MICROS * 2 < 2**63  # a budget plus a month's spend still fits 64 bits


@pytest.mark.parametrize("field", sorted(TOO_BIG))
def test_a_key_limit_past_its_bound_fails_validation(org, field):
    key, _ = create_api_key(org=org, name="ci")
    setattr(key, field, TOO_BIG[field])
    with pytest.raises(ValidationError) as caught:
        key.full_clean()
    assert field in caught.value.message_dict


@pytest.mark.parametrize("field", sorted(TOO_BIG))
def test_an_org_limit_past_its_bound_fails_validation(org, field):
    setattr(org, field, TOO_BIG[field])
    with pytest.raises(ValidationError) as caught:
        org.full_clean()
    assert field in caught.value.message_dict


def test_the_bounds_themselves_are_accepted(org):
    key, _ = create_api_key(
        org=org, name="ci", rpm_limit=MAX_RATE_LIMIT, tpm_limit=MAX_RATE_LIMIT, monthly_budget_micros=MAX_BUDGET_MICROS
    )
    key.full_clean()
    org.rpm_limit, org.tpm_limit, org.monthly_budget_micros = MAX_RATE_LIMIT, MAX_RATE_LIMIT, MAX_BUDGET_MICROS
    org.full_clean()


def test_a_negative_budget_fails_validation(org):
    org.monthly_budget_micros = -1
    with pytest.raises(ValidationError):
        org.full_clean()


@pytest.mark.parametrize("field", sorted(TOO_BIG))
def test_creating_a_key_past_a_bound_is_refused_and_writes_nothing(org, field):
    with pytest.raises(ValidationError):
        create_api_key(org=org, name="ci", **{field: TOO_BIG[field]})
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize("field", sorted(TOO_BIG))
def test_updating_a_key_past_a_bound_is_refused(org, field):
    key, _ = create_api_key(org=org, name="ci", rpm_limit=60)
    with pytest.raises(ValidationError):
        update_api_key(key=key, **{field: TOO_BIG[field]})
    key.refresh_from_db()
    assert (key.rpm_limit, key.tpm_limit, key.monthly_budget_micros) == (60, None, None)


@pytest.fixture
def as_staff(client):
    client.force_login(User.objects.create_superuser("ops@example.com", "pw-for-tests-only"))
    return client


def org_form(org: Organization, **changes) -> dict:
    form = {
        "name": org.name,
        "slug": org.slug,
        "created_at_0": "2026-01-01",
        "created_at_1": "00:00:00",
        "rpm_limit": "",
        "tpm_limit": "",
        "monthly_budget_micros": "",
        "memberships-TOTAL_FORMS": 0,
        "memberships-INITIAL_FORMS": 0,
    }
    return {**form, **changes}


@pytest.mark.parametrize("value", [str(MAX_RATE_LIMIT + 1), str(2**63)])
def test_the_admin_refuses_an_org_rate_limit_past_the_bound(as_staff, org, value):
    response = as_staff.post(f"/admin/accounts/organization/{org.pk}/change/", org_form(org, rpm_limit=value))
    assert response.status_code == 200  # the form again, with its error
    assert "less than or equal to" in response.text
    org.refresh_from_db()
    assert org.rpm_limit is None


def test_the_admin_refuses_an_org_budget_past_the_bound(as_staff, org):
    form = org_form(org, monthly_budget_micros=str(MAX_BUDGET_MICROS + 1))
    response = as_staff.post(f"/admin/accounts/organization/{org.pk}/change/", form)
    assert response.status_code == 200 and "less than or equal to" in response.text
    org.refresh_from_db()
    assert org.monthly_budget_micros is None


def test_the_admin_saves_an_org_limit_within_the_bounds(as_staff, org):
    form = org_form(org, rpm_limit=str(MAX_RATE_LIMIT), monthly_budget_micros=str(MAX_BUDGET_MICROS))
    response = as_staff.post(f"/admin/accounts/organization/{org.pk}/change/", form)
    assert response.status_code == 302, response.text
    org.refresh_from_db()
    assert (org.rpm_limit, org.monthly_budget_micros) == (MAX_RATE_LIMIT, MAX_BUDGET_MICROS)


def test_the_admin_refuses_a_key_limit_past_the_bound(as_staff, org):
    key, _ = create_api_key(org=org, name="ci")
    form = {
        "org": org.pk,
        "name": "ci",
        "all_models": "on",
        "expires_at_0": "",
        "expires_at_1": "",
        "revoked_at_0": "",
        "revoked_at_1": "",
        "rpm_limit": "",
        "tpm_limit": str(MAX_RATE_LIMIT + 1),
        "monthly_budget_micros": "",
    }
    response = as_staff.post(f"/admin/accounts/apikey/{key.pk}/change/", form)
    assert response.status_code == 200 and "less than or equal to" in response.text
    key.refresh_from_db()
    assert key.tpm_limit is None


@pytest.mark.parametrize("slug", ["acme\n", "\nacme"])
def test_a_slug_with_a_line_break_is_not_valid(slug):
    with pytest.raises(ValidationError):
        validate_org_slug(slug)
