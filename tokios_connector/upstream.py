"""What the connector may send to its upstream, and how requests and responses are shaped.

The tunnel must never become an open proxy: only the allow-listed (method, path) pairs below are
forwarded, only to the configured upstream, and redirects are never followed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from .config import upstream_origin
from .protocol import JSONDecodeError, dumps, loads


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    url: httpx.URL
    rewrite_model: bool
    headers: tuple[tuple[str, str], ...] = ()  # sent with every request on this route


# path in the `request` frame -> (method, served at the upstream origin rather than the base, rewrite model)
ALLOWED_PATHS: dict[str, tuple[str, bool, bool]] = {
    "/chat/completions": ("POST", False, True),
    "/completions": ("POST", False, True),
    "/embeddings": ("POST", False, True),
    # The native surfaces, for model servers that speak them (the server decides when to use them).
    "/messages": ("POST", False, True),
    "/messages/count_tokens": ("POST", False, True),
    "/responses": ("POST", False, True),
    "/models": ("GET", False, False),
    # llama.cpp extensions live at the server root, not under /v1.
    "/tokenize": ("POST", True, False),
    "/apply-template": ("POST", True, False),
}

# Anthropic-compatible servers may require the API version header; the gateway speaks this one.
ROUTE_HEADERS: dict[str, tuple[tuple[str, str], ...]] = {
    "/messages": (("anthropic-version", "2023-06-01"),),
    "/messages/count_tokens": (("anthropic-version", "2023-06-01"),),
}

FORWARDED_REQUEST_HEADERS = ("content-type", "accept", "x-request-id")

# RFC 9110 §7.6.1 hop-by-hop headers, plus those that only describe this one HTTP/1.1 hop.
HOP_BY_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)


def build_routes(base: str) -> dict[str, Route]:
    """Resolve every allow-listed path to its full upstream URL once, at start-up."""
    origin = upstream_origin(base)
    return {
        path: Route(method, httpx.URL((origin if at_origin else base) + path), rewrite, ROUTE_HEADERS.get(path, ()))
        for path, (method, at_origin, rewrite) in ALLOWED_PATHS.items()
    }


def request_headers(headers: object, upstream_key: str | None) -> list[tuple[str, str]]:
    """The few client headers the upstream needs; everything else (cookies, keys, ...) stays behind."""
    out: list[tuple[str, str]] = []
    if isinstance(headers, dict):
        lowered = {str(k).lower(): v for k, v in headers.items()}
        for name in FORWARDED_REQUEST_HEADERS:
            value = lowered.get(name)
            if isinstance(value, str):
                out.append((name, value))
    if upstream_key:
        out.append(("authorization", f"Bearer {upstream_key}"))
    return out


def response_headers(headers: httpx.Headers) -> dict[str, str]:
    """Lower-case response headers minus hop-by-hop ones (and any named in `Connection`)."""
    dropped = HOP_BY_HOP_HEADERS
    connection = headers.get("connection")
    if connection:
        dropped = dropped | {token.strip().lower() for token in connection.split(",")}
    # items() already lower-cases names and joins repeated headers with ", ".
    return {name: value for name, value in headers.items() if name not in dropped}


def rewrite_model(body: bytes, model: str) -> bytes:
    """Replace the JSON body's `model`; a body that is not a JSON object goes through untouched
    so the upstream answers it with its own 400."""
    try:
        data: Any = loads(body)
    except (JSONDecodeError, ValueError):
        return body
    if not isinstance(data, dict):
        return body
    data["model"] = model
    return dumps(data)
