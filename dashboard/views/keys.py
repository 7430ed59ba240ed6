"""API keys: list, create (secret shown once), edit access/limits/budget, revoke. Owners and admins only."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse

from accounts.actions import revoke_api_key
from accounts.models import ApiKey
from accounts.tenancy import OrgRequest, org_view, owned_or_404
from deployments.actions import create_api_key, update_api_key

from ..forms import ApiKeyForm
from .common import secret_page


@org_view(manage=True)
def key_list(request: OrgRequest) -> HttpResponse:
    keys = ApiKey.objects.for_org(request.org).select_related("created_by").prefetch_related("allowed_deployments")
    return render(request, "dashboard/keys.html", {"keys": keys})


@org_view(manage=True)
def key_create(request: OrgRequest) -> HttpResponse:
    form = ApiKeyForm(request.POST or None, org=request.org)
    if request.method == "POST" and form.is_valid():
        try:
            key, secret = create_api_key(org=request.org, created_by=request.user, **form.key_fields())
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            base = request.build_absolute_uri("/v1").rstrip("/")
            return secret_page(
                request,
                title=f"API key “{key.name}” created",
                what="API key",
                secret=secret,
                back_url=reverse("dashboard:keys"),
                usage_example=f"OPENAI_BASE_URL={base} OPENAI_API_KEY={secret}",
            )
    return render(request, "dashboard/key_form.html", {"form": form, "creating": True})


@org_view(manage=True)
def key_edit(request: OrgRequest, pk: int) -> HttpResponse:
    key = owned_or_404(ApiKey, request.org, pk=pk)
    if key.is_revoked:
        messages.error(request, f"Key {key.prefix}… is revoked; create a new key instead.")
        return redirect("dashboard:keys")
    form = ApiKeyForm.for_key(key, request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            update_api_key(key=key, actor=request.user, **form.key_fields())
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, f"Key {key.prefix}… saved.")
            return redirect("dashboard:keys")
    return render(request, "dashboard/key_form.html", {"form": form, "key": key, "creating": False})


@org_view(manage=True)
def key_revoke(request: OrgRequest, pk: int) -> HttpResponse:
    key = owned_or_404(ApiKey, request.org, pk=pk)
    if request.method == "POST":
        revoke_api_key(key=key, actor=request.user)
        messages.success(request, f"Key “{key.name}” ({key.prefix}…) revoked. Requests using it now get 401.")
        return redirect("dashboard:keys")
    return render(
        request,
        "dashboard/confirm.html",
        {
            "title": f"Revoke API key “{key.name}”?",
            "body": f"Every request with {key.prefix}… is refused within a second, everywhere. This cannot be undone.",
            "action": "Revoke key",
            "cancel_url": reverse("dashboard:keys"),
        },
    )
