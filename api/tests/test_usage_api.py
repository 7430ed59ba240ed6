from __future__ import annotations

from datetime import date, timedelta

import pytest

from billing.models import Statement, StatementLine
from dashboard.tests.usage_data import a_year_of_rollups, rollup, today

pytestmark = pytest.mark.django_db

URL = "/api/orgs/acme/usage/"


def test_usage_defaults_to_30_days_per_day(api_member, org, key, deployment, other_org):
    rollup(org, key=key, deployment=deployment, requests=3, input_tokens=30, output_tokens=3, cost_micros=42)
    rollup(other_org, requests=1000)
    body = api_member.get(URL).json()
    assert body["period"] == "day" and len(body["buckets"]) == 30
    assert body["totals"] == {"requests": 3, "errors": 0, "input_tokens": 30, "output_tokens": 3, "cost_micros": 42}
    assert body["end"] == today().date().isoformat()
    assert body["buckets"][-1]["requests"] == 3


def test_usage_filters_by_key_deployment_range_and_period(api_owner, org, key, deployment):
    rollup(org, key=key, deployment=deployment, requests=3)
    rollup(org, key=None, deployment=deployment, days_ago=1, requests=5)
    rollup(org, period="hour", hours_ago=2, key=key, deployment=deployment, requests=9)
    assert api_owner.get(URL, {"key": key.pk}).json()["totals"]["requests"] == 3
    assert api_owner.get(URL, {"deployment": deployment.pk}).json()["totals"]["requests"] == 8
    start = (today() - timedelta(days=1)).date().isoformat()
    hourly = api_owner.get(URL, {"period": "hour", "start": start}).json()
    assert hourly["totals"]["requests"] == 9 and len(hourly["buckets"]) == 48


def test_usage_refuses_other_orgs_keys_and_bad_ranges(api_owner, other_key, org):
    response = api_owner.get(URL, {"key": other_key.pk})
    assert response.status_code == 400 and "key" in response.json()
    assert api_owner.get(URL, {"start": "2026-02-01", "end": "2026-01-01"}).status_code == 400


def test_a_year_of_usage_is_a_few_queries(api_owner, org, key, deployment, django_assert_max_num_queries):
    a_year_of_rollups(org, key, deployment)
    start = (today() - timedelta(days=365)).date().isoformat()
    with django_assert_max_num_queries(8):
        body = api_owner.get(URL, {"start": start}).json()
    assert len(body["buckets"]) == 366 and body["totals"]["requests"] == sum(10 + i for i in range(366))


def test_statements_list_and_detail(api_member, org, other_org, deployment):
    st = Statement.objects.create(org=org, month=date(2026, 10, 1), requests=2, total_micros=1234)
    StatementLine.objects.create(
        statement=st, deployment=deployment, deployment_name="gemma-tunnel", requests=2, cost_micros=1234
    )
    Statement.objects.create(org=other_org, month=date(2026, 9, 1), total_micros=5)
    listed = api_member.get("/api/orgs/acme/statements/").json()["results"]
    assert [s["month"] for s in listed] == ["2026-10"]
    detail = api_member.get("/api/orgs/acme/statements/2026-10/").json()
    assert detail["total_micros"] == 1234 and detail["lines"][0]["deployment"] == "gemma-tunnel"
    assert api_member.get("/api/orgs/acme/statements/2026-09/").status_code == 404
    assert api_member.get("/api/orgs/acme/statements/bogus/").status_code == 404
