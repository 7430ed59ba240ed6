from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from accounts.actions import add_member
from accounts.models import Invitation, Membership, Role, User

pytestmark = pytest.mark.django_db


def membership(user, org) -> Membership:
    return Membership.objects.get(user=user, org=org)


def test_owners_and_admins_see_members_and_pending_invitations(as_admin, org, member, owner):
    as_admin.post(reverse("dashboard:member_add"), {"email": "new@acme.test", "role": "member"})
    page = as_admin.get(reverse("dashboard:members")).text
    assert "owner@acme.test" in page and "member@acme.test" in page
    assert "Pending invitations" in page and "new@acme.test" in page


def test_members_get_403_on_member_pages_and_actions(as_member, org, admin):
    assert as_member.get(reverse("dashboard:members")).status_code == 403
    assert as_member.post(reverse("dashboard:member_add"), {"email": "x@y.test", "role": "member"}).status_code == 403
    target = membership(admin, org)
    assert as_member.post(reverse("dashboard:member_role", args=[target.pk]), {"role": "member"}).status_code == 403
    assert as_member.post(reverse("dashboard:member_remove", args=[target.pk])).status_code == 403
    assert membership(admin, org).role == Role.ADMIN
    assert Invitation.objects.count() == 0


def test_another_orgs_membership_is_a_404(as_outsider, org, member):
    target = membership(member, org)
    assert as_outsider.post(reverse("dashboard:member_role", args=[target.pk]), {"role": "admin"}).status_code == 404
    assert as_outsider.post(reverse("dashboard:member_remove", args=[target.pk])).status_code == 404
    assert membership(member, org).role == Role.MEMBER


def test_adding_an_existing_user_invites_them_and_says_the_same_as_for_anyone(as_owner, org, outsider, client):
    existing = as_owner.post(
        reverse("dashboard:member_add"), {"email": "BOSS@globex.test", "role": "admin"}, follow=True
    )
    fresh = as_owner.post(reverse("dashboard:member_add"), {"email": "new@acme.test", "role": "admin"}, follow=True)
    said = [[str(m) for m in r.context["messages"]] for r in (existing, fresh)]
    assert said == [
        [f"Invitation sent to {e}; the link works for 7 days."] for e in ("boss@globex.test", "new@acme.test")
    ]
    assert not Membership.objects.filter(org=org, user=outsider).exists()
    assert [m.to for m in mail.outbox] == [["boss@globex.test"], ["new@acme.test"]]
    # They join when they accept, signed in as themselves: not at their next sign-in.
    link = re.search(r"http://testserver(/invitations/\S+/)", mail.outbox[0].body).group(1)
    client.force_login(outsider)
    assert not Membership.objects.filter(org=org, user=outsider).exists()
    assert "Accept invitation" in client.get(link).text
    assert client.post(link).status_code == 302
    assert membership(outsider, org).role == Role.ADMIN


def test_inviting_someone_already_in_the_org_is_refused(as_owner, org, member):
    response = as_owner.post(reverse("dashboard:member_add"), {"email": member.email, "role": "member"})
    assert response.status_code == 200 and "already a member" in response.text
    assert Invitation.objects.count() == 0 and mail.outbox == []


def test_inviting_a_new_email_sends_a_link_that_creates_the_account(as_owner, org, client):
    as_owner.post(reverse("dashboard:member_add"), {"email": "newbie@acme.test", "role": "member"})
    invitation = Invitation.objects.get(email="newbie@acme.test")
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["newbie@acme.test"]
    link = re.search(r"http://testserver(/invitations/\S+/)", mail.outbox[0].body).group(1)
    assert invitation.prefix in link and invitation.token_hash not in link
    page = client.get(link)
    assert page.status_code == 200 and "Choose a password" in page.text
    response = client.post(link, {"name": "Nia", "password1": "a long passphrase", "password2": "a long passphrase"})
    assert response.status_code == 302 and response["Location"] == reverse("dashboard:overview")
    user = User.objects.get(email="newbie@acme.test")
    assert user.name == "Nia" and user.check_password("a long passphrase")
    assert membership(user, org).role == Role.MEMBER
    assert client.get("/").status_code == 200  # signed in
    assert client.get(link).status_code == 410  # used


def test_an_invitation_link_with_a_bad_secret_is_a_404(client):
    assert client.get(reverse("dashboard:accept_invitation", args=["inv-tokios-nope"])).status_code == 404
    assert client.get(reverse("dashboard:accept_invitation", args=["junk"])).status_code == 404


def test_an_expired_or_revoked_invitation_cannot_be_accepted(as_owner, org, client):
    as_owner.post(reverse("dashboard:member_add"), {"email": "late@acme.test", "role": "member"})
    link = re.search(r"http://testserver(/invitations/\S+/)", mail.outbox[0].body).group(1)
    Invitation.objects.update(expires_at=timezone.now() - timedelta(minutes=1))
    response = client.post(link, {"password1": "a long passphrase", "password2": "a long passphrase"})
    assert response.status_code == 410 and "expired" in response.text
    assert not User.objects.filter(email="late@acme.test").exists()


