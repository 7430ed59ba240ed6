"""Nothing of one org reaches another: querysets, admin, and roles."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from accounts.actions import change_role, create_api_key, remove_member
from accounts.models import ApiKey, Membership, Organization, Role, User
from deployments.models import Deployment

pytestmark = pytest.mark.django_db


def test_users_log_in_with_their_email(client):
    User.objects.create_user("Someone@Example.com", "a-long-password-123")
    assert client.login(username="someone@example.com", password="a-long-password-123")


def test_org_querysets_are_scoped(org, outsider_org, deployment, key):
    create_api_key(org=outsider_org, name="theirs")
    assert list(ApiKey.objects.for_org(org)) == [key[0]]
    assert list(Deployment.objects.for_org(outsider_org)) == []
    assert list(Deployment.objects.usable_by(outsider_org)) == []
    assert list(Organization.objects.for_user(User.objects.get(email="outsider@example.com"))) == [outsider_org]


def test_an_org_keeps_at_least_one_owner(org, owner, member):
    owner_membership = Membership.objects.get(org=org, user=owner)
    with pytest.raises(ValidationError):
        change_role(membership=owner_membership, role=Role.MEMBER)
    with pytest.raises(ValidationError):
        remove_member(membership=owner_membership)
    member_membership = Membership.objects.get(org=org, user=member)
    change_role(membership=member_membership, role=Role.OWNER)
    change_role(membership=owner_membership, role=Role.ADMIN)
    assert Membership.objects.get(org=org, user=owner).role == Role.ADMIN


def test_admin_is_for_staff_only(client, owner):
    client.force_login(owner)
    response = client.get("/admin/accounts/apikey/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_admin_never_shows_secrets_or_hashes(client, key, connector_token):
    staff = User.objects.create_superuser("ops@example.com", "pw-for-tests-only")
    client.force_login(staff)
    page = client.get(f"/admin/accounts/apikey/{key[0].pk}/change/").content.decode()
    assert key[0].prefix in page
    assert key[0].key_hash not in page and key[1] not in page
    token, secret = connector_token
    page = client.get(f"/admin/deployments/connectortoken/{token.pk}/change/").content.decode()
    assert token.token_hash not in page and secret not in page
    assert client.get("/admin/accounts/apikey/add/").status_code == 403
