"""Creating personal access tokens: one org, a role no higher than the creator's, always an expiry."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from accounts.actions import create_personal_access_token, revoke_personal_access_token
from accounts.models import AuditLog, Role, User

pytestmark = pytest.mark.django_db


def test_a_token_belongs_to_one_org_with_a_role(owner, org):
    token, secret = create_personal_access_token(user=owner, org=org, role=Role.ADMIN, name="ci")
    assert secret.startswith("pat-tokios-")
    assert (token.org, token.role, token.status) == (org, Role.ADMIN, "active")


def test_a_token_expires_by_default_after_the_configured_days(owner, org, settings):
    settings.PAT_DEFAULT_DAYS = 90
    before = timezone.now()
    token, _ = create_personal_access_token(user=owner, org=org, name="ci")
    assert before + timedelta(days=90) <= token.expires_at <= timezone.now() + timedelta(days=90)
    assert token.role == Role.MEMBER  # the least, unless asked


def test_a_token_cannot_outlive_the_maximum(owner, org, settings):
    settings.PAT_MAX_DAYS = 365
    with pytest.raises(ValidationError, match="365 days"):
        create_personal_access_token(user=owner, org=org, name="ci", expires_at=timezone.now() + timedelta(days=366))
    with pytest.raises(ValidationError, match="future"):
        create_personal_access_token(user=owner, org=org, name="ci", expires_at=timezone.now())


@pytest.mark.parametrize("role", [Role.ADMIN, Role.OWNER])
def test_a_token_cannot_have_a_role_above_its_creators(org, member, role):
    with pytest.raises(ValidationError, match="above yours"):
        create_personal_access_token(user=member, org=org, role=role, name="ci")


def test_only_a_member_of_the_org_can_make_a_token_for_it(org, outsider_org):
    stranger = User.objects.get(email="outsider@example.com")
    with pytest.raises(ValidationError, match="not a member"):
        create_personal_access_token(user=stranger, org=org, name="ci")


def test_unknown_roles_are_refused(owner, org):
    with pytest.raises(ValidationError, match="Unknown role"):
        create_personal_access_token(user=owner, org=org, role="root", name="ci")


def test_creating_and_revoking_are_in_the_orgs_audit_log(owner, org):
    token, _ = create_personal_access_token(user=owner, org=org, role=Role.OWNER, name="ci")
    revoke_personal_access_token(token=token, actor=owner)
    entries = AuditLog.objects.for_org(org).filter(target=token.prefix)
    assert sorted(e.action for e in entries) == ["pat.created", "pat.revoked"]
    assert entries.get(action="pat.created").detail == {"name": "ci", "role": "owner"}
