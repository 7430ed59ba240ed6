from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import add_never_cache_headers


def secret_page(request: HttpRequest, *, title: str, secret: str, what: str, back_url: str, **extra) -> HttpResponse:
    """Show a fresh secret once. Rendered straight from the POST (no redirect) so the secret never
    sits in a session or a cookie; `no-store` keeps it out of the back-forward and disk caches."""
    response = render(
        request,
        "dashboard/secret_created.html",
        {"title": title, "secret": secret, "what": what, "back_url": back_url, **extra},
        status=201,
    )
    add_never_cache_headers(response)
    response["Cache-Control"] = "no-store, private"
    return response
