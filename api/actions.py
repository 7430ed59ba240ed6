"""Writes about personal access tokens."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from accounts.actions import audit
from accounts.models import AuditAction, User
from accounts.secrets import new_secret

from .models import PAT_PREFIX, PersonalAccessToken

# Personal tokens have no organisation; their audit entries have org=None and show in Django admin.
PAT_CREATED = AuditAction.PAT_CREATED
PAT_REVOKED = AuditAction.PAT_REVOKED
# `last_used_at` is written at most this often, so a busy script does not write on every call.
LAST_USED_RESOLUTION = timedelta(minutes=1)


@transaction.atomic
def create_personal_access_token(
    *, user: User, name: str, expires_at: datetime | None = None
) -> tuple[PersonalAccessToken, str]:
    """Create a token; returns it with the secret, which is never stored and cannot be shown again."""
    name = name.strip()
    if not name:
        raise ValidationError("A token needs a name.")
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError("The expiry must be in the future.")
    secret, prefix, token_hash = new_secret(PAT_PREFIX)
    token = PersonalAccessToken.objects.create(
        user=user, name=name, prefix=prefix, token_hash=token_hash, expires_at=expires_at
    )
    audit(org=None, action=PAT_CREATED, target=prefix, actor=user, name=name)
    return token, secret


@transaction.atomic
def revoke_personal_access_token(*, token: PersonalAccessToken, actor: User | None = None) -> PersonalAccessToken:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit(org=None, action=PAT_REVOKED, target=token.prefix, actor=actor)
    return token


def touch_personal_access_token(token: PersonalAccessToken) -> None:
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        PersonalAccessToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
