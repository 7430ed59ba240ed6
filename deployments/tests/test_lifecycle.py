"""Disabling, enabling and deleting a deployment (deployments.lifecycle): each audited once, and a
deletion says (and does) what happens to tokens, grants, keys limited to it and usage history."""

from __future__ import annotations

import pytest

from accounts.models import ApiKey, AuditLog
from alerts.models import ConnectorEvent
from billing.models import UsageEvent, UsageRollup
from dashboard.tests.request_data import request_event
from dashboard.tests.usage_data import rollup
from deployments.actions import (
    create_api_key,
    create_connector_token,
    create_deployment,
    grant_model,
    revoke_connector_token,
)
from deployments.lifecycle import delete_deployment, deletion_impact, disable_deployment, enable_deployment
from deployments.models import ConnectorToken, Deployment, ModelGrant
from deployments.signals import connector_token_revoked

pytestmark = pytest.mark.django_db


def audit_actions(org) -> list[str]:
    return list(AuditLog.objects.filter(org=org, action__startswith="deployment.").values_list("action", flat=True))


def test_disabling_sets_the_time_once_and_audits_once(deployment, owner, org):
    assert disable_deployment(deployment=deployment, actor=owner) is True
    first = Deployment.objects.get(pk=deployment.pk).disabled_at
    assert first is not None and deployment.is_disabled

    assert disable_deployment(deployment=Deployment.objects.get(pk=deployment.pk), actor=owner) is False
    assert Deployment.objects.get(pk=deployment.pk).disabled_at == first
    entry = AuditLog.objects.get(action="deployment.disabled")
    assert (entry.target, entry.actor) == (deployment.name, owner)
    assert Deployment.objects.enabled().filter(pk=deployment.pk).count() == 0


def test_enabling_clears_it_and_records_since_when_it_was_off(deployment, owner):
    assert enable_deployment(deployment=deployment, actor=owner) is False  # was on: nothing written
    disable_deployment(deployment=deployment, actor=owner)
    since = Deployment.objects.get(pk=deployment.pk).disabled_at

    assert enable_deployment(deployment=deployment, actor=owner, actor_label="api-token:x") is True
    assert Deployment.objects.get(pk=deployment.pk).disabled_at is None
    entry = AuditLog.objects.get(action="deployment.enabled")
    assert entry.detail == {"disabled_since": since.isoformat()} and entry.actor_label == "api-token:x"


def test_the_impact_counts_tokens_grants_and_keys_limited_to_it(
    org, owner, deployment, connector_token, granted_deployment, restricted_key, other_org
):
    grant_model(deployment=deployment, org=other_org)
    revoke_connector_token(token=create_connector_token(deployment=deployment, name="old")[0])
    both, _ = create_api_key(org=org, name="both", deployments=[deployment, granted_deployment])
    create_api_key(org=org, name="other only", deployments=[granted_deployment])
    gone, _ = create_api_key(org=org, name="revoked", deployments=[deployment])
    gone.revoked_at = gone.created_at
    gone.save()

    impact = deletion_impact(deployment)

    assert (impact.active_tokens, impact.token_prefixes) == (1, [connector_token.prefix])
    assert impact.granted_orgs == ["globex"]
    assert impact.limited_keys == 2  # "gemma only" and "both"; not the revoked one, nor "other only"
    assert (impact.stranded_keys, impact.stranded_key_names) == (1, ["gemma only"])


def test_deleting_revokes_tokens_removes_grants_and_keeps_the_usage(
    org, owner, other_org, deployment, connector_token, restricted_key, django_capture_on_commit_callbacks
):
    grant_model(deployment=deployment, org=other_org)
    old_token, _ = create_connector_token(deployment=deployment, name="old")
    revoke_connector_token(token=old_token)
    rollup(org, key=restricted_key, deployment=deployment, requests=7, cost_micros=700)
    rollup(org, key=restricted_key, deployment=None, requests=1, cost_micros=100)  # folded into this one
    event = request_event(org, key=restricted_key, deployment=deployment)
    ConnectorEvent.objects.create(deployment=deployment, kind="connected", token=connector_token)
    heard: list[int] = []

    def receiver(sender, *, token_id: int, **kwargs) -> None:
        heard.append(token_id)

    connector_token_revoked.connect(receiver)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            impact = delete_deployment(deployment=deployment, actor=owner)
    finally:
        connector_token_revoked.disconnect(receiver)

    assert impact.name == "gemma-tunnel" and impact.active_tokens == 1 and impact.granted_orgs == ["globex"]
    assert not Deployment.objects.filter(name="gemma-tunnel").exists()
    assert sorted(heard) == sorted([connector_token.pk, old_token.pk])  # every live connector is closed
    assert not ConnectorToken.objects.exists() and not ModelGrant.objects.exists()
    assert not ConnectorEvent.objects.exists()
    # The usage stays, without the deployment: the two rollups of the bucket are one now.
    row = UsageRollup.objects.get(org=org)
    assert (row.deployment_id, row.requests, row.cost_micros) == (None, 8, 800)
    kept = UsageEvent.objects.get(pk=event.pk)
    assert kept.deployment_id is None and kept.requested_model == "gemma-tunnel"
    # A key limited to it alone can call nothing now; it was not widened to every model.
    key = ApiKey.objects.get(pk=restricted_key.pk)
    assert key.all_models is False and not key.allowed_deployments.exists()
    entry = AuditLog.objects.get(action="deployment.deleted")
    assert entry.target == "gemma-tunnel" and entry.actor == owner
    assert entry.detail == {
        "revoked_tokens": [connector_token.prefix],
        "removed_grants": ["globex"],
        "limited_keys": 1,
        "stranded_keys": ["gemma only"],
    }
    assert audit_actions(org) == ["deployment.deleted", "deployment.created"]


def test_the_name_is_free_again_after_a_deletion(org, deployment):
    old_pk = deployment.pk
    delete_deployment(deployment=deployment)
    assert create_deployment(org=org, name="gemma-tunnel").pk != old_pk
