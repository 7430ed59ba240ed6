"""The 403, 404 and 500 pages (tokios_site/urls.py: handler403, handler404, handler500).

Pages answer inside the dashboard's frame: the navigation when signed in, a sign-in link when not.
The management API under /api/ answers JSON in its own shape (`{"detail": …}`, as its views do),
and so does /v1 in the OpenAI shape should a /v1 error ever reach Django's handlers (the gateway
answers its own errors: proxy/handler.py).

The 500 page is static: it is rendered without the request, so no context processor runs (no
database query, no session, no user) and nothing that may be what failed is touched again.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.template import loader

API_PREFIX = "/api/"
GATEWAY_PREFIX = "/v1/"

# What a 500 says when even its template cannot be rendered (a broken install): plain, and enough.
FALLBACK_500 = (
    "<!doctype html><html lang=en><meta charset=utf-8><title>Server error · Tokios</title>"
    "<h1>Something went wrong on our side</h1><p>Try again in a moment. <a href=/>Back to Tokios</a></p></html>"
)


def _json_error(request: HttpRequest, status: int, detail: str) -> JsonResponse | None:
    """The API's answer for `request`, or None for a page."""
    path = request.path_info
    if path.startswith(API_PREFIX):
        return JsonResponse({"detail": detail}, status=status)
    if path.startswith(GATEWAY_PREFIX):
        kind = "server_error" if status >= 500 else "invalid_request_error"
        return JsonResponse({"error": {"message": detail, "type": kind, "param": None, "code": None}}, status=status)
    return None


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    # The app's own refusals carry a sentence meant for the user ("Only owners and admins can do this.").
    reason = str(exception) if isinstance(exception, PermissionDenied) else ""
    api = _json_error(request, 403, reason or "You do not have permission to perform this action.")
    if api is not None:
        return api
    return render(request, "403.html", {"reason": reason}, status=403)


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    # The exception's text is not shown: it names models and lookups ("No Deployment matches…").
    api = _json_error(request, 404, "Not found.")
    if api is not None:
        return api
    return render(request, "404.html", status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    api = _json_error(request, 500, "A server error occurred.")
    if api is not None:
        return api
    try:
        body = loader.get_template("500.html").render()
    except Exception:  # the error page must not raise a second error
        body = FALLBACK_500
    return HttpResponse(body, status=500)
