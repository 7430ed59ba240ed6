"""The framework internals the server relies on beyond documented API, all in this module.

Each one is here because it was measured to pay for itself; the figure and the command that gave
it are written beside it and in docs/benchmarks.md ("Framework contract"). The rest of the code
uses documented API only. tests/test_framework_contract.py checks every one against the installed
libraries and fails, naming the library and what changed, when an upgrade breaks one or goes
past the versions below. On such a failure: read the new library's code for the part named, fix
or drop the trick here, measure again, then widen the range.

The connector keeps its own (tokios_connector/contract.py): it is installed on its own.
"""

from __future__ import annotations

import warnings

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.handlers.asgi import ASGIHandler
from django.http import Http404
from whitenoise.middleware import WhiteNoiseMiddleware

# The releases this module was read against and measured on, as (major, minor).
VERIFIED = {"django": {(5, 2)}, "whitenoise": {(6, 11)}}


class BareASGIHandler(ASGIHandler):
    """Django's ASGI handler as a toolbox: the subclass's own `handle` calls its steps —
    `read_body(receive)`, `create_request(scope, body_file)`, `listen_for_disconnect(receive)`,
    `send_response(response, send)`, undocumented methods of ASGIHandler — and leaves out what
    `ASGIHandler.__call__` and `handle` wrap around them: a thread-sensitive context per request
    and the request_started / request_finished signals, whose receivers are sync, so each request
    started a thread and crossed to it and back. No middleware chain is built either.

    Measured in process, the same /v1 request with and without what Django adds (10 alternating
    blocks of 500 on the shared 2-core machine): 251 µs of CPU per request against 1,508, medians
    (docs/benchmarks.md, "Framework contract", has the command)."""

    def load_middleware(self, is_async: bool = False) -> None:
        """None: there is no chain to build (ASGIHandler.__init__ calls this)."""


def _not_a_static_file(request):
    raise Http404(request.path)


class WhiteNoiseStaticFiles(ASGIStaticFilesHandler):
    """/static/ served by WhiteNoise (settings.STORAGES, WHITENOISE_*) through Django's own ASGI
    static handler, whose undocumented `serve(request)` hook it fills; that handler runs it in a
    thread and reads a file response there. WhiteNoise belongs in MIDDLEWARE by its docs, but it is
    sync-only, so there every dashboard and API request would cross to a thread and back (no CPU
    difference measurable beside Django's own thread per request), and every Django test client
    builds the chain, WhiteNoise scanning all static files each time: the dashboard, API, accounts
    and deployments tests (226 clients) took 18.1 s against 13.6, and 43.4 against 21.1, with it
    (docs/benchmarks.md, "Framework contract"). Here it is built once per process and only /static/
    pays the thread."""

    def __init__(self, application):
        super().__init__(application)
        with warnings.catch_warnings():
            # No STATIC_ROOT before the first collectstatic: WHITENOISE_USE_FINDERS serves the apps' folders.
            warnings.filterwarnings("ignore", "No directory at")
            self.whitenoise = WhiteNoiseMiddleware(_not_a_static_file)

    def serve(self, request):
        return self.whitenoise(request)
