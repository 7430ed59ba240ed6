"""The page a create form answers when it is submitted again (accounts.once): what was made, when,
and where it is; never a second object, and never the secret again."""

from __future__ import annotations

from django.http import HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import add_never_cache_headers

from accounts.models import ApiKey, SubmittedForm
from accounts.tenancy import OrgRequest, scoped
from deployments.models import ConnectorToken, Deployment

WHAT = {
    SubmittedForm.Kind.API_KEY: ("API key", "The key was created then"),
    SubmittedForm.Kind.KEY_ROTATION: ("new secret", "The key was rotated then"),
    SubmittedForm.Kind.CONNECTOR_TOKEN: ("connector token", "The token was created then"),
    SubmittedForm.Kind.DEPLOYMENT: ("deployment", "The deployment was created then"),
}


def _where(request: OrgRequest, submitted: SubmittedForm) -> tuple[str, str] | None:
    """The page of what the form made, as (url, link text), if it is in the current org still."""
    kind, pk = submitted.kind, submitted.object_id
    if kind in (SubmittedForm.Kind.API_KEY, SubmittedForm.Kind.KEY_ROTATION):
        if scoped(ApiKey, request.org).filter(pk=pk).exists():
            return reverse("dashboard:key_detail", args=[pk]), "Go to the key"
    elif kind == SubmittedForm.Kind.CONNECTOR_TOKEN:
        deployment_id = (
            scoped(ConnectorToken, request.org).filter(pk=pk).values_list("deployment_id", flat=True).first()
        )
        if deployment_id is not None:
            return reverse("dashboard:deployment_detail", args=[deployment_id]), "Go to the deployment"
    elif kind == SubmittedForm.Kind.DEPLOYMENT:
        if scoped(Deployment, request.org).filter(pk=pk).exists():
            return reverse("dashboard:deployment_detail", args=[pk]), "Go to the deployment"
    return None


def already_created(request: OrgRequest, submitted: SubmittedForm) -> HttpResponse:
    what, done = WHAT.get(submitted.kind, ("object", "It was created then"))
    response = render(
        request,
        "dashboard/already_created.html",
        {
            "submitted": submitted,
            "what": what,
            "done": done,
            "secret": submitted.kind != SubmittedForm.Kind.DEPLOYMENT,
            "where": _where(request, submitted),
        },
    )
    add_never_cache_headers(response)
    return response
