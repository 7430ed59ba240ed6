"""A real server on the default settings writes no working link into its output: refused posts to
invitation and password-reset links are logged with the secret masked, and the reset e-mail is
kept in a file only the server's user can read, its place logged, its link not."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_the_server_output_holds_no_invitation_or_reset_secret(start_server, tmp_path: Path) -> None:
    from accounts.actions import create_org
    from accounts.invitations import invite
    from accounts.models import User

    owner = User.objects.create_user("owner@secrets.test", "a long passphrase for tests")
    org = create_org(slug="secrets", name="Secrets", owner=owner)
    _, invitation = invite(org=org, email="new@secrets.test", role="member", actor=owner)
    data = tmp_path / "data"
    server = start_server(TOKIOS_DATA_DIR=str(data), LOG_LEVEL="INFO")

    # Refused for want of a CSRF cookie: Django logs each refusal with the request's path.
    assert httpx.post(f"{server.url}/invitations/{invitation}/").status_code == 403
    assert httpx.post(f"{server.url}/password/reset/MQ/cz1b2c-0123456789abcdef0123/").status_code == 403
    server.proc.wait_for_output("Forbidden (CSRF cookie not set.): /password/reset/")
    assert invitation not in server.proc.output() and "cz1b2c" not in server.proc.output()

    # A password reset e-mail, asked for as a browser would.
    with httpx.Client(base_url=server.url) as browser:
        form = browser.get("/password/reset/")
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
        sent = browser.post("/password/reset/", data={"csrfmiddlewaretoken": csrf, "email": owner.email})
        assert sent.status_code == 302
    (mail,) = (data / "mail").iterdir()
    assert stat.S_IMODE(mail.stat().st_mode) == 0o600 and stat.S_IMODE((data / "mail").stat().st_mode) == 0o700
    reset_link = re.search(r"(/password/reset/[^/\s]+/[^/\s]+/)", mail.read_text()).group(1)

    server.proc.stop()
    output = server.proc.output()
    assert "Forbidden (CSRF cookie not set.): /invitations/***/" in output
    assert "Forbidden (CSRF cookie not set.): /password/reset/***/***/" in output
    assert f"E-mail to {owner.email} kept in {data / 'mail'}" in output
    assert invitation not in output and "cz1b2c" not in output and reset_link not in output
