"""Content-Security-Policy on every response Django renders (the dashboard, the sign-in pages, the
management API and its docs, the Django admin).

The policy (settings.CONTENT_SECURITY_POLICY) allows scripts, styles, images and fonts from this
origin only, and no inline script, no inline style (neither `<style>` nor `style=`), no eval: an
injected `<script>` or `onclick=` does not run. Every page keeps to it: the dashboard's script and
styles are static files, its charts are SVG with presentation attributes, and the API docs load their
start-up script as a file (api/urls.py). A path may get its own policy
(settings.CONTENT_SECURITY_POLICY_PATHS, the first matching prefix wins); none needs one today.

/v1 runs no middleware (proxy/handler.py) and answers JSON or event streams, which a browser does
not render; /static/ is WhiteNoise's, in front of Django.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponseBase
from django.utils.decorators import sync_and_async_middleware

HEADER = "Content-Security-Policy"


def policy_header(directives: Mapping[str, Sequence[str]]) -> str:
    """`{"script-src": ["'self'"], "upgrade-insecure-requests": []}` as the header's text."""
    return "; ".join(" ".join([name, *sources]) for name, sources in directives.items())


@sync_and_async_middleware
def content_security_policy(
    get_response: Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]],
):
    default = policy_header(settings.CONTENT_SECURITY_POLICY)
    by_prefix = [(prefix, policy_header(d)) for prefix, d in settings.CONTENT_SECURITY_POLICY_PATHS.items()]

    def apply(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        if HEADER not in response:  # a view that set its own policy keeps it
            response[HEADER] = next((p for prefix, p in by_prefix if request.path.startswith(prefix)), default)
        return response

    if iscoroutinefunction(get_response):

        async def middleware(request: HttpRequest) -> HttpResponseBase:
            return apply(request, await get_response(request))  # type: ignore[misc]

    else:

        def middleware(request: HttpRequest) -> HttpResponseBase:  # type: ignore[misc]
            return apply(request, get_response(request))  # type: ignore[arg-type]

    return middleware
