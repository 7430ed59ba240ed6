"""Access resolution: the matrix of keys × models, invalidation, and its query budget."""

from __future__ import annotations

from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.access import AccessDenied, resolve_access
from accounts.actions import create_api_key, revoke_api_key, update_api_key
from deployments.actions import create_deployment, grant_model, revoke_grant

resolve = async_to_sync(resolve_access)


def status_of(secret, model) -> int:
    try:
        resolve(secret, model)
    except AccessDenied as exc:
        return exc.status
    return 200


@pytest.mark.django_db(transaction=True)
class TestMatrix:
    def test_it_allows_a_valid_key_on_its_own_orgs_model(self, key, deployment):
        access = resolve(key[1], "gemma-tunnel")
        assert access.deployment.id == deployment.id
        assert access.key.id == key[0].id

    def test_it_rejects_a_missing_key(self, deployment):
        assert status_of(None, "gemma-tunnel") == 401
        assert status_of("", "gemma-tunnel") == 401

    def test_it_rejects_an_unknown_key(self, deployment):
        assert status_of("sk-tokios-" + "x" * 40, "gemma-tunnel") == 401
        assert status_of("not-even-our-format", "gemma-tunnel") == 401

    def test_it_rejects_a_revoked_key(self, key, deployment):
        revoke_api_key(key=key[0])
        assert status_of(key[1], "gemma-tunnel") == 401

    def test_it_rejects_an_expired_key(self, org, deployment):
        import time

        _, secret = create_api_key(org=org, name="short", expires_at=timezone.now() + timedelta(seconds=1))
        assert status_of(secret, "gemma-tunnel") == 200
        time.sleep(1.1)
        assert status_of(secret, "gemma-tunnel") == 401

    def test_it_returns_404_for_an_unknown_model(self, key):
        assert status_of(key[1], "no-such-model") == 404

    def test_it_returns_403_for_another_orgs_model_without_a_grant(self, outsider_org, deployment):
        _, secret = create_api_key(org=outsider_org, name="theirs")
        assert status_of(secret, "gemma-tunnel") == 403

    def test_it_allows_a_granted_org(self, outsider_org, deployment):
        _, secret = create_api_key(org=outsider_org, name="theirs")
        grant = grant_model(deployment=deployment, org=outsider_org)
        assert status_of(secret, "gemma-tunnel") == 200
        revoke_grant(grant=grant)
        assert status_of(secret, "gemma-tunnel") == 403

    def test_a_restricted_key_reaches_only_its_listed_models(self, org, deployment):
        other = create_deployment(org=org, name="other-model")
        _, secret = create_api_key(org=org, name="narrow", deployments=[other])
        assert status_of(secret, "other-model") == 200
        assert status_of(secret, "gemma-tunnel") == 403

    def test_widening_a_restricted_key_takes_effect_at_once(self, org, deployment):
        other = create_deployment(org=org, name="other-model")
        api_key, secret = create_api_key(org=org, name="narrow", deployments=[other])
        assert status_of(secret, "gemma-tunnel") == 403
        update_api_key(key=api_key, deployments=[])
        assert status_of(secret, "gemma-tunnel") == 200

    def test_a_key_cannot_be_restricted_to_a_model_its_org_may_not_use(self, outsider_org, deployment):
        from django.core.exceptions import ValidationError

        with pytest.raises(ValidationError):
            create_api_key(org=outsider_org, name="sneaky", deployments=[deployment])


@pytest.mark.django_db(transaction=True)
def test_revocation_takes_effect_immediately_in_this_process(key, deployment):
    assert status_of(key[1], "gemma-tunnel") == 200  # warm the cache
    revoke_api_key(key=key[0])
    assert status_of(key[1], "gemma-tunnel") == 401


@pytest.mark.django_db(transaction=True)
def test_warm_resolution_makes_no_query_and_cold_at_most_two(key, deployment):
    with CaptureQueriesContext(connection) as cold:
        resolve(key[1], "gemma-tunnel")
    assert len(cold.captured_queries) <= 2
    with CaptureQueriesContext(connection) as warm:
        for _ in range(5):
            resolve(key[1], "gemma-tunnel")
    assert len(warm.captured_queries) == 0


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_revocation_reaches_other_processes_through_redis_within_a_second(key, deployment, settings):
    """Another process's view is simulated by dropping this process's memory: Redis must already
    have forgotten the key, so the next resolution goes to the database and sees the revocation."""
    from accounts.access import _key_cache_id, clear_local_cache
    from accounts.secrets import hash_secret
    from lib.redis import get_sync_redis

    assert status_of(key[1], "gemma-tunnel") == 200
    cache_id = _key_cache_id(hash_secret(key[1]))
    assert get_sync_redis().exists(cache_id)
    revoke_api_key(key=key[0])
    assert not get_sync_redis().exists(cache_id)
    clear_local_cache()
    assert status_of(key[1], "gemma-tunnel") == 401


@pytest.mark.django_db(transaction=True)
def test_edits_outside_the_actions_also_invalidate(key, deployment, org):
    """The Django admin saves models directly; those saves must reach the cache too."""
    assert status_of(key[1], "gemma-tunnel") == 200
    api_key = key[0]
    api_key.revoked_at = timezone.now()
    api_key.save()
    assert status_of(key[1], "gemma-tunnel") == 401


@pytest.mark.django_db(transaction=True)
def test_org_limit_changes_reach_cached_keys(key, deployment, org):
    resolve(key[1], "gemma-tunnel")
    org.rpm_limit = 7
    org.save()
    assert resolve(key[1], "gemma-tunnel").key.org_rpm_limit == 7
