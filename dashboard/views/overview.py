from __future__ import annotations

from django.http import HttpResponse
from django.shortcuts import render

from accounts.tenancy import OrgRequest, can_manage, org_view
from billing.models import UsageEvent
from billing.queries import month_to_date
from deployments.models import Deployment

from ..presence import online_ids

RECENT_ERRORS = 10


@org_view
def overview(request: OrgRequest) -> HttpResponse:
    org = request.org
    deployments = list(Deployment.objects.usable_by(org).select_related("org"))
    # Errors are the one list here not served from rollups: the last few rows of the (org, created_at)
    # index, which stays cheap however large the table grows.
    recent_errors = (
        UsageEvent.objects.for_org(org)
        .filter(status_code__gte=400)
        .select_related("api_key", "deployment")
        .order_by("-created_at")[:RECENT_ERRORS]
    )
    context = {
        "month": month_to_date(org),
        "budget": org.monthly_budget_micros,
        "deployments": deployments,
        "online": online_ids(deployments),
        "recent_errors": recent_errors,
        "can_manage": can_manage(request.membership),
    }
    return render(request, "dashboard/overview.html", context)
