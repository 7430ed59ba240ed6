from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.actions import create_personal_access_token
from accounts.models import PersonalAccessToken
from accounts.secrets import hash_secret

pytestmark = pytest.mark.django_db


def test_creating_a_personal_access_token_shows_it_once(as_member, member):
    response = as_member.post(reverse("dashboard:profile"), {"name": "terraform", "expires_in_days": "30"})
    assert response.status_code == 201
    secret = response.context["secret"]
    token = PersonalAccessToken.objects.get(user=member)
    assert secret.startswith("pat-tokios-") and token.token_hash == hash_secret(secret)
    assert token.expires_at is not None
    page = as_member.get(reverse("dashboard:profile")).text
    assert secret not in page and token.prefix in page and "terraform" in page


def test_revoking_my_token(as_member, member):
    token, _ = create_personal_access_token(user=member, name="ci")
    response = as_member.post(reverse("dashboard:profile_token_revoke", args=[token.pk]))
    assert response.status_code == 302
    token.refresh_from_db()
    assert token.status == "revoked"


def test_someone_elses_token_is_a_404(as_member, owner):
    token, _ = create_personal_access_token(user=owner, name="owner's")
    assert as_member.post(reverse("dashboard:profile_token_revoke", args=[token.pk])).status_code == 404
    token.refresh_from_db()
    assert token.status == "active"
    assert "owner&#x27;s" not in as_member.get(reverse("dashboard:profile")).text


def test_the_profile_lists_my_organisations_and_roles(as_admin, org):
    page = as_admin.get(reverse("dashboard:profile")).text
    assert "Acme (admin)" in page
