"""The organisation's share ID on the members page, and replacing it."""

from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.models import AuditAction, AuditLog, Organization
from deployments.actions import grant_model
from deployments.models import ModelGrant

pytestmark = pytest.mark.django_db

ROTATE = "dashboard:share_id_rotate"


@pytest.mark.parametrize("persona", ["as_owner", "as_admin"])
def test_owners_and_admins_see_the_share_id_with_a_copy_button(request, persona, org):
    page = request.getfixturevalue(persona).get(reverse("dashboard:members")).text
    assert f'<pre class="command" id="share-id">{org.share_id}</pre>' in page
    assert 'data-copy="share-id"' in page
    assert "give this to a model owner who wants to share a model with you" in page.lower()


def test_members_can_neither_see_nor_replace_the_share_id(as_member, org):
    before = org.share_id
    assert as_member.get(reverse("dashboard:members")).status_code == 403
    assert as_member.post(reverse(ROTATE)).status_code == 403
    org.refresh_from_db()
    assert org.share_id == before


def test_replacing_the_share_id_keeps_existing_grants_and_retires_the_old_one(
    as_owner, owner, org, other_org, other_deployment, deployment
):
    old = org.share_id
    grant_model(deployment=other_deployment, org=org)
    response = as_owner.post(reverse(ROTATE), follow=True)
    org.refresh_from_db()
    assert org.share_id != old and org.share_id.startswith("org_")
    assert org.share_id in response.text and old not in response.text
    assert ModelGrant.objects.filter(deployment=other_deployment, org=org).exists()
    entry = AuditLog.objects.get(action=AuditAction.ORG_SHARE_ID_ROTATED)
    assert (entry.org, entry.actor) == (org, owner)
    assert old not in str(entry.detail) and old not in entry.target
    assert Organization.objects.grantee(old, yours=Organization.objects.none()) is None
    assert Organization.objects.grantee(org.share_id, yours=Organization.objects.none()) == org


def test_replacing_the_share_id_needs_a_post(as_owner, org):
    before = org.share_id
    assert as_owner.get(reverse(ROTATE)).status_code == 405
    org.refresh_from_db()
    assert org.share_id == before
