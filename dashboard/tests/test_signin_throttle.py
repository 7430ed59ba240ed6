"""Sign-in throttling (django-axes, per account and per client address), password-reset throttling
and idle sessions, through the pages."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from axes.models import AccessAttempt
from django.core import mail
from django.core.cache import cache
from django.test import AsyncClient, Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import User

pytestmark = pytest.mark.django_db

LOGIN = reverse("dashboard:login")
RIGHT = "correct horse battery"  # the owner persona's password


def sign_in(client: Client, password: str, email: str = "owner@acme.test", ip: str = "198.51.100.1"):
    return client.post(LOGIN, {"username": email, "password": password}, REMOTE_ADDR=ip)


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def test_forty_wrong_passwords_then_the_right_one_is_refused(client, owner, settings):
    assert settings.AXES_FAILURE_LIMIT == 10  # the default
    statuses = [sign_in(client, f"guess {i}").status_code for i in range(40)]
    assert statuses == [200] * 9 + [429] * 31
    response = sign_in(client, RIGHT)
    assert response.status_code == 429 and not signed_in(client)
    # Refused attempts are not recorded: the lockout ends on time and the row does not grow.
    assert sum(AccessAttempt.objects.values_list("failures_since_start", flat=True)) == 10


def test_the_lockout_page_says_why_and_for_how_long(client, owner):
    for _ in range(10):
        response = sign_in(client, "guess")
    assert response.status_code == 429
    assert "Too many attempts" in response.text and "15 minutes" in response.text
    assert "guess" not in response.text


def test_a_few_typos_do_not_lock(client, owner):
    for _ in range(9):
        sign_in(client, "typo")
    assert sign_in(client, RIGHT).status_code == 302 and signed_in(client)


def test_an_account_is_locked_from_every_address(client, owner):
    for i in range(10):
        sign_in(client, "guess", ip=f"203.0.113.{i}")
    assert sign_in(client, RIGHT, ip="192.0.2.200").status_code == 429
    assert not signed_in(client)


def test_an_address_is_locked_for_every_account(client, owner, settings):
    for i in range(10):
        sign_in(client, "guess", email=f"someone{i}@acme.test", ip="203.0.113.5")
    assert sign_in(client, RIGHT, ip="203.0.113.5").status_code == 429
    assert sign_in(Client(), RIGHT, ip="203.0.113.6").status_code == 302  # another address may


def test_case_variations_count_as_one_account(client, owner):
    for i in range(10):
        sign_in(client, "guess", email="OWNER@acme.test" if i % 2 else "owner@ACME.test", ip=f"203.0.113.{i}")
    assert sign_in(client, RIGHT, ip="192.0.2.1").status_code == 429


def test_unknown_accounts_are_locked_alike(client, owner):
    """The lockout does not tell which addresses have an account."""
    answers = [sign_in(client, "guess", email="nobody@acme.test", ip=f"203.0.113.{i}") for i in range(10)]
    known = [sign_in(client, "guess", ip=f"192.0.2.{i}") for i in range(10)]
    assert [a.status_code for a in answers] == [r.status_code for r in known]
    assert answers[-1].text == known[-1].text


def test_the_lockout_ends_after_the_configured_minutes(client, owner, settings):
    assert settings.AXES_COOLOFF_TIME == 0.25  # hours: TOKIOS_SIGNIN_LOCKOUT_MINUTES=15
    with time_machine.travel(timezone.now(), tick=False) as clock:
        for _ in range(10):
            sign_in(client, "guess")
        clock.shift(timedelta(minutes=14))
        assert sign_in(client, RIGHT).status_code == 429
        clock.shift(timedelta(minutes=2))
        assert sign_in(client, RIGHT).status_code == 302 and signed_in(client)


def test_the_counts_are_shared_by_every_process(client, owner):
    """They are rows in the database: a process with an empty memory (cache) sees the lockout."""
    for _ in range(10):
        sign_in(client, "guess")
    cache.clear()
    assert sign_in(Client(), RIGHT).status_code == 429


def test_the_admin_sign_in_is_throttled_too(client, db):
    User.objects.create_superuser("ops@acme.test", RIGHT)
    for _ in range(10):
        client.post("/admin/login/", {"username": "ops@acme.test", "password": "guess"}, REMOTE_ADDR="198.51.100.1")
    response = client.post(
        "/admin/login/", {"username": "ops@acme.test", "password": RIGHT}, REMOTE_ADDR="198.51.100.1"
    )
    assert response.status_code == 429 and not signed_in(client)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_the_lockout_page_on_the_asgi_path(owner):
    """Through Django's async handler, as uvicorn serves it: axes' async middleware path."""
    client = AsyncClient()
    for _ in range(10):
        response = await client.post(LOGIN, {"username": owner.email, "password": "guess"})
    assert response.status_code == 429 and "Too many attempts" in response.text
    response = await client.post(LOGIN, {"username": owner.email, "password": RIGHT})
    assert response.status_code == 429


def test_a_wrong_current_password_on_the_change_form_counts_as_a_failed_sign_in(as_owner, owner, settings):
    settings.AXES_FAILURE_LIMIT = 2
    form = {"old_password": "guess", "new_password1": "a new passphrase!", "new_password2": "a new passphrase!"}
    assert as_owner.post(reverse("dashboard:password_change"), form).status_code == 200
    assert as_owner.post(reverse("dashboard:password_change"), form).status_code == 429
    owner.refresh_from_db()
    assert owner.check_password(RIGHT)


# --- Password resets -------------------------------------------------------------------------------


def reset(client: Client, email: str, ip: str = "198.51.100.1"):
    return client.post(reverse("dashboard:password_reset"), {"email": email}, REMOTE_ADDR=ip)


def test_five_resets_in_a_row_send_three_emails_and_look_the_same(client, owner, settings):
    assert settings.PASSWORD_RESET_PER_EMAIL == 3  # the default
    answers = [reset(client, "owner@acme.test", ip=f"203.0.113.{i}") for i in range(5)]
    assert {(a.status_code, a["Location"]) for a in answers} == {(302, reverse("dashboard:password_reset_done"))}
    assert len(mail.outbox) == 3


def test_resets_from_one_address_are_limited_whatever_they_ask_for(client, owner, settings):
    settings.PASSWORD_RESET_PER_IP = 3
    for i in range(3):
        User.objects.create_user(f"user{i}@acme.test", RIGHT)
    answers = [reset(client, f"user{i}@acme.test") for i in range(3)] + [reset(client, "owner@acme.test")]
    assert {a.status_code for a in answers} == {302}
    assert [m.to for m in mail.outbox] == [[f"user{i}@acme.test"] for i in range(3)]
    reset(client, "owner@acme.test", ip="198.51.100.2")
    assert mail.outbox[-1].to == ["owner@acme.test"]


# --- Idle sessions ----------------------------------------------------------------------------------


def test_a_session_ends_after_twelve_idle_hours(client, owner, org, settings):
    assert settings.SESSION_COOKIE_AGE == 12 * 3600 and settings.SESSION_SAVE_EVERY_REQUEST
    with time_machine.travel(timezone.now(), tick=False) as clock:
        response = sign_in(client, RIGHT)
        assert response.cookies["sessionid"]["max-age"] == 12 * 3600
        clock.shift(timedelta(hours=11))
        assert client.get("/").status_code == 200  # activity moves the expiry
        clock.shift(timedelta(hours=11))
        assert client.get("/").status_code == 200  # 22 hours after signing in, 11 idle
        clock.shift(timedelta(hours=12, minutes=1))
        response = client.get("/")
        assert response.status_code == 302 and response["Location"].startswith(LOGIN)
