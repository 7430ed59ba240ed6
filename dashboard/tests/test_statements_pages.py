from __future__ import annotations

from datetime import date

import pytest
from django.urls import reverse

from billing.models import Statement, StatementLine

pytestmark = pytest.mark.django_db


@pytest.fixture
def statement(org, deployment):
    st = Statement.objects.create(
        org=org, month=date(2026, 9, 1), requests=30, input_tokens=3000, output_tokens=300, total_micros=4_560_000
    )
    StatementLine.objects.create(
        statement=st,
        deployment=deployment,
        deployment_name="gemma-tunnel",
        requests=20,
        input_tokens=2000,
        output_tokens=200,
        cost_micros=4_000_000,
    )
    StatementLine.objects.create(
        statement=st,
        deployment=None,
        deployment_name="retired-model",
        requests=10,
        input_tokens=1000,
        output_tokens=100,
        cost_micros=560_000,
    )
    return st


@pytest.fixture
def other_statement(other_org):
    return Statement.objects.create(org=other_org, month=date(2026, 8, 1), total_micros=999_000_000)


def test_members_see_the_list_of_monthly_statements(as_member, statement, other_statement):
    page = as_member.get(reverse("dashboard:statements")).text
    assert "September 2026" in page and "$4.56" in page
    assert "August 2026" not in page and "$999" not in page
    assert reverse("dashboard:statement_detail", args=["2026-09"]) in page


def test_a_statement_has_a_line_per_deployment(as_member, statement):
    response = as_member.get(reverse("dashboard:statement_detail", args=["2026-09"]))
    assert response.status_code == 200
    assert "gemma-tunnel" in response.text and "retired-model" in response.text
    assert "$4.00" in response.text and "$0.56" in response.text and "$4.56" in response.text


def test_another_orgs_statement_month_is_a_404(as_owner, statement, other_statement):
    assert as_owner.get(reverse("dashboard:statement_detail", args=["2026-08"])).status_code == 404
    assert as_owner.get(reverse("dashboard:statement_detail", args=["not-a-month"])).status_code == 404


def test_without_statements_the_page_says_when_the_first_comes(as_owner, org):
    assert "No statement yet" in as_owner.get(reverse("dashboard:statements")).text
