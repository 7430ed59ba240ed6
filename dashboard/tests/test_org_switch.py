from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.actions import add_member
from accounts.models import Role

pytestmark = pytest.mark.django_db


def test_the_switcher_lists_only_my_organisations(as_owner, owner, org, other_org):
    assert "Globex" not in as_owner.get("/").text
    add_member(org=other_org, user=owner, role=Role.MEMBER)
    page = as_owner.get("/").text
    assert 'name="org"' in page and "Globex" in page


def test_switching_changes_the_org_every_page_shows(as_owner, owner, org, other_org, other_key):
    add_member(org=other_org, user=owner, role=Role.ADMIN)
    response = as_owner.post(reverse("dashboard:switch_org"), {"org": other_org.id, "next": "/keys/"})
    assert response.status_code == 302 and response["Location"] == "/keys/"
    keys_page = as_owner.get(reverse("dashboard:keys")).text
    assert other_key.prefix in keys_page
    assert "<h1>Globex</h1>" in as_owner.get("/").text


def test_switching_to_an_org_i_do_not_belong_to_is_a_404(as_owner, org, other_org):
    response = as_owner.post(reverse("dashboard:switch_org"), {"org": other_org.id})
    assert response.status_code == 404
    assert "<h1>Acme</h1>" in as_owner.get("/").text


def test_switching_ignores_an_offsite_next(as_owner, owner, org, other_org):
    add_member(org=other_org, user=owner, role=Role.MEMBER)
    response = as_owner.post(reverse("dashboard:switch_org"), {"org": other_org.id, "next": "https://evil.example/"})
    assert response["Location"] == reverse("dashboard:overview")


def test_a_role_in_one_org_does_not_carry_to_another(as_owner, owner, org, other_org):
    add_member(org=other_org, user=owner, role=Role.MEMBER)
    as_owner.post(reverse("dashboard:switch_org"), {"org": other_org.id})
    assert as_owner.get(reverse("dashboard:keys")).status_code == 403
    as_owner.post(reverse("dashboard:switch_org"), {"org": org.id})
    assert as_owner.get(reverse("dashboard:keys")).status_code == 200


def test_a_stale_session_org_falls_back_to_a_current_membership(as_owner, owner, org, other_org):
    session = as_owner.session
    session["tokios_org_id"] = other_org.id
    session.save()
    assert "<h1>Acme</h1>" in as_owner.get("/").text
