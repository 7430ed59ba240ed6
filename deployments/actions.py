"""Writes about deployments, connector tokens and grants, each with its audit entry, and the
model access of API keys (the key → deployment list is this app's: Deployment.allowed_keys)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from accounts import actions as accounts_actions
from accounts.actions import audit
from accounts.models import ApiKey, AuditAction, Organization, User
from accounts.secrets import CONNECTOR_TOKEN_PREFIX, new_secret

from .models import (
    ConnectorToken,
    Deployment,
    DeploymentFallback,
    ModelGrant,
    SurfaceMode,
    validate_deployment_name,
)
from .signals import connector_token_revoked


def _locked_server(deployment: Deployment) -> None:
    """Re-reads `deployment.served_by` under a row lock, so that two deployments cannot be made to serve
    each other at once (each check would see the other unserved)."""
    if deployment.served_by is not None:
        ids = sorted({deployment.served_by.pk, *([deployment.pk] if deployment.pk else [])})
        rows = {d.pk: d for d in Deployment.objects.select_for_update().filter(pk__in=ids).order_by("pk")}
        if deployment.served_by.pk not in rows:
            raise ValidationError({"served_by": "That deployment no longer exists."})
        deployment.served_by = rows[deployment.served_by.pk]


def _set_fallbacks(deployment: Deployment, fallbacks: Sequence[Deployment]) -> None:
    deployment.clean_fallbacks(fallbacks)
    # Row by row (not a bulk delete), so that the gateway's cache hears of each change (post_delete).
    for link in deployment.fallback_links.all():
        link.delete()
    for position, fallback in enumerate(fallbacks):
        DeploymentFallback.objects.create(deployment=deployment, fallback=fallback, position=position)


@transaction.atomic
def create_deployment(
    *,
    org: Organization,
    name: str,
    upstream_model: str = "",
    price_input_micros: int = 0,
    price_output_micros: int = 0,
    surface_mode: str = SurfaceMode.AUTO,
    served_by: Deployment | None = None,
    fallbacks: Sequence[Deployment] = (),
    created_by: User | None = None,
    actor_label: str = "",
) -> Deployment:
    """A new deployment; with `served_by`, one more model behind that deployment's connectors (it gets
    no connector tokens of its own)."""
    validate_deployment_name(name)
    if Deployment.objects.filter(name=name).exists():
        raise ValidationError(f"A deployment named {name!r} already exists (names are global).")
    deployment = Deployment(
        org=org,
        name=name,
        upstream_model=upstream_model,
        price_input_micros=price_input_micros,
        price_output_micros=price_output_micros,
        surface_mode=surface_mode,
        served_by=served_by,
    )
    deployment.clean_prices()
    _locked_server(deployment)
    deployment.clean_served_by()
    deployment.save(force_insert=True)
    if fallbacks:
        _set_fallbacks(deployment, fallbacks)
    details: dict[str, Any] = {}
    if served_by is not None:
        details["served_by"] = served_by.name
    if fallbacks:
        details["fallbacks"] = [d.name for d in fallbacks]
    audit(
        org=org,
        action=AuditAction.DEPLOYMENT_CREATED,
        target=name,
        actor=created_by,
        actor_label=actor_label,
        **details,
    )
    return deployment


@transaction.atomic
def update_deployment(
    *,
    deployment: Deployment,
    actor: User | None = None,
    actor_label: str = "",
    fallbacks: Sequence[Deployment] | None = None,
    **changes: Any,
) -> Deployment:
    """Change a deployment's upstream model, prices, surface mode, server (`served_by`, None for its
    own connectors) or, with `fallbacks`, its ordered list of fallbacks (empty: none)."""
    allowed = {"upstream_model", "price_input_micros", "price_output_micros", "surface_mode", "served_by"}
    unknown = set(changes) - allowed
    if unknown:
        raise ValidationError(f"Cannot change {', '.join(sorted(unknown))} on a deployment.")
    for field, value in changes.items():
        setattr(deployment, field, value)
    deployment.clean_prices()
    if "served_by" in changes:
        _locked_server(deployment)
        deployment.clean_served_by()
    deployment.save()
    details: dict[str, Any] = {}
    if "served_by" in changes:
        details["served_by"] = deployment.served_by.name if deployment.served_by else None
    if fallbacks is not None:
        _set_fallbacks(deployment, fallbacks)
        details["fallbacks"] = [d.name for d in fallbacks]
    audit(
        org=deployment.org,
        action=AuditAction.DEPLOYMENT_UPDATED,
        target=deployment.name,
        actor=actor,
        actor_label=actor_label,
        changes=sorted([*changes, *(["fallbacks"] if fallbacks is not None else [])]),
        **details,
    )
    return deployment


@transaction.atomic
def create_connector_token(
    *, deployment: Deployment, name: str = "", created_by: User | None = None, actor_label: str = ""
) -> tuple[ConnectorToken, str]:
    if deployment.served_by_id is not None:
        # Its connectors would announce themselves under its own id, where no request looks for them.
        raise ValidationError(
            f"{deployment.name} is served by the connectors of {deployment.served_by}; "
            "create connector tokens there instead."
        )
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
        transaction.on_commit(lambda: connector_token_revoked.send(sender=ConnectorToken, token_id=token.id))


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


def _usable(org: Organization, deployments: Iterable[Deployment]) -> list[Deployment]:
    """`deployments`, each of which `org`'s keys may call, or ValidationError."""
    chosen = list(deployments)
    usable = set(Deployment.objects.usable_by(org).values_list("id", flat=True)) if chosen else set()
    for deployment in chosen:
        if deployment.id not in usable:
            raise ValidationError(f"The organisation {org.slug} may not use the model {deployment.name}.")
    return chosen


@transaction.atomic
def create_api_key(
    *, org: Organization, name: str, deployments: Iterable[Deployment] | None = None, **fields: Any
) -> tuple[ApiKey, str]:
    """accounts.actions.create_api_key, limited to `deployments` when any are listed (each must be
    one the org may use); returns the key with its secret."""
    chosen = _usable(org, deployments or ())
    key, secret = accounts_actions.create_api_key(org=org, name=name, models=[d.name for d in chosen] or None, **fields)
    if chosen:
        key.allowed_deployments.set(chosen)
    return key, secret


@transaction.atomic
def update_api_key(*, key: ApiKey, deployments: Iterable[Deployment] | None = None, **changes: Any) -> ApiKey:
    """accounts.actions.update_api_key, and with `deployments` its model list (empty: every model)."""
    if deployments is None:
        return accounts_actions.update_api_key(key=key, **changes)
    chosen = _usable(key.org, deployments)
    accounts_actions.update_api_key(key=key, models=[d.name for d in chosen] or None, **changes)
    key.allowed_deployments.set(chosen)
    return key
