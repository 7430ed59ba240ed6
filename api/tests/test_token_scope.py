"""A personal access token acts in one organisation, at the lower of its role and its user's."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from accounts.actions import add_member, change_role, create_org, create_personal_access_token, remove_member
from accounts.models import Membership, Role

pytestmark = pytest.mark.django_db


def bearer(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


@pytest.fixture
def second_org(owner):
    """Another org acme's owner also owns."""
    return create_org(slug="beta", name="Beta", owner=owner)


def test_a_token_acts_only_in_its_own_org(owner, org, second_org):
    _, secret = create_personal_access_token(user=owner, org=org, role=Role.OWNER, name="ci")
    client = bearer(secret)
    assert client.get("/api/orgs/acme/keys/").status_code == 200
    assert client.get("/api/orgs/beta/keys/").status_code == 404
    assert client.post("/api/orgs/beta/keys/", {"name": "x"}, format="json").status_code == 404
    assert client.get("/api/orgs/beta/usage/").status_code == 404
    assert [o["slug"] for o in client.get("/api/orgs/").json()] == ["acme"]


def test_the_session_still_sees_every_org_of_the_user(api_owner, second_org):
    assert [o["slug"] for o in api_owner.get("/api/orgs/").json()] == ["acme", "beta"]


def test_a_token_acts_with_its_own_role_when_lower_than_its_users(owner, org, member):
    _, secret = create_personal_access_token(user=owner, org=org, role=Role.ADMIN, name="ci")
    client = bearer(secret)
    assert client.get("/api/orgs/").json()[0]["role"] == "admin"
    target = Membership.objects.get(user=member)
    assert client.patch(f"/api/orgs/acme/members/{target.pk}/", {"role": "owner"}, format="json").status_code == 403
    boss = Membership.objects.get(user=owner)
    assert client.delete(f"/api/orgs/acme/members/{boss.pk}/").status_code == 403
    assert Membership.objects.get(user=member).role == Role.MEMBER


def test_a_token_is_demoted_with_its_user(owner, org, admin):
    _, secret = create_personal_access_token(user=admin, org=org, role=Role.ADMIN, name="ci")
    client = bearer(secret)
    assert client.get("/api/orgs/acme/keys/").status_code == 200
    change_role(membership=Membership.objects.get(user=admin), role=Role.MEMBER, actor=owner)
    assert client.get("/api/orgs/acme/keys/").status_code == 403
    assert client.post("/api/orgs/acme/keys/", {"name": "x"}, format="json").status_code == 403
    assert client.get("/api/orgs/acme/usage/").status_code == 200  # what a member may read
    assert client.get("/api/orgs/").json()[0]["role"] == "member"


def test_promoting_the_user_does_not_promote_the_token(owner, org, member):
    _, secret = create_personal_access_token(user=member, org=org, role=Role.MEMBER, name="ci")
    change_role(membership=Membership.objects.get(user=member), role=Role.OWNER, actor=owner)
    assert bearer(secret).get("/api/orgs/acme/keys/").status_code == 403


def test_a_token_stops_when_its_user_leaves_the_org(owner, org, admin):
    _, secret = create_personal_access_token(user=admin, org=org, role=Role.ADMIN, name="ci")
    remove_member(membership=Membership.objects.get(user=admin), actor=owner)
    response = bearer(secret).get("/api/orgs/acme/usage/")
    assert response.status_code == 401 and "no longer a member" in response.json()["detail"]
    add_member(org=org, user=admin, role=Role.MEMBER)  # back, as a member: the token acts as one
    assert bearer(secret).get("/api/orgs/acme/keys/").status_code == 403
    assert bearer(secret).get("/api/orgs/acme/usage/").status_code == 200


def test_the_api_cannot_make_tokens(owner, org):
    _, secret = create_personal_access_token(user=owner, org=org, role=Role.OWNER, name="ci")
    schema = bearer(secret).get("/api/schema/?format=json").json()
    assert not [path for path in schema["paths"] if "personal" in path or path.rstrip("/").endswith("/api/tokens")]
    assert "only" in bearer(secret).get("/api/").json()["authentication"]
