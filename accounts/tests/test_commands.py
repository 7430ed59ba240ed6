"""The accounts management commands: a scriptable interface with the result on the last line."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from accounts.actions import create_api_key
from accounts.models import Membership, Organization, Role


def run(*args) -> list[str]:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().strip().splitlines()


pytestmark = pytest.mark.django_db


def test_create_org_with_an_owner():
    assert run("create_org", "acme", "--name", "Acme Inc", "--owner", "Boss@Example.com")[-1] == "acme"
    org = Organization.objects.get(slug="acme")
    assert org.name == "Acme Inc"
    assert Membership.objects.get(org=org).role == Role.OWNER
    assert Membership.objects.get(org=org).user.email == "boss@example.com"


@pytest.mark.parametrize("slug", ["Acme", "acme!", "-acme", "a" * 51, ""])
def test_create_org_rejects_bad_slugs(slug):
    with pytest.raises(CommandError, match="slug"):
        run("create_org", slug)


def test_create_org_rejects_a_duplicate():
    run("create_org", "acme")
    with pytest.raises(CommandError, match="already exists"):
        run("create_org", "acme")


def test_revoke_key_by_prefix():
    run("create_org", "acme")
    key, _ = create_api_key(org=Organization.objects.get(slug="acme"), name="x")
    assert run("revoke_key", key.prefix)[-1] == f"revoked {key.prefix}"
    key.refresh_from_db()
    assert key.revoked_at is not None
    with pytest.raises(CommandError, match="already revoked"):
        run("revoke_key", key.prefix)
    with pytest.raises(CommandError, match="No API key"):
        run("revoke_key", "sk-tokios-nothere")
