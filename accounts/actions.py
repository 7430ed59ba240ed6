"""Writes that span several models (and the audit log) go through these functions.

The gateway's access cache hears of every change through model signals (proxy/access.py), which
also catch edits made in the Django admin."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from .models import (
    PAT_PREFIX,
    ApiKey,
    AuditAction,
    AuditLog,
    Membership,
    Organization,
    PersonalAccessToken,
    Role,
    User,
    lower_role,
    new_share_id,
    validate_org_slug,
)
from .secrets import API_KEY_PREFIX, new_secret

# `last_used_at` of a personal access token is written at most this often, so a busy script does
# not write on every call.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def audit(
    *,
    org: Organization | None,
    action: str,
    target: str = "",
    actor: User | None = None,
    actor_label: str = "",
    **detail,
) -> AuditLog:
    return AuditLog.objects.create(
        org=org, action=action, target=target, actor=actor, actor_label=actor_label, detail=detail
    )


@transaction.atomic
def create_org(*, slug: str, name: str = "", owner: User | None = None, actor_label: str = "") -> Organization:
    validate_org_slug(slug)
    if Organization.objects.filter(slug=slug).exists():
        raise ValidationError(f"An organisation with slug {slug!r} already exists.")
    org = Organization.objects.create(slug=slug, name=name or slug)
    audit(org=org, action=AuditAction.ORG_CREATED, target=slug, actor=owner, actor_label=actor_label)
    if owner is not None:
        add_member(org=org, user=owner, role=Role.OWNER, actor=owner, actor_label=actor_label)
    return org


@transaction.atomic
def rotate_share_id(*, org: Organization, actor: User | None = None, actor_label: str = "") -> Organization:
    """A new share ID for `org`; the old one finds nothing from now on. Grants already made stay:
    they point at the organisation, not at the ID."""
    org.share_id = new_share_id()
    org.save(update_fields=["share_id"])
    audit(org=org, action=AuditAction.ORG_SHARE_ID_ROTATED, target=org.slug, actor=actor, actor_label=actor_label)
    return org


@transaction.atomic
def add_member(
    *, org: Organization, user: User, role: str = Role.MEMBER, actor: User | None = None, actor_label: str = ""
) -> Membership:
    if Membership.objects.filter(org=org, user=user).exists():
        raise ValidationError(f"{user.email} is already a member of {org.slug}.")
    membership = Membership.objects.create(org=org, user=user, role=role)
    audit(org=org, action=AuditAction.MEMBER_ADDED, target=user.email, actor=actor, actor_label=actor_label, role=role)
    return membership


def _owners_left(org: Organization, excluding: Membership) -> int:
    return Membership.objects.filter(org=org, role=Role.OWNER).exclude(pk=excluding.pk).count()


@transaction.atomic
def change_role(*, membership: Membership, role: str, actor: User | None = None) -> Membership:
    if role not in Role.values:
        raise ValidationError(f"Unknown role {role!r}.")
    if membership.role == Role.OWNER and role != Role.OWNER and _owners_left(membership.org, membership) == 0:
        raise ValidationError("An organisation must keep at least one owner.")
    old = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    audit(
        org=membership.org,
        action=AuditAction.MEMBER_ROLE_CHANGED,
        target=membership.user.email,
        actor=actor,
        old=old,
        new=role,
    )
    return membership


@transaction.atomic
def remove_member(*, membership: Membership, actor: User | None = None) -> None:
    if membership.role == Role.OWNER and _owners_left(membership.org, membership) == 0:
        raise ValidationError("An organisation must keep at least one owner.")
    audit(org=membership.org, action=AuditAction.MEMBER_REMOVED, target=membership.user.email, actor=actor)
    # Their playground key (accounts.playground) is theirs alone: it goes with them.
    for key in ApiKey.objects.filter(org=membership.org, created_by=membership.user, playground=True).filter(
        revoked_at__isnull=True
    ):
        revoke_api_key(key=key, actor=actor)
    membership.delete()


@transaction.atomic
def create_api_key(
    *,
    org: Organization,
    name: str,
    created_by: User | None = None,
    actor_label: str = "",
    models: Sequence[str] | None = None,
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    monthly_budget_micros: int | None = None,
    expires_at: datetime | None = None,
    use_fallbacks: bool = False,
) -> tuple[ApiKey, str]:
    """Create a key; returns it with the secret, which is never stored and cannot be shown again.

    The key may call every model its org may use, unless `models` names the ones it is limited to:
    deployments.actions.create_api_key checks and links those deployments (accounts knows none) and
    passes their names here, for the key's flag and the audit entry.
    """
    name = name.strip()
    if not name:
        raise ValidationError("A key needs a name.")
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError("The expiry must be in the future.")
    secret, prefix, key_hash = new_secret(API_KEY_PREFIX)
    key = ApiKey(
        org=org,
        name=name,
        prefix=prefix,
        key_hash=key_hash,
        created_by=created_by,
        all_models=not models,
        rpm_limit=rpm_limit,
        tpm_limit=tpm_limit,
        monthly_budget_micros=monthly_budget_micros,
        expires_at=expires_at,
        use_fallbacks=use_fallbacks,
    )
    key.clean_limits()
    key.save(force_insert=True)
    audit(
        org=org,
        action=AuditAction.KEY_CREATED,
        target=prefix,
        actor=created_by,
        actor_label=actor_label,
        name=name,
        models=list(models or []) or "all",
    )
    return key, secret


@transaction.atomic
def update_api_key(
    *,
    key: ApiKey,
    actor: User | None = None,
    actor_label: str = "",
    **changes: Any,
) -> ApiKey:
    """Change a key's name, limits, budget, expiry or whether it uses deployments' fallbacks.

    `models=[names]` (None for every model) changes its model access flag; the list itself is
    deployments.actions.update_api_key's to link, as at creation.
    """
    known = {"name", "rpm_limit", "tpm_limit", "monthly_budget_micros", "expires_at", "models", "use_fallbacks"}
    unknown = set(changes) - known
    if unknown:
        raise ValidationError(f"Cannot change {', '.join(sorted(unknown))} on a key.")
    expires_at = changes.get("expires_at")
    if expires_at is not None and expires_at != key.expires_at and expires_at <= timezone.now():
        raise ValidationError("The expiry must be in the future.")
    for field, value in changes.items():
        if field == "models":
            key.all_models = not value
        else:
            setattr(key, field, value)
    key.full_clean()
    key.save()
    audit(
        org=key.org,
        action=AuditAction.KEY_UPDATED,
        target=key.prefix,
        actor=actor,
        actor_label=actor_label,
        changes=sorted(changes),
    )
    return key


@transaction.atomic
def revoke_api_key(*, key: ApiKey, actor: User | None = None, actor_label: str = "") -> ApiKey:
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
        audit(org=key.org, action=AuditAction.KEY_REVOKED, target=key.prefix, actor=actor, actor_label=actor_label)
    return key


@transaction.atomic
def create_personal_access_token(
    *, user: User, org: Organization, name: str, role: str = Role.MEMBER, expires_at: datetime | None = None
) -> tuple[PersonalAccessToken, str]:
    """Create a token for `user` in `org`; returns it with the secret, which is never stored and
    cannot be shown again.

    Its role may not be above the user's in `org`; it expires (settings.PAT_DEFAULT_DAYS unless
    `expires_at` says otherwise, settings.PAT_MAX_DAYS at most). Callers re-check the user's password
    first (the dashboard's profile page): the API cannot make tokens.
    """
    name = name.strip()
    if not name:
        raise ValidationError("A token needs a name.")
    if role not in Role.values:
        raise ValidationError(f"Unknown role {role!r}.")
    membership = Membership.objects.filter(org=org, user=user).first()
    if membership is None:
        raise ValidationError(f"{user.email} is not a member of {org.slug}.")
    if lower_role(role, membership.role) != role:
        raise ValidationError(f"A token's role cannot be above yours ({membership.role}) in {org.name}.")
    now = timezone.now()
    if expires_at is None:
        expires_at = now + timedelta(days=settings.PAT_DEFAULT_DAYS)
    if expires_at <= now:
        raise ValidationError("The expiry must be in the future.")
    if expires_at > now + timedelta(days=settings.PAT_MAX_DAYS):
        raise ValidationError(f"A token expires within {settings.PAT_MAX_DAYS} days.")
    secret, prefix, token_hash = new_secret(PAT_PREFIX)
    token = PersonalAccessToken.objects.create(
        user=user, org=org, role=role, name=name, prefix=prefix, token_hash=token_hash, expires_at=expires_at
    )
    audit(org=org, action=AuditAction.PAT_CREATED, target=prefix, actor=user, name=name, role=role)
    return token, secret


@transaction.atomic
def revoke_personal_access_token(*, token: PersonalAccessToken, actor: User | None = None) -> PersonalAccessToken:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit(org=token.org, action=AuditAction.PAT_REVOKED, target=token.prefix, actor=actor)
    return token


def touch_personal_access_token(token: PersonalAccessToken) -> None:
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        PersonalAccessToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
