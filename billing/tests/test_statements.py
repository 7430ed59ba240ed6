from __future__ import annotations

import datetime as dt

from billing import rollups
from billing.models import Statement, StatementLine
from billing.statements import build_statement, build_statements
from billing.tasks import build_statements as build_statements_task

from .conftest import make_event, utc


def test_a_statement_has_a_line_per_deployment_with_exact_totals(org, key, deployment, deployment_b):
    make_event(org=org, key=key, deployment=deployment, at=utc(2026, 11, 3), tokens_in=1000, tokens_out=500)
    make_event(org=org, key=key, deployment=deployment, at=utc(2026, 11, 9), tokens_in=10, tokens_out=5, status=502)
    make_event(org=org, key=key, deployment=deployment_b, at=utc(2026, 11, 30, 23), tokens_in=7, tokens_out=3)
    rollups.roll_up()

    statement = build_statement(org, dt.date(2026, 11, 1))

    lines = {line.deployment_name: line for line in statement.lines.all()}
    assert set(lines) == {"gemma-small", "llama-big"}
    small = lines["gemma-small"]
    assert (small.requests, small.errors, small.input_tokens, small.output_tokens) == (2, 1, 1010, 505)
    assert small.cost_micros == deployment.cost_micros(1000, 500) + deployment.cost_micros(10, 5)
    assert lines["llama-big"].cost_micros == deployment_b.cost_micros(7, 3)
    assert statement.total_micros == small.cost_micros + lines["llama-big"].cost_micros
    assert statement.month == dt.date(2026, 11, 1)
    assert (statement.requests, statement.input_tokens, statement.output_tokens) == (3, 1017, 508)


def test_building_a_statement_twice_gives_the_same_statement(org, key, deployment):
    make_event(org=org, key=key, deployment=deployment, at=utc(2026, 11, 3), tokens_out=123)
    rollups.roll_up()

    first = build_statement(org, dt.date(2026, 11, 15))
    second = build_statement(org, dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC))

    assert first.pk == second.pk
    assert Statement.objects.count() == 1
    assert StatementLine.objects.count() == 1
    assert second.total_micros == deployment.cost_micros(10, 123)


def test_a_statement_counts_only_its_utc_month(org, key, deployment):
    make_event(org=org, key=key, deployment=deployment, at=utc(2026, 10, 31, 23, 59, 59), tokens_out=1)
    make_event(org=org, key=key, deployment=deployment, at=utc(2026, 11, 1, 0, 0, 0), tokens_out=10)
    make_event(org=org, key=key, deployment=deployment, at=utc(2026, 11, 30, 23, 59, 59), tokens_out=100)
    make_event(org=org, key=key, deployment=deployment, at=utc(2026, 12, 1), tokens_out=1000)
    rollups.roll_up()

    november = build_statement(org, dt.date(2026, 11, 1))

    assert november.output_tokens == 110
    assert november.requests == 2


def test_a_deleted_deployments_usage_stays_on_the_statement(org, key, deployment):
    make_event(org=org, key=key, deployment=deployment, at=utc(2026, 11, 3), tokens_out=40)
    rollups.roll_up()
    statement = build_statement(org, dt.date(2026, 11, 1))

    deployment.delete()

    line = StatementLine.objects.get(statement=statement)
    assert (line.deployment_id, line.deployment_name, line.output_tokens) == (None, "gemma-small", 40)
    rebuilt = build_statement(org, dt.date(2026, 11, 1))
    assert rebuilt.total_micros == statement.total_micros


def test_statements_are_built_for_every_org_with_usage_that_month(org, outsider_org, key, deployment):
    make_event(org=org, key=key, deployment=deployment, at=utc(2026, 11, 3))
    rollups.roll_up()

    assert build_statements(month=dt.date(2026, 11, 1)) == 1

    assert Statement.objects.filter(org=org).exists()
    assert not Statement.objects.filter(org=outsider_org).exists()


def test_the_hourly_task_also_closes_last_month_early_in_a_new_month(org, key, deployment, time_machine):
    make_event(org=org, key=key, deployment=deployment, at=utc(2026, 11, 30, 23, 59), tokens_out=5)
    make_event(org=org, key=key, deployment=deployment, at=utc(2026, 12, 1, 0, 1), tokens_out=7)
    time_machine.move_to(utc(2026, 12, 1, 0, 5), tick=False)

    assert build_statements_task() == 2

    months = dict(Statement.objects.values_list("month", "output_tokens"))
    assert months == {dt.date(2026, 11, 1): 5, dt.date(2026, 12, 1): 7}
