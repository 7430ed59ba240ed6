"""The deployments actions that reach into other apps: a key's model list, and the signal a
revoked connector token sends to the tunnel."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from accounts.models import ApiKey, AuditAction, AuditLog
from deployments.actions import create_api_key, revoke_connector_token, update_api_key
from deployments.signals import connector_token_revoked

pytestmark = pytest.mark.django_db


def test_a_key_limited_to_models_records_them_once_in_the_audit_log(org, deployment, granted_deployment):
    key, secret = create_api_key(org=org, name="narrow", deployments=[deployment, granted_deployment])
    assert secret.startswith("sk-tokios-") and not key.all_models
    assert set(key.allowed_deployments.all()) == {deployment, granted_deployment}
    [entry] = AuditLog.objects.filter(action=AuditAction.KEY_CREATED, target=key.prefix)
    assert sorted(entry.detail["models"]) == ["gemma-tunnel", "globex-shared"]


def test_a_key_without_a_list_may_call_every_model(org, deployment):
    key, _ = create_api_key(org=org, name="wide", deployments=[])
    assert key.all_models and not key.allowed_deployments.exists()
    assert AuditLog.objects.get(action=AuditAction.KEY_CREATED, target=key.prefix).detail["models"] == "all"


def test_a_key_cannot_be_limited_to_a_model_its_org_may_not_use(org, other_deployment):
    with pytest.raises(ValidationError, match="may not use the model globex-llama"):
        create_api_key(org=org, name="sneaky", deployments=[other_deployment])
    assert not ApiKey.objects.filter(name="sneaky").exists()


def test_a_refused_change_leaves_the_key_as_it_was(restricted_key, deployment, other_deployment):
    with pytest.raises(ValidationError):
        update_api_key(key=restricted_key, name="renamed", deployments=[other_deployment])
    restricted_key.refresh_from_db()
    assert restricted_key.name == "gemma only" and not restricted_key.all_models
    assert list(restricted_key.allowed_deployments.all()) == [deployment]


def test_widening_and_narrowing_a_key(restricted_key, deployment, granted_deployment):
    update_api_key(key=restricted_key, deployments=[])
    restricted_key.refresh_from_db()
    assert restricted_key.all_models and not restricted_key.allowed_deployments.exists()
    update_api_key(key=restricted_key, deployments=[granted_deployment], rpm_limit=60)
    restricted_key.refresh_from_db()
    assert not restricted_key.all_models and restricted_key.rpm_limit == 60
    assert list(restricted_key.allowed_deployments.all()) == [granted_deployment]
    entry = AuditLog.objects.filter(action=AuditAction.KEY_UPDATED, target=restricted_key.prefix).first()
    assert entry.detail["changes"] == ["models", "rpm_limit"]


def test_revoking_a_connector_token_signals_its_id_once_committed(connector_token, django_capture_on_commit_callbacks):
    heard: list[int] = []

    def receiver(sender, *, token_id: int, **kwargs) -> None:
        heard.append(token_id)

    connector_token_revoked.connect(receiver)
    try:
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            revoke_connector_token(token=connector_token)
            revoke_connector_token(token=connector_token)  # already revoked: nothing more
        assert heard == []  # nothing before the commit
        for callback in callbacks:
            callback()
        assert heard == [connector_token.id]
    finally:
        connector_token_revoked.disconnect(receiver)
