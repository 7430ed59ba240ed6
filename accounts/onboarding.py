"""A new user's first way in: a one-time link to choose a password, for the operator who made the
account on the command line (`create_org --owner`, `demo_setup`).

The link is Django's password-reset token: it is bound to the user's current password hash and last
sign-in, so it stops working once used (the password changes), and it expires after
settings.PASSWORD_RESET_TIMEOUT. Nothing stores it: it is printed once, to the operator's terminal,
and never logged.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.tokens import default_token_generator
from django.urls import reverse
from django.utils import timezone
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from .models import User


def check_server(value: str) -> str:
    """The server's origin as users reach it, e.g. https://tokios.example (no path): ValueError if not."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"{value!r} is not a server address like https://tokios.example")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{value!r} is not a server address like https://tokios.example")
    return f"{parts.scheme}://{parts.netloc}"


def set_password_link(*, user: User, server: str) -> str:
    """A link on `server` where `user` chooses a password; it works once, until link_expiry()."""
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    token = default_token_generator.make_token(user)
    return check_server(server) + reverse("dashboard:password_reset_confirm", args=[uid, token])


def link_expiry(now: datetime | None = None) -> datetime:
    return (now or timezone.now()) + timedelta(seconds=settings.PASSWORD_RESET_TIMEOUT)
