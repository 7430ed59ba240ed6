"""Every number the management API takes is bounded: prices, limits and budgets by the models'
validators, list pages by the paginator, usage days by the usage filter. Out of bounds is a 400
naming the field (or, for a page size, the largest page), never a 500."""

from __future__ import annotations

from datetime import timedelta

import pytest

from accounts.actions import create_api_key
from accounts.models import MAX_BUDGET_MICROS, MAX_RATE_LIMIT
from billing.forms import FIRST_DAY, LAST_DAY
from deployments.models import MAX_PRICE_MICROS

pytestmark = pytest.mark.django_db

DEPLOYMENTS = "/api/orgs/acme/deployments/"
KEYS = "/api/orgs/acme/keys/"


@pytest.mark.parametrize("value", [MAX_PRICE_MICROS + 1, 9_000_000_000_000_000_000, 2**63, 2**64])
def test_a_price_past_the_bound_is_a_400_and_changes_nothing(api_owner, deployment, value):
    response = api_owner.patch(f"{DEPLOYMENTS}{deployment.pk}/", {"price_output_micros": value}, format="json")
    assert response.status_code == 400 and "price_output_micros" in response.json()
    deployment.refresh_from_db()
    assert deployment.price_output_micros == 400_000


def test_a_new_deployment_priced_past_the_bound_is_a_400(api_owner, org):
    response = api_owner.post(DEPLOYMENTS, {"name": "dear", "price_input_micros": MAX_PRICE_MICROS + 1}, format="json")
    assert response.status_code == 400 and "price_input_micros" in response.json()


def test_the_bound_itself_is_a_price(api_owner, deployment):
    response = api_owner.patch(
        f"{DEPLOYMENTS}{deployment.pk}/", {"price_input_micros": MAX_PRICE_MICROS}, format="json"
    )
    assert response.status_code == 200 and response.json()["price_input_micros"] == MAX_PRICE_MICROS


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rpm_limit", MAX_RATE_LIMIT + 1),
        ("tpm_limit", 2**63),
        ("monthly_budget_micros", MAX_BUDGET_MICROS + 1),
        ("monthly_budget_micros", -1),
    ],
)
def test_a_key_limit_out_of_bounds_is_a_400(api_owner, key, field, value):
    created = api_owner.post(KEYS, {"name": "ci", field: value}, format="json")
    assert created.status_code == 400 and field in created.json()
    updated = api_owner.patch(f"{KEYS}{key.pk}/", {field: value}, format="json")
    assert updated.status_code == 400 and field in updated.json()
    key.refresh_from_db()
    assert getattr(key, field) is None


def test_the_schema_states_the_bounds(api_owner):
    schema = api_owner.get("/api/schema/?format=json").json()["components"]["schemas"]
    assert schema["Deployment"]["properties"]["price_output_micros"]["maximum"] == MAX_PRICE_MICROS
    assert schema["ApiKey"]["properties"]["rpm_limit"]["maximum"] == MAX_RATE_LIMIT
    assert schema["ApiKey"]["properties"]["monthly_budget_micros"]["maximum"] == MAX_BUDGET_MICROS


@pytest.fixture
def three_keys(org, key):
    return [key, *(create_api_key(org=org, name=f"k{i}")[0] for i in range(2))]


@pytest.mark.parametrize("limit", [str(2**63), str(2**63 - 1), "1000000", str(10**400)])
def test_a_page_size_past_the_largest_is_the_largest(api_owner, three_keys, limit):
    response = api_owner.get(KEYS, {"limit": limit})
    assert response.status_code == 200
    assert len(response.json()["results"]) == 3 and response.json()["next"] is None


def test_a_page_size_is_capped(api_owner, monkeypatch, three_keys):
    monkeypatch.setattr("api.pagination.BoundedLimitOffsetPagination.max_limit", 2)
    body = api_owner.get(KEYS, {"limit": str(2**63)}).json()
    assert len(body["results"]) == 2 and "limit=2" in body["next"]


@pytest.mark.parametrize("offset", [str(2**63), str(2**63 - 1), str(2**64), "3"])
def test_an_offset_past_the_end_is_an_empty_page(api_owner, three_keys, offset):
    response = api_owner.get(KEYS, {"offset": offset, "limit": "10"})
    assert response.status_code == 200 and response.json()["results"] == []


@pytest.mark.parametrize(
    "query",
    [
        {"end": "9999-12-31"},
        {"end": "0001-01-01"},
        {"start": "0001-01-01"},
        {"start": "9999-12-31", "end": "9999-12-31"},
        {"start": (FIRST_DAY - timedelta(days=1)).isoformat()},
        {"start": LAST_DAY.isoformat(), "end": (LAST_DAY + timedelta(days=1)).isoformat()},
    ],
)
def test_a_usage_day_out_of_bounds_is_a_400(api_owner, org, query):
    response = api_owner.get("/api/orgs/acme/usage/", query)
    assert response.status_code == 400, response.content
    assert f"{FIRST_DAY:%Y-%m-%d}" in str(response.json())


def test_the_first_and_last_days_are_usage_days(api_owner, org):
    first = api_owner.get("/api/orgs/acme/usage/", {"end": FIRST_DAY.isoformat()})
    assert first.status_code == 200, first.content
    assert first.json()["start"] == FIRST_DAY.isoformat()  # the default 30 days, clipped to the first day
    last = api_owner.get("/api/orgs/acme/usage/", {"start": LAST_DAY.isoformat(), "end": LAST_DAY.isoformat()})
    assert last.status_code == 200 and len(last.json()["buckets"]) == 1


@pytest.mark.parametrize("name", ["\x00", "gemma-tunnel\x00", "gemma-tunnel\n"])
def test_a_model_name_no_deployment_can_have_is_a_400(api_owner, key, deployment, name):
    created = api_owner.post(KEYS, {"name": "ci", "models": [name]}, format="json")
    assert created.status_code == 400 and "models" in created.json()
    updated = api_owner.put(f"{KEYS}{key.pk}/", {"name": "ci", "models": [name]}, format="json")
    assert updated.status_code == 400 and "models" in updated.json()


@pytest.mark.parametrize("slug", ["\x00", "globex\x00", "globex\n"])
def test_an_org_slug_no_org_can_have_is_a_400(api_owner, deployment, other_org, slug):
    response = api_owner.post(f"{DEPLOYMENTS}{deployment.pk}/grants/", {"org": slug}, format="json")
    assert response.status_code == 400 and "org" in response.json()
