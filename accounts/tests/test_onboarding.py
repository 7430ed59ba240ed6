"""A new user's first way in: `create_org --owner` and `demo_setup` print a one-time set-password link
(printed once, never logged, expiring per PASSWORD_RESET_TIMEOUT); the reset page also serves an
account that has no password yet."""

from __future__ import annotations

import logging
import re
from io import StringIO

import pytest
from django.core import mail
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from accounts.models import User

pytestmark = pytest.mark.django_db

LINK = re.compile(r"(https?://[^/\s]+)(/password/reset/[^/\s]+/[^/\s]+/)")


def run(*args) -> list[str]:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().strip().splitlines()


def link_in(lines: list[str]) -> tuple[str, str]:
    found = [LINK.search(line) for line in lines]
    matches = [m for m in found if m]
    assert len(matches) == 1, lines
    return matches[0].group(1), matches[0].group(2)


def set_password(path: str, password: str) -> tuple[Client, object]:
    client = Client()
    response = client.get(path, follow=True)  # Django moves the token from the URL to the session
    assert response.status_code == 200 and "Choose a new password" in response.text, response.text
    form_url = response.redirect_chain[-1][0]
    done = client.post(form_url, {"new_password1": password, "new_password2": password})
    return client, done


def test_create_org_prints_a_one_time_set_password_link_for_a_new_owner(caplog):
    caplog.set_level(logging.DEBUG)
    lines = run("create_org", "acme", "--owner", "New@Example.com", "--server", "https://tokios.example")
    assert lines[-1] == "acme"  # still the last line, for scripts
    origin, path = link_in(lines)
    assert origin == "https://tokios.example"
    assert any("works once, until" in line and "UTC" in line for line in lines)
    user = User.objects.get(email="new@example.com")
    assert not user.has_usable_password()

    _, done = set_password(path, "a long new passphrase")
    assert done.status_code == 302
    user.refresh_from_db()
    assert user.check_password("a long new passphrase")

    # Once: the same link no longer works.
    again = Client().get(path, follow=True)
    assert "This link no longer works" in again.text
    # Never logged, by the command or the pages.
    token = path.rstrip("/").rsplit("/", 1)[-1]
    assert not [r for r in caplog.records if token in r.getMessage()]


def test_the_link_expires_after_the_password_reset_timeout(settings):
    lines = run("create_org", "acme", "--owner", "new@example.com")
    _, path = link_in(lines)
    settings.PASSWORD_RESET_TIMEOUT = -1  # any age is past it
    assert "This link no longer works" in Client().get(path, follow=True).text


def test_an_owner_who_has_a_password_gets_no_link():
    User.objects.create_user("boss@example.com", "their own passphrase")
    lines = run("create_org", "acme", "--owner", "boss@example.com")
    assert lines == ["acme"]


def test_the_default_server_is_the_local_one():
    origin, _ = link_in(run("create_org", "acme", "--owner", "new@example.com"))
    assert origin == "http://127.0.0.1:8000"


@pytest.mark.parametrize("server", ["tokios.example", "ftp://tokios.example", "https://tokios.example/x", "https://"])
def test_a_bad_server_address_is_refused(server):
    with pytest.raises(CommandError, match="server address"):
        run("create_org", "acme", "--owner", "new@example.com", "--server", server)
    assert not User.objects.exists()


def test_the_reset_page_also_serves_an_owner_without_a_password():
    run("create_org", "acme", "--owner", "new@example.com")
    response = Client().post("/password/reset/", {"email": "NEW@example.com"})
    assert response.status_code == 302
    assert [m.to for m in mail.outbox] == [["new@example.com"]]
    _, path = link_in(mail.outbox[0].body.splitlines())
    _, done = set_password(path, "a long new passphrase")
    assert done.status_code == 302
    assert User.objects.get(email="new@example.com").check_password("a long new passphrase")


def test_the_reset_page_still_sends_nothing_for_an_unknown_or_inactive_address():
    User.objects.create_user("gone@example.com", is_active=False)
    for email in ("nobody@example.com", "gone@example.com"):
        assert Client().post("/password/reset/", {"email": email}).status_code == 302
    assert mail.outbox == []


def test_demo_setup_prints_a_set_password_link_not_a_password():
    lines = run("demo_setup", "--server", "http://tokios.test")
    origin, path = link_in(lines)
    assert origin == "http://tokios.test"
    admin = User.objects.get(email="admin@demo.local")
    assert not admin.has_usable_password()
    assert not any("admin@demo.local /" in line for line in lines)
    # Until a password is set, each run prints a fresh link; then none.
    link_in(run("demo_setup", "--server", "http://tokios.test"))
    set_password(path, "a long new passphrase")
    later = run("demo_setup", "--server", "http://tokios.test")
    assert not any(LINK.search(line) for line in later)
    assert any("the password you chose" in line for line in later)


def test_demo_setup_refuses_a_bad_server_address():
    with pytest.raises(CommandError, match="server address"):
        run("demo_setup", "--server", "tokios.test")
