"""Gateway access (proxy/access.py) as the gateway calls it: `authenticate_key`, then
`deployment_for` (or `get_deployment` and `key_allows` for /v1/models); the caches behind them, and
how changes made anywhere below the gateway reach them."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.actions import create_api_key, revoke_api_key
from accounts.secrets import hash_secret
from deployments.actions import create_deployment, grant_model, revoke_connector_token, revoke_grant, update_api_key
from lib.redis import get_sync_redis
from proxy import access
from proxy.access import AccessDenied, DeploymentRecord, KeyRecord, key_allows
from proxy.tunnel import presence

authenticate = async_to_sync(access.authenticate_key)
get_deployment = async_to_sync(access.get_deployment)
deployment_for = async_to_sync(access.deployment_for)


def denial(call, *args) -> tuple[int, str]:
    with pytest.raises(AccessDenied) as caught:
        call(*args)
    return caught.value.status, caught.value.code


def status_of(secret: str, model: str) -> int:
    """The gateway's two steps for a request: 200, or the status of the first refusal."""
    try:
        deployment_for(authenticate(secret), model)
    except AccessDenied as exc:
        return exc.status
    return 200


@pytest.fixture(autouse=True)
def _fresh_local_cache():
    # Ids and names repeat from test to test; the shared (Redis) entries are dropped by the
    # invalidation that creating each row triggers.
    access.clear_local_cache()
    yield
    access.clear_local_cache()


# --- key_allows: the one rule, on records alone --------------------------------------------------


def key_record(**overrides: Any) -> KeyRecord:
    values: dict[str, Any] = dict(
        id=1,
        org_id=10,
        org_slug="acme",
        key_hash="h",
        prefix="sk-tokios-x",
        revoked=False,
        expires_at=None,
        all_models=True,
        allowed=(),
        rpm_limit=None,
        tpm_limit=None,
        budget_micros=None,
        org_rpm_limit=None,
        org_tpm_limit=None,
        org_budget_micros=None,
    )
    values.update(overrides)
    return KeyRecord(**values)


def deployment_record(**overrides: Any) -> DeploymentRecord:
    values: dict[str, Any] = dict(
        id=5,
        name="m",
        org_id=10,
        upstream_model="",
        price_input_micros=0,
        price_output_micros=0,
        created_at=0.0,
        granted_orgs=(),
    )
    values.update(overrides)
    return DeploymentRecord(**values)


@pytest.mark.parametrize(
    ("key", "deployment", "allowed"),
    [
        (key_record(), deployment_record(), True),
        (key_record(), deployment_record(org_id=11), False),
        (key_record(), deployment_record(org_id=11, granted_orgs=(10,)), True),
        (key_record(all_models=False, allowed=(5,)), deployment_record(), True),
        (key_record(all_models=False, allowed=(6,)), deployment_record(), False),
        (key_record(all_models=False, allowed=()), deployment_record(), False),
        (key_record(all_models=False, allowed=(5,)), deployment_record(org_id=11), False),
    ],
)
def test_key_allows_its_orgs_and_granted_models_within_its_list(key, deployment, allowed):
    assert key_allows(key, deployment) is allowed


# --- authenticate_key ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_valid_key_authenticates_with_its_limits_and_org(org, key):
    org.rpm_limit = 100
    org.save()
    record = authenticate(key.secret)
    assert (record.id, record.org_id, record.org_slug, record.prefix) == (key.id, org.id, "acme", key.prefix)
    assert record.all_models and not record.revoked and record.org_rpm_limit == 100


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("secret", "code"),
    [
        (None, "missing_api_key"),
        ("", "missing_api_key"),
        ("not-even-our-format", "invalid_api_key"),
        ("sk-tokios-" + "x" * 40, "invalid_api_key"),
        ("sk-tokios-" + "x" * 300, "invalid_api_key"),
    ],
)
def test_a_missing_malformed_or_unknown_key_is_a_401(secret, code):
    assert denial(authenticate, secret) == (401, code)


@pytest.mark.django_db(transaction=True)
def test_a_revoked_key_is_a_401(revoked_key):
    assert denial(authenticate, revoked_key.secret) == (401, "invalid_api_key")


@pytest.mark.django_db(transaction=True)
def test_a_key_stops_working_when_it_expires(org):
    _, secret = create_api_key(org=org, name="short", expires_at=timezone.now() + timedelta(seconds=1))
    assert authenticate(secret).expires_at is not None
    time.sleep(1.1)
    assert denial(authenticate, secret) == (401, "invalid_api_key")


# --- deployment_for and get_deployment -----------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_key_reaches_its_orgs_model_with_its_prices(key, deployment):
    record = deployment_for(authenticate(key.secret), "gemma-tunnel")
    assert (record.id, record.org_id) == (deployment.id, deployment.org_id)
    assert (record.price_input_micros, record.price_output_micros) == (100_000, 400_000)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("model", [None, "", 5, ["gemma-tunnel"]])
def test_a_missing_model_is_a_400(key, deployment, model):
    assert denial(deployment_for, authenticate(key.secret), model) == (400, "missing_model")


@pytest.mark.django_db(transaction=True)
def test_an_unknown_model_is_a_404(key):
    assert denial(deployment_for, authenticate(key.secret), "no-such-model") == (404, "model_not_found")
    assert get_deployment("no-such-model") is None


