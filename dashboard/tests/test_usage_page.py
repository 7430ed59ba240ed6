from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.urls import reverse

from accounts.actions import create_api_key
from dashboard.tests.usage_data import a_year_of_rollups, rollup, today

pytestmark = pytest.mark.django_db


@pytest.fixture
def usage(org, key, deployment, other_org, other_key):
    second_key = create_api_key(org=org, name="batch")[0]
    rollup(
        org,
        days_ago=0,
        key=key,
        deployment=deployment,
        requests=7,
        errors=1,
        input_tokens=700,
        output_tokens=70,
        cost_micros=1_500_000,
    )
    rollup(
        org,
        days_ago=2,
        key=second_key,
        deployment=deployment,
        requests=5,
        input_tokens=500,
        output_tokens=50,
        cost_micros=250_000,
    )
    rollup(
        org, days_ago=60, key=key, deployment=deployment, requests=99, input_tokens=9, output_tokens=9, cost_micros=9
    )
    rollup(other_org, days_ago=0, key=other_key, requests=1000, input_tokens=1, output_tokens=1, cost_micros=1)
    return second_key


def test_members_see_charts_and_a_table_of_the_last_30_days(as_member, usage):
    response = as_member.get(reverse("dashboard:usage"))
    assert response.status_code == 200
    assert response.context["totals"] == {
        "requests": 12,
        "errors": 1,
        "input_tokens": 1200,
        "output_tokens": 120,
        "cost_micros": 1_750_000,
    }
    assert len(response.context["rows"]) == 30
    assert response.text.count("<svg") == 3 and 'role="img"' in response.text
    assert "Requests</title>" in response.text and "Cost (USD)</title>" in response.text
    assert f'<th scope="row">{today():%Y-%m-%d}</th>' in response.text
    assert "1,000" not in response.text  # the other org's requests


def test_the_date_inputs_show_the_range_in_use(as_owner, usage):
    page = as_owner.get(reverse("dashboard:usage")).text
    assert f'value="{today().date().isoformat()}"' in page
    assert f'value="{(today() - timedelta(days=29)).date().isoformat()}"' in page


def test_it_filters_by_key_deployment_and_range(as_owner, usage, key, deployment):
    by_key = as_owner.get(reverse("dashboard:usage"), {"key": key.pk}).context["totals"]
    assert by_key["requests"] == 7
    by_model = as_owner.get(reverse("dashboard:usage"), {"deployment": deployment.pk}).context["totals"]
    assert by_model["requests"] == 12
    start = (today() - timedelta(days=90)).date().isoformat()
    wide = as_owner.get(reverse("dashboard:usage"), {"start": start}).context
    assert wide["totals"]["requests"] == 111 and len(wide["rows"]) == 91


def test_hourly_buckets_for_short_ranges(as_owner, org, key, deployment):
    rollup(org, period="hour", hours_ago=1, key=key, deployment=deployment, requests=4)
    start = (today() - timedelta(days=1)).date().isoformat()
    response = as_owner.get(reverse("dashboard:usage"), {"period": "hour", "start": start})
    assert response.status_code == 200
    assert response.context["totals"]["requests"] == 4
    assert len(response.context["rows"]) == 48


def test_bad_filters_are_a_400_with_the_reason(as_owner, usage, other_key):
    response = as_owner.get(reverse("dashboard:usage"), {"key": other_key.pk})
    assert response.status_code == 400 and "key" in response.context["form"].errors
    response = as_owner.get(reverse("dashboard:usage"), {"start": "2026-02-01", "end": "2026-01-01"})
    assert response.status_code == 400 and "on or before" in response.text
    response = as_owner.get(reverse("dashboard:usage"), {"range": "next-year"})
    assert response.status_code == 400 and "Pick a date range from" in response.text
    assert as_owner.get(reverse("dashboard:usage"), {"top": "0"}).status_code == 400
    assert as_owner.get(reverse("dashboard:usage"), {"top": "51"}).status_code == 400
    response = as_owner.get(reverse("dashboard:usage"), {"start": "2020-01-01"})
    assert response.status_code == 400 and "at most 400 days" in response.text


def test_csv_export_has_every_bucket_of_the_filtered_range(as_member, usage, key):
    response = as_member.get(reverse("dashboard:usage_csv"), {"key": key.pk})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert f"tokios-usage-acme-{key.prefix}-" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert len(rows) == 30
    assert rows[-1]["bucket_start"].startswith(today().date().isoformat())
    assert (rows[-1]["requests"], rows[-1]["errors"], rows[-1]["cost_usd"], rows[-1]["cost_micros"]) == (
        "7",
        "1",
        "1.500000",
        "1500000",
    )
    assert sum(int(r["requests"]) for r in rows) == 7


def test_csv_export_refuses_bad_filters(as_owner, usage, other_key):
    assert as_owner.get(reverse("dashboard:usage_csv"), {"key": other_key.pk}).status_code == 400


def test_an_org_without_usage_is_told_what_to_do(as_owner, org):
    page = as_owner.get(reverse("dashboard:usage")).text
    assert "No usage in this range" in page and reverse("dashboard:keys") in page


def test_a_year_of_data_renders_with_a_fixed_number_of_queries(
    as_owner, org, key, deployment, django_assert_max_num_queries
):
    a_year_of_rollups(org, key, deployment)
    start = (today() - timedelta(days=365)).date().isoformat()
    with django_assert_max_num_queries(16):  # the series, and two per breakdown (by model, by key)
        response = as_owner.get(reverse("dashboard:usage"), {"start": start, "key": key.pk})
    assert response.status_code == 200
    assert len(response.context["rows"]) == 366
    assert response.context["totals"]["requests"] == sum(10 + i for i in range(366))
    with django_assert_max_num_queries(12):
        csv_response = as_owner.get(reverse("dashboard:usage_csv"), {"start": start})
        body = b"".join(csv_response.streaming_content)
    assert body.count(b"\n") == 367


def test_outsiders_see_only_their_own_usage(as_outsider, usage):
    response = as_outsider.get(reverse("dashboard:usage"))
    assert response.context["totals"]["requests"] == 1000
