"""The database-backed counters behind password-reset throttling, and the keys sign-in throttling uses."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.core.cache import cache
from django.test import RequestFactory
from django.utils import timezone

from accounts.models import ThrottleBucket
from accounts.throttle import allow, allow_password_reset, client_ip, signin_username

pytestmark = pytest.mark.django_db
HOUR = timedelta(hours=1)


def test_allow_counts_up_to_the_limit_then_refuses():
    assert [allow("test", "a", limit=3, window=HOUR) for _ in range(5)] == [True, True, True, False, False]
    assert allow("test", "b", limit=3, window=HOUR)  # another value has its own count
    assert allow("other", "a", limit=3, window=HOUR)  # and another scope


def test_the_count_lives_in_the_database_not_in_one_process_memory():
    for _ in range(2):
        allow("test", "a", limit=2, window=HOUR)
    cache.clear()  # the embedded default's cache is per-process memory: nothing may depend on it
    assert not allow("test", "a", limit=2, window=HOUR)
    assert ThrottleBucket.objects.get(scope="test").hits == 2


def test_a_new_window_starts_once_the_old_one_is_over():
    with time_machine.travel(timezone.now(), tick=False) as clock:
        assert allow("test", "a", limit=1, window=HOUR)
        clock.shift(HOUR - timedelta(seconds=1))
        assert not allow("test", "a", limit=1, window=HOUR)
        clock.shift(timedelta(seconds=2))
        assert allow("test", "a", limit=1, window=HOUR)


def test_the_table_holds_no_email_or_address():
    allow_password_reset(email="Owner@Acme.test", ip="203.0.113.9")
    keys = " ".join(ThrottleBucket.objects.values_list("key", flat=True))
    assert "acme" not in keys.lower() and "203.0.113" not in keys
    assert ThrottleBucket.objects.count() == 2


def test_password_resets_are_limited_per_email_whatever_its_case(settings):
    settings.PASSWORD_RESET_PER_EMAIL = 2
    settings.PASSWORD_RESET_PER_IP = 100
    answers = [
        allow_password_reset(email=e, ip=f"198.51.100.{i}") for i, e in enumerate(["a@x.test", "A@X.test", "a@x.test"])
    ]
    assert answers == [True, True, False]
    assert allow_password_reset(email="b@x.test", ip="198.51.100.1")


def test_password_resets_are_limited_per_client_address(settings):
    settings.PASSWORD_RESET_PER_EMAIL = 100
    settings.PASSWORD_RESET_PER_IP = 3
    answers = [allow_password_reset(email=f"{i}@x.test", ip="198.51.100.7") for i in range(4)]
    assert answers == [True, True, True, False]
    assert allow_password_reset(email="4@x.test", ip="198.51.100.8")


@pytest.mark.parametrize(
    ("remote", "counted_as"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::"),  # a whole /64 counts as one client
        ("2001:db8:1:2:ffff::9", "2001:db8:1:2::"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
        ("not-an-address", None),
        ("", None),
    ],
)
def test_client_addresses(remote, counted_as):
    assert client_ip(RequestFactory().get("/", REMOTE_ADDR=remote)) == counted_as


def test_sign_in_failures_are_counted_against_the_lower_cased_email():
    assert signin_username(None, {"username": "  Owner@ACME.test "}) == "owner@acme.test"
    assert signin_username(RequestFactory().post("/", {"username": "X@Y.test"}), None) == "x@y.test"
    assert signin_username(None, {"username": "a" * 400}) == "a" * 255
    assert signin_username(None, {}) is None
