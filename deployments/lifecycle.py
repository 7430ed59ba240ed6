"""Switching a deployment off and on, and deleting it, each with its audit entry; and what a deletion
takes with it (`deletion_impact`), which the confirmation page and the API's answer spell out.

A disabled deployment keeps everything: its connectors stay connected (they get no traffic), its
keys, grants and tokens are untouched, and /v1 answers its callers 503 `deployment_disabled`
(proxy/access.py). Deleting one:
- revokes its connector tokens, and live connectors using them are closed (4003, "token revoked":
  the connector exits instead of reconnecting);
- removes its grants (the other organisations' keys lose it);
- drops it from the model lists of the keys limited to it. A key whose list held only this model is
  left able to call no model (it is never widened to every model);
- leaves the deployments it served (Deployment.served_by) without a server: they are offline until
  given another one, or connector tokens of their own;
- keeps the usage history: events and rollups stay, with the deployment set to NULL (billing folds
  its rollups into the "no deployment" row first), statements keep the model's name; the request
  log still shows the name clients sent. The connect history goes with the deployment.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial

from django.db import transaction
from django.utils import timezone

from accounts.actions import audit
from accounts.models import ApiKey, AuditAction, User

from .models import ConnectorToken, Deployment
from .signals import connector_token_revoked

MAX_LISTED = 20  # names a deletion's summary lists; the counts are always whole


@dataclass(frozen=True)
class DeletionImpact:
    """What deleting a deployment does to the things that point at it."""

    name: str
    active_tokens: int  # revoked by the deletion
    token_prefixes: list[str]
    granted_orgs: list[str]  # slugs of the organisations that lose access
    limited_keys: int  # keys (not revoked) whose model list includes it: they lose it
    stranded_keys: int  # of those, keys it was the only model of: they can call no model afterwards
    stranded_key_names: list[str]
    served_deployments: list[str]  # names of the deployments its connectors served: offline afterwards

    def as_dict(self) -> dict:
        return asdict(self)


def deletion_impact(deployment: Deployment) -> DeletionImpact:
    tokens = list(deployment.connector_tokens.filter(revoked_at__isnull=True).values_list("prefix", flat=True))
    grants = list(deployment.grants.order_by("org__slug").values_list("org__slug", flat=True))
    limited = ApiKey.objects.filter(allowed_deployments=deployment, all_models=False, revoked_at__isnull=True)
    others = Deployment.allowed_keys.through.objects.exclude(deployment=deployment)
    stranded = limited.exclude(pk__in=others.values("apikey_id")).order_by("name")
    return DeletionImpact(
        name=deployment.name,
        active_tokens=len(tokens),
        token_prefixes=tokens[:MAX_LISTED],
        granted_orgs=grants,
        limited_keys=limited.count(),
        stranded_keys=stranded.count(),
        stranded_key_names=list(stranded.values_list("name", flat=True)[:MAX_LISTED]),
        served_deployments=list(deployment.served_deployments.order_by("name").values_list("name", flat=True)),
    )


def _locked(deployment: Deployment) -> Deployment:
    """The deployment's row, locked until the transaction ends: two admins switching it at once
    write one audit entry, not two."""
    return Deployment.objects.select_for_update().get(pk=deployment.pk)


@transaction.atomic
def disable_deployment(*, deployment: Deployment, actor: User | None = None, actor_label: str = "") -> bool:
    """Switch a deployment off. Returns False (and writes nothing) if it already was."""
    row = _locked(deployment)
    if row.disabled_at is not None:
        deployment.disabled_at = row.disabled_at
        return False
    deployment.disabled_at = timezone.now()
    # A save (not a queryset update) so that the gateway's cache hears of it (post_save).
    deployment.save(update_fields=["disabled_at"])
    audit(
        org=deployment.org,
        action=AuditAction.DEPLOYMENT_DISABLED,
        target=deployment.name,
        actor=actor,
        actor_label=actor_label,
    )
    return True


@transaction.atomic
def enable_deployment(*, deployment: Deployment, actor: User | None = None, actor_label: str = "") -> bool:
    """Switch a disabled deployment back on. Returns False (and writes nothing) if it was on."""
    row = _locked(deployment)
    if row.disabled_at is None:
        deployment.disabled_at = None
        return False
    disabled_since = row.disabled_at
    deployment.disabled_at = None
    deployment.save(update_fields=["disabled_at"])
    audit(
        org=deployment.org,
        action=AuditAction.DEPLOYMENT_ENABLED,
        target=deployment.name,
        actor=actor,
        actor_label=actor_label,
        disabled_since=disabled_since.isoformat(),
    )
    return True


@transaction.atomic
def delete_deployment(*, deployment: Deployment, actor: User | None = None, actor_label: str = "") -> DeletionImpact:
    """Delete a deployment (see the module's docstring for what goes with it); returns what it did."""
    _locked(deployment)
    impact = deletion_impact(deployment)
    token_ids = list(deployment.connector_tokens.values_list("id", flat=True))
    deployment.connector_tokens.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
    # Through the relation (not the cascade, which sends no m2m signal): the gateway forgets the
    # cached records of the keys that listed it.
    deployment.allowed_keys.clear()
    # One save each (not the foreign key's SET NULL, which sends no signal): the gateway forgets the
    # cached records that still name this deployment as their server.
    for served in deployment.served_deployments.all():
        served.served_by = None
        served.save(update_fields=["served_by"])
    audit(
        org=deployment.org,
        action=AuditAction.DEPLOYMENT_DELETED,
        target=deployment.name,
        actor=actor,
        actor_label=actor_label,
        revoked_tokens=impact.token_prefixes,
        removed_grants=impact.granted_orgs,
        limited_keys=impact.limited_keys,
        stranded_keys=impact.stranded_key_names,
        **({"served_deployments": impact.served_deployments} if impact.served_deployments else {}),
    )
    deployment.delete()
    for token_id in token_ids:
        # Every token, revoked before or now: any connector still holding one is closed (4003).
        transaction.on_commit(partial(connector_token_revoked.send, sender=ConnectorToken, token_id=token_id))
    return impact
