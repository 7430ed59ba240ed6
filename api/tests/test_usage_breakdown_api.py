"""GET /api/orgs/<org>/usage/breakdown/ (by model or key, top N and "other"), presets and hourly
narrowing on usage/, and statements' status and errors."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from django.utils import timezone

from accounts.actions import create_api_key
from billing.models import Statement, StatementLine
from billing.statements import build_statement
from dashboard.tests.usage_data import rollup, today

pytestmark = pytest.mark.django_db

URL = "/api/orgs/acme/usage/breakdown/"


@pytest.fixture
def traffic(org, key, deployment, other_org, other_key):
    keys = [key] + [create_api_key(org=org, name=f"k{i}")[0] for i in range(4)]
    for i, k in enumerate(keys):
        rollup(org, key=k, deployment=deployment, requests=i + 1, input_tokens=10 * (i + 1), cost_micros=100 * (i + 1))
    rollup(other_org, key=other_key, requests=1000, cost_micros=10**9)
    return keys


def test_members_get_the_models_by_default(api_member, traffic, deployment):
    body = api_member.get(URL).json()
    assert body["by"] == "model" and body["top"] == 10 and body["share_of"] == "cost"
    assert body["totals"]["requests"] == 15 and body["totals"]["cost_micros"] == 1500
    assert [(r["id"], r["label"], r["requests"], r["share"]) for r in body["rows"]] == [
        (deployment.id, deployment.name, 15, "100.0")
    ]
    assert body["period"] == "day" and body["narrowed_from"] is None


def test_by_key_top_two_and_other(api_owner, traffic):
    keys = traffic
    body = api_owner.get(URL, {"by": "key", "top": 2}).json()
    rows = body["rows"]
    assert [(r["label"], r["prefix"], r["other"]) for r in rows] == [
        ("k3", keys[4].prefix, False),
        ("k2", keys[3].prefix, False),
        ("Other", "", True),
    ]
    assert rows[-1]["members"] == 3 and rows[-1]["cost_micros"] == 600 and rows[-1]["share"] == "40.0"


def test_it_takes_the_usage_filters_and_presets(api_owner, traffic, org, key, deployment):
    rollup(org, key=key, deployment=deployment, days_ago=3, requests=100)
    assert api_owner.get(URL, {"range": "today"}).json()["totals"]["requests"] == 0  # today is hourly: none
    assert api_owner.get(URL, {"range": "today", "period": "day"}).json()["totals"]["requests"] == 15
    assert api_owner.get(URL, {"range": "7d"}).json()["totals"]["requests"] == 115
    assert api_owner.get(URL, {"key": key.pk, "by": "key"}).json()["rows"][0]["requests"] == 101


@pytest.mark.parametrize(
    "params",
    [
        {"by": "team"},
        {"top": 0},
        {"top": 51},
        {"top": "x"},
        {"range": "forever"},
        {"start": "2026-02-01", "end": "2026-01-01"},
        {"start": "1999-12-31"},
        {"key": 10**30},
    ],
)
def test_bad_parameters_are_a_400(api_owner, traffic, params):
    assert api_owner.get(URL, params).status_code == 400


def test_another_orgs_key_is_refused_and_outsiders_see_no_such_org(api_owner, api_outsider, traffic, other_key):
    assert api_owner.get(URL, {"key": other_key.pk}).status_code == 400
    assert api_outsider.get(URL).status_code == 404


def test_usage_per_hour_over_30_days_is_narrowed_and_says_from_when(api_owner, org, key, deployment):
    rollup(org, period="hour", hours_ago=2, key=key, deployment=deployment, requests=9)
    body = api_owner.get("/api/orgs/acme/usage/", {"period": "hour"}).json()
    assert len(body["buckets"]) == 14 * 24 and body["totals"]["requests"] == 9
    assert body["narrowed_from"] == (today() - timedelta(days=29)).date().isoformat()
    assert body["start"] == (today() - timedelta(days=13)).date().isoformat()
    plain = api_owner.get("/api/orgs/acme/usage/").json()
    assert plain["narrowed_from"] is None and len(plain["buckets"]) == 30


def test_statements_carry_their_status_and_errors(api_member, org, key, deployment):
    closed = Statement.objects.create(org=org, month=date(2026, 9, 1), requests=5)
    StatementLine.objects.create(statement=closed, deployment_name="m", requests=5, errors=2)
    rollup(org, key=key, deployment=deployment, requests=4, errors=1)
    running = build_statement(org, timezone.now())
    listed = {s["month"]: s for s in api_member.get("/api/orgs/acme/statements/").json()["results"]}
    assert listed["2026-09"]["status"] == "issued" and listed["2026-09"]["errors"] == 2
    current = listed[f"{running.month:%Y-%m}"]
    assert current["status"] == "running" and current["errors"] == 1 and current["requests"] == 4
