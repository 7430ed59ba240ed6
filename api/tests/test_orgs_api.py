"""GET /api/orgs/: each organisation's share ID, for its owners and admins only."""

from __future__ import annotations

import re

import pytest
from rest_framework.test import APIClient

from accounts.actions import create_personal_access_token
from accounts.models import Role

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("persona", ["api_owner", "api_admin"])
def test_owners_and_admins_get_their_orgs_share_id(request, persona, org):
    (entry,) = request.getfixturevalue(persona).get("/api/orgs/").json()
    assert entry["share_id"] == org.share_id
    assert re.fullmatch(r"org_[A-Za-z0-9_-]{22}", entry["share_id"])


def test_members_do_not_get_the_share_id(api_member, org):
    (entry,) = api_member.get("/api/orgs/").json()
    assert entry["slug"] == "acme" and entry["share_id"] is None


def test_a_token_below_admin_does_not_get_the_share_id(owner, org):
    _, secret = create_personal_access_token(user=owner, org=org, name="ci", role=Role.MEMBER)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    (entry,) = client.get("/api/orgs/").json()
    assert entry["role"] == "member" and entry["share_id"] is None


def test_each_org_has_its_own_share_id(org, other_org):
    assert org.share_id != other_org.share_id
    assert org.share_id.startswith("org_") and len(org.share_id) == 26
