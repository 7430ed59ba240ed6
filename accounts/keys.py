"""API keys as admins manage them: rotate with a grace period, pause and resume, change the expiry.

Each write is one atomic action with its audit row, like those of accounts.actions; the gateway's
access cache hears of them through the key's model signals (proxy/access.py), and of a secret
dropped from a key by `api_key_secrets_retired` (accounts.signals).

Rotation: the key keeps its id, name, limits, models and usage; it gets a new secret (and so a new
display prefix), and the secret it had is accepted until the end of the grace period the admin
picks (none at all: refused at once), then refused. A key holds one replaced secret at most:
rotating again during a grace period ends that earlier secret's grace at once, as a rotation is
often the answer to a leak.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from .actions import audit
from .models import ApiKey, AuditAction, User
from .secrets import API_KEY_PREFIX, new_secret
from .signals import api_key_secrets_retired

# The longest an admin may let a replaced secret keep working: the dashboard offers 0, 1 h, 24 h
# and 7 days; the API takes any number of seconds up to this.
MAX_ROTATION_GRACE = timedelta(days=30)
ROTATION_GRACE_CHOICES: tuple[tuple[int, str], ...] = (
    (0, "None: the old secret stops now"),
    (3600, "1 hour"),
    (86400, "24 hours"),
    (7 * 86400, "7 days"),
)


def _usable(key: ApiKey, doing: str) -> None:
    if key.is_revoked:
        raise ValidationError(f"A revoked key cannot be {doing}; create a new key instead.")


@transaction.atomic
def rotate_api_key(
    *, key: ApiKey, grace: timedelta, actor: User | None = None, actor_label: str = ""
) -> tuple[ApiKey, str]:
    """Give `key` a new secret; the one it had is accepted for `grace` more (0: refused at once).
    Returns the key with the new secret, which is never stored and cannot be shown again."""
    _usable(key, "rotated")
    if not timedelta(0) <= grace <= MAX_ROTATION_GRACE:
        raise ValidationError(f"The grace period is 0 to {MAX_ROTATION_GRACE.days} days.")
    key = ApiKey.objects.select_for_update().get(pk=key.pk)
    now = timezone.now()
    dropped = key.previous_key_hash
    secret, prefix, key_hash = new_secret(API_KEY_PREFIX)
    old_prefix = key.prefix
    key.previous_prefix = old_prefix
    key.previous_key_hash = key.key_hash
    key.previous_valid_until = now + grace
    key.prefix = prefix
    key.key_hash = key_hash
    key.rotated_at = now
    key.save(
        update_fields=[
            "prefix",
            "key_hash",
            "previous_prefix",
            "previous_key_hash",
            "previous_valid_until",
            "rotated_at",
        ]
    )
    if dropped:
        api_key_secrets_retired.send(sender=ApiKey, key_hashes=[dropped])
    audit(
        org=key.org,
        action=AuditAction.KEY_ROTATED,
        target=prefix,
        actor=actor,
        actor_label=actor_label,
        name=key.name,
        previous_prefix=old_prefix,
        grace_seconds=int(grace.total_seconds()),
        old_secret_valid_until=key.previous_valid_until.isoformat(),
    )
    return key, secret


@transaction.atomic
def end_rotation_grace(*, key: ApiKey, actor: User | None = None, actor_label: str = "") -> ApiKey:
    """Refuse the replaced secret now rather than at the end of its grace period."""
    if not key.previous_secret_valid:
        return key
    key.previous_valid_until = timezone.now()
    key.save(update_fields=["previous_valid_until"])
    audit(
        org=key.org,
        action=AuditAction.KEY_UPDATED,
        target=key.prefix,
        actor=actor,
        actor_label=actor_label,
        changes=["previous_valid_until"],
        previous_prefix=key.previous_prefix,
    )
    return key


@transaction.atomic
def pause_api_key(*, key: ApiKey, actor: User | None = None, actor_label: str = "") -> ApiKey:
    """Refuse every request with the key (401 key_paused) until it is resumed. Pausing a paused key
    changes nothing."""
    _usable(key, "paused")
    if key.paused_at is None:
        key.paused_at = timezone.now()
        key.save(update_fields=["paused_at"])
        audit(org=key.org, action=AuditAction.KEY_PAUSED, target=key.prefix, actor=actor, actor_label=actor_label)
    return key


@transaction.atomic
def resume_api_key(*, key: ApiKey, actor: User | None = None, actor_label: str = "") -> ApiKey:
    _usable(key, "resumed")
    if key.paused_at is not None:
        paused_at = key.paused_at
        key.paused_at = None
        key.save(update_fields=["paused_at"])
        audit(
            org=key.org,
            action=AuditAction.KEY_RESUMED,
            target=key.prefix,
            actor=actor,
            actor_label=actor_label,
            paused_since=paused_at.isoformat(),
        )
    return key


@transaction.atomic
def set_api_key_expiry(
    *, key: ApiKey, expires_at: datetime | None, actor: User | None = None, actor_label: str = ""
) -> ApiKey:
    """Set when the key stops working (None: never). A new expiry must be in the future; moving it
    later brings an expired key back."""
    _usable(key, "changed")
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError("The expiry must be in the future.")
    old = key.expires_at
    if old == expires_at:
        return key
    key.expires_at = expires_at
    key.save(update_fields=["expires_at"])
    audit(
        org=key.org,
        action=AuditAction.KEY_EXPIRY_CHANGED,
        target=key.prefix,
        actor=actor,
        actor_label=actor_label,
        old=old.isoformat() if old else None,
        new=expires_at.isoformat() if expires_at else None,
    )
    return key
