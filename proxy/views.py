from __future__ import annotations

from django.http import HttpRequest
from django.views.decorators.csrf import csrf_exempt

from .errors import anthropic_error_body, error_response, openai_error_body
from .gateway import new_request_id


@csrf_exempt
async def unknown_route(request: HttpRequest):
    request_id = new_request_id()
    message = f"Invalid URL ({request.method} {request.path})"
    if "anthropic-version" in request.headers or request.path.startswith("/v1/messages"):
        body = anthropic_error_body(404, message, "not_found_error", request_id)
    else:
        body = openai_error_body(404, message, None, None, "invalid_request_error")
    return error_response(body, 404, {"x-request-id": request_id, "request-id": request_id})
