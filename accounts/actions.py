"""Writes that span several models (and the audit log) go through these functions.

The access cache is kept current by signals (accounts/signals.py, deployments/signals.py), which
also catch edits made in the Django admin."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from .models import ApiKey, AuditAction, AuditLog, Membership, Organization, Role, User, validate_org_slug
from .secrets import API_KEY_PREFIX, new_secret


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
def create_org(
    *, slug: str, name: str = "", owner: User | None = None, actor_label: str = ""
) -> Organization:
    validate_org_slug(slug)
    if Organization.objects.filter(slug=slug).exists():
        raise ValidationError(f"An organisation with slug {slug!r} already exists.")
    org = Organization.objects.create(slug=slug, name=name or slug)
    audit(org=org, action=AuditAction.ORG_CREATED, target=slug, actor=owner, actor_label=actor_label)
    if owner is not None:
        add_member(org=org, user=owner, role=Role.OWNER, actor=owner, actor_label=actor_label)
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
    membership.delete()


@transaction.atomic
def create_api_key(
    *,
    org: Organization,
    name: str,
    created_by: User | None = None,
    actor_label: str = "",
    deployments: Iterable | None = None,
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    monthly_budget_micros: int | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Create a key; returns it with the secret, which is never stored and cannot be shown again."""
    name = name.strip()
    if not name:
        raise ValidationError("A key needs a name.")
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError("The expiry must be in the future.")
    deployments = list(deployments or [])
    if deployments:
        from deployments.models import Deployment

        usable = set(Deployment.objects.usable_by(org).values_list("id", flat=True))
        for deployment in deployments:
            if deployment.id not in usable:
                raise ValidationError(f"The organisation {org.slug} may not use the model {deployment.name}.")
    secret, prefix, key_hash = new_secret(API_KEY_PREFIX)
    key = ApiKey.objects.create(
        org=org,
        name=name,
        prefix=prefix,
        key_hash=key_hash,
        created_by=created_by,
        all_models=not deployments,
        rpm_limit=rpm_limit,
        tpm_limit=tpm_limit,
        monthly_budget_micros=monthly_budget_micros,
        expires_at=expires_at,
    )
    if deployments:
        key.allowed_deployments.set(deployments)
    audit(
        org=org,
        action=AuditAction.KEY_CREATED,
        target=prefix,
        actor=created_by,
        actor_label=actor_label,
        name=name,
        models=[d.name for d in deployments] or "all",
    )
    return key, secret


@transaction.atomic
def update_api_key(
    *,
    key: ApiKey,
    actor: User | None = None,
    actor_label: str = "",
    **changes,
) -> ApiKey:
    """Change a key's name, limits, budget or model access (`deployments=[…]`, empty for all)."""
    deployments = changes.pop("deployments", None)
    allowed = {"name", "rpm_limit", "tpm_limit", "monthly_budget_micros", "expires_at"}
    unknown = set(changes) - allowed
    if unknown:
        raise ValidationError(f"Cannot change {', '.join(sorted(unknown))} on a key.")
    for field, value in changes.items():
        setattr(key, field, value)
    key.full_clean(exclude=["allowed_deployments"])
    key.save()
    if deployments is not None:
        from deployments.models import Deployment

        usable = set(Deployment.objects.usable_by(key.org).values_list("id", flat=True))
        for deployment in deployments:
            if deployment.id not in usable:
                raise ValidationError(f"The organisation {key.org.slug} may not use the model {deployment.name}.")
        key.all_models = not deployments
        key.save(update_fields=["all_models"])
        key.allowed_deployments.set(deployments)
    audit(
        org=key.org,
        action=AuditAction.KEY_UPDATED,
        target=key.prefix,
        actor=actor,
        actor_label=actor_label,
        changes=sorted(set(changes) | ({"models"} if deployments is not None else set())),
    )
    return key


@transaction.atomic
def revoke_api_key(*, key: ApiKey, actor: User | None = None, actor_label: str = "") -> ApiKey:
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
        audit(org=key.org, action=AuditAction.KEY_REVOKED, target=key.prefix, actor=actor, actor_label=actor_label)
    return key
