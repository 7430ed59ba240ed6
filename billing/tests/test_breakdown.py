"""billing.breakdown.usage_breakdown: top N by cost (then tokens, then requests), the rest as one
"other" row, shares of the total, names, filters, and only the org's own rows."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from accounts.actions import create_api_key
from billing.breakdown import usage_breakdown
from billing.models import MAX_BIGINT
from dashboard.tests.usage_data import rollup, today
from deployments.actions import create_deployment

pytestmark = pytest.mark.django_db


def window(days: int = 30) -> dict:
    end = today() + timedelta(days=1)
    return {"start": end - timedelta(days=days), "end": end}


@pytest.fixture
def models(org):
    return [create_deployment(org=org, name=f"model-{i}") for i in range(5)]


def test_models_are_ranked_by_cost_and_the_rest_summed_as_other(org, key, models, other_org, other_key):
    costs = [500, 100, 300, 0, 200]
    for i, (model, cost) in enumerate(zip(models, costs, strict=True)):
        rollup(org, key=key, deployment=model, requests=10 + i, input_tokens=100, output_tokens=10, cost_micros=cost)
    rollup(other_org, key=other_key, requests=9999, cost_micros=10**9)
    result = usage_breakdown(org, by="model", top=3, **window())
    assert [row.label for row in result.rows] == ["model-0", "model-2", "model-4", "Other"]
    other = result.rows[-1]
    assert other.other and other.members == 2 and other.id is None
    assert (other.requests, other.cost_micros, other.input_tokens) == (11 + 13, 100, 200)
    assert result.totals == {
        "requests": 60,
        "errors": 0,
        "input_tokens": 500,
        "output_tokens": 50,
        "cost_micros": 1100,
    }
    assert result.share_of == "cost"
    assert [row.share for row in result.rows] == [Decimal("45.5"), Decimal("27.3"), Decimal("18.2"), Decimal("9.1")]
    assert result.groups == 5


def test_without_cost_the_share_is_of_tokens_and_the_ranking_follows_tokens(org, key, models):
    rollup(org, key=key, deployment=models[0], requests=50, input_tokens=10, output_tokens=10)
    rollup(org, key=key, deployment=models[1], requests=1, input_tokens=300, output_tokens=0)
    result = usage_breakdown(org, by="model", **window())
    assert [row.label for row in result.rows] == ["model-1", "model-0"]
    assert result.share_of == "tokens" and [row.share for row in result.rows] == [Decimal("93.8"), Decimal("6.3")]


def test_no_other_row_when_everything_fits(org, key, models):
    rollup(org, key=key, deployment=models[0], requests=1)
    result = usage_breakdown(org, by="model", top=10, **window())
    assert [row.other for row in result.rows] == [False]
    assert result.share_of == "requests" and result.rows[0].share == Decimal(100)


def test_keys_carry_their_name_and_prefix_and_keyless_usage_is_named(org, key, deployment):
    batch, _ = create_api_key(org=org, name="nightly batch")
    rollup(org, key=key, deployment=deployment, requests=3, cost_micros=30)
    rollup(org, key=batch, deployment=deployment, requests=5, cost_micros=50)
    rollup(org, key=None, deployment=None, requests=2)
    rows = usage_breakdown(org, by="key", **window()).rows
    assert [(row.label, row.prefix) for row in rows] == [
        ("nightly batch", batch.prefix),
        (key.name, key.prefix),
        ("(no key)", ""),
    ]
    models = usage_breakdown(org, by="model", **window()).rows
    assert [row.label for row in models] == [deployment.name, "(unknown model)"]


def test_it_follows_the_range_period_and_filters(org, key, deployment, models):
    rollup(org, key=key, deployment=deployment, requests=3)
    rollup(org, key=key, deployment=models[0], days_ago=10, requests=4)
    rollup(org, key=None, deployment=models[0], requests=5)
    rollup(org, period="hour", hours_ago=1, key=key, deployment=deployment, requests=7)
    assert [r.requests for r in usage_breakdown(org, by="model", **window(5)).rows] == [5, 3]
    assert [r.requests for r in usage_breakdown(org, by="model", key=key, **window()).rows] == [4, 3]
    assert [r.label for r in usage_breakdown(org, by="key", deployment=models[0], **window()).rows] == [
        "(no key)",
        key.name,
    ]
    hourly = usage_breakdown(org, by="model", period="hour", **window(2))
    assert [(r.label, r.requests) for r in hourly.rows] == [(deployment.name, 7)]


def test_rows_without_usage_are_left_out_and_an_empty_range_has_no_rows(org, key, deployment):
    rollup(org, key=key, deployment=deployment, days_ago=60, requests=3)
    rollup(org, key=key, deployment=deployment)  # an all-zero row
    result = usage_breakdown(org, by="key", **window())
    assert result.rows == [] and result.totals["requests"] == 0 and result.groups == 0


def test_sums_saturate_instead_of_failing(org, deployment, models):
    huge = MAX_BIGINT - 10
    for model in (deployment, *models[:2]):
        rollup(org, deployment=model, requests=1, cost_micros=huge, input_tokens=huge)
    result = usage_breakdown(org, by="model", top=1, **window())
    assert result.totals["cost_micros"] == MAX_BIGINT
    assert result.rows[-1].other and result.rows[-1].cost_micros == MAX_BIGINT


def test_the_query_count_does_not_grow_with_the_number_of_keys(org, deployment, django_assert_num_queries):
    for i in range(30):
        rollup(org, key=create_api_key(org=org, name=f"k{i}")[0], deployment=deployment, requests=i + 1)
    with django_assert_num_queries(2):
        result = usage_breakdown(org, by="key", top=10, **window())
    assert len(result.rows) == 11 and result.rows[0].label == "k29" and result.rows[-1].members == 20
