"""Writes about deployments, connector tokens and grants, each with its audit entry."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from accounts.actions import audit
from accounts.models import AuditAction, Organization, User
from accounts.secrets import CONNECTOR_TOKEN_PREFIX, new_secret

from .models import ConnectorToken, Deployment, ModelGrant, validate_deployment_name


@transaction.atomic
def create_deployment(
    *,
    org: Organization,
    name: str,
    upstream_model: str = "",
    price_input_micros: int = 0,
    price_output_micros: int = 0,
    created_by: User | None = None,
    actor_label: str = "",
) -> Deployment:
    validate_deployment_name(name)
    if Deployment.objects.filter(name=name).exists():
        raise ValidationError(f"A deployment named {name!r} already exists (names are global).")
    if price_input_micros < 0 or price_output_micros < 0:
        raise ValidationError("Prices cannot be negative.")
    deployment = Deployment.objects.create(
        org=org,
        name=name,
        upstream_model=upstream_model,
        price_input_micros=price_input_micros,
        price_output_micros=price_output_micros,
    )
    audit(org=org, action=AuditAction.DEPLOYMENT_CREATED, target=name, actor=created_by, actor_label=actor_label)
    return deployment


@transaction.atomic
def update_deployment(*, deployment: Deployment, actor: User | None = None, **changes) -> Deployment:
    allowed = {"upstream_model", "price_input_micros", "price_output_micros"}
    unknown = set(changes) - allowed
    if unknown:
        raise ValidationError(f"Cannot change {', '.join(sorted(unknown))} on a deployment.")
    for field, value in changes.items():
        if field.startswith("price") and (value is None or value < 0):
            raise ValidationError("Prices cannot be negative.")
        setattr(deployment, field, value)
    deployment.save()
    audit(
        org=deployment.org,
        action=AuditAction.DEPLOYMENT_UPDATED,
        target=deployment.name,
        actor=actor,
        changes=sorted(changes),
    )
    return deployment


@transaction.atomic
def create_connector_token(
    *, deployment: Deployment, name: str = "", created_by: User | None = None, actor_label: str = ""
) -> tuple[ConnectorToken, str]:
    secret, prefix, token_hash = new_secret(CONNECTOR_TOKEN_PREFIX)
    token = ConnectorToken.objects.create(
        deployment=deployment, name=name, prefix=prefix, token_hash=token_hash, created_by=created_by
    )
    audit(
        org=deployment.org,
        action=AuditAction.TOKEN_CREATED,
        target=prefix,
        actor=created_by,
        actor_label=actor_label,
        deployment=deployment.name,
    )
    return token, secret


@transaction.atomic
def revoke_connector_token(*, token: ConnectorToken, actor: User | None = None, actor_label: str = "") -> None:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit(
            org=token.deployment.org,
            action=AuditAction.TOKEN_REVOKED,
            target=token.prefix,
            actor=actor,
            actor_label=actor_label,
            deployment=token.deployment.name,
        )
        # Live connectors holding this token are disconnected by the tunnel (close 4003).
        transaction.on_commit(lambda: _disconnect_token(token.id))


def _disconnect_token(token_id: int) -> None:
    from proxy.tunnel.presence import disconnect_token

    disconnect_token(token_id)


@transaction.atomic
def grant_model(
    *, deployment: Deployment, org: Organization, actor: User | None = None, actor_label: str = ""
) -> ModelGrant:
    if org.id == deployment.org_id:
        raise ValidationError(f"{org.slug} owns {deployment.name}; owners always have access.")
    grant, created = ModelGrant.objects.get_or_create(deployment=deployment, org=org, defaults={"created_by": actor})
    if not created:
        raise ValidationError(f"{org.slug} already has access to {deployment.name}.")
    audit(
        org=deployment.org,
        action=AuditAction.GRANT_CREATED,
        target=f"{org.slug} → {deployment.name}",
        actor=actor,
        actor_label=actor_label,
    )
    return grant


@transaction.atomic
def revoke_grant(*, grant: ModelGrant, actor: User | None = None, actor_label: str = "") -> None:
    deployment = grant.deployment
    audit(
        org=deployment.org,
        action=AuditAction.GRANT_REVOKED,
        target=f"{grant.org.slug} → {deployment.name}",
        actor=actor,
        actor_label=actor_label,
    )
    grant.delete()
