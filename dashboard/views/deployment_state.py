"""A deployment's state: switching it off and on, deleting it (after a confirmation that says what
goes with it), and the live part of its page (connectors, history, uptime), which dashboard.js
refreshes from `deployment_live` every few seconds. Owners and admins only."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from accounts.tenancy import OrgRequest, org_view, owned_or_404
from alerts.connector_history import recent_events, uptimes
from deployments.connector import connector_command, server_url
from deployments.lifecycle import delete_deployment, deletion_impact, disable_deployment, enable_deployment
from deployments.models import Deployment

from ..deployment_forms import DeleteDeploymentForm
from ..presence import announced_models, labelled, live_infos, model_rows

HISTORY_ROWS = 50
POLL_SECONDS = 5  # how often the page asks (dashboard.js reads it from the page)


def live_context(request: OrgRequest, deployment: Deployment) -> dict:
    """What the live part of the deployment page shows (also on its first render). A served deployment
    shows its server's connectors, history and uptime: those are the ones that carry its requests."""
    pool = deployment.served_by or deployment
    infos = live_infos(pool.id)
    return {
        "deployment": deployment,
        "pool": pool,
        "connectors": labelled(pool.id, infos),
        "announced_models": model_rows(pool, announced_models(infos)),
        "command": connector_command(server_url(request)),
        "has_active_token": pool.connector_tokens.filter(revoked_at__isnull=True).exists(),
        "history": recent_events(pool, limit=HISTORY_ROWS),
        "uptimes": uptimes(pool, now=timezone.now(), live=infos),
        "poll_seconds": POLL_SECONDS,
    }


@org_view(manage=True)
@require_GET
@never_cache
def deployment_live(request: OrgRequest, pk: int) -> HttpResponse:
    """The live part of the page as HTML fragments (rendered by the page's own templates), with the
    state as data. dashboard.js swaps a fragment in only when it changed."""
    deployment = owned_or_404(Deployment, request.org, pk=pk)
    context = live_context(request, deployment)
    connectors = context["connectors"]
    state = "disabled" if deployment.is_disabled else ("online" if connectors else "offline")
    return JsonResponse(
        {
            "state": state,
            "connectors": [c.connector_id for c in connectors],
            "fragments": {
                "status": render_to_string("dashboard/_deployment_status.html", context, request),
                "deployment-connectors": render_to_string("dashboard/_deployment_connectors.html", context, request),
                "deployment-history": render_to_string("dashboard/_deployment_history.html", context, request),
                "deployment-models": render_to_string("dashboard/_deployment_models.html", context, request),
            },
        }
    )


@org_view(manage=True)
@require_POST
def deployment_disable(request: OrgRequest, pk: int) -> HttpResponse:
    deployment = owned_or_404(Deployment, request.org, pk=pk)
    if disable_deployment(deployment=deployment, actor=request.user):
        messages.success(
            request,
            f"{deployment.name} is disabled: requests get 503 deployment_disabled; connectors stay connected.",
        )
    else:
        messages.info(request, f"{deployment.name} was already disabled.")
    return redirect("dashboard:deployment_detail", pk=pk)


@org_view(manage=True)
@require_POST
def deployment_enable(request: OrgRequest, pk: int) -> HttpResponse:
    deployment = owned_or_404(Deployment, request.org, pk=pk)
    if enable_deployment(deployment=deployment, actor=request.user):
        messages.success(request, f"{deployment.name} is enabled again.")
    else:
        messages.info(request, f"{deployment.name} was already enabled.")
    return redirect("dashboard:deployment_detail", pk=pk)


@org_view(manage=True)
def deployment_delete(request: OrgRequest, pk: int) -> HttpResponse:
    deployment = owned_or_404(Deployment, request.org, pk=pk)
    form = DeleteDeploymentForm(request.POST or None, name=deployment.name)
    if request.method == "POST" and form.is_valid():
        name = deployment.name
        impact = delete_deployment(deployment=deployment, actor=request.user)
        closed = (
            f" {impact.active_tokens} connector token(s) revoked; live connectors closed."
            if impact.active_tokens
            else ""
        )
        messages.success(request, f"Deployment {name} deleted; its usage history is kept.{closed}")
        return redirect("dashboard:deployments")
    status = 400 if form.errors else 200
    context = {"deployment": deployment, "impact": deletion_impact(deployment), "form": form}
    return render(request, "dashboard/deployment_delete.html", context, status=status)
