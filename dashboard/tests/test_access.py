from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.test import RequestFactory
from django.urls import reverse

from accounts.actions import create_api_key
from accounts.models import ApiKey, Membership, Organization, Role
from dashboard.access import (
    SESSION_ORG_KEY,
    assignable_roles,
    check_can_manage_member,
    org_for_request,
    owned_or_404,
    scoped,
)
from deployments.models import ConnectorToken

pytestmark = pytest.mark.django_db


def request_for(user, session=None):
    request = RequestFactory().get("/")
    request.user = user
    request.session = session or {}
    return request


def test_org_for_request_prefers_the_org_chosen_in_the_session(owner, org, other_org):
    from accounts.actions import add_member

    add_member(org=other_org, user=owner, role=Role.MEMBER)
    assert org_for_request(request_for(owner)).org == org  # alphabetical first: Acme
    assert org_for_request(request_for(owner, {SESSION_ORG_KEY: other_org.id})).org == other_org


def test_org_for_request_is_none_without_a_membership(outsider):
    assert org_for_request(request_for(outsider)) is None


def test_owned_or_404_finds_only_the_orgs_own_objects(org, key, other_key, connector_token, other_connector_token):
    assert owned_or_404(ApiKey, org, pk=key.pk) == key
    with pytest.raises(Http404):
        owned_or_404(ApiKey, org, pk=other_key.pk)
    assert owned_or_404(ConnectorToken, org, pk=connector_token.pk) == connector_token
    with pytest.raises(Http404):
        owned_or_404(ConnectorToken, org, pk=other_connector_token.pk)


def test_scoped_refuses_models_without_a_declared_org_path(org):
    with pytest.raises(LookupError):
        scoped(Organization, org)


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
    assert assignable_roles(Membership(role="admin")) == ["admin", "member"]
    assert assignable_roles(Membership(role="member")) == []


def test_the_keys_page_makes_a_fixed_number_of_queries(as_owner, org, deployment, django_assert_max_num_queries):
    for i in range(25):
        create_api_key(org=org, name=f"k{i}", deployments=[deployment] if i % 2 else None)
    with django_assert_max_num_queries(10):
        response = as_owner.get(reverse("dashboard:keys"))
    assert response.text.count('<tr data-key="') == 25


def test_the_members_page_makes_a_fixed_number_of_queries(as_owner, org, django_assert_max_num_queries):
    from accounts.actions import add_member
    from accounts.models import User

    for i in range(20):
        add_member(org=org, user=User.objects.create_user(f"u{i}@acme.test"), role=Role.MEMBER)
    with django_assert_max_num_queries(12):
        response = as_owner.get(reverse("dashboard:members"))
    assert response.text.count("@acme.test</td>") + response.text.count("@acme.test <small>") == 21
