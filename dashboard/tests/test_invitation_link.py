"""The inviter sees the invitation's link once, to send another way; the page for a used or expired
link offers sign-in and a password reset. The API's answer carries the link once too."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.core import mail
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import Invitation

pytestmark = pytest.mark.django_db

SHOWN = re.compile(r'<pre class="command" id="invitation-link">(http://testserver/invitations/[^<]+/)</pre>')


def invite(client, email: str = "new@acme.test", role: str = "member"):
    return client.post(reverse("dashboard:member_add"), {"email": email, "role": role})


def test_the_inviter_sees_the_emailed_link_once_and_it_is_not_cached(as_owner, org):
    response = invite(as_owner)
    assert response.status_code == 201
    shown = SHOWN.search(response.text).group(1)
    assert shown in mail.outbox[0].body
    assert "only time Tokios shows this link" in response.text
    assert "no-store" in response["Cache-Control"]
    invitation = Invitation.objects.get()
    assert invitation.token_hash not in response.text
    # Never again: not on the members page, nor in the audit log.
    secret = shown.rstrip("/").rsplit("/", 1)[-1]
    assert secret not in as_owner.get(reverse("dashboard:members")).text
    assert secret not in as_owner.get(reverse("dashboard:audit")).text


def test_the_shown_link_opens_the_invitation(as_owner, org, client):
    shown = SHOWN.search(invite(as_owner).text).group(1)
    page = client.get(shown.removeprefix("http://testserver"))
    assert page.status_code == 200 and "Choose a password" in page.text


def test_an_admin_sees_the_link_too_and_a_member_cannot_invite(as_admin, as_member, org):
    assert SHOWN.search(invite(as_admin).text)
    assert invite(as_member, "other@acme.test").status_code == 403


def test_a_refused_invitation_shows_no_link(as_owner, org, member):
    response = invite(as_owner, member.email)
    assert response.status_code == 200 and not SHOWN.search(response.text)


def test_a_used_link_offers_sign_in_and_a_password_reset(as_owner, org, client):
    shown = SHOWN.search(invite(as_owner).text).group(1).removeprefix("http://testserver")
    joined = client.post(shown, {"password1": "a long passphrase", "password2": "a long passphrase"})
    assert joined.status_code == 302
    client.logout()
    page = client.get(shown)
    assert page.status_code == 410
    assert "accepted" in page.text
    assert f'href="{reverse("dashboard:login")}"' in page.text
    assert f'href="{reverse("dashboard:password_reset")}"' in page.text


def test_an_expired_link_offers_sign_in_and_says_to_ask_for_a_new_one(as_owner, org, client):
    shown = SHOWN.search(invite(as_owner).text).group(1).removeprefix("http://testserver")
    Invitation.objects.update(expires_at=timezone.now() - timedelta(minutes=1))
    page = client.get(shown)
    assert page.status_code == 410 and "expired" in page.text and "Ask an owner or admin" in page.text
    assert f'href="{reverse("dashboard:login")}"' in page.text


def test_a_used_link_opened_signed_in_leads_to_the_overview(as_owner, org):
    shown = SHOWN.search(invite(as_owner).text).group(1).removeprefix("http://testserver")
    Invitation.objects.update(revoked_at=timezone.now())
    page = as_owner.get(shown)
    assert page.status_code == 410 and f'href="{reverse("dashboard:overview")}"' in page.text


def test_the_api_answers_the_link_once(org, owner):
    api = APIClient()
    api.force_authenticate(owner)
    response = api.post("/api/orgs/acme/members/", {"email": "fresh@acme.test", "role": "member"}, format="json")
    assert response.status_code == 201 and "no-store" in response["Cache-Control"]
    link = response.json()["link"]
    assert link.startswith("http://testserver/invitations/inv-tokios-") and link in mail.outbox[0].body
    listed = api.get("/api/orgs/acme/invitations/").json()["results"]
    assert "link" not in listed[0] and link.rsplit("/", 2)[-2] not in str(listed)
