"""The usage page answers questions: breakdowns by model and by key (top N with "other"), date presets
as links, "per hour" narrowing the range itself with a notice, tokens and cost side by side."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.urls import reverse

from accounts.actions import create_api_key
from dashboard.tests.usage_data import rollup, today
from deployments.actions import create_deployment

pytestmark = pytest.mark.django_db

URL = reverse("dashboard:usage")


@pytest.fixture
def traffic(org, key, deployment, other_org, other_key):
    """Twelve keys and three models with usage; globex's usage must not show."""
    keys = [key] + [create_api_key(org=org, name=f"worker-{i:02d}")[0] for i in range(11)]
    models = [deployment, create_deployment(org=org, name="qwen-small"), create_deployment(org=org, name="llama-big")]
    for i, k in enumerate(keys):
        rollup(
            org,
            key=k,
            deployment=models[i % 3],
            requests=10 + i,
            errors=i % 2,
            input_tokens=1000 * (i + 1),
            output_tokens=100 * (i + 1),
            cost_micros=1_000_000 * (i + 1),
        )
    rollup(other_org, key=other_key, requests=5, cost_micros=999_000_000)
    return keys, models


def table(page: str, table_id: str) -> str:
    return page.split(f'<table id="{table_id}">')[1].split("</table>")[0]


def row_heads(html: str) -> list[str]:
    bodies = html.split("<tbody>")[1].split("</tbody>")[0]
    return [
        re.sub(r"<[^>]+>|\s+", " ", head).strip() for head in re.findall(r'<th scope="row">(.*?)</th>', bodies, re.S)
    ]


def test_members_see_the_top_ten_keys_and_the_rest_as_other(as_member, traffic):
    keys, _ = traffic
    response = as_member.get(URL)
    assert response.status_code == 200
    by_key = response.context["by_key"]
    assert [row.label for row in by_key.rows[:3]] == ["worker-10", "worker-09", "worker-08"]
    assert len(by_key.rows) == 11 and by_key.rows[-1].other and by_key.rows[-1].members == 2
    assert by_key.rows[-1].cost_micros == 1_000_000 + 2_000_000  # the two cheapest keys
    heads = row_heads(table(response.text, "by-key"))
    assert heads[0].startswith("worker-10") and heads[-1] == "Other (2 more)"
    assert "$78.00" in table(response.text, "by-key")  # the total: 1 + 2 + … + 12 dollars
    assert "$999" not in response.text


def test_the_model_breakdown_sums_each_models_keys(as_owner, traffic):
    _, models = traffic
    rows = as_owner.get(URL).context["by_model"].rows
    # keys 0,3,6,9 → model 0 (1+4+7+10 = 22 $), 1,4,7,10 → model 1 (26 $), 2,5,8,11 → model 2 (30 $)
    assert [(row.label, row.cost_micros) for row in rows] == [
        ("llama-big", 30_000_000),
        ("qwen-small", 26_000_000),
        (models[0].name, 22_000_000),
    ]
    assert [str(row.share) for row in rows] == ["38.5", "33.3", "28.2"]


def test_top_sets_how_many_rows_come_before_other(as_owner, traffic):
    response = as_owner.get(URL, {"top": "2"})
    assert [row.label for row in response.context["by_model"].rows] == ["llama-big", "qwen-small", "Other"]
    assert len(response.context["by_key"].rows) == 3


def test_tokens_and_cost_sit_side_by_side_in_the_breakdown_and_the_charts(as_owner, traffic):
    page = as_owner.get(URL).text
    head = table(page, "by-model").split("</thead>")[0]
    assert head.index("Output tokens") < head.index("Cost") < head.index("Share of cost")
    pair = page.split('<div class="charts-pair">')[1].split("</div>")[0]
    assert "Tokens</title>" in pair and "Cost (USD)</title>" in pair


def test_the_breakdown_follows_the_key_filter(as_owner, traffic):
    keys, _ = traffic
    response = as_owner.get(URL, {"key": keys[5].pk})
    assert [row.label for row in response.context["by_key"].rows] == [keys[5].name]
    assert [row.cost_micros for row in response.context["by_model"].rows] == [6_000_000]


def test_an_org_without_usage_shows_no_breakdown(as_owner, org):
    page = as_owner.get(URL).text
    assert 'id="by-model"' not in page and "No usage in this range" in page


def test_presets_are_links_keeping_the_other_filters(as_owner, traffic, key):
    page = as_owner.get(URL, {"key": key.pk, "start": "2026-01-01"}).text
    nav = page.split('aria-label="Date range"')[1].split("</nav>")[0]
    labels = re.findall(r">([^<>]+)</a>", nav)
    assert labels == ["Today", "7 days", "30 days", "This month", "Last month"]
    assert f"key={key.pk}" in nav and "range=7d" in nav and "start=" not in nav
    assert "aria-current" not in nav  # 2026-01-01 to today is no preset


def test_the_default_range_is_marked_as_the_30_days_preset(as_owner, org):
    nav = as_owner.get(URL).text.split('aria-label="Date range"')[1].split("</nav>")[0]
    assert re.search(r'aria-current="true">30 days<', nav)


def test_the_today_preset_shows_todays_hours(as_owner, org, key, deployment):
    rollup(org, period="hour", hours_ago=0, key=key, deployment=deployment, requests=4)
    response = as_owner.get(URL, {"range": "today"})
    assert response.status_code == 200 and response.context["period"] == "hour"
    assert len(response.context["rows"]) == 24 and response.context["totals"]["requests"] == 4
    assert re.search(r'aria-current="true">Today<', response.text)


def test_per_hour_over_30_days_narrows_to_14_and_says_so(as_owner, org, key, deployment):
    rollup(org, period="hour", hours_ago=1, key=key, deployment=deployment, requests=4)
    rollup(org, period="hour", hours_ago=24 * 20, key=key, deployment=deployment, requests=100)
    response = as_owner.get(URL, {"period": "hour"})
    assert response.status_code == 200
    assert len(response.context["rows"]) == 14 * 24
    assert response.context["totals"]["requests"] == 4
    first = (today() - timedelta(days=13)).date().isoformat()
    asked = (today() - timedelta(days=29)).date().isoformat()
    notice = response.text.split('id="narrowed"')[1].split("</p>")[0]
    assert "at most 14 days" in notice and first in notice and asked in notice
    assert f'name="start" value="{first}"' in response.text
    assert [row.requests for row in response.context["by_key"].rows] == [4]
