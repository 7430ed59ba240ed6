"""The playground: a member sends a chat message to a deployment their org may use, from the browser,
and reads the reply as it streams; the same call as `curl`, openai and anthropic snippets.

The page itself holds no secret. Its script (static/dashboard/playground.js) asks `playground_key`
for one with a POST (CSRF, JSON, never cached): the user's playground key is created on the first
ask and rotated with no grace on every later one (accounts.playground). The script keeps the secret
in the tab's sessionStorage and calls the real `/v1/chat/completions` with it, so the request is
authenticated, limited and metered like any other. Every role of the org may use it.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_POST

from accounts.models import Membership
from accounts.playground import current_playground_key, issue_playground_key
from accounts.tenancy import OrgRequest, org_view
from deployments.models import Deployment

# What the snippets show where a key goes: never a real secret.
PLACEHOLDER_KEY = "sk-tokios-…"
MAX_ORG_ID = 2**63 - 1


def _no_store(response: HttpResponse) -> HttpResponse:
    add_never_cache_headers(response)
    response["Cache-Control"] = "no-store, private"
    return response


@org_view
def playground(request: OrgRequest) -> HttpResponse:
    deployments = list(
        Deployment.objects.usable_by(request.org).enabled().order_by("name").values_list("name", "org_id")
    )
    base_url = request.build_absolute_uri("/v1").rstrip("/")
    key = current_playground_key(request.org, request.user)
    return _no_store(
        render(
            request,
            "dashboard/playground.html",
            {
                "deployments": [(name, org_id != request.org.pk) for name, org_id in deployments],
                "model": deployments[0][0] if deployments else "your-model",
                "base_url": base_url,
                "server_url": base_url.removesuffix("/v1"),
                "placeholder_key": PLACEHOLDER_KEY,
                "key": key,
            },
        )
    )


def _refuse(status: int, message: str) -> HttpResponse:
    return _no_store(JsonResponse({"error": message}, status=status))


@require_POST
def playground_key(request: HttpRequest) -> HttpResponse:
    """A fresh secret for the signed-in user's playground key in the org the page was opened for
    (`org`, its id: a tab opened before an org switch keeps its own org)."""
    if not request.user.is_authenticated:
        return _refuse(401, "You are signed out: sign in again to use the playground.")
    raw = request.POST.get("org", "")
    org_id = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 19 else 0
    if not 0 < org_id <= MAX_ORG_ID:
        return _refuse(400, "Which organisation? Reload the playground page.")
    membership = Membership.objects.filter(user=request.user, org_id=org_id).first()
    if membership is None:
        return _refuse(404, "You are not a member of this organisation (any more).")
    key, secret, created = issue_playground_key(membership=membership)
    body = {
        "secret": secret,
        "prefix": key.prefix,
        "name": key.name,
        "status": key.status,
        "created": created,
        "requests_url": reverse("dashboard:requests"),
    }
    return _no_store(JsonResponse(body, status=201 if created else 200))
