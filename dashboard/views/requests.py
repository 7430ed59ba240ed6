"""The request log: every /v1 request of the org (a member: of their own keys), filtered, searched
by request id, paged by keyset (billing.request_log), and one request in detail."""

from __future__ import annotations

from django.conf import settings
from django.http import Http404, HttpResponse
from django.shortcuts import render

from accounts.tenancy import OrgRequest, can_manage, org_view
from billing.request_log import Cursor, RequestLogFilter, find_request
from deployments.models import Deployment

PAGE_PARAMS = ("before", "after")


def _page_query(request: OrgRequest, name: str | None = None, cursor: Cursor | None = None) -> str:
    """The current filters as a query string, with `name=cursor` in place of any page asked for."""
    query = request.GET.copy()
    for param in PAGE_PARAMS:
        query.pop(param, None)
    if name is not None and cursor is not None:
        query[name] = str(cursor)
    return query.urlencode()


@org_view
def request_log(request: OrgRequest) -> HttpResponse:
    form = RequestLogFilter(request.GET, membership=request.membership)
    context = {
        "form": form,
        "sees_all": can_manage(request.membership),
        "retention_days": settings.USAGE_RETENTION_DAYS,
        "model_names": Deployment.objects.usable_by(request.org).order_by("name").values_list("name", flat=True),
    }
    page = form.page() if form.is_valid() else None
    if page is None:  # the form says why
        return render(request, "dashboard/requests.html", context, status=400)
    context.update(
        page=page,
        newest_query=_page_query(request),
        newer_query=_page_query(request, "after", page.newer),
        older_query=_page_query(request, "before", page.older),
    )
    return render(request, "dashboard/requests.html", context)


@org_view
def request_detail(request: OrgRequest, request_id: str) -> HttpResponse:
    event = find_request(request.membership, request_id)
    if event is None:
        raise Http404("No such request in this organisation's log.")
    return render(
        request,
        "dashboard/request_detail.html",
        {"event": event, "retention_days": settings.USAGE_RETENTION_DAYS},
    )
