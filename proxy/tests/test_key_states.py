"""Paused keys and rotated secrets at the gateway (proxy/access.py): a paused key is a 401
`key_paused` in the caller's shape with `x-should-retry: false`; a secret a rotation replaced works
until the end of its grace period and is refused after it, however its record is cached."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.utils import timezone

from accounts.keys import end_rotation_grace, pause_api_key, resume_api_key, rotate_api_key
from accounts.models import ApiKey
from accounts.secrets import hash_secret
from lib.redis import get_sync_redis
from proxy import access
from proxy.access import AccessDenied

from .fake_call import streamed
from .test_errors_contract import SURFACES, assert_error, send
from .v1 import V1_DB

authenticate = async_to_sync(access.authenticate_key)


def refusal(secret: str) -> tuple[int, str, str, dict]:
    with pytest.raises(AccessDenied) as caught:
        authenticate(secret)
    exc = caught.value
    return exc.status, exc.code, exc.message, exc.headers


@pytest.fixture(autouse=True)
def _fresh_local_cache():
    access.clear_local_cache()
    yield
    access.clear_local_cache()


# --- authenticate_key, with its caches -------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_paused_key_is_refused_at_once_and_works_again_once_resumed(key):
    assert authenticate(key.secret).id == key.pk  # cached now, in memory (and Redis when configured)
    pause_api_key(key=key)
    status, code, message, headers = refusal(key.secret)
    assert (status, code, headers) == (401, "key_paused", {"x-should-retry": "false"})
    assert "paused" in message and "resume" in message
    resume_api_key(key=key)
    assert authenticate(key.secret).id == key.pk


@pytest.mark.django_db(transaction=True)
def test_the_old_secret_works_during_the_grace_period_and_the_new_one_at_once(key):
    old = key.secret
    assert authenticate(old).valid_until is None  # cached as the current secret
    key, new = rotate_api_key(key=key, grace=timedelta(hours=1))
    record = authenticate(old)
    assert record.id == key.pk and record.valid_until == pytest.approx(time.time() + 3600, abs=5)
    assert authenticate(new).id == key.pk and authenticate(new).valid_until is None
    assert key.prefix == new[: len(key.prefix)] and key.previous_prefix == old[: len(key.previous_prefix)]


@pytest.mark.django_db(transaction=True)
def test_the_old_secret_is_refused_once_its_grace_ends_even_from_the_cache(key, monkeypatch):
    old = key.secret
    key, new = rotate_api_key(key=key, grace=timedelta(minutes=10))
    assert authenticate(old).id == key.pk  # cached with its grace end
    later = time.time() + 601
    monkeypatch.setattr(access.time, "time", lambda: later)
    status, code, message, headers = refusal(old)
    assert (status, code, headers) == (401, "invalid_api_key", {"x-should-retry": "false"})
    assert "rotated" in message
    assert authenticate(new).id == key.pk


@pytest.mark.django_db(transaction=True)
def test_no_grace_refuses_the_old_secret_at_once_even_when_it_was_cached(key):
    assert authenticate(key.secret).id == key.pk
    rotate_api_key(key=key, grace=timedelta(0))
    assert refusal(key.secret)[:2] == (401, "invalid_api_key")


@pytest.mark.django_db(transaction=True)
def test_ending_the_grace_early_refuses_the_old_secret(key):
    old = key.secret
    key, _ = rotate_api_key(key=key, grace=timedelta(days=7))
    assert authenticate(old).id == key.pk
    end_rotation_grace(key=key)
    assert refusal(old)[:2] == (401, "invalid_api_key")


@pytest.mark.django_db(transaction=True)
def test_a_second_rotation_ends_the_first_ones_grace_even_for_a_cached_record(key):
    first = key.secret
    key, second = rotate_api_key(key=key, grace=timedelta(days=7))
    assert authenticate(first).id == key.pk  # cached, valid for 7 more days
    key, third = rotate_api_key(key=key, grace=timedelta(days=7))
    assert refusal(first)[:2] == (401, "invalid_api_key")  # its hash is on no key any more
    assert authenticate(second).id == key.pk and authenticate(third).id == key.pk


@pytest.mark.django_db(transaction=True)
def test_revoking_or_expiring_a_rotated_key_refuses_both_secrets(key):
    old = key.secret
    key, new = rotate_api_key(key=key, grace=timedelta(days=1))
    ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    access.clear_local_cache()
    for secret in (old, new):
        assert refusal(secret)[:3] == (401, "invalid_api_key", "This API key has expired.")


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_pause_reaches_other_processes_through_redis(key):
    assert authenticate(key.secret).id == key.pk
    cache_id = access._key_cache_id(hash_secret(key.secret))
    assert get_sync_redis().exists(cache_id)
    pause_api_key(key=key)
    assert not get_sync_redis().exists(cache_id)
    access.clear_local_cache()  # another process: nothing in memory, Redis forgot it
    assert refusal(key.secret)[1] == "key_paused"


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_second_rotation_drops_the_first_secret_from_redis(key):
    first = key.secret
    key, _ = rotate_api_key(key=key, grace=timedelta(days=7))
    assert authenticate(first).id == key.pk
    cache_id = access._key_cache_id(hash_secret(first))
    assert get_sync_redis().exists(cache_id)
    rotate_api_key(key=key, grace=timedelta(days=7))
    assert not get_sync_redis().exists(cache_id)


# --- the error contract, surface by surface ----------------------------------------------------------


@V1_DB
@pytest.mark.asyncio
@pytest.mark.timeout(30)
@pytest.mark.parametrize("surface", SURFACES)
async def test_a_paused_key_gets_a_401_key_paused_in_the_callers_shape(surface, key, deployment, upstream, ledger):
    await sync_to_async(pause_api_key)(key=key)

    response = await send(surface, deployment.name, key.secret)

    error = assert_error(response, surface, 401, ("invalid_request_error", "key_paused"), "authentication_error")
    assert "paused" in error["message"]
    assert response.headers["x-should-retry"] == "false"
    assert upstream.calls == []
    ledger.only(surface=surface, status_code=401, error_code="key_paused", key_id=None)


@V1_DB
@pytest.mark.asyncio
@pytest.mark.timeout(30)
@pytest.mark.parametrize("surface", SURFACES)
async def test_both_secrets_are_answered_during_the_grace_and_only_the_new_one_after(
    surface, key, deployment, upstream, ledger
):
    old = key.secret
    rotated, new = await sync_to_async(rotate_api_key)(key=key, grace=timedelta(hours=1))
    for secret in (old, new):
        upstream.answer(*streamed("Hi"))
        assert (await send(surface, deployment.name, secret, stream=True)).status == 200
    await sync_to_async(end_rotation_grace)(key=rotated)  # as the grace's end would

    response = await send(surface, deployment.name, old)

    assert_error(response, surface, 401, ("invalid_request_error", "invalid_api_key"), "authentication_error")
    assert response.headers["x-should-retry"] == "false"
    upstream.answer(*streamed("Hi"))
    assert (await send(surface, deployment.name, new, stream=True)).status == 200
