"""Monthly statements: what an org used and owes per deployment, rebuilt from the daily rollups."""

from __future__ import annotations

from datetime import date, datetime

from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.models import Organization
from deployments.models import Deployment

from .models import Statement, StatementLine, UsageRollup
from .periods import month_start, next_month_start
from .sums import saturated, split_sums, totals

LINE_FIELDS = ("requests", "errors", "input_tokens", "output_tokens", "cost_micros")
LARGE_FIELDS = ("input_tokens", "output_tokens", "cost_micros")  # summed saturating (billing.sums)


def build_statement(org: Organization, month: date | datetime) -> Statement:
    """Create or recompute `org`'s statement for the UTC month containing `month`.

    Idempotent: the lines are recomputed from the daily rollups every time, so building twice, or
    from two workers at once (the statement row is locked), gives the same statement.
    """
    start = month_start(month)
    end = next_month_start(start)
    with transaction.atomic():
        statement, _ = Statement.objects.get_or_create(org=org, month=start.date())
        statement = Statement.objects.select_for_update().get(pk=statement.pk)
        rows = list(
            UsageRollup.objects.for_org(org)
            .daily()
            .between(start, end)
            .values("deployment_id")
            .annotate(requests=Sum("requests"), errors=Sum("errors"), **split_sums(*LARGE_FIELDS))
            .order_by("deployment_id")
        )
        names = dict(
            Deployment.objects.filter(pk__in=[r["deployment_id"] for r in rows if r["deployment_id"]]).values_list(
                "pk", "name"
            )
        )
        statement.lines.all().delete()
        lines = [
            StatementLine(
                statement=statement,
                deployment_id=row["deployment_id"],
                # Usage of deleted deployments (and of unknown models) lands on the line without one.
                deployment_name=names.get(row["deployment_id"], ""),
                requests=int(row["requests"] or 0),
                errors=int(row["errors"] or 0),
                **totals(row, *LARGE_FIELDS),
            )
            for row in rows
        ]
        StatementLine.objects.bulk_create(lines)
        statement.requests = saturated(sum(line.requests for line in lines))
        statement.input_tokens = saturated(sum(line.input_tokens for line in lines))
        statement.output_tokens = saturated(sum(line.output_tokens for line in lines))
        statement.total_micros = saturated(sum(line.cost_micros for line in lines))
        statement.save()
    return statement


def build_statements(*, month: date | datetime | None = None) -> int:
    """Build the statement of every org with usage in the month (default: this month). Returns how many."""
    start = month_start(month or timezone.now())
    org_ids = (
        UsageRollup.objects.daily()
        .between(start, next_month_start(start))
        .order_by()
        .values_list("org_id", flat=True)
        .distinct()
    )
    count = 0
    for org in Organization.objects.filter(pk__in=list(org_ids)):
        build_statement(org, start)
        count += 1
    return count
