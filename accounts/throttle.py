"""Throttling what a stranger can try without an account: signing in and asking for a password reset.

Failed sign-ins are counted by django-axes (settings: the "Accounts" block), per account and per
client address, in the database, so every process sees the same counts, on SQLite as on PostgreSQL.
This module gives axes the two values it keys on — `signin_username` and `client_ip` — and counts
password-reset requests itself (`allow_password_reset`), which axes does not cover.

Counting is in the database rather than the cache on purpose: the embedded default's cache is
per-process memory, which several server processes would not share.
"""

from __future__ import annotations

import ipaddress
import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.http import HttpRequest
from django.utils import timezone
from django.utils.crypto import salted_hmac

from .models import ThrottleBucket

log = logging.getLogger(__name__)

# AccessAttempt.username is 255 characters; the sign-in form refuses longer ones before they get here.
MAX_USERNAME_CHARS = 255
PASSWORD_RESET_WINDOW = timedelta(hours=1)


def signin_username(request: HttpRequest | None, credentials: dict[str, Any] | None) -> str | None:
    """The account a sign-in attempt is counted against: the e-mail as accounts store it
    (lower-case), so that "Owner@Acme" and "owner@acme" share one count."""
    value = (credentials or {}).get("username")
    if value is None and request is not None:
        value = request.POST.get("username")
    if not isinstance(value, str):
        return None
    return value.strip().lower()[:MAX_USERNAME_CHARS]


def client_ip(request: HttpRequest) -> str | None:
    """The client's address as the server sees it (REMOTE_ADDR). Behind a reverse proxy, uvicorn
    must be told to trust it (`--forwarded-allow-ips`), or every client counts as the proxy.

    An IPv6 client is counted by its /64, which one subscriber usually holds whole: per address, it
    could otherwise step through 2^64 of them."""
    raw = request.META.get("REMOTE_ADDR") or ""
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False).network_address)
    return str(address)


def _key(scope: str, value: str) -> str:
    return salted_hmac("tokios.throttle", f"{scope}\n{value}", algorithm="sha256").hexdigest()


def allow(scope: str, value: str, *, limit: int, window: timedelta) -> bool:
    """Count one attempt at `scope` for `value`; False, without counting, once `limit` attempts were
    made in the window that began with the first of them.

    The row is locked while it is read and written, so concurrent requests in any process cannot
    both take the last attempt."""
    now = timezone.now()
    with transaction.atomic():
        ThrottleBucket.objects.filter(scope=scope, window_start__lte=now - window).delete()
        bucket, _created = ThrottleBucket.objects.select_for_update().get_or_create(
            scope=scope, key=_key(scope, value), defaults={"window_start": now}
        )
        if bucket.hits >= limit:
            return False
        ThrottleBucket.objects.filter(pk=bucket.pk).update(hits=F("hits") + 1)
        return True


def allow_password_reset(*, email: str, ip: str | None) -> bool:
    """Whether a reset e-mail may be sent: at most settings.PASSWORD_RESET_PER_IP requests an hour from
    one client address (whatever they ask for) and settings.PASSWORD_RESET_PER_EMAIL for one address."""
    if ip is not None and not allow("reset-ip", ip, limit=settings.PASSWORD_RESET_PER_IP, window=PASSWORD_RESET_WINDOW):
        log.warning("password reset throttled: too many requests from one client address")
        return False
    email = email.strip().lower()
    if not allow("reset-email", email, limit=settings.PASSWORD_RESET_PER_EMAIL, window=PASSWORD_RESET_WINDOW):
        log.warning("password reset throttled: too many requests for one e-mail address")
        return False
    return True
