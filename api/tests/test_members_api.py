from __future__ import annotations

import re

import pytest
import time_machine
from django.core import mail
from django.utils import timezone

from accounts.models import Invitation, Membership, Role

pytestmark = pytest.mark.django_db

URL = "/api/orgs/acme/members/"


def test_list_members(api_admin, org, member):
    emails = [m["email"] for m in api_admin.get(URL).json()["results"]]
    assert emails == ["admin@acme.test", "member@acme.test", "owner@acme.test"]


def invitation_answer(body: dict) -> dict:
    """The parts of an answer that may differ between two invitations: none but these."""
    return {k: v for k, v in body.items() if k not in {"id", "email", "created_at", "expires_at", "link"}}


def test_adding_an_existing_user_invites_them_and_answers_as_for_anyone(api_owner, org, outsider):
    with time_machine.travel(timezone.now(), tick=False):  # the e-mails name the expiry, to the minute
        existing = api_owner.post(URL, {"email": outsider.email, "role": "admin"}, format="json")
        fresh = api_owner.post(URL, {"email": "fresh@acme.test", "role": "admin"}, format="json")
    assert existing.status_code == fresh.status_code == 201
    assert (
        invitation_answer(existing.json()) == invitation_answer(fresh.json()) == {"role": "admin", "status": "pending"}
    )
    assert existing.json()["email"] == outsider.email
    assert not Membership.objects.filter(org=org, user=outsider).exists()  # nobody joins without accepting
    assert [m.to for m in mail.outbox] == [[outsider.email], ["fresh@acme.test"]]
    assert same_words(mail.outbox[0].body, outsider.email) == same_words(mail.outbox[1].body, "fresh@acme.test")


def same_words(body: str, email: str) -> str:
    """An invitation e-mail without what must differ: the address and the link's secret."""
    return re.sub(r"/invitations/\S+/", "/invitations/…/", body.replace(email, "…"))


def test_adding_a_new_email_sends_an_invitation(api_owner, org):
    response = api_owner.post(URL, {"email": "fresh@acme.test"}, format="json")
    assert response.status_code == 201
    body = response.json()
    assert body["email"] == "fresh@acme.test" and body["status"] == "pending" and "token" not in str(body)
    assert len(mail.outbox) == 1 and "http://testserver/invitations/inv-tokios-" in mail.outbox[0].body
    invitations = api_owner.get("/api/orgs/acme/invitations/").json()["results"]
    assert [i["email"] for i in invitations] == ["fresh@acme.test"]
    assert api_owner.delete(f"/api/orgs/acme/invitations/{invitations[0]['id']}/").status_code == 204
    assert Invitation.objects.get().status == "revoked"


def test_inviting_a_member_again_is_refused(api_owner, org, member):
    response = api_owner.post(URL, {"email": member.email}, format="json")
    assert response.status_code == 400 and "already a member" in str(response.json())
    assert mail.outbox == []


def test_changing_a_role_and_removing(api_owner, org, member):
    target = Membership.objects.get(user=member)
    assert api_owner.patch(f"{URL}{target.pk}/", {"role": "admin"}, format="json").json()["role"] == "admin"
    assert api_owner.delete(f"{URL}{target.pk}/").status_code == 204
    assert not Membership.objects.filter(pk=target.pk).exists()


def test_admins_cannot_make_or_touch_owners(api_admin, org, owner, member):
    target = Membership.objects.get(user=member)
    assert api_admin.patch(f"{URL}{target.pk}/", {"role": "owner"}, format="json").status_code == 403
    boss = Membership.objects.get(user=owner)
    assert api_admin.delete(f"{URL}{boss.pk}/").status_code == 403
    assert api_admin.post(URL, {"email": "x@acme.test", "role": "owner"}, format="json").status_code == 403
    assert Membership.objects.get(user=member).role == Role.MEMBER and Membership.objects.filter(pk=boss.pk).exists()


def test_the_last_owner_stays(api_owner, org, owner):
    boss = Membership.objects.get(user=owner)
    response = api_owner.patch(f"{URL}{boss.pk}/", {"role": "member"}, format="json")
    assert response.status_code == 400 and "at least one owner" in str(response.json())
    assert api_owner.delete(f"{URL}{boss.pk}/").status_code == 400
    assert Membership.objects.get(pk=boss.pk).role == Role.OWNER


def test_unknown_roles_are_refused(api_owner, member):
    target = Membership.objects.get(user=member)
    assert api_owner.patch(f"{URL}{target.pk}/", {"role": "god"}, format="json").status_code == 400


def test_an_address_too_long_for_the_column_is_a_400(api_owner, org):
    email = "a" * 64 + "@" + ".".join(["b" * 60] * 4) + ".test"  # valid, and 315 characters
    response = api_owner.post(URL, {"email": email}, format="json")
    assert response.status_code == 400 and "email" in response.json()
    assert Invitation.objects.count() == 0
