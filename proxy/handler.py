"""A lean ASGI handler for /v1: Django's request, URL routing and django-ninja views, without the
dashboard's middleware and request signals.

Django runs every `MiddlewareMixin` middleware and every sync signal receiver through
`sync_to_async`, and inside a request's `ThreadSensitiveContext` that starts a fresh thread per
request: several milliseconds of CPU on a path whose whole budget is about one. The /v1 views need
none of it — no sessions, CSRF, messages or templates; their auth is the API key; they open no
database connection on the event loop (cold-path queries go through `sync_to_async` themselves and
close nothing that a request signal would have to). So this handler keeps what matters from
`ASGIHandler.handle` — body reading, request creation, cancelling the view when the client
disconnects, streaming responses — and leaves the rest out.
"""

from __future__ import annotations

import asyncio

from django.conf import settings
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.exception import convert_exception_to_response
from django.urls import set_script_prefix, set_urlconf


class GatewayHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        self._middleware_chain = convert_exception_to_response(self._get_response_async)

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
            await self.send_response(error_response, send)
            return

        responses = []

        async def process_request():
            set_urlconf(settings.ROOT_URLCONF)
            response = await self._middleware_chain(request)
            if response.status_code == 405:
                response = _method_not_allowed(request, response)
            responses.append(response)
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass
            return response

        # As in Django: a client that disconnects cancels the view (and so its stream), which is
        # what sends the cancel down the tunnel.
        listener = asyncio.create_task(self.listen_for_disconnect(receive))
        worker = asyncio.create_task(process_request())
        await asyncio.wait([listener, worker], return_when=asyncio.FIRST_COMPLETED)
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
        # Closed even when the client left mid-send: closers record usage and release the tunnel.
        for response in responses:
            _close(response)
        body_file.close()


def _close(response) -> None:
    """HttpResponse.close() without the request_finished signal (see the module docstring)."""
    for closer in response._resource_closers:
        try:
            closer()
        except Exception:
            pass
    response._resource_closers.clear()
    response.closed = True


def _method_not_allowed(request, response):
    """Django's bare 405, in the caller's error shape (the SDKs read the body)."""
    from .errors import anthropic_error_body, json_response, openai_error_body
    from .gateway import new_request_id

    request_id = new_request_id()
    message = f"Method {request.method} is not allowed on {request.path}."
    if "anthropic-version" in request.headers or request.path.startswith("/v1/messages"):
        body = anthropic_error_body(405, message, "invalid_request_error", request_id)
    else:
        body = openai_error_body(405, message, "method_not_allowed", None, "invalid_request_error")
    headers = {"x-request-id": request_id, "request-id": request_id}
    if response.has_header("Allow"):
        headers["Allow"] = response["Allow"]
    return json_response(body, 405, headers)
