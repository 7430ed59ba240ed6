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

import asyncio
import warnings
from http import HTTPStatus

import orjson
from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.handlers.asgi import ASGIHandler
from django.http import Http404
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from whitenoise.middleware import WhiteNoiseMiddleware

# The releases this module was read against and measured on, as (major, minor).
VERIFIED = {"django": {(5, 2)}, "whitenoise": {(6, 11)}, "uvicorn": {(0, 38)}}


class BareASGIHandler(ASGIHandler):
    """Django's ASGI handler as a toolbox: the subclass's own `handle` calls its steps —
    `create_request(scope, body_file)`, `listen_for_disconnect(receive)`,
    `send_response(response, send)`, undocumented methods of ASGIHandler — and leaves out what
    `ASGIHandler.__call__` and `handle` wrap around them: a thread-sensitive context per request
    and the request_started / request_finished signals, whose receivers are sync, so each request
    started a thread and crossed to it and back. No middleware chain is built either.

    Django's `read_body` is not used: it reads the whole body, unbounded, before anything else.
    proxy/handler.py makes the request first, on an empty file, decides what needs no body (the
    key among it), then reads the body into that file within its limits. That relies on
    `create_request` keeping the file as the request's stream without reading it, so that
    `request.body` reads what was written to it afterwards.

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


# --- uvicorn: BoundedHttpToolsProtocol (dev.py: --http lib.contract:BoundedHttpToolsProtocol) ---------

BODY_GRACE = 5.0  # seconds past TOKIOS_BODY_TIMEOUT before the server closes a body still coming

# Where a connection is in its current request, as the parser's callbacks tell it.
IDLE, HEAD, BODY, DONE = "idle", "head", "body", "done"


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol on httptools with the bounds it lacks, for every path: uvicorn's
    h11 protocol caps a request's head (--h11-max-incomplete-event-size) but its httptools one,
    the faster and the one `--http auto` picks, caps nothing and has no timeout before a response
    starts, so an 8 MB header was taken in whole and a connection sending its head or body a byte
    at a time stayed open for ever. Here:

    - a request's line and headers over `TOKIOS_MAX_HEADER_BYTES`: 431 (OpenAI's error shape: the
      path is not known yet) and the connection closed. Counted per read, from the read after the
      one that began the head, so at most the limit and one read (256 KiB) is held; a larger head
      that came in a single read reaches the /v1 app, which answers its own 431.
    - `TOKIOS_HEADER_TIMEOUT` from a connection's start, or from the read that began a request, to
      the end of its headers: 408 and closed (a connection that sent nothing is just closed).
    - `TOKIOS_BODY_TIMEOUT` + BODY_GRACE from the read that ended the headers to the end of the
      body: closed. The /v1 app answers 408 at `TOKIOS_BODY_TIMEOUT` itself; this is for the other
      paths, whose Django handler reads a body without a time limit, and for a body nobody reads.

    A timer is set only for a head or a body that outlives the read it began in: a request that
    comes in one read (most do) costs no timer, only the phase kept by the parser's callbacks.
    Measured with a fake transport and a trivial app (9 alternating blocks of 5,000 requests on one
    kept-alive connection, uvloop, medians): 18.6 µs of CPU per request with uvicorn's class, 19.5
    with this one; setting and cancelling two timers per request, as a first version did, cost 22.9.

    What it relies on, beyond httptools' documented parser callbacks (on_message_begin,
    on_headers_complete, on_message_complete, which uvicorn's class implements and which are
    extended here): that uvicorn builds the protocol from its `--http` class, calls
    `connection_made` / `data_received` / `connection_lost` on it, and hands an upgraded
    connection to its WebSocket protocol with `transport.set_protocol` (a timer then leaves the
    transport alone). tests/test_framework_contract.py runs it in a real uvicorn."""

    phase = IDLE
    head_bytes = 0  # bytes of the current head counted so far
    deadline: asyncio.TimerHandle | None = None
    deadline_phase = IDLE  # the phase `deadline` was set for

    def connection_made(self, transport) -> None:
        self.bounded_transport = transport
        super().connection_made(transport)
        self.expect(IDLE, settings.HEADER_TIMEOUT)

    def connection_lost(self, exc: Exception | None) -> None:
        self.clear_deadline()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.phase = HEAD
        self.head_bytes = -1  # not counting the read that began it

    def on_headers_complete(self) -> None:
        self.phase = BODY
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.phase = DONE
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        phase = self.phase
        if phase == HEAD:
            if self.head_bytes < 0:
                self.head_bytes = 0
            else:
                self.head_bytes += len(data)  # the head went on through all of this read
                if self.head_bytes > settings.MAX_HEADER_BYTES:
                    message = f"The request's line and headers passed {settings.MAX_HEADER_BYTES} bytes."
                    self.refuse(431, "request_headers_too_large", message)
                    return
            if self.deadline_phase != HEAD:
                self.expect(HEAD, settings.HEADER_TIMEOUT)
        elif phase == BODY:
            if self.deadline_phase != BODY:
                self.expect(BODY, settings.BODY_TIMEOUT + BODY_GRACE)
        elif self.deadline is not None:
            self.clear_deadline()

    # --- the deadline ---------------------------------------------------------------------------------

    def expect(self, phase: str, seconds: float) -> None:
        self.clear_deadline()
        self.deadline = asyncio.get_running_loop().call_later(seconds, self.timed_out)
        self.deadline_phase = phase

    def clear_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        self.deadline_phase = IDLE

    def timed_out(self) -> None:
        self.deadline = None
        transport = self.bounded_transport
        if transport.is_closing() or transport.get_protocol() is not self:  # closed, or now a WebSocket
            return
        if self.phase == HEAD:
            self.refuse(
                408, "request_timeout", f"The request's headers took longer than {settings.HEADER_TIMEOUT:g} s."
            )
        elif self.phase != DONE:  # a connection that sent nothing, or a body still coming
            transport.close()

    def refuse(self, status: int, code: str, message: str) -> None:
        """An error response written straight to the socket, then the connection closed. (A client
        that pipelined this request behind one still being answered would see it inside that answer:
        no client pipelines, and it would be that client's own connection.)"""
        self.clear_deadline()
        error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
        body = orjson.dumps({"error": error})
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nx-content-type-options: nosniff\r\nconnection: close\r\n\r\n"
        )
        self.bounded_transport.write(head.encode() + body)
        self.bounded_transport.close()