@pytest.mark.django_db(transaction=True)
def test_another_orgs_model_is_a_403_until_granted(key, org, other_deployment):
    assert denial(deployment_for, authenticate(key.secret), "globex-llama") == (403, "model_not_allowed")
    grant = grant_model(deployment=other_deployment, org=org)
    assert status_of(key.secret, "globex-llama") == 200
    revoke_grant(grant=grant)
    assert status_of(key.secret, "globex-llama") == 403


@pytest.mark.django_db(transaction=True)
def test_a_restricted_key_reaches_only_its_listed_models(restricted_key, deployment, granted_deployment):
    assert status_of(restricted_key.secret, "gemma-tunnel") == 200
    assert status_of(restricted_key.secret, "globex-shared") == 403


# --- invalidation: every change reaches the caches at once ---------------------------------------


@pytest.mark.django_db(transaction=True)
def test_revoking_a_key_takes_effect_at_once_in_this_process(key, deployment):
    assert status_of(key.secret, "gemma-tunnel") == 200  # cached now
    revoke_api_key(key=key)
    assert status_of(key.secret, "gemma-tunnel") == 401


@pytest.mark.django_db(transaction=True)
def test_saves_outside_the_actions_reach_the_cache_too(key, deployment):
    """The Django admin saves models directly."""
    assert status_of(key.secret, "gemma-tunnel") == 200
    key.revoked_at = timezone.now()
    key.save()
    assert status_of(key.secret, "gemma-tunnel") == 401


@pytest.mark.django_db(transaction=True)
def test_deleting_a_key_or_a_deployment_takes_effect_at_once(org, key, deployment):
    _, other = create_api_key(org=org, name="other")
    assert status_of(key.secret, "gemma-tunnel") == 200
    key.delete()
    assert status_of(key.secret, "gemma-tunnel") == 401
    assert status_of(other, "gemma-tunnel") == 200
    deployment.delete()
    assert status_of(other, "gemma-tunnel") == 404


@pytest.mark.django_db(transaction=True)
def test_widening_or_narrowing_a_key_takes_effect_at_once(restricted_key, deployment, granted_deployment):
    assert status_of(restricted_key.secret, "globex-shared") == 403
    update_api_key(key=restricted_key, deployments=[])
    assert status_of(restricted_key.secret, "globex-shared") == 200
    update_api_key(key=restricted_key, deployments=[granted_deployment])
    assert status_of(restricted_key.secret, "globex-shared") == 200
    assert status_of(restricted_key.secret, "gemma-tunnel") == 403


@pytest.mark.django_db(transaction=True)
def test_changing_a_models_key_list_from_the_deployments_side_reaches_the_keys(restricted_key, deployment):
    """The deployments admin edits the list as `deployment.allowed_keys`."""
    assert status_of(restricted_key.secret, "gemma-tunnel") == 200
    deployment.allowed_keys.remove(restricted_key)
    assert status_of(restricted_key.secret, "gemma-tunnel") == 403
    deployment.allowed_keys.add(restricted_key)
    assert status_of(restricted_key.secret, "gemma-tunnel") == 200
    deployment.allowed_keys.clear()
    assert status_of(restricted_key.secret, "gemma-tunnel") == 403


@pytest.mark.django_db(transaction=True)
def test_org_limit_changes_reach_cached_keys(org, key):
    assert authenticate(key.secret).org_rpm_limit is None
    org.rpm_limit = 7
    org.save()
    assert authenticate(key.secret).org_rpm_limit == 7


@pytest.mark.django_db(transaction=True)
def test_a_model_created_after_a_miss_is_found_at_once(org, key):
    assert get_deployment("late-model") is None  # the miss is cached
    create_deployment(org=org, name="late-model")
    assert status_of(key.secret, "late-model") == 200


@pytest.mark.django_db(transaction=True)
def test_warm_requests_make_no_query_and_a_cold_one_at_most_two(key, deployment):
    with CaptureQueriesContext(connection) as cold:
        assert status_of(key.secret, "gemma-tunnel") == 200
    assert len(cold.captured_queries) <= 2
    with CaptureQueriesContext(connection) as warm:
        for _ in range(5):
            assert status_of(key.secret, "gemma-tunnel") == 200
    assert len(warm.captured_queries) == 0


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_revocation_reaches_other_processes_through_redis(key, deployment):
    """Another process's view is simulated by dropping this process's memory: Redis must already
    have forgotten the key, so the next request goes to the database and sees the revocation."""
    assert status_of(key.secret, "gemma-tunnel") == 200
    cache_id = access._key_cache_id(hash_secret(key.secret))
    assert get_sync_redis().exists(cache_id)
    revoke_api_key(key=key)
    assert not get_sync_redis().exists(cache_id)
    access.clear_local_cache()
    assert status_of(key.secret, "gemma-tunnel") == 401


# --- connector tokens ----------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_revoking_a_connector_token_tells_the_tunnel_to_close_its_connectors(connector_token):
    """deployments sends `connector_token_revoked` once the revocation commits; the gateway passes
    it to the token's group, whose consumers close with 4003 (test_consumer.py)."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(presence.token_group(connector_token.id), channel)
    try:
        await sync_to_async(revoke_connector_token)(token=connector_token)
        assert await asyncio.wait_for(layer.receive(channel), 2) == {"type": "tunnel.revoked"}
    finally:
        await layer.group_discard(presence.token_group(connector_token.id), channel)
        await sync_to_async(connections.close_all)()  # the action's thread, before the database goes
