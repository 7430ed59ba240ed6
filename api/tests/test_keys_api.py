from __future__ import annotations

import pytest

from accounts.models import ApiKey, AuditLog
from accounts.secrets import hash_secret

pytestmark = pytest.mark.django_db

URL = "/api/orgs/acme/keys/"


def test_list_shows_keys_without_secrets(api_admin, key, other_key):
    body = api_admin.get(URL).json()
    assert body["count"] == 1
    item = body["results"][0]
    assert item["prefix"] == key.prefix and item["status"] == "active" and item["all_models"] is True
    assert "secret" not in item and "key_hash" not in item


def test_create_returns_the_secret_once(api_owner, org, deployment, owner):
    response = api_owner.post(
        URL,
        {"name": "ci", "models": ["gemma-tunnel"], "rpm_limit": 60, "monthly_budget_micros": 5_000_000},
        format="json",
    )
    assert response.status_code == 201
    body = response.json()
    key = ApiKey.objects.get(pk=body["id"])
    assert key.key_hash == hash_secret(body["secret"]) and body["secret"].startswith(body["prefix"])
    assert (key.org, key.created_by, key.rpm_limit, key.monthly_budget_micros) == (org, owner, 60, 5_000_000)
    assert body["models"] == ["gemma-tunnel"] and body["all_models"] is False
    assert "secret" not in api_owner.get(f"{URL}{key.pk}/").json()


def test_create_refuses_another_orgs_model_and_a_missing_name(api_owner, other_deployment):
    response = api_owner.post(URL, {"name": "x", "models": ["globex-llama"]}, format="json")
    assert response.status_code == 400 and "models" in response.json()
    assert api_owner.post(URL, {}, format="json").status_code == 400
    assert ApiKey.objects.count() == 0


def test_update_changes_limits_and_models(api_owner, key, deployment):
    response = api_owner.patch(
        f"{URL}{key.pk}/", {"tpm_limit": 1000, "models": ["gemma-tunnel"], "name": "renamed"}, format="json"
    )
    assert response.status_code == 200
    key.refresh_from_db()
    assert (key.tpm_limit, key.name, key.all_models) == (1000, "renamed", False)
    assert response.json()["models"] == ["gemma-tunnel"]
    response = api_owner.patch(f"{URL}{key.pk}/", {"models": []}, format="json")
    key.refresh_from_db()
    assert key.all_models is True and response.json()["models"] == []


def test_read_only_fields_are_ignored_on_update(api_owner, key):
    api_owner.patch(
        f"{URL}{key.pk}/", {"prefix": "sk-tokios-hacked", "revoked_at": "2020-01-01T00:00:00Z"}, format="json"
    )
    key.refresh_from_db()
    assert key.prefix != "sk-tokios-hacked" and key.revoked_at is None


def test_revoke_revokes_and_audits(api_owner, key, owner):
    response = api_owner.post(f"{URL}{key.pk}/revoke/")
    assert response.status_code == 200 and response.json()["status"] == "revoked"
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert AuditLog.objects.get(action="key.revoked").actor == owner


def test_a_revoked_key_cannot_be_updated(api_owner, key):
    api_owner.post(f"{URL}{key.pk}/revoke/")
    assert api_owner.patch(f"{URL}{key.pk}/", {"name": "zombie"}, format="json").status_code == 400


def test_there_is_no_delete(api_owner, key):
    assert api_owner.delete(f"{URL}{key.pk}/").status_code == 405
    assert ApiKey.objects.filter(pk=key.pk).exists()
