"""Error bodies in each surface's shape (wire-formats §1.5, §3.6, §6.7)."""

from __future__ import annotations

import orjson
from django.http import HttpResponse

OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",
    502: "server_error",
    503: "server_error",
    504: "server_error",
}
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",  # the client's body did not arrive in time (proxy/handler.py)
    413: "request_too_large",
    429: "rate_limit_error",
    431: "invalid_request_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


class GatewayError(Exception):
    """Raised anywhere on the /v1 path; rendered in the calling surface's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.error_type = error_type
        self.headers = headers or {}


def openai_error_body(status: int, message: str, code: str | None, param: str | None, error_type: str | None) -> dict:
    return {
        "error": {
            "message": message,
            "type": error_type
            or OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }


def anthropic_error_body(status: int, message: str, error_type: str | None, request_id: str) -> dict:
    return {
        "type": "error",
        "error": {
            "type": error_type
            or ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error"),
            "message": message,
        },
        "request_id": request_id,
    }


# 4xx answers that may change if the same request is sent again: a slow body (408), a conflict (409),
# a limit (429). Every other 4xx will not, and says so: the SDKs and coding agents (Claude Code
# retries a 401 for minutes) read `x-should-retry` before their own status rules.
RETRYABLE_4XX = frozenset({408, 409, 429})


def error_response(data: dict, status: int, headers: dict[str, str] | None = None) -> HttpResponse:
    """An error body as the response every /v1 error is: a 4xx that will not change on retry carries
    `x-should-retry: false` unless the raiser said otherwise."""
    response = json_response(data, status, headers)
    if 400 <= status < 500 and status not in RETRYABLE_4XX and not response.has_header("x-should-retry"):
        response["x-should-retry"] = "false"
    return response


def json_response(data: dict | list, status: int = 200, headers: dict[str, str] | None = None) -> HttpResponse:
    response = HttpResponse(orjson.dumps(data), status=status, content_type="application/json")
    if headers:
        for name, value in headers.items():
            response[name] = value
    return response
