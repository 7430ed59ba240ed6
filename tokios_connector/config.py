"""Connector settings and the URL rules that go with them."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

CONNECTOR_PATH = "/v1/connector"


@dataclass(frozen=True)
class Config:
    server_url: str  # ws(s)://HOST/v1/connector
    token: str = field(repr=False)
    upstream: str  # base URL without trailing slash, e.g. http://127.0.0.1:8080/v1
    model: str | None = None
    max_concurrency: int = 64
    upstream_key: str | None = field(default=None, repr=False)
    grace: float = 30.0
    connect_timeout: float = 10.0
    read_timeout: float = 600.0
    log_prompts: bool = False
    # Used until the server's welcome says otherwise (docs: 45 s without a frame = dead).
    heartbeat_timeout: float = 45.0
    # Where the connector serves its own metrics (metrics.py); None: it does not.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    # Ask the upstream what it speaks and serves before every hello (probe.py); --no-probe: do not.
    probe: bool = True


def websocket_url(server: str) -> str:
    """Derive the connector endpoint from ``--server``.

    http(s)://HOST[/prefix] becomes ws(s)://HOST[/prefix]/v1/connector; a ws(s):// URL is used as
    given, so an operator can point at a non-standard path.
    """
    parts = urlsplit(server.strip())
    scheme = parts.scheme.lower()
    if scheme in ("ws", "wss"):
        if not parts.hostname:
            raise ValueError(f"--server {server!r} has no host")
        return server.strip()
    if scheme not in ("http", "https"):
        raise ValueError(f"--server must start with http://, https://, ws:// or wss:// (got {server!r})")
    if not parts.hostname:
        raise ValueError(f"--server {server!r} has no host")
    path = parts.path.rstrip("/")
    if not path.endswith(CONNECTOR_PATH):
        path += CONNECTOR_PATH
    return urlunsplit(("wss" if scheme == "https" else "ws", parts.netloc, path, "", ""))


def upstream_base(upstream: str) -> str:
    """Validate ``--upstream`` and return it without a trailing slash."""
    parts = urlsplit(upstream.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--upstream must be an http:// or https:// URL (got {upstream!r})")
    if parts.query or parts.fragment:
        raise ValueError(f"--upstream must not carry a query string or fragment (got {upstream!r})")
    return urlunsplit((parts.scheme.lower(), parts.netloc, parts.path.rstrip("/"), "", ""))


def upstream_origin(base: str) -> str:
    """scheme://host[:port] of the upstream: llama.cpp serves /tokenize etc. at the root, not under /v1."""
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


def public_url(url: str) -> str:
    """The URL without credentials, safe to log and to announce in ``hello``."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
