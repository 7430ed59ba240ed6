"""accounts.keys: rotate, pause and resume, expiry; each audited once, revoked keys left alone."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from accounts.actions import create_api_key, revoke_api_key
from accounts.keys import (
    MAX_ROTATION_GRACE,
    end_rotation_grace,
    pause_api_key,
    resume_api_key,
    rotate_api_key,
    set_api_key_expiry,
)
from accounts.models import ApiKey, AuditLog, KeyStatus
from accounts.secrets import hash_secret
from accounts.signals import api_key_secrets_retired

pytestmark = pytest.mark.django_db


@pytest.fixture
def key(org):
    """This module's key: the instance (accounts/tests/conftest.py's `key` is the (key, secret) pair)."""
    key, secret = create_api_key(org=org, name="backend")
    key.secret = secret
    return key


@pytest.fixture
def revoked_key(org):
    key, _ = create_api_key(org=org, name="leaked")
    return revoke_api_key(key=key)


def test_rotating_gives_a_new_secret_and_keeps_the_old_one_for_the_grace(key, owner):
    old_prefix, old_hash = key.prefix, key.key_hash
    before = timezone.now()
    rotated, secret = rotate_api_key(key=key, grace=timedelta(hours=24), actor=owner)
    stored = ApiKey.objects.get(pk=key.pk)
    assert stored.key_hash == hash_secret(secret) and secret.startswith(stored.prefix) and stored.prefix != old_prefix
    assert (stored.previous_prefix, stored.previous_key_hash) == (old_prefix, old_hash)
    assert before + timedelta(hours=24) <= stored.previous_valid_until <= timezone.now() + timedelta(hours=24)
    assert stored.previous_secret_valid and stored.rotated_at is not None
    assert (stored.name, stored.org_id) == (key.name, key.org_id)
    entry = AuditLog.objects.get(action="key.rotated")
    assert (entry.actor, entry.target, entry.detail["previous_prefix"]) == (owner, stored.prefix, old_prefix)
    assert entry.detail["grace_seconds"] == 86400 and secret not in str(entry.detail)


@pytest.mark.parametrize("grace", [timedelta(seconds=-1), MAX_ROTATION_GRACE + timedelta(seconds=1)])
def test_a_grace_outside_its_bounds_is_refused(key, grace):
    with pytest.raises(ValidationError):
        rotate_api_key(key=key, grace=grace)
    assert ApiKey.objects.get(pk=key.pk).key_hash == key.key_hash


def test_a_revoked_key_cannot_be_rotated_paused_resumed_or_given_an_expiry(revoked_key):
    for change in (
        lambda: rotate_api_key(key=revoked_key, grace=timedelta(0)),
        lambda: pause_api_key(key=revoked_key),
        lambda: resume_api_key(key=revoked_key),
        lambda: set_api_key_expiry(key=revoked_key, expires_at=None),
    ):
        with pytest.raises(ValidationError):
            change()
    assert not AuditLog.objects.filter(action__in=["key.rotated", "key.paused", "key.expiry_changed"]).exists()


def test_a_second_rotation_drops_the_first_secret_and_says_so(key):
    heard = []

    def hear(sender, key_hashes, **kwargs):
        heard.extend(key_hashes)

    api_key_secrets_retired.connect(hear)
    try:
        first_hash = key.key_hash
        key, _ = rotate_api_key(key=key, grace=timedelta(days=7))
        assert heard == []
        key, _ = rotate_api_key(key=key, grace=timedelta(days=7))
    finally:
        api_key_secrets_retired.disconnect(hear)
    assert heard == [first_hash]
    assert not ApiKey.objects.filter(previous_key_hash=first_hash).exists()


def test_ending_the_grace_early_is_audited_once(key):
    key, _ = rotate_api_key(key=key, grace=timedelta(days=7))
    end_rotation_grace(key=key)
    end_rotation_grace(key=key)
    assert not ApiKey.objects.get(pk=key.pk).previous_secret_valid
    assert AuditLog.objects.filter(action="key.updated", detail__changes=["previous_valid_until"]).count() == 1


def test_pausing_and_resuming_are_audited_once_each(key, owner):
    pause_api_key(key=key, actor=owner)
    pause_api_key(key=key, actor=owner)
    assert ApiKey.objects.get(pk=key.pk).status == KeyStatus.PAUSED
    resume_api_key(key=key, actor=owner)
    resume_api_key(key=key, actor=owner)
    assert ApiKey.objects.get(pk=key.pk).status == KeyStatus.ACTIVE
    assert list(AuditLog.objects.filter(action__startswith="key.p").values_list("action", flat=True)) == ["key.paused"]
    assert AuditLog.objects.filter(action="key.resumed").count() == 1


def test_the_expiry_must_be_in_the_future_and_a_later_one_brings_an_expired_key_back(key):
    with pytest.raises(ValidationError):
        set_api_key_expiry(key=key, expires_at=timezone.now() - timedelta(minutes=1))
    ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(days=1))
    key.refresh_from_db()
    assert key.status == KeyStatus.EXPIRED
    later = timezone.now() + timedelta(days=30)
    set_api_key_expiry(key=key, expires_at=later)
    assert ApiKey.objects.get(pk=key.pk).status == KeyStatus.ACTIVE
    entry = AuditLog.objects.get(action="key.expiry_changed")
    assert entry.detail["new"] == later.isoformat() and entry.detail["old"] is not None
    set_api_key_expiry(key=key, expires_at=None)
    assert ApiKey.objects.get(pk=key.pk).expires_at is None
    assert AuditLog.objects.filter(action="key.expiry_changed").count() == 2


def test_status_order_revoked_expired_paused_active(key):
    key.paused_at = timezone.now()
    assert key.status == KeyStatus.PAUSED
    key.expires_at = timezone.now() - timedelta(seconds=1)
    assert key.status == KeyStatus.EXPIRED
    revoke_api_key(key=key)
    assert key.status == KeyStatus.REVOKED


def test_the_status_filters_and_the_search(org, key, revoked_key):
    paused = pause_api_key(key=ApiKey.objects.create(org=org, name="Mobile App", prefix="sk-tokios-mob1", key_hash="a"))
    expired = ApiKey.objects.create(
        org=org, name="old", prefix="sk-tokios-old1", key_hash="b", expires_at=timezone.now() - timedelta(days=1)
    )
    keys = ApiKey.objects.for_org(org)
    assert set(keys.current()) == {key, paused}
    assert set(keys.with_status("active")) == {key}
    assert set(keys.with_status("paused")) == {paused}
    assert set(keys.with_status("expired")) == {expired}
    assert set(keys.with_status("revoked")) == {revoked_key}
    assert set(keys.search("mobile")) == {paused}
    assert set(keys.search("sk-tokios-mob1…")) == {paused}
    assert set(keys.search(key.prefix[:12])) >= {key}
    rotated, _ = rotate_api_key(key=key, grace=timedelta(0))
    assert set(keys.search(rotated.previous_prefix)) == {key}  # still found by the prefix it had
