from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from django.core.paginator import Paginator
from django.db.models import Q
from django.http import HttpResponse
from django.shortcuts import render

from accounts.models import AuditLog
from accounts.tenancy import OrgRequest, org_view
from deployments.models import ConnectorToken

from ..forms import AuditFilterForm

PAGE_SIZE = 50


@org_view(manage=True)
def audit_log(request: OrgRequest) -> HttpResponse:
    form = AuditFilterForm(request.GET or None)
    entries = AuditLog.objects.for_org(request.org).select_related("actor")
    if form.is_valid():
        data = form.cleaned_data
        if data["action"]:
            entries = entries.filter(action=data["action"])
        if data["actor"]:
            entries = entries.filter(Q(actor__email__icontains=data["actor"]) | Q(actor_label__icontains=data["actor"]))
        if data["target"]:
            # Connector tokens are named by prefix in their rows, like keys (AuditLog.matching).
            tokens = ConnectorToken.objects.filter(deployment__org=request.org, name__icontains=data["target"])
            entries = entries.matching(data["target"], named_prefixes=tokens.values("prefix"))
        if data["start"]:
            entries = entries.filter(created_at__gte=datetime.combine(data["start"], time.min, tzinfo=UTC))
        if data["end"]:
            end = datetime.combine(data["end"] + timedelta(days=1), time.min, tzinfo=UTC)
            entries = entries.filter(created_at__lt=end)
    elif form.is_bound:
        entries = entries.none()  # the form says what is wrong; every entry would look like a match
    page = Paginator(entries, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {"form": form, "page": page, "query": query.urlencode()}
    return render(request, "dashboard/audit.html", context, status=400 if form.errors else 200)
