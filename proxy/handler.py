"""A lean ASGI handler for /v1: Django's request, URL routing and django-ninja views, without the
dashboard's middleware and request signals.

Django runs every `MiddlewareMixin` middleware and every sync signal receiver through
`sync_to_async`, and inside a request's `ThreadSensitiveContext` that starts a fresh thread per
request: several milliseconds of CPU on a path whose whole budget is about one. The /v1 views need
none of it — no sessions, CSRF, messages or templates; their auth is the API key; they open no
database connection on the event loop (cold-path queries go through `sync_to_async` themselves and
close nothing that a request signal would have to). So this handler keeps what matters from
`ASGIHandler.handle` — request creation, cancelling the view when the client disconnects,
streaming responses — and leaves the rest out. The steps of Django's handler it calls are
undocumented: lib/contract.py (`BareASGIHandler`) holds them, with the measurement that keeps them
and a test that fails when a Django upgrade changes them. The view is found and called with
Django's public `resolve`.

It is also where a /v1 request begins and ends: it opens the request's `RequestScope` before the
view runs and closes it once the response is sent, the client has gone, or anything failed — the
one place where the request's call is cancelled, its limits settled and its usage recorded.

And it decides what a request may cost before anything is spent on it, in this order (what the
security middleware does for the rest of the site, and more; docs/security.md):
1. headers over `TOKIOS_MAX_HEADER_BYTES`: 431; a Host not in ALLOWED_HOSTS: 400; with
   `TOKIOS_HTTPS`, plain http (the scope's scheme, or the proxy's header when
   SECURE_PROXY_SSL_HEADER is set): 403. Answered here, in the caller's shape, before the key
   is looked at, and not metered (no key, no surface).
2. the key (the cached lookup of proxy/access.py, done once: the scope keeps it for the view);
3. the body: a Content-Length over `TOKIOS_MAX_BODY_BYTES` is refused unread; a chunked one as soon
   as it passes the limit; all of it must arrive within `TOKIOS_BODY_TIMEOUT` (408).
A refusal at 2 or 3 leaves the body unread and is answered by the surface (`RequestScope.refusal`),
so it is in the surface's own shape and metered like any other; a response to a request whose body
was left unread closes the connection, so that the server does not go on reading it. Every
response says `X-Content-Type-Options: nosniff`.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.conf import settings
from django.core.exceptions import DisallowedHost, RequestAborted
from django.core.handlers.exception import response_for_exception
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.urls import resolve, set_script_prefix, set_urlconf

from lib.contract import BareASGIHandler

from .errors import GatewayError, anthropic_error_body, error_response, openai_error_body
from .gateway import RequestScope

log = logging.getLogger("tokios.gateway")


async def _view(request: HttpRequest) -> HttpResponseBase:
    """URL resolution and the view. The /v1 routes are coroutines (proxy/api.py); a sync view (such
    as django-ninja's root, a 404) runs in a thread, as Django runs it. An exception the view lets
    out becomes Django's response for it (404, 400, 500), as in Django."""
    try:
        match = resolve(request.path_info)
        request.resolver_match = match
        if iscoroutinefunction(match.func):
            return await match.func(request, *match.args, **match.kwargs)
        return await sync_to_async(match.func, thread_sensitive=True)(request, *match.args, **match.kwargs)
    except Exception as exc:
        return await sync_to_async(response_for_exception, thread_sensitive=False)(request, exc)


class GatewayHandler(BareASGIHandler):
    async def __call__(self, scope, receive, send):
        await self.handle(scope, receive, send)

    async def handle(self, scope, receive, send):
        set_script_prefix(scope.get("root_path", "") or "/")
        # The request is made before its body arrives: Django reads the file only when the view asks
        # for the body (lib/contract.py), so everything that needs no body is decided without it.
        body_file = tempfile.SpooledTemporaryFile(max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE, mode="w+b")
        try:
            request, error_response = self.create_request(scope, body_file)
            if request is None:
                assert error_response is not None  # Django's refusal: a query string that is not text
                await self.send_response(_sealed(error_response, close=True), send)
                return
            async with RequestScope(request) as request_scope:
                request.request_scope = request_scope  # type: ignore[attr-defined]  # a gateway.ScopedRequest now
                refusal = head_refusal(request, scope.get("headers", ()))
                if refusal is not None:
                    request_scope.anthropic = anthropic_caller(request)
                    record = request_scope.record  # not metered (no key, no surface); the access log reports it
                    record.status_code, record.error_code = refusal.status, refusal.code or ""
                    await self.send_response(_sealed(request_scope.error_response(refusal), close=True), send)
                    return
                try:
                    body_read = await self._admit(request_scope, receive, body_file)
                except RequestAborted:
                    return
                await self._respond(request, receive, send, body_read)
        finally:
            body_file.close()

    async def _admit(self, request_scope: RequestScope, receive, body_file) -> bool:
        """The key, then the body within its bounds: True once the body is read. Otherwise it is left
        unread and `request_scope.refusal` says why, for the surface to answer in its shape."""
        try:
            await request_scope.authenticate()
        except GatewayError as exc:
            request_scope.refusal = exc
            return False
        except Exception:
            # The key could not be looked up (the database is down, a bug): a 500 in the caller's
            # shape with the id to find it in the logs, as gateway.handle answers one.
            log.exception("could not authenticate request %s", request_scope.request_id)
            message = f"Internal error; request id {request_scope.request_id}."
            request_scope.refusal = GatewayError(500, message, code="internal_error")
            return False
        limit = settings.MAX_BODY_BYTES
        length = request_scope.request.META.get("CONTENT_LENGTH", "")
        if length.isascii() and length.isdigit() and (len(length) > 18 or int(length) > limit):
            request_scope.refusal = _too_large(limit)
            return False
        timeout = settings.BODY_TIMEOUT
        try:
            async with asyncio.timeout(timeout):
                await read_body(receive, body_file, limit)
        except BodyTooLarge:
            request_scope.refusal = _too_large(limit)
            return False
        except TimeoutError:
            request_scope.refusal = GatewayError(
                408, f"The request body did not arrive within {timeout:g} s.", code="request_timeout"
            )
            return False
        return True

    async def _respond(self, request, receive, send, body_read: bool) -> None:
        async def process_request():
            set_urlconf(settings.ROOT_URLCONF)
            response = await _view(request)
            if response.status_code == 405:
                response = _method_not_allowed(request, response)
            record = request.request_scope.record
            if not record.status_code:  # no surface answered (an unknown path, a 405): for the access log
                record.status_code = response.status_code
            try:
                await self.send_response(_sealed(response, close=not body_read), send)
            except asyncio.CancelledError:
                pass

        if not body_read:
            # What `receive` still holds is body, so there is no disconnect to listen for; the view
            # answers the refusal at once.
            await process_request()
            return

        # As in Django: a client that disconnects cancels the view (and so its stream); the
        # request scope then cancels the call, which sends the cancel down the tunnel.
        listener = asyncio.create_task(self.listen_for_disconnect(receive))
        worker = asyncio.create_task(process_request())
        try:
            await asyncio.wait([listener, worker], return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Also when this task itself is cancelled (a server shutting down): the view must be
            # over before the request scope closes, or it would go on changing a submitted record.
            for task in (listener, worker):
                if task.done():
                    try:
                        task.result()
                    except (RequestAborted, asyncio.CancelledError):
                        pass
                else:
                    task.cancel()
                    try:
                        await task
                    except (asyncio.CancelledError, RequestAborted):
                        pass


class BodyTooLarge(Exception):
    """The body passed settings.MAX_BODY_BYTES while it was read."""


async def read_body(receive, body_file, limit: int) -> None:
    """The request's body into `body_file`, refused as soon as it passes `limit` bytes (a chunked
    body announces no length to check first). A client that leaves: RequestAborted, as in Django."""
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestAborted
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        body_file.write(chunk)
        if not message.get("more_body", False):
            break
    body_file.seek(0)


def _too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"Request body too large: the limit is {limit} bytes.", code="request_too_large")


def head_refusal(request: HttpRequest, headers) -> GatewayError | None:
    """What is wrong with a request before its key and body are looked at (point 1 of the module
    docstring), or None."""
    size = sum(len(name) + len(value) for name, value in headers)
    if size > settings.MAX_HEADER_BYTES:
        return GatewayError(
            431,
            f"The request's headers hold {size} bytes; the limit is {settings.MAX_HEADER_BYTES}.",
            code="request_headers_too_large",
        )
    try:
        host = request.get_host()  # ALLOWED_HOSTS, with Django's patterns (".example.com", ports)
    except DisallowedHost:
        return GatewayError(
            400, f"This server does not answer to the host {_raw_host(request)!r}.", code="invalid_host"
        )
    if settings.HTTPS and not request.is_secure():
        return GatewayError(
            403,
            f"This server takes /v1 requests over https only: send it to https://{host}{request.path}. "
            "If this request carried an API key, the key crossed the network unencrypted: revoke it "
            "and create a new one.",
            code="https_required",
        )
    return None


def websocket_refusal(scope) -> str | None:
    """Why the connector's WebSocket is refused, or None: a Host not in ALLOWED_HOSTS or, with
    TOKIOS_HTTPS, ws:// where wss:// is required (the proxy's header decides when
    SECURE_PROXY_SSL_HEADER is set), as for /v1 over HTTP. The Origin is not checked (Channels'
    AllowedHostsOriginValidator): a connector is no browser, sends no Origin, and authenticates
    with its token, not with anything a browser would add by itself."""
    request = HttpRequest()
    meta = request.META
    for name, value in scope.get("headers", ()):
        meta["HTTP_" + name.decode("latin1").upper().replace("-", "_")] = value.decode("latin1")
    server_name, server_port = scope.get("server") or ("unknown", 0)
    meta["SERVER_NAME"], meta["SERVER_PORT"] = server_name, str(server_port)
    try:
        host = request.get_host()
    except DisallowedHost:
        return f"This server does not answer to the host {_raw_host(request)!r}."
    if settings.HTTPS:
        proxy_header = settings.SECURE_PROXY_SSL_HEADER
        if proxy_header and proxy_header[0] in meta:
            secure = request.is_secure()
        else:
            secure = scope.get("scheme") == "wss"
        if not secure:
            return f"This server takes connectors over wss:// only: connect to wss://{host}{scope.get('path', '')}."
    return None


class AdmittedWebSocket:
    """An ASGI WebSocket app behind `websocket_refusal`: a refused handshake is answered 403 by the
    server (a close before the accept), and the app never sees it."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        reason = websocket_refusal(scope)
        if reason is None:
            return await self.app(scope, receive, send)
        # Logged: all the connector sees is the 403, and a misconfigured ALLOWED_HOSTS shows here.
        log.warning("refused a connector's WebSocket: %s", reason)
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.close", "code": 1008})


def anthropic_caller(request: HttpRequest) -> bool:
    """Whether a refusal that no surface answers should be in Anthropic's shape."""
    return "anthropic-version" in request.headers or request.path.startswith("/v1/messages")


def _raw_host(request: HttpRequest) -> str:
    return (request.META.get("HTTP_HOST") or request.META.get("SERVER_NAME") or "")[:100]


def _sealed(response: HttpResponseBase, *, close: bool) -> HttpResponseBase:
    """What every /v1 response says: nosniff (as SecurityMiddleware says it for the rest of the
    site), and `Connection: close` when the request's body was left unread."""
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        response.setdefault("X-Content-Type-Options", "nosniff")
    if close:
        response["Connection"] = "close"
    return response


def _method_not_allowed(request, response):
    """Django's bare 405, in the caller's error shape (the SDKs read the body)."""
    request_id = request.request_scope.request_id
    message = f"Method {request.method} is not allowed on {request.path}."
    if anthropic_caller(request):
        body = anthropic_error_body(405, message, "invalid_request_error", request_id)
    else:
        body = openai_error_body(405, message, "method_not_allowed", None, "invalid_request_error")
    headers = {"x-request-id": request_id, "request-id": request_id}
    if response.has_header("Allow"):
        headers["Allow"] = response["Allow"]
    return error_response(body, 405, headers)
