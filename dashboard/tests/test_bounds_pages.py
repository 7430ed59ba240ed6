"""What people type into the dashboard is bounded: prices, limits and budgets to the models' bounds,
days of the usage and audit filters to the usage filter's. Out of bounds is the form again with the
field's error, never a 500."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse

from accounts.models import MAX_BUDGET_MICROS, MAX_RATE_LIMIT, ApiKey
from accounts.once import new_form_token
from billing.forms import FIRST_DAY, LAST_DAY
from deployments.models import MAX_PRICE_MICROS, Deployment
from lib.money import micros_to_usd

pytestmark = pytest.mark.django_db

MAX_PRICE_USD = micros_to_usd(MAX_PRICE_MICROS).normalize()
MAX_BUDGET_USD = micros_to_usd(MAX_BUDGET_MICROS).normalize()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rpm_limit", str(MAX_RATE_LIMIT + 1)),
        ("rpm_limit", str(2**63)),
        ("tpm_limit", str(2**63)),
        ("tpm_limit", str(2**64 + 1)),
        ("monthly_budget_micros", str(MAX_BUDGET_USD + 1)),
        ("monthly_budget_micros", "999999999999.999999"),
    ],
)
@pytest.mark.parametrize("edit", [False, True], ids=["create", "edit"])
def test_a_key_limit_past_its_bound_is_a_form_error(as_owner, key, field, value, edit):
    url = reverse("dashboard:key_edit", args=[key.pk]) if edit else reverse("dashboard:key_create")
    response = as_owner.post(url, {"form_token": new_form_token(), "name": "huge", field: value})
    assert response.status_code == 200
    assert list(response.context["form"].errors) == [field]
    assert not ApiKey.objects.filter(name="huge").exists()


def test_a_key_at_the_bounds_is_created(as_owner, org):
    form = {
        "form_token": new_form_token(),
        "name": "big",
        "rpm_limit": str(MAX_RATE_LIMIT),
        "tpm_limit": str(MAX_RATE_LIMIT),
        "monthly_budget_micros": str(MAX_BUDGET_USD),
    }
    response = as_owner.post(reverse("dashboard:key_create"), form)
    assert response.status_code == 201  # the secret page
    key = ApiKey.objects.get(name="big")
    assert (key.rpm_limit, key.tpm_limit, key.monthly_budget_micros) == (
        MAX_RATE_LIMIT,
        MAX_RATE_LIMIT,
        MAX_BUDGET_MICROS,
    )


@pytest.mark.parametrize("price", [str(MAX_PRICE_USD + 1), "1000.000001", "999999999999.999999"])
def test_a_price_past_the_bound_is_a_form_error(as_owner, deployment, price):
    response = as_owner.post(
        reverse("dashboard:deployment_prices", args=[deployment.pk]),
        {"price_input_micros": "0", "price_output_micros": price},
    )
    assert response.status_code == 200
    assert list(response.context["prices_form"].errors) == ["price_output_micros"]
    deployment.refresh_from_db()
    assert deployment.price_output_micros == 400_000
    response = as_owner.post(
        reverse("dashboard:deployment_create"),
        {"form_token": new_form_token(), "name": "dear", "price_input_micros": price, "price_output_micros": 0},
    )
    assert response.status_code == 200 and list(response.context["form"].errors) == ["price_input_micros"]
    assert not Deployment.objects.filter(name="dear").exists()


def test_the_dearest_price_is_saved(as_owner, deployment):
    response = as_owner.post(
        reverse("dashboard:deployment_prices", args=[deployment.pk]),
        {"price_input_micros": str(MAX_PRICE_USD), "price_output_micros": str(MAX_PRICE_USD)},
    )
    assert response.status_code == 302
    deployment.refresh_from_db()
    assert deployment.price_input_micros == deployment.price_output_micros == MAX_PRICE_MICROS


OUT_OF_BOUNDS = [
    {"end": "9999-12-31"},
    {"end": "0001-01-01"},
    {"start": "0001-01-01", "end": "0001-01-02"},
    {"start": "9999-12-30", "end": "9999-12-31"},
    {"start": (FIRST_DAY - timedelta(days=1)).isoformat()},
    {"end": (LAST_DAY + timedelta(days=1)).isoformat()},
]


@pytest.mark.parametrize("query", OUT_OF_BOUNDS)
def test_a_usage_day_out_of_bounds_is_a_form_error(as_owner, org, query):
    page = as_owner.get(reverse("dashboard:usage"), query)
    assert page.status_code == 400 and "2000-01-01" in page.text
    csv = as_owner.get(reverse("dashboard:usage_csv"), query)
    assert csv.status_code == 400 and "2000-01-01" in csv.text


@pytest.mark.parametrize("query", OUT_OF_BOUNDS)
def test_an_audit_day_out_of_bounds_is_a_form_error_and_lists_nothing(as_owner, org, key, query):
    page = as_owner.get(reverse("dashboard:audit"), query)
    assert page.status_code == 400 and "2000-01-01" in page.text
    assert key.prefix not in page.text  # an invalid filter shows no entries rather than all of them


def test_the_first_and_last_days_are_valid_filters(as_owner, org, key):
    assert as_owner.get(reverse("dashboard:usage"), {"end": FIRST_DAY.isoformat()}).status_code == 200
    day = {"start": LAST_DAY.isoformat(), "end": LAST_DAY.isoformat()}
    assert as_owner.get(reverse("dashboard:usage"), day).status_code == 200
    assert as_owner.get(reverse("dashboard:audit"), day).status_code == 200


def test_a_key_may_expire_on_the_last_day_but_not_after(as_owner, org):
    form = {"form_token": new_form_token(), "name": "late", "expires_on": "9999-12-31"}
    response = as_owner.post(reverse("dashboard:key_create"), form)
    assert response.status_code == 200 and list(response.context["form"].errors) == ["expires_on"]
    response = as_owner.post(reverse("dashboard:key_create"), {**form, "expires_on": LAST_DAY.isoformat()})
    assert response.status_code == 201
    assert ApiKey.objects.get(name="late").expires_at.date() == LAST_DAY