def test_revoking_an_invitation(as_owner, org, client):
    as_owner.post(reverse("dashboard:member_add"), {"email": "nope@acme.test", "role": "member"})
    invitation = Invitation.objects.get()
    link = re.search(r"http://testserver(/invitations/\S+/)", mail.outbox[0].body).group(1)
    assert as_owner.post(reverse("dashboard:invitation_revoke", args=[invitation.pk])).status_code == 302
    assert client.get(link).status_code == 410


def test_an_invitation_for_an_existing_account_asks_to_sign_in_as_it(as_owner, org, client, outsider):
    from accounts.invitations import invite

    _, secret = invite(org=org, email=outsider.email, role="member", actor=None)
    link = reverse("dashboard:accept_invitation", args=[secret])
    assert "Sign in" in client.get(link).text
    client.force_login(outsider)
    assert client.post(link).status_code == 302
    assert membership(outsider, org).role == Role.MEMBER


def test_an_invitation_opened_by_someone_else_is_refused(as_owner, org, member):
    from accounts.invitations import invite

    _, secret = invite(org=org, email="someone@else.test", role="admin", actor=None)
    from django.test import Client

    client = Client()
    client.force_login(member)
    response = client.post(reverse("dashboard:accept_invitation", args=[secret]))
    assert response.status_code == 403
    assert membership(member, org).role == Role.MEMBER


def test_a_second_pending_invitation_for_the_same_email_is_refused(as_owner, org):
    as_owner.post(reverse("dashboard:member_add"), {"email": "twice@acme.test", "role": "member"})
    response = as_owner.post(reverse("dashboard:member_add"), {"email": "twice@acme.test", "role": "member"})
    assert response.status_code == 200 and "pending invitation" in response.text
    assert Invitation.objects.count() == 1


def test_changing_a_role(as_owner, org, member):
    target = membership(member, org)
    assert as_owner.post(reverse("dashboard:member_role", args=[target.pk]), {"role": "admin"}).status_code == 302
    assert membership(member, org).role == Role.ADMIN


def test_admins_cannot_make_owners_or_touch_owners(as_admin, org, owner, member):
    target = membership(member, org)
    assert as_admin.post(reverse("dashboard:member_role", args=[target.pk]), {"role": "owner"}).status_code == 403
    boss = membership(owner, org)
    assert as_admin.post(reverse("dashboard:member_role", args=[boss.pk]), {"role": "member"}).status_code == 403
    assert as_admin.post(reverse("dashboard:member_remove", args=[boss.pk])).status_code == 403
    assert as_admin.post(reverse("dashboard:member_add"), {"email": "x@acme.test", "role": "owner"}).status_code == 200
    assert membership(member, org).role == Role.MEMBER and membership(owner, org).role == Role.OWNER
    assert Invitation.objects.count() == 0


def test_the_last_owner_cannot_leave_or_be_demoted(as_owner, org, owner):
    boss = membership(owner, org)
    response = as_owner.post(reverse("dashboard:member_role", args=[boss.pk]), {"role": "admin"}, follow=True)
    assert "at least one owner" in response.text
    response = as_owner.post(reverse("dashboard:member_remove", args=[boss.pk]), follow=True)
    assert "at least one owner" in response.text
    assert membership(owner, org).role == Role.OWNER


def test_removing_a_member_asks_first(as_owner, org, member):
    target = membership(member, org)
    url = reverse("dashboard:member_remove", args=[target.pk])
    assert "Remove member@acme.test" in as_owner.get(url).text
    assert Membership.objects.filter(pk=target.pk).exists()
    assert as_owner.post(url).status_code == 302
    assert not Membership.objects.filter(pk=target.pk).exists()


def test_a_removed_member_loses_access_at_once(as_owner, as_member, org, member):
    assert as_member.get(reverse("dashboard:usage")).status_code == 200
    as_owner.post(reverse("dashboard:member_remove", args=[membership(member, org).pk]))
    assert "not in an organisation yet" in as_member.get(reverse("dashboard:usage")).text


def test_owners_can_add_another_owner(as_owner, org, outsider):
    add_member(org=org, user=outsider, role=Role.MEMBER)
    target = membership(outsider, org)
    as_owner.post(reverse("dashboard:member_role", args=[target.pk]), {"role": "owner"})
    assert membership(outsider, org).role == Role.OWNER


def test_the_members_page_makes_a_fixed_number_of_queries(as_owner, org, django_assert_max_num_queries):
    for i in range(20):
        add_member(org=org, user=User.objects.create_user(f"u{i}@acme.test"), role=Role.MEMBER)
    with django_assert_max_num_queries(12):
        response = as_owner.get(reverse("dashboard:members"))
    members_table = response.text.split('id="members"')[1].split("</table>")[0]
    assert members_table.count('@acme.test">') == 21  # each e-mail cut to fit its cell, whole in its title


def test_an_address_too_long_for_the_column_is_a_form_error(as_owner, org):
    email = "a" * 64 + "@" + ".".join(["b" * 60] * 4) + ".test"  # valid, and 315 characters
    response = as_owner.post(reverse("dashboard:member_add"), {"email": email, "role": "member"})
    assert response.status_code == 200 and "at most 254 characters" in response.text
    assert Invitation.objects.count() == 0
