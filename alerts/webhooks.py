"""Webhooks: the endpoint's signing secret, the signature, the URL rules, and the POST itself.

A webhook URL is hostile input from an org admin, and the server is the one that dials it, so:

- https only (http when settings.WEBHOOK_ALLOW_HTTP, which follows DEBUG), no user:password@, no
  fragment, at most 2,000 characters;
- the host is resolved at every attempt and *every* address it resolves to must be public (not
  private, loopback, link-local, shared, reserved, multicast or unspecified) unless
  settings.WEBHOOK_ALLOW_PRIVATE; the connection then goes to the address that was checked (the
  request carries the name in its Host header and TLS SNI, and the certificate is verified
  against the name), so a DNS answer that changes between the check and the connect cannot point
  the POST inside the network;
- no proxy from the environment, no redirect followed (a 3xx is a failure), 5 s to connect and
  10 s for the whole attempt, DNS included; at most 512 bytes of the answer are read, and only a
  500-character excerpt is kept.

The signature header is `Tokios-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`
(a second `v1=` during a rotation's grace period). Receivers recompute it over the raw body and
reject a `t` older than five minutes (`verify` below is the reference).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import secrets
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import SplitResult, urlsplit

import httpx
from django.conf import settings
from django.core.exceptions import ValidationError

from .models import MAX_ERROR_CHARS, MAX_EXCERPT_CHARS, WebhookEndpoint

SIGNATURE_HEADER = "Tokios-Signature"
SECRET_PREFIX = "whsec-tokios-"
DISPLAY_CHARS = 8
SIGNATURE_TOLERANCE = 300  # seconds a receiver should accept between `t` and its clock
CONNECT_TIMEOUT = 5.0
TOTAL_TIMEOUT = 10.0
EXCERPT_BYTES = 512
MAX_URL_CHARS = 2000


# --- the secret -----------------------------------------------------------------------------------


def new_salt() -> str:
    return secrets.token_hex(32)


def signing_secret(endpoint_id: int, salt: str) -> str:
    """The secret an endpoint's payloads are signed with, derived from SECRET_KEY and the row's salt."""
    message = f"tokios-webhook:{endpoint_id}:{salt}".encode()
    digest = hmac.new(settings.SECRET_KEY.encode(), message, hashlib.sha256).digest()
    return SECRET_PREFIX + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def display_prefix(secret: str) -> str:
    return secret[: len(SECRET_PREFIX) + DISPLAY_CHARS]


def secrets_for(endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    """The current secret, and the previous one while a rotation's grace period lasts."""
    found = [signing_secret(endpoint.pk, endpoint.salt)]
    if endpoint.previous_salt and endpoint.previous_valid_until and endpoint.previous_valid_until > now:
        found.append(signing_secret(endpoint.pk, endpoint.previous_salt))
    return found


# --- the signature --------------------------------------------------------------------------------


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(body: bytes, secrets_: list[str], timestamp: int) -> str:
    return ",".join([f"t={timestamp}", *(f"v1={_mac(secret, timestamp, body)}" for secret in secrets_)])


def verify(
    header: str, body: bytes, secret: str, *, now: float | None = None, tolerance: int = SIGNATURE_TOLERANCE
) -> bool:
    """What a receiver does: the header's `t` is recent and one of its `v1` matches."""
    timestamp: int | None = None
    macs: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit() and len(value) <= 12:
            timestamp = int(value)
        elif name == "v1":
            macs.append(value)
    if timestamp is None or abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = _mac(secret, timestamp, body)
    return any(hmac.compare_digest(expected, mac) for mac in macs)


