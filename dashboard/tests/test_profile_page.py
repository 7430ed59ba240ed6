from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.actions import create_org, create_personal_access_token
from accounts.models import PersonalAccessToken, Role
from accounts.secrets import hash_secret

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery"  # the owner persona's


def new_token(org, **overrides) -> dict:
    return {"name": "terraform", "org": org.pk, "role": "member", "expires_in_days": "30", "password": PASSWORD} | (
        overrides
    )


def test_creating_a_personal_access_token_shows_it_once(as_owner, owner, org):
    response = as_owner.post(reverse("dashboard:profile"), new_token(org, role="admin"))
    assert response.status_code == 201
    secret = response.context["secret"]
    token = PersonalAccessToken.objects.get(user=owner)
    assert secret.startswith("pat-tokios-") and token.token_hash == hash_secret(secret)
    assert (token.org, token.role) == (org, Role.ADMIN)
    assert timezone.now() + timedelta(days=29) < token.expires_at <= timezone.now() + timedelta(days=30)
    assert "http://testserver/api/orgs/acme/usage/" in response.text
    page = as_owner.get(reverse("dashboard:profile")).text
    assert secret not in page and token.prefix in page and "terraform" in page and "Acme" in page


def test_a_token_needs_the_password_again(as_owner, owner, org):
    response = as_owner.post(reverse("dashboard:profile"), new_token(org, password="not it"))
    assert response.status_code == 200 and "That is not your password." in response.text
    response = as_owner.post(reverse("dashboard:profile"), new_token(org, password=""))
    assert response.status_code == 200
    assert not PersonalAccessToken.objects.exists()


def test_wrong_passwords_here_lock_like_failed_sign_ins(as_owner, owner, org, settings):
    settings.AXES_FAILURE_LIMIT = 3
    for _ in range(2):
        assert as_owner.post(reverse("dashboard:profile"), new_token(org, password="guess")).status_code == 200
    response = as_owner.post(reverse("dashboard:profile"), new_token(org, password="guess"))
    assert response.status_code == 429 and "Too many attempts" in response.text
    response = as_owner.post(reverse("dashboard:profile"), new_token(org))  # even the right one now
    assert response.status_code == 429
    assert not PersonalAccessToken.objects.exists()


def test_a_token_role_cannot_be_above_mine(as_member, member, org):
    member.set_password(PASSWORD)
    member.save()
    as_member.force_login(member)  # a new password ends the old sessions
    response = as_member.post(reverse("dashboard:profile"), new_token(org, role="admin"))
    assert response.status_code == 200 and "cannot be above your own" in response.text
    assert not PersonalAccessToken.objects.exists()


def test_a_token_only_for_my_own_orgs(as_owner, other_org):
    response = as_owner.post(reverse("dashboard:profile"), new_token(other_org))
    assert response.status_code == 200 and "Select a valid choice" in response.text
    assert not PersonalAccessToken.objects.exists()


@pytest.mark.parametrize("days", ["0", "3650", "-1", "1e9", ""])
def test_a_token_always_expires_within_the_maximum(as_owner, org, days):
    response = as_owner.post(reverse("dashboard:profile"), new_token(org, expires_in_days=days))
    assert response.status_code == 200
    assert not PersonalAccessToken.objects.exists()


def test_the_expiry_choices_follow_the_settings(as_owner, org, settings):
    settings.PAT_MAX_DAYS = 60
    settings.PAT_DEFAULT_DAYS = 45
    form = as_owner.get(reverse("dashboard:profile")).context["form"]
    assert [days for days, _ in form.fields["expires_in_days"].choices] == [7, 30, 45, 60]
    assert form.fields["expires_in_days"].initial == 45
    assert as_owner.post(reverse("dashboard:profile"), new_token(org, expires_in_days="90")).status_code == 200


def test_the_form_offers_the_current_org_first(as_owner, owner, org):
    create_org(slug="beta", name="Beta", owner=owner)
    form = as_owner.get(reverse("dashboard:profile")).context["form"]
    assert form.initial["org"] == org
    assert [o.slug for o in form.fields["org"].queryset] == ["acme", "beta"]


def test_revoking_my_token(as_member, member, org):
    token, _ = create_personal_access_token(user=member, org=org, name="ci")
    response = as_member.post(reverse("dashboard:profile_token_revoke", args=[token.pk]))
    assert response.status_code == 302
    token.refresh_from_db()
    assert token.status == "revoked"


def test_someone_elses_token_is_a_404(as_member, owner, org):
    token, _ = create_personal_access_token(user=owner, org=org, name="owner's")
    assert as_member.post(reverse("dashboard:profile_token_revoke", args=[token.pk])).status_code == 404
    token.refresh_from_db()
    assert token.status == "active"
    assert "owner&#x27;s" not in as_member.get(reverse("dashboard:profile")).text


def test_the_profile_lists_my_organisations_and_roles(as_admin, org):
    page = as_admin.get(reverse("dashboard:profile")).text
    assert "Acme (admin)" in page
