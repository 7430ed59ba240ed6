from __future__ import annotations

from datetime import date

from django.http import Http404, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from accounts.tenancy import OrgRequest, org_view, owned_or_404, scoped
from billing.models import Statement
from billing.queries import month_to_date


@org_view
def statement_list(request: OrgRequest) -> HttpResponse:
    statements = scoped(Statement, request.org).order_by("-month")
    return render(
        request,
        "dashboard/statements.html",
        {"statements": statements, "month": month_to_date(request.org), "today": timezone.now().date()},
    )


@org_view
def statement_detail(request: OrgRequest, month: str) -> HttpResponse:
    try:
        first = date.fromisoformat(f"{month}-01")
    except ValueError:
        raise Http404("No such month.") from None
    statement = owned_or_404(Statement, request.org, month=first)
    return render(request, "dashboard/statement_detail.html", {"statement": statement, "lines": statement.lines.all()})
