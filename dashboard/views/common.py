from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import add_never_cache_headers


def public_base_url(request: HttpRequest) -> str:
    """This server's origin as the browser reached it, for commands a user copies elsewhere."""
    return request.build_absolute_uri("/").rstrip("/")


def connector_command(request: HttpRequest, token: str = "<token>") -> str:
    return (
        f"python -m tokios_connector --server {public_base_url(request)} --token {token} "
        "--upstream http://127.0.0.1:8080/v1"
    )


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
