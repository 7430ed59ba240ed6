"""Statements say whether their month is running, closing or issued; the Total row has its errors;
each statement downloads as CSV (lines and total), for members too, never another org's."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from billing.models import Statement, StatementLine, StatementStatus
from billing.periods import month_start
from billing.statements import build_statement
from dashboard.tests.usage_data import rollup

pytestmark = pytest.mark.django_db


def closed_statement(org, deployment) -> Statement:
    st = Statement.objects.create(
        org=org, month=date(2026, 9, 1), requests=30, input_tokens=3000, total_micros=4_560_000
    )
    StatementLine.objects.create(
        statement=st,
        deployment=deployment,
        deployment_name="gemma-tunnel",
        requests=20,
        errors=3,
        cost_micros=4_000_000,
    )
    StatementLine.objects.create(statement=st, deployment_name="", requests=10, errors=4, cost_micros=560_000)
    return st


def test_the_status_follows_the_month_and_when_it_was_built(org):
    st = Statement(org=org, month=date(2026, 10, 1), updated_at=datetime(2026, 10, 31, 23, 5, tzinfo=UTC))
    assert st.status_at(datetime(2026, 10, 31, 23, 59, tzinfo=UTC)) == StatementStatus.RUNNING
    assert st.status_at(datetime(2026, 11, 1, 0, 1, tzinfo=UTC)) == StatementStatus.CLOSING
    st.updated_at = datetime(2026, 11, 1, 0, 5, tzinfo=UTC)
    assert st.status_at(datetime(2026, 11, 1, 0, 6, tzinfo=UTC)) == StatementStatus.ISSUED
    december = Statement(org=org, month=date(2026, 12, 1), updated_at=datetime(2027, 1, 1, tzinfo=UTC))
    assert december.status_at(datetime(2027, 1, 2, tzinfo=UTC)) == StatementStatus.ISSUED


def test_this_months_statement_is_running_not_issued(as_member, org, key, deployment):
    rollup(org, key=key, deployment=deployment, requests=5, errors=2, cost_micros=1_000)
    statement = build_statement(org, timezone.now())
    page = as_member.get(reverse("dashboard:statement_detail", args=[f"{statement.month:%Y-%m}"])).text
    assert "badge-info" in page and ">running<" in page
    assert "the month is not over" in page and "issued" not in page.split("<main")[1].split("</h1>")[0]
    listing = as_member.get(reverse("dashboard:statements")).text
    assert ">running<" in listing


def test_a_closed_month_built_after_it_ended_is_issued(as_member, org, deployment):
    closed_statement(org, deployment)
    page = as_member.get(reverse("dashboard:statement_detail", args=["2026-09"])).text
    assert ">issued<" in page and "issued " in page


def test_a_closed_month_last_built_before_its_end_is_closing(as_member, org, deployment):
    st = closed_statement(org, deployment)
    Statement.objects.filter(pk=st.pk).update(updated_at=datetime(2026, 9, 30, 23, 5, tzinfo=UTC))
    page = as_member.get(reverse("dashboard:statement_detail", args=["2026-09"])).text
    assert ">closing<" in page and "before it ended" in page


def test_the_total_row_has_the_errors_of_every_line(as_member, org, deployment):
    closed_statement(org, deployment)
    page = as_member.get(reverse("dashboard:statement_detail", args=["2026-09"])).text
    total = page.split("<tfoot>")[1].split("</tfoot>")[0]
    assert '<td class="num">7</td>' in total and "<td></td>" not in total
    listing = as_member.get(reverse("dashboard:statements")).text
    assert '<td class="num">7</td>' in listing


def test_the_list_makes_a_fixed_number_of_queries(as_owner, org, deployment, django_assert_max_num_queries):
    for month in range(1, 13):
        st = Statement.objects.create(org=org, month=date(2025, month, 1))
        StatementLine.objects.create(statement=st, deployment_name="m", errors=month)
    with django_assert_max_num_queries(12):
        page = as_owner.get(reverse("dashboard:statements")).text
    assert page.count(">issued<") == 12


def test_a_statement_downloads_as_csv_with_its_total(as_member, org, deployment):
    closed_statement(org, deployment)
    response = as_member.get(reverse("dashboard:statement_csv", args=["2026-09"]))
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert 'filename="tokios-statement-acme-2026-09.csv"' in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [r["model"] for r in rows] == ["(no model)", "gemma-tunnel", "Total"]
    assert rows[-1] == {
        "model": "Total",
        "requests": "30",
        "errors": "7",
        "input_tokens": "3000",
        "output_tokens": "0",
        "cost_usd": "4.560000",
        "cost_micros": "4560000",
    }
    assert rows[1]["cost_usd"] == "4.000000" and rows[1]["errors"] == "3"


def test_a_running_months_csv_says_so_in_its_name(as_owner, org, key, deployment):
    rollup(org, key=key, deployment=deployment, requests=1)
    build_statement(org, timezone.now())
    month = f"{month_start(timezone.now()):%Y-%m}"
    response = as_owner.get(reverse("dashboard:statement_csv", args=[month]))
    assert f'filename="tokios-statement-acme-{month}-running.csv"' in response["Content-Disposition"]


def test_another_orgs_statement_csv_is_a_404(as_outsider, org, deployment):
    closed_statement(org, deployment)
    assert as_outsider.get(reverse("dashboard:statement_csv", args=["2026-09"])).status_code == 404
    assert as_outsider.get(reverse("dashboard:statement_csv", args=["2026-13"])).status_code == 404
    assert as_outsider.get(reverse("dashboard:statement_csv", args=["junk"])).status_code == 404


def test_the_list_links_each_statements_csv(as_member, org, deployment):
    closed_statement(org, deployment)
    assert reverse("dashboard:statement_csv", args=["2026-09"]) in as_member.get(reverse("dashboard:statements")).text


def test_last_months_statement_rebuilt_early_in_the_month_reads_issued(org, key, deployment):
    now = timezone.now()
    last_month = month_start(now) - timedelta(days=1)
    rollup(org, key=key, deployment=deployment, days_ago=(now.date() - last_month.date()).days, requests=3)
    statement = build_statement(org, last_month)
    assert statement.requests == 3 and statement.status == StatementStatus.ISSUED
