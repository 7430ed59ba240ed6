from __future__ import annotations

import re

import pytest
from django.core import mail
from django.test import Client
from django.urls import reverse

pytestmark = pytest.mark.django_db


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


def test_static_assets_are_served(as_owner, org):
    from django.contrib.staticfiles import finders

    for name in ("dashboard/dashboard.css", "dashboard/dashboard.js", "dashboard/favicon.svg"):
        assert finders.find(name), name
