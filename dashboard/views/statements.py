"""Monthly statements: the list (with this month so far, live), a statement's lines, and its CSV."""

from __future__ import annotations

import csv
import io
from datetime import date

from django.db.models import Prefetch, prefetch_related_objects
from django.http import Http404, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from accounts.tenancy import OrgRequest, org_view, owned_or_404, scoped
from billing.models import Statement, StatementLine, StatementStatus
from billing.queries import month_to_date
from lib.money import micros_to_usd


def _statement(request: OrgRequest, month: str) -> Statement:
    try:
        first = date.fromisoformat(f"{month}-01")
    except ValueError:
        raise Http404("No such month.") from None
    statement = owned_or_404(Statement, request.org, month=first)
    prefetch_related_objects([statement], "lines")  # read twice: the rows, and the errors total
    return statement


@org_view
def statement_list(request: OrgRequest) -> HttpResponse:
    statements = (
        scoped(Statement, request.org)
        .order_by("-month")
        .prefetch_related(Prefetch("lines", queryset=StatementLine.objects.only("statement_id", "errors")))
    )
    return render(
        request,
        "dashboard/statements.html",
        {"statements": statements, "month": month_to_date(request.org), "today": timezone.now().date()},
    )


@org_view
def statement_detail(request: OrgRequest, month: str) -> HttpResponse:
    statement = _statement(request, month)
    return render(
        request,
        "dashboard/statement_detail.html",
        {"statement": statement, "lines": statement.lines.all(), "status": statement.status},
    )


@org_view
def statement_csv(request: OrgRequest, month: str) -> HttpResponse:
    """The statement's lines and total, one row each; a running month's file says so in its name."""
    statement = _statement(request, month)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["model", "requests", "errors", "input_tokens", "output_tokens", "cost_usd", "cost_micros"])
    for line in statement.lines.all():
        writer.writerow(
            [
                line.deployment_name or "(no model)",
                line.requests,
                line.errors,
                line.input_tokens,
                line.output_tokens,
                micros_to_usd(line.cost_micros),
                line.cost_micros,
            ]
        )
    writer.writerow(
        [
            "Total",
            statement.requests,
            statement.errors,
            statement.input_tokens,
            statement.output_tokens,
            micros_to_usd(statement.total_micros),
            statement.total_micros,
        ]
    )
    status = statement.status
    suffix = "" if status == StatementStatus.ISSUED else f"-{status}"
    response = HttpResponse(out.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = (
        f'attachment; filename="tokios-statement-{request.org.slug}-{statement.month:%Y-%m}{suffix}.csv"'
    )
    return response
