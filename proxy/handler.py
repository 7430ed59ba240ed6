"""A lean ASGI handler for /v1: Django's request, URL routing and django-ninja views, without the
dashboard's middleware and request signals.

Django runs every `MiddlewareMixin` middleware and every sync signal receiver through
`sync_to_async`, and inside a request's `ThreadSensitiveContext` that starts a fresh thread per
request: several milliseconds of CPU on a path whose whole budget is about one. The /v1 views need
none of it — no sessions, CSRF, messages or templates; their auth is the API key; they open no
database connection on the event loop (cold-path queries go through `sync_to_async` themselves and
close nothing that a request signal would have to). So this handler keeps what matters from
`ASGIHandler.handle` — body reading, request creation, cancelling the view when the client
disconnects, streaming responses — and leaves the rest out. The steps of Django's handler it calls
are undocumented: lib/contract.py (`BareASGIHandler`) holds them, with the measurement that keeps
them and a test that fails when a Django upgrade changes them. The view is found and called with
Django's public `resolve`.

It is also where a /v1 request begins and ends: it opens the request's `RequestScope` before the
view runs and closes it once the response is sent, the client has gone, or anything failed — the
one place where the request's call is cancelled, its limits settled and its usage recorded.
"""

from __future__ import annotations

import asyncio

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.conf import settings
from django.core.exceptions import RequestAborted
from django.core.handlers.exception import response_for_exception
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.urls import resolve, set_script_prefix, set_urlconf

from lib.contract import BareASGIHandler

from .errors import anthropic_error_body, json_response, openai_error_body
from .gateway import RequestScope


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
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(scope.get("root_path", "") or "/")
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            assert error_response is not None  # Django's refusal: the body was too large or not text
            await self.send_response(error_response, send)
            return

        try:
            async with RequestScope(request) as request_scope:
                request.request_scope = request_scope  # type: ignore[attr-defined]  # a gateway.ScopedRequest now
                await self._respond(request, receive, send)
        finally:
            body_file.close()

    async def _respond(self, request, receive, send) -> None:
        async def process_request():
            set_urlconf(settings.ROOT_URLCONF)
            response = await _view(request)
            if response.status_code == 405:
                response = _method_not_allowed(request, response)
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass

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


def _method_not_allowed(request, response):
    """Django's bare 405, in the caller's error shape (the SDKs read the body)."""
    request_id = request.request_scope.request_id
    message = f"Method {request.method} is not allowed on {request.path}."
    if "anthropic-version" in request.headers or request.path.startswith("/v1/messages"):
        body = anthropic_error_body(405, message, "invalid_request_error", request_id)
    else:
        body = openai_error_body(405, message, "method_not_allowed", None, "invalid_request_error")
    headers = {"x-request-id": request_id, "request-id": request_id}
    if response.has_header("Allow"):
        headers["Allow"] = response["Allow"]
    return json_response(body, 405, headers)
