"""With the default settings, no working secret reaches a log line: the paths of invitation and
password-reset links are masked wherever Django logs them (lib/redact.py), and e-mails, which carry
those links, are kept in files only the server's user can read (lib/mail.py), not printed.
A real server's output is checked in tests/e2e/test_secrets_out_of_logs.py."""

from __future__ import annotations

import io
import logging
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.test import Client
from django.urls import reverse

import tokios_site.settings as production
from lib.redact import RedactSecrets, redact

INVITATION = "inv-tokios-Zx9_secretsecretsecretsecret-abc"
RESET_PATH = "/password/reset/MQ/cz1b2c-4f0e9d7a1b2c3d4e5f60718293a4b5c6/"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f"Forbidden (CSRF cookie not set.): /invitations/{INVITATION}/",
            "Forbidden (CSRF cookie not set.): /invitations/***/",
        ),
        (f"Internal Server Error: {RESET_PATH}", "Internal Server Error: /password/reset/***/***/"),
        ("GET /password/reset/MQ/set-password/ 200", "GET /password/reset/***/***/ 200"),
        ("key sk-tokios-AbCdEf_123-xyz rejected", "key sk-tokios-*** rejected"),
        ("token=ctk-tokios-abc&x=pat-tokios-def", "token=ctk-tokios-***&x=pat-tokios-***"),
        ("secret whsec-tokios-0123abcd_XY shown once", "secret whsec-tokios-*** shown once"),
        ("/login/?next=/invitations/inv-tokios-abc/", "/login/?next=/invitations/***/"),
        # Pages without a secret are left as they are.
        ("POST /password/reset/ 302", "POST /password/reset/ 302"),
        ("GET /password/reset/sent/ 200", "GET /password/reset/sent/ 200"),
        ("GET /password/reset/done/ 200", "GET /password/reset/done/ 200"),
        ("GET /invitations/ 404", "GET /invitations/ 404"),
        ("task-tokios-like words", "task-tokios-like words"),
    ],
)
def test_redact_masks_secrets_and_the_paths_that_carry_them(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """What the configured console handler (settings.LOGGING) writes, captured."""
    handlers = [
        h
        for h in logging.getLogger().handlers
        if type(h) is logging.StreamHandler and any(isinstance(f, RedactSecrets) for f in h.filters)
    ]
    assert len(handlers) == 1, "settings.LOGGING's console handler must carry the RedactSecrets filter"
    stream = io.StringIO()
    previous = handlers[0].setStream(stream)
    try:
        yield stream
    finally:
        handlers[0].setStream(previous)


@pytest.mark.django_db
def test_a_refused_post_to_an_invitation_or_reset_link_logs_no_secret(log_output: io.StringIO) -> None:
    client = Client(enforce_csrf_checks=True)
    assert client.post(f"/invitations/{INVITATION}/").status_code == 403
    assert client.post(RESET_PATH).status_code == 403
    written = log_output.getvalue()
    assert "Forbidden (CSRF cookie not set.): /invitations/***/" in written  # Django did log the refusal
    assert "/password/reset/***/***/" in written
    assert INVITATION not in written and "cz1b2c" not in written


def test_a_traceback_is_masked_too(log_output: io.StringIO) -> None:
    try:
        raise ValueError(f"no such invitation {INVITATION}")
    except ValueError:
        logging.getLogger("django.request").exception("Internal Server Error: /invitations/%s/", INVITATION)
    written = log_output.getvalue()
    assert "Internal Server Error: /invitations/***/" in written and "ValueError: no such invitation" in written
    assert INVITATION not in written


def test_the_default_email_backend_keeps_mail_out_of_the_log() -> None:
    # The settings module's own value: pytest-django swaps locmem into django.conf.settings.
    assert production.EMAIL_BACKEND == "lib.mail.PrivateFileEmailBackend"


@pytest.fixture
def mail_dir(settings, tmp_path: Path) -> Path:
    settings.EMAIL_BACKEND = "lib.mail.PrivateFileEmailBackend"
    settings.EMAIL_FILE_PATH = str(tmp_path / "mail")
    return tmp_path / "mail"


def only_mail(mail_dir: Path) -> str:
    assert stat.S_IMODE(mail_dir.stat().st_mode) == 0o700
    (path,) = mail_dir.iterdir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return path.read_text()


@pytest.mark.django_db
def test_a_password_reset_mail_is_kept_in_a_private_file_and_only_its_place_logged(
    client: Client, owner, mail_dir: Path, log_output: io.StringIO
) -> None:
    client.post(reverse("dashboard:password_reset"), {"email": owner.email})
    body = only_mail(mail_dir)
    assert "/password/reset/" in body and "Choose a new password" in body
    written = log_output.getvalue()
    assert f"E-mail to {owner.email} kept in {mail_dir}" in written
    assert "/password/reset/" not in written and "Choose a new password" not in written


@pytest.mark.django_db
def test_an_invitation_mail_is_kept_in_a_private_file_and_only_its_place_logged(
    client: Client, owner, org, mail_dir: Path, log_output: io.StringIO
) -> None:
    client.force_login(owner)
    client.post(reverse("dashboard:member_add"), {"email": "newbie@acme.test", "role": "member"})
    body = only_mail(mail_dir)
    assert "/invitations/inv-tokios-" in body
    written = log_output.getvalue()
    assert "E-mail to newbie@acme.test kept in" in written
    assert "inv-tokios-" not in written and "/invitations/" not in written
