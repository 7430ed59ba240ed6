from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.staticfiles import finders
from django.core import mail
from django.test import Client
from django.urls import reverse

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


def test_root_redirects_anonymous_visitors_to_sign_in(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("dashboard:login"))


def test_root_is_the_overview_for_signed_in_users(as_owner, org):
    response = as_owner.get("/")
    assert response.status_code == 200
    assert response.resolver_match.url_name == "overview"
    assert "Acme" in response.text


def test_sign_in_with_email_and_password_lands_on_the_overview(client, owner, org):
    page = client.get(reverse("dashboard:login"))
    assert 'name="csrfmiddlewaretoken"' in page.text
    assert '<label for="id_username">Email</label>' in page.text
    response = client.post(
        reverse("dashboard:login"), {"username": "owner@acme.test", "password": "correct horse battery"}
    )
    assert response.status_code == 302 and response["Location"] == reverse("dashboard:overview")
    assert client.get("/").status_code == 200


def test_sign_in_with_a_wrong_password_is_refused(client, owner):
    response = client.post(reverse("dashboard:login"), {"username": "owner@acme.test", "password": "nope"})
    assert response.status_code == 200
    assert "_auth_user_id" not in client.session
    assert "enter a correct" in response.text.lower()


def test_sign_in_form_needs_a_csrf_token(owner):
    client = Client(enforce_csrf_checks=True)
    response = client.post(
        reverse("dashboard:login"), {"username": "owner@acme.test", "password": "correct horse battery"}
    )
    assert response.status_code == 403


def test_sign_out_is_a_post_and_ends_the_session(as_owner):
    assert as_owner.get(reverse("dashboard:logout")).status_code == 405
    response = as_owner.post(reverse("dashboard:logout"))
    assert response.status_code == 302 and response["Location"] == reverse("dashboard:login")
    assert as_owner.get("/").status_code == 302


def test_password_reset_emails_a_link_that_sets_a_new_password(client, owner):
    response = client.post(reverse("dashboard:password_reset"), {"email": "owner@acme.test"})
    assert response.status_code == 302 and response["Location"] == reverse("dashboard:password_reset_done")
    assert len(mail.outbox) == 1
    link = re.search(r"http://testserver(/password/reset/\S+/)", mail.outbox[0].body).group(1)
    form_page = client.get(link, follow=True)
    assert form_page.status_code == 200 and "Choose a new password" in form_page.text
    done = client.post(
        form_page.redirect_chain[-1][0],
        {"new_password1": "a brand new passphrase", "new_password2": "a brand new passphrase"},
    )
    assert done.status_code == 302 and done["Location"] == reverse("dashboard:password_reset_complete")
    owner.refresh_from_db()
    assert owner.check_password("a brand new passphrase")


def test_password_reset_for_an_unknown_email_sends_nothing_but_looks_the_same(client):
    response = client.post(reverse("dashboard:password_reset"), {"email": "nobody@example.com"})
    assert response.status_code == 302
    assert mail.outbox == []


def test_a_user_without_an_organisation_is_told_what_to_do(client, outsider):
    client.force_login(outsider)
    response = client.get("/")
    assert response.status_code == 200
    assert "not in an organisation yet" in response.text


@pytest.mark.parametrize(
    "name", ["overview", "deployments", "keys", "usage", "statements", "members", "audit", "profile"]
)
def test_every_page_needs_sign_in(client, name):
    response = client.get(reverse(f"dashboard:{name}"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("dashboard:login"))


def test_pages_load_assets_only_from_this_server(as_owner, org):
    html = as_owner.get("/").text
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources, "expected some links"
    assert all(not s.startswith(("http:", "https:", "//")) for s in sources), sources
    assert "/static/dashboard/dashboard.css" in sources


# Through tokios_site.asgi.application as uvicorn runs it, in a fresh interpreter: importing the app
# changes the garbage collector for the whole process (see tests/test_process_gc.py).
STATIC_PROBE = """
import asyncio, json, httpx
from tokios_site.asgi import application

async def main(names):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://localhost") as browser:
        found = {}
        for name in names:
            first = await browser.get("/static/" + name)
            again = await browser.get("/static/" + name, headers={"if-none-match": first.headers.get("etag", "")})
            found[name] = [first.status_code, dict(first.headers), first.content.hex(), again.status_code]
        return found

print(json.dumps(asyncio.run(main(%r))))
"""
ASSETS = {
    "dashboard/dashboard.css": "text/css",
    "dashboard/dashboard.js": "text/javascript",
    "dashboard/favicon.svg": "image/svg+xml",
}


def test_static_assets_are_served_by_the_asgi_application_without_debug(settings, tmp_path):
    env = {**os.environ, "TOKIOS_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "tokios_site.settings"}
    for name in ("DATABASE_URL", "REDIS_URL", "DEBUG"):
        env.pop(name, None)
    probe = subprocess.run(
        [sys.executable, "-c", STATIC_PROBE % list(ASSETS)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    served = json.loads(probe.stdout.strip().splitlines()[-1])

    for name, content_type in ASSETS.items():
        status, headers, body, revalidated = served[name]
        assert status == 200, name
        assert headers["content-type"].startswith(content_type), (name, headers)
        # The apps' own file, or what collectstatic copied, if it ran on this checkout.
        source = Path(finders.find(name)) if settings.WHITENOISE_USE_FINDERS else Path(settings.STATIC_ROOT) / name
        assert bytes.fromhex(body) == source.read_bytes(), name
        assert headers["cache-control"] == "max-age=60, public", name  # WhiteNoise's, not Django's serve
        assert revalidated == 304, name
