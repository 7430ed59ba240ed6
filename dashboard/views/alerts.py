"""Alerts: the org's rules, its webhook endpoints (secret shown once), recent alerts and the delivery
log. Owners and admins only."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from accounts.tenancy import OrgRequest, org_view, owned_or_404
from alerts.actions import create_endpoint, delete_endpoint, rotate_secret, send_test, update_endpoint, update_settings
from alerts.forms import AlertSettingsForm, WebhookEndpointForm
from alerts.models import Alert, AlertSettings, Delivery, WebhookEndpoint

from .common import secret_page

RECENT_ALERTS = 20
RECENT_DELIVERIES = 30


def _page(request: OrgRequest, *, status: int = 200, **forms) -> HttpResponse:
    context = {
        "settings_form": AlertSettingsForm(instance=AlertSettings.for_org(request.org)),
        "endpoint_form": WebhookEndpointForm(),
        "endpoints": WebhookEndpoint.objects.for_org(request.org),
        "alerts": Alert.objects.for_org(request.org)[:RECENT_ALERTS],
        "deliveries": Delivery.objects.for_org(request.org)
        .select_related("alert", "endpoint")
        .prefetch_related("attempt_log")[:RECENT_DELIVERIES],
        **forms,
    }
    return render(request, "dashboard/alerts.html", context, status=status)


@org_view(manage=True)
def alerts(request: OrgRequest) -> HttpResponse:
    return _page(request)


@org_view(manage=True)
@require_POST
def alert_settings(request: OrgRequest) -> HttpResponse:
    form = AlertSettingsForm(request.POST, instance=AlertSettings.for_org(request.org))
    if form.is_valid():
        try:
            update_settings(org=request.org, actor=request.user, **form.settings_fields())
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, "Alert settings saved.")
            return redirect("dashboard:alerts")
    return _page(request, status=400, settings_form=form)


@org_view(manage=True)
@require_POST
def webhook_create(request: OrgRequest) -> HttpResponse:
    form = WebhookEndpointForm(request.POST)
    if form.is_valid():
        try:
            endpoint, secret = create_endpoint(org=request.org, created_by=request.user, **form.cleaned_data)
        except ValidationError as exc:
            form.add_error(None, exc)  # a message per field ("url"), or for the form (too many endpoints)
        else:
            return secret_page(
                request,
                title=f"Webhook to {endpoint.host} added",
                what="webhook signing secret",
                secret=secret,
                back_url=reverse("dashboard:alerts"),
            )
    return _page(request, status=400, endpoint_form=form)


@org_view(manage=True)
def webhook_rotate(request: OrgRequest, pk: int) -> HttpResponse:
    endpoint = owned_or_404(WebhookEndpoint, request.org, pk=pk)
    if request.method == "POST":
        endpoint, secret = rotate_secret(endpoint=endpoint)
        return secret_page(
            request,
            title=f"New signing secret for {endpoint.host}",
            what="webhook signing secret",
            secret=secret,
            back_url=reverse("dashboard:alerts"),
        )
    return render(
        request,
        "dashboard/confirm.html",
        {
            "title": f"Rotate the signing secret of the webhook to {endpoint.host}?",
            "body": "You get a new secret once. The old one keeps signing too for 24 hours, so the receiver can switch.",
            "action": "Rotate secret",
            "cancel_url": reverse("dashboard:alerts"),
        },
    )


@org_view(manage=True)
def webhook_delete(request: OrgRequest, pk: int) -> HttpResponse:
    endpoint = owned_or_404(WebhookEndpoint, request.org, pk=pk)
    if request.method == "POST":
        delete_endpoint(endpoint=endpoint)
        messages.success(request, f"Webhook to {endpoint.host} deleted.")
        return redirect("dashboard:alerts")
    return render(
        request,
        "dashboard/confirm.html",
        {
            "title": f"Delete the webhook to {endpoint.host}?",
            "body": "It receives no more alerts; its past deliveries stay in the log.",
            "action": "Delete webhook",
            "cancel_url": reverse("dashboard:alerts"),
        },
    )


@org_view(manage=True)
@require_POST
def webhook_toggle(request: OrgRequest, pk: int) -> HttpResponse:
    endpoint = owned_or_404(WebhookEndpoint, request.org, pk=pk)
    try:
        update_endpoint(endpoint=endpoint, enabled=not endpoint.enabled)
    except ValidationError as exc:  # its URL broke a rule set since (e.g. private addresses refused now)
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"Webhook to {endpoint.host} {'enabled' if endpoint.enabled else 'disabled'}.")
    return redirect("dashboard:alerts")


@org_view(manage=True)
@require_POST
def webhook_test(request: OrgRequest, pk: int) -> HttpResponse:
    endpoint = owned_or_404(WebhookEndpoint, request.org, pk=pk)
    send_test(endpoint=endpoint)
    messages.success(request, f"A test alert is on its way to {endpoint.host}; see the delivery log below.")
    return redirect("dashboard:alerts")
