from __future__ import annotations

import pytest
from django.core import mail

from accounts.models import Invitation, Membership, Role

pytestmark = pytest.mark.django_db

URL = "/api/orgs/acme/members/"


def test_list_members(api_admin, org, member):
    emails = [m["email"] for m in api_admin.get(URL).json()["results"]]
    assert emails == ["admin@acme.test", "member@acme.test", "owner@acme.test"]


def test_adding_an_existing_user(api_owner, org, outsider):
    response = api_owner.post(URL, {"email": outsider.email, "role": "admin"}, format="json")
    assert response.status_code == 201
    assert response.json()["member"]["role"] == "admin" and response.json()["invitation"] is None
    assert Membership.objects.get(org=org, user=outsider).role == Role.ADMIN


def test_adding_a_new_email_sends_an_invitation(api_owner, org):
    response = api_owner.post(URL, {"email": "fresh@acme.test"}, format="json")
    assert response.status_code == 201
    body = response.json()
    assert body["member"] is None and body["invitation"]["email"] == "fresh@acme.test"
    assert body["invitation"]["status"] == "pending" and "token" not in str(body)
    assert len(mail.outbox) == 1 and "http://testserver/invitations/inv-tokios-" in mail.outbox[0].body
    invitations = api_owner.get("/api/orgs/acme/invitations/").json()["results"]
    assert [i["email"] for i in invitations] == ["fresh@acme.test"]
    assert api_owner.delete(f"/api/orgs/acme/invitations/{invitations[0]['id']}/").status_code == 204
    assert Invitation.objects.get().status == "revoked"


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