# --- the URL --------------------------------------------------------------------------------------


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def address_allowed(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if settings.WEBHOOK_ALLOW_PRIVATE:
        return True
    return address.is_global and not address.is_multicast


def check_url(url: str) -> SplitResult:
    """The URL's parts, or ValidationError saying what is wrong with it. Names are checked again,
    resolved, at every attempt (`post`)."""
    if len(url) > MAX_URL_CHARS:
        raise ValidationError(f"A webhook URL has at most {MAX_URL_CHARS} characters.")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ValidationError("This is not a valid URL.") from None
    allowed = {"https", "http"} if settings.WEBHOOK_ALLOW_HTTP else {"https"}
    if parts.scheme not in allowed:
        raise ValidationError("A webhook URL must start with https://.")
    if not parts.hostname:
        raise ValidationError("A webhook URL needs a host.")
    if parts.username is not None or parts.password is not None:
        raise ValidationError("A webhook URL cannot carry a user name or password; put a token in the path instead.")
    if parts.fragment:
        raise ValidationError("A webhook URL cannot have a #fragment.")
    if port == 0:
        raise ValidationError("A webhook URL cannot use port 0.")
    try:
        parts.hostname.encode("idna")
    except UnicodeError:
        raise ValidationError("This host name is not valid.") from None
    host = parts.hostname.rstrip(".").lower()
    address = _ip(host)
    private_name = host == "localhost" or host.endswith(".localhost")
    if (address is not None and not address_allowed(address)) or (private_name and not settings.WEBHOOK_ALLOW_PRIVATE):
        raise ValidationError("A webhook URL must point to a public address, not a private or loopback one.")
    return parts


# --- the POST -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostResult:
    ok: bool
    http_status: int | None
    error: str
    excerpt: str
    duration_ms: int


async def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (tests replace this to point a name at their receiver)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def ssl_context() -> ssl.SSLContext:
    """The TLS context webhooks are verified with (the system's trust store, through certifi as httpx does)."""
    return httpx.create_ssl_context()


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    parts = check_url(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = await resolve(host, port) if _ip(host) is None else [host]
    checked = [_ip(a) for a in addresses]
    if not checked or any(a is None or not address_allowed(a) for a in checked):
        raise ValidationError("The webhook's host resolves to a private or loopback address.")
    ascii_host = host.encode("idna").decode("ascii")
    pinned = httpx.URL(url).copy_with(host=str(checked[0]))
    default_port = port == (443 if parts.scheme == "https" else 80)
    sent_headers = {**headers, "Host": ascii_host if default_port else f"{ascii_host}:{port}"}
    timeout = httpx.Timeout(TOTAL_TIMEOUT, connect=CONNECT_TIMEOUT)
    async with httpx.AsyncClient(
        timeout=timeout, follow_redirects=False, trust_env=False, verify=ssl_context()
    ) as client:
        request = client.build_request(
            "POST", pinned, content=body, headers=sent_headers, extensions={"sni_hostname": ascii_host}
        )
        response = await client.send(request, stream=True)
        try:
            received = b""
            async for chunk in response.aiter_raw():
                received += chunk
                if len(received) >= EXCERPT_BYTES:
                    break
        finally:
            await response.aclose()
    return response.status_code, received[:EXCERPT_BYTES].decode("utf-8", errors="replace")


def post(url: str, body: bytes, headers: dict[str, str]) -> PostResult:
    """POST `body` to `url` once, within TOTAL_TIMEOUT; never raises for what the far end does."""
    started = time.monotonic()
    status: int | None = None
    excerpt = error = ""

    async def bounded() -> tuple[int, str]:
        async with asyncio.timeout(TOTAL_TIMEOUT):
            return await _post(url, body, headers)

    try:
        status, excerpt = asyncio.run(bounded())
    except ValidationError as exc:
        error = " ".join(exc.messages)
    except (TimeoutError, httpx.TimeoutException):
        error = "timed out"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    except OSError as exc:  # DNS failures (socket.gaierror) and the like
        error = f"{type(exc).__name__}: {exc.strerror or exc}"
    duration_ms = int((time.monotonic() - started) * 1000)
    ok = status is not None and 200 <= status < 300
    if status is not None and not ok:
        error = f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")
    return PostResult(
        ok=ok,
        http_status=status,
        error=_short(error, MAX_ERROR_CHARS),
        excerpt=_short(excerpt, MAX_EXCERPT_CHARS),
        duration_ms=duration_ms,
    )
