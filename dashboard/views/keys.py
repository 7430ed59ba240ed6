"""API keys: a list with spend, budget share and status (search, status filter), the key page, and
what admins do to a key: create (secret shown once; the form makes one key however often it is
submitted), edit access/limits/budget, rotate with a grace period, pause and resume, change the
expiry, revoke. Owners and admins only."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlencode

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from accounts.actions import revoke_api_key
from accounts.keys import end_rotation_grace, pause_api_key, resume_api_key, rotate_api_key, set_api_key_expiry
from accounts.models import ApiKey, SubmittedForm
from accounts.once import AlreadySubmitted, submit_once
from accounts.tenancy import OrgRequest, org_view, owned_or_404
from billing.key_usage import NO_USAGE, KeyFilter, find_keys, usage_by_key
from deployments.actions import create_api_key, update_api_key

from ..forms import ApiKeyForm
from ..key_forms import ExpiryForm, KeyFilterForm, RotateForm
from ..once import ApiKeyCreateForm
from .common import secret_page
from .once import already_created

PAGE_SIZE = 50


def _usage_example(request: OrgRequest, secret: str) -> str:
    base = request.build_absolute_uri("/v1").rstrip("/")
    return f"OPENAI_BASE_URL={base} OPENAI_API_KEY={secret}"


def _page_query(query: str, status: str, page: int) -> str:
    return urlencode({"q": query, "status": status, "page": page})


@org_view(manage=True)
def key_list(request: OrgRequest) -> HttpResponse:
    filters = KeyFilterForm(request.GET)
    query, status, page = filters.values()
    start = (page - 1) * PAGE_SIZE
    # One row past the page says whether there is a next one, without counting every key.
    found = list(
        find_keys(request.org, status=status, query=query)
        .select_related("created_by")
        .prefetch_related("allowed_deployments")[start : start + PAGE_SIZE + 1]
    )
    keys, more = found[:PAGE_SIZE], len(found) > PAGE_SIZE
    usage = usage_by_key(request.org, keys)
    rows = [(key, usage.get(key.pk, NO_USAGE)) for key in keys]
    hidden = 0
    if status == KeyFilter.CURRENT and not query and not keys and page == 1:
        hidden = ApiKey.objects.for_org(request.org).count()
    return render(
        request,
        "dashboard/keys.html",
        {
            "rows": rows,
            "filters": filters,
            "query": query,
            "status": status,
            "filtered": bool(query) or status != KeyFilter.CURRENT,
            "page": page,
            "previous_query": _page_query(query, status, page - 1) if page > 1 else None,
            "next_query": _page_query(query, status, page + 1) if more else None,
            "hidden": hidden,
        },
    )


@org_view(manage=True)
def key_detail(request: OrgRequest, pk: int) -> HttpResponse:
    key = owned_or_404(ApiKey, request.org, pk=pk)
    usage = usage_by_key(request.org, [key]).get(key.pk, NO_USAGE)
    return render(
        request,
        "dashboard/key_detail.html",
        {
            "key": key,
            "usage": usage,
            "percent": usage.budget_percent(key),
            "flags": usage.flags(key),
            "rotate_form": RotateForm(),
            "expiry_form": ExpiryForm(initial={"expires_on": key.expires_at.date() if key.expires_at else None}),
        },
    )


@org_view(manage=True)
def key_create(request: OrgRequest) -> HttpResponse:
    # A new key starts with the org's default limits (its settings page); the admin may change them.
    form = ApiKeyCreateForm(request.POST or None, org=request.org, initial=request.org.key_defaults())
    if request.method == "POST" and form.is_valid():
        try:
            with submit_once(user=request.user, token=form.token, kind=SubmittedForm.Kind.API_KEY) as claim:
                key, secret = create_api_key(org=request.org, created_by=request.user, **form.key_fields())
                claim.made(key, f"{key.name} ({key.prefix}…)")
        except AlreadySubmitted as done:
            return already_created(request, done.submitted)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            return secret_page(
                request,
                title=f"API key “{key.name}” created",
                what="API key",
                secret=secret,
                back_url=reverse("dashboard:key_detail", args=[key.pk]),
                usage_example=_usage_example(request, secret),
            )
    return render(request, "dashboard/key_form.html", {"form": form, "creating": True})


def _usable_or_back(request: OrgRequest, key: ApiKey) -> HttpResponse | None:
    if key.is_revoked:
        messages.error(request, f"Key {key.prefix}… is revoked; create a new key instead.")
        return redirect("dashboard:keys")
    return None


@org_view(manage=True)
def key_edit(request: OrgRequest, pk: int) -> HttpResponse:
    key = owned_or_404(ApiKey, request.org, pk=pk)
    if (back := _usable_or_back(request, key)) is not None:
        return back
    form = ApiKeyForm.for_key(key, request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            update_api_key(key=key, actor=request.user, **form.key_fields())
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, f"Key {key.prefix}… saved.")
            return redirect("dashboard:key_detail", pk=key.pk)
    return render(request, "dashboard/key_form.html", {"form": form, "key": key, "creating": False})


@org_view(manage=True)
def key_rotate(request: OrgRequest, pk: int) -> HttpResponse:
    key = owned_or_404(ApiKey, request.org, pk=pk)
    if (back := _usable_or_back(request, key)) is not None:
        return back
    form = RotateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        grace = timedelta(seconds=form.cleaned_data["grace_seconds"])
        try:
            with submit_once(user=request.user, token=form.token, kind=SubmittedForm.Kind.KEY_ROTATION) as claim:
                key, secret = rotate_api_key(key=key, grace=grace, actor=request.user)
                claim.made(key, f"{key.name}: new secret {key.prefix}…")
        except AlreadySubmitted as done:
            return already_created(request, done.submitted)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            return secret_page(
                request,
                title=f"New secret for “{key.name}”",
                what="API key",
                secret=secret,
                back_url=reverse("dashboard:key_detail", args=[key.pk]),
                usage_example=_usage_example(request, secret),
                rotated=key,
            )
    return render(request, "dashboard/key_rotate.html", {"form": form, "key": key})


def _confirm(request: OrgRequest, key: ApiKey, *, title: str, body: str, action: str) -> HttpResponse:
    return render(
        request,
        "dashboard/confirm.html",
        {
            "title": title,
            "body": body,
            "action": action,
            "cancel_url": reverse("dashboard:key_detail", args=[key.pk]),
        },
    )


@org_view(manage=True)
def key_pause(request: OrgRequest, pk: int) -> HttpResponse:
    key = owned_or_404(ApiKey, request.org, pk=pk)
    if (back := _usable_or_back(request, key)) is not None:
        return back
    if request.method == "POST":
        pause_api_key(key=key, actor=request.user)
        messages.success(request, f"Key “{key.name}” paused. Requests with it now get 401 key_paused.")
        return redirect("dashboard:key_detail", pk=key.pk)
    return _confirm(
        request,
        key,
        title=f"Pause API key “{key.name}”?",
        body=f"Every request with {key.prefix}… is refused (401, key_paused) within a second, everywhere, "
        "until you resume it. Its settings and usage stay.",
        action="Pause key",
    )


@org_view(manage=True)
@require_POST
def key_resume(request: OrgRequest, pk: int) -> HttpResponse:
    key = owned_or_404(ApiKey, request.org, pk=pk)
    if (back := _usable_or_back(request, key)) is not None:
        return back
    resume_api_key(key=key, actor=request.user)
    messages.success(request, f"Key “{key.name}” resumed: it works again.")
    return redirect("dashboard:key_detail", pk=key.pk)


@org_view(manage=True)
@require_POST
def key_end_grace(request: OrgRequest, pk: int) -> HttpResponse:
    key = owned_or_404(ApiKey, request.org, pk=pk)
    if (back := _usable_or_back(request, key)) is not None:
        return back
    end_rotation_grace(key=key, actor=request.user)
    messages.success(request, f"The replaced secret {key.previous_prefix}… is refused from now on.")
    return redirect("dashboard:key_detail", pk=key.pk)


@org_view(manage=True)
def key_expiry(request: OrgRequest, pk: int) -> HttpResponse:
    key = owned_or_404(ApiKey, request.org, pk=pk)
    if (back := _usable_or_back(request, key)) is not None:
        return back
    form = ExpiryForm(request.POST or None, initial={"expires_on": key.expires_at.date() if key.expires_at else None})
    if request.method == "POST" and form.is_valid():
        try:
            set_api_key_expiry(key=key, expires_at=form.cleaned_expiry(), actor=request.user)
        except ValidationError as exc:
            form.add_error("expires_on", exc)
        else:
            until = f"until {key.expires_at:%Y-%m-%d} (UTC)" if key.expires_at else "with no expiry"
            messages.success(request, f"Key “{key.name}” now works {until}.")
            return redirect("dashboard:key_detail", pk=key.pk)
    return render(request, "dashboard/key_expiry.html", {"form": form, "key": key})


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
            "cancel_url": reverse("dashboard:key_detail", args=[key.pk]),
        },
    )
