"""The playground page and its key: every role of the org opens it; it lists the enabled deployments
the org may use (its own and granted ones) and code snippets with a placeholder key, never a secret;
the key POST (CSRF, membership, no-store) makes the user's playground key once with the org's default
limits, then rotates it with no grace; admins see it in the key list; leaving the org revokes it."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from accounts.actions import remove_member
from accounts.models import ApiKey, AuditAction, AuditLog, Membership
from accounts.org_settings import update_org_settings
from accounts.secrets import hash_secret
from deployments.actions import create_deployment
from deployments.lifecycle import disable_deployment

pytestmark = pytest.mark.django_db

PAGE = reverse("dashboard:playground")
KEY = reverse("dashboard:playground_key")
SECRET_RE = re.compile(r"sk-tokios-[A-Za-z0-9_-]{8,}")


def ask(client: Client, org) -> dict:
    response = client.post(KEY, {"org": str(org.pk)})
    assert response.status_code in (200, 201), response.content
    assert response["Cache-Control"] == "no-store, private"
    return response.json() | {"status_code": response.status_code}


@pytest.mark.parametrize("persona", ["as_owner", "as_admin", "as_member"])
def test_every_role_opens_the_page_with_the_usable_enabled_models(
    request, persona, org, owner, deployment, granted_deployment, other_deployment
):
    client = request.getfixturevalue(persona)
    disabled = create_deployment(org=org, name="gemma-off")
    disable_deployment(deployment=disabled, actor=owner)
    page = client.get(PAGE)
    assert page.status_code == 200
    assert page["Cache-Control"] == "no-store, private"
    html = page.text
    options = re.findall(r'<option value="([^"]+)"', html)
    assert options == ["gemma-tunnel", "globex-shared"]  # own and granted, enabled, by name
    assert "globex-shared (shared with you)" in html
    assert "globex-llama" not in html and "gemma-off" not in html
    assert f'data-org="{org.pk}"' in html
    nav = html.split('aria-label="Main"')[1].split("</nav>")[0]
    assert f'href="{PAGE}" aria-current="page">Playground' in nav
    # The snippets: this server's URL, the first model, a placeholder key; no secret anywhere.
    assert "curl http://testserver/v1/chat/completions" in html
    assert 'OpenAI(base_url="http://testserver/v1", api_key="sk-tokios-…")' in html
    assert 'anthropic.Anthropic(base_url="http://testserver", api_key="sk-tokios-…")' in html
    assert html.count("<span data-snippet-model>gemma-tunnel</span>") == 3
    assert SECRET_RE.search(html) is None
    assert "<script>" not in html and "playground.js" in html


def test_a_page_without_models_says_so(as_member, org):
    html = as_member.get(PAGE).text
    assert "No model to try yet" in html and "data-playground" not in html
    assert "Create a deployment" not in html  # a member cannot


def test_the_key_is_made_once_with_the_default_limits_then_rotated(as_member, org, member, owner, deployment):
    update_org_settings(org=org, actor=owner, default_key_rpm_limit=30, default_key_budget_micros=2_000_000)
    first = ask(as_member, org)
    assert first["status_code"] == 201 and first["created"] is True
    key = ApiKey.objects.get(playground=True)
    assert (key.org, key.created_by, key.name) == (org, member, "Playground — member@acme.test")
    assert (key.rpm_limit, key.tpm_limit, key.monthly_budget_micros, key.all_models) == (30, None, 2_000_000, True)
    assert key.key_hash == hash_secret(first["secret"]) and first["prefix"] == key.prefix
    assert first["status"] == "active"

    second = ask(as_member, org)
    assert second["status_code"] == 200 and second["created"] is False
    assert second["secret"] != first["secret"]
    key.refresh_from_db()
    assert ApiKey.objects.filter(playground=True).count() == 1
    assert key.key_hash == hash_secret(second["secret"])
    assert key.previous_key_hash == hash_secret(first["secret"]) and not key.previous_secret_valid  # grace 0
    assert AuditLog.objects.filter(action=AuditAction.KEY_CREATED, actor=member).count() == 1
    assert AuditLog.objects.filter(action=AuditAction.KEY_ROTATED, actor=member).count() == 1
    # The page now names the key, still without its secret.
    html = as_member.get(PAGE).text
    assert f"<code>{key.prefix}…</code>" in html
    assert second["secret"] not in html and first["secret"] not in html


def test_each_user_and_org_has_its_own_key_and_a_revoked_one_is_replaced(
    as_owner, as_admin, org, owner, admin, other_org
):
    owner_secret = ask(as_owner, org)["secret"]
    ask(as_admin, org)
    assert set(ApiKey.objects.filter(playground=True).values_list("created_by__email", flat=True)) == {
        "owner@acme.test",
        "admin@acme.test",
    }
    mine = ApiKey.objects.get(playground=True, created_by=owner)
    mine.revoked_at = mine.created_at
    mine.save(update_fields=["revoked_at"])
    fresh = ask(as_owner, org)
    assert fresh["created"] is True and fresh["secret"] != owner_secret
    assert ApiKey.objects.filter(playground=True, created_by=owner, revoked_at__isnull=True).count() == 1


def test_the_key_post_requires_csrf(member, org):
    client = Client(enforce_csrf_checks=True)
    client.force_login(member)
    response = client.post(KEY, {"org": str(org.pk)})
    assert response.status_code == 403
    assert not ApiKey.objects.filter(playground=True).exists()
    page = client.get(PAGE)  # the page's form carries the token the script sends back
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    response = client.post(KEY, {"org": str(org.pk)}, headers={"X-CSRFToken": token})
    assert response.status_code == 201


def test_the_key_post_requires_membership_of_that_org(as_outsider, as_member, org, other_org):
    response = as_outsider.post(KEY, {"org": str(org.pk)})
    assert response.status_code == 404 and "secret" not in response.json()
    response = as_member.post(KEY, {"org": str(other_org.pk)})
    assert response.status_code == 404
    assert not ApiKey.objects.filter(playground=True).exists()


@pytest.mark.parametrize("value", ["", "0", "-1", "abc", "1.5", "٣", "9" * 20, "9223372036854775808"])
def test_a_bad_org_is_a_400(as_member, org, value):
    response = as_member.post(KEY, {"org": value})
    assert response.status_code == 400, value
    assert not ApiKey.objects.filter(playground=True).exists()


def test_signed_out_and_get_are_refused(client, org):
    response = client.post(KEY, {"org": str(org.pk)})
    assert response.status_code == 401 and response.json()["error"].startswith("You are signed out")
    assert client.get(PAGE).status_code == 302  # the page: to sign in
    assert not ApiKey.objects.filter(playground=True).exists()


def test_get_on_the_key_url_is_405(as_member):
    assert as_member.get(KEY).status_code == 405


def test_admins_see_playground_keys_in_the_key_list(as_member, as_admin, org):
    ask(as_member, org)
    html = as_admin.get(reverse("dashboard:keys")).text
    assert "Playground — member@acme.test" in html
    assert '<span class="badge badge-muted">playground</span>' in html


def test_leaving_the_org_revokes_the_playground_key(as_member, org, member, owner):
    ask(as_member, org)
    remove_member(membership=Membership.objects.get(user=member, org=org), actor=owner)
    key = ApiKey.objects.get(playground=True)
    assert key.is_revoked
    assert as_member.post(KEY, {"org": str(org.pk)}).status_code == 404
