"""Nothing of one org reaches another: querysets, admin, and roles."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404
from django.test import RequestFactory

from accounts.actions import add_member, change_role, create_api_key, remove_member
from accounts.models import ApiKey, Membership, Organization, Role, User
from accounts.tenancy import (
    SESSION_ORG_KEY,
    assignable_roles,
    check_can_manage_member,
    org_for_request,
    owned_or_404,
    scoped,
)
from deployments.actions import create_connector_token, create_deployment, grant_model
from deployments.models import ConnectorToken, Deployment, ModelGrant

pytestmark = pytest.mark.django_db


def test_users_log_in_with_their_email(client):
    User.objects.create_user("Someone@Example.com", "a-long-password-123")
    # Through the sign-in page: django-axes, which counts failures, needs the request.
    response = client.post("/login/", {"username": "someone@example.com", "password": "a-long-password-123"})
    assert response.status_code == 302 and "_auth_user_id" in client.session


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


# --- accounts.tenancy: the current org, roles, and the ownership helper -------------------------


def request_for(user, session=None):
    request = RequestFactory().get("/")
    request.user = user
    request.session = session or {}
    return request


def test_org_for_request_prefers_the_org_chosen_in_the_session(owner, org, outsider_org):
    add_member(org=outsider_org, user=owner, role=Role.MEMBER)
    assert org_for_request(request_for(owner)).org == org  # alphabetical first: Acme
    assert org_for_request(request_for(owner, {SESSION_ORG_KEY: outsider_org.id})).org == outsider_org


def test_org_for_request_is_none_without_a_membership():
    assert org_for_request(request_for(User.objects.create_user("nobody@example.com"))) is None


def test_owned_or_404_finds_only_the_orgs_own_objects(org, outsider_org, key, connector_token):
    theirs = create_api_key(org=outsider_org, name="theirs")[0]
    their_token = create_connector_token(deployment=create_deployment(org=outsider_org, name="their-model"))[0]
    assert owned_or_404(ApiKey, org, pk=key[0].pk) == key[0]
    with pytest.raises(Http404):
        owned_or_404(ApiKey, org, pk=theirs.pk)
    assert owned_or_404(ConnectorToken, org, pk=connector_token[0].pk) == connector_token[0]
    with pytest.raises(Http404):
        owned_or_404(ConnectorToken, org, pk=their_token.pk)


def test_a_grant_belongs_to_the_org_that_gave_it_not_the_one_it_lets_in(org, outsider_org, deployment):
    grant = grant_model(deployment=deployment, org=outsider_org)
    assert list(scoped(ModelGrant, org)) == [grant]
    assert list(scoped(ModelGrant, outsider_org)) == []


def test_scoped_follows_an_org_foreign_key(org, outsider_org, owner):
    assert list(scoped(Membership, org).values_list("user", flat=True)) == [owner.pk]


def test_scoped_refuses_models_without_an_org(org):
    with pytest.raises(LookupError):
        scoped(Organization, org)
    with pytest.raises(LookupError):
        scoped(User, org)


@pytest.mark.parametrize(
    ("actor_role", "target_role", "new_role", "allowed"),
    [
        ("owner", "owner", "admin", True),
        ("owner", "member", "owner", True),
        ("admin", "member", "admin", True),
        ("admin", "admin", "member", True),
        ("admin", "member", "owner", False),
        ("admin", "owner", "member", False),
        ("admin", "owner", None, False),
        ("member", "member", "admin", False),
        ("member", None, "member", False),
    ],
)
def test_who_may_change_whom(actor_role, target_role, new_role, allowed):
    actor = Membership(role=actor_role)
    target = Membership(role=target_role) if target_role else None
    if allowed:
        check_can_manage_member(actor, target, new_role)
    else:
        with pytest.raises(PermissionDenied):
            check_can_manage_member(actor, target, new_role)


def test_admins_are_offered_no_owner_role():
    assert assignable_roles(Membership(role="owner")) == ["owner", "admin", "member"]
    assert assignable_roles(Membership(role="admin")) == ["admin", "member"]
    assert assignable_roles(Membership(role="member")) == []
