"""Deployments: live status, creation, prices, connector tokens and grants. Owners and admins only."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from accounts.models import SubmittedForm
from accounts.once import AlreadySubmitted, submit_once
from accounts.tenancy import OrgRequest, org_view, owned_or_404
from deployments.actions import (
    create_connector_token,
    create_deployment,
    grant_model,
    revoke_connector_token,
    revoke_grant,
    update_deployment,
)
from deployments.connector import connector_command, server_url
from deployments.models import ConnectorToken, Deployment, ModelGrant

from ..deployment_forms import RoutingForm, add_model_errors
from ..forms import GrantForm, PricesForm
from ..once import ConnectorTokenCreateForm, DeploymentCreateForm
from ..presence import online_ids
from .common import secret_page
from .deployment_state import live_context
from .once import already_created


@org_view(manage=True)
def deployment_list(request: OrgRequest) -> HttpResponse:
    own = list(Deployment.objects.for_org(request.org))
    shared = list(Deployment.objects.filter(grants__org=request.org).select_related("org"))
    online = online_ids(own + shared)
    return render(
        request,
        "dashboard/deployments.html",
        {"own": own, "shared": shared, "online": online, "form": DeploymentCreateForm(org=request.org)},
    )


def _prefilled(request: OrgRequest) -> dict:
    """The create form's starting values from the query (`?served_by=&upstream_model=&name=`): the
    links "Create a deployment for this model" on a deployment's page. Only ever initial values,
    cleaned like anything typed."""
    query = request.GET
    initial = {name: query[name][:limit] for name, limit in (("name", 64), ("upstream_model", 200)) if name in query}
    served_by = query.get("served_by", "")
    if served_by.isascii() and served_by.isdigit() and len(served_by) < 19:
        initial["served_by"] = int(served_by)
    return initial


@org_view(manage=True)
def deployment_create(request: OrgRequest) -> HttpResponse:
    form = DeploymentCreateForm(request.POST or None, org=request.org, initial=_prefilled(request))
    if request.method == "POST" and form.is_valid():
        # Submitted again (a reload, a double click): "already created", not a second try (dashboard/once.py).
        try:
            with submit_once(user=request.user, token=form.token, kind=SubmittedForm.Kind.DEPLOYMENT) as claim:
                deployment = create_deployment(org=request.org, created_by=request.user, **form.cleaned_data)
                claim.made(deployment, deployment.name)
        except AlreadySubmitted as done:
            return already_created(request, done.submitted)
        except ValidationError as exc:
            add_model_errors(form, exc, "name")
        else:
            if deployment.served_by is not None:
                messages.success(
                    request, f"Deployment {deployment.name} created; the connectors of {deployment.served_by} serve it."
                )
            else:
                messages.success(request, f"Deployment {deployment.name} created. Now create a connector token.")
            return redirect("dashboard:deployment_detail", pk=deployment.pk)
    return render(request, "dashboard/deployment_form.html", {"form": form})


def _detail_context(request: OrgRequest, deployment: Deployment, **forms) -> dict:
    context = {
        **live_context(request, deployment),  # connectors, history, uptime: refreshed by dashboard.js
        "tokens": deployment.connector_tokens.select_related("created_by"),
        "grants": deployment.grants.select_related("org").order_by("org__slug"),
        "command": connector_command(server_url(request)),
        "prices_form": PricesForm(
            initial={
                "upstream_model": deployment.upstream_model,
                "price_input_micros": deployment.price_input_micros,
                "price_output_micros": deployment.price_output_micros,
            }
        ),
        "token_form": ConnectorTokenCreateForm(),
        "grant_form": GrantForm(user=request.user),
        "routing_form": RoutingForm.for_deployment(deployment),
        "served": deployment.served_deployments.order_by("name"),
    }
    context.update(forms)
    if deployment.served_by_id is None:
        context["has_active_token"] = any(t.revoked_at is None for t in context["tokens"])
    return context


@org_view(manage=True)
def deployment_detail(request: OrgRequest, pk: int) -> HttpResponse:
    deployment = owned_or_404(Deployment, request.org, pk=pk)
    return render(request, "dashboard/deployment_detail.html", _detail_context(request, deployment))


@org_view(manage=True)
@require_POST
def deployment_prices(request: OrgRequest, pk: int) -> HttpResponse:
    deployment = owned_or_404(Deployment, request.org, pk=pk)
    form = PricesForm(request.POST)
    if form.is_valid():
        update_deployment(deployment=deployment, actor=request.user, **form.cleaned_data)
        messages.success(request, "Prices saved.")
        return redirect("dashboard:deployment_detail", pk=pk)
    return render(request, "dashboard/deployment_detail.html", _detail_context(request, deployment, prices_form=form))


@org_view(manage=True)
@require_POST
def deployment_routing(request: OrgRequest, pk: int) -> HttpResponse:
    deployment = owned_or_404(Deployment, request.org, pk=pk)
    form = RoutingForm(request.POST, deployment=deployment)
    if form.is_valid():
        try:
            update_deployment(deployment=deployment, actor=request.user, **form.changes())
        except ValidationError as exc:
            add_model_errors(form, exc)
            deployment.refresh_from_db()
        else:
            messages.success(request, "Routing saved.")
            return redirect("dashboard:deployment_detail", pk=pk)
    context = _detail_context(request, deployment, routing_form=form)
    return render(request, "dashboard/deployment_detail.html", context, status=400)


@org_view(manage=True)
@require_POST
def token_create(request: OrgRequest, pk: int) -> HttpResponse:
    deployment = owned_or_404(Deployment, request.org, pk=pk)
    form = ConnectorTokenCreateForm(request.POST)
    if not form.is_valid():
        return render(
            request, "dashboard/deployment_detail.html", _detail_context(request, deployment, token_form=form)
        )
    # Submitted again (a reload of the page with the secret): "already created", no second token.
    try:
        with submit_once(user=request.user, token=form.token, kind=SubmittedForm.Kind.CONNECTOR_TOKEN) as claim:
            token, secret = create_connector_token(
                deployment=deployment, name=form.cleaned_data["name"], created_by=request.user
            )
            claim.made(token, f"{token.prefix}… for {deployment.name}")
    except AlreadySubmitted as done:
        return already_created(request, done.submitted)
    except ValidationError as exc:  # a served deployment has no tokens of its own
        form.add_error(None, exc)
        context = _detail_context(request, deployment, token_form=form)
        return render(request, "dashboard/deployment_detail.html", context, status=400)
    return secret_page(
        request,
        title=f"Connector token for {deployment.name}",
        what="connector token",
        secret=secret,
        back_url=reverse("dashboard:deployment_detail", args=[deployment.pk]),
        command=connector_command(server_url(request), secret),
    )


@org_view(manage=True)
def token_revoke(request: OrgRequest, pk: int, token_pk: int) -> HttpResponse:
    token = owned_or_404(ConnectorToken, request.org, pk=token_pk, deployment_id=pk)
    if request.method == "POST":
        revoke_connector_token(token=token, actor=request.user)
        messages.success(request, f"Token {token.prefix}… revoked; connectors using it are disconnected.")
        return redirect("dashboard:deployment_detail", pk=pk)
    return render(
        request,
        "dashboard/confirm.html",
        {
            "title": f"Revoke connector token {token.prefix}…?",
            "body": f"Connectors using it are disconnected at once and {token.deployment.name} goes offline "
            "unless another connector with a different token is running.",
            "action": "Revoke token",
            "cancel_url": reverse("dashboard:deployment_detail", args=[pk]),
        },
    )


@org_view(manage=True)
@require_POST
def grant_create(request: OrgRequest, pk: int) -> HttpResponse:
    deployment = owned_or_404(Deployment, request.org, pk=pk)
    form = GrantForm(request.POST, user=request.user)
    if form.is_valid():
        try:
            grant_model(deployment=deployment, org=form.cleaned_data["org"], actor=request.user)
        except ValidationError as exc:
            form.add_error("org", exc)
        else:
            messages.success(request, f"{form.cleaned_data['org'].slug} can now call {deployment.name}.")
            return redirect("dashboard:deployment_detail", pk=pk)
    return render(request, "dashboard/deployment_detail.html", _detail_context(request, deployment, grant_form=form))


@org_view(manage=True)
@require_POST
def grant_revoke(request: OrgRequest, pk: int, grant_pk: int) -> HttpResponse:
    grant = owned_or_404(ModelGrant, request.org, pk=grant_pk, deployment_id=pk)
    revoke_grant(grant=grant, actor=request.user)
    messages.success(request, f"{grant.org.slug} can no longer call {grant.deployment.name}.")
    return redirect("dashboard:deployment_detail", pk=pk)
