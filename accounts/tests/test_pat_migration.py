"""Migrations 0007/0008: tokens made before they had an org, a role and a required expiry."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

BEFORE = [("accounts", "0006_limit_bounds")]
AFTER = [("accounts", "0008_pat_org_expiry_required")]


@pytest.fixture
def executor(transactional_db):
    """Accounts back at 0006; the test database is migrated forward again whatever happens."""
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    yield executor
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


def old_apps(executor):
    return executor.loader.project_state(BEFORE).apps


@pytest.mark.django_db(transaction=True)
def test_old_tokens_get_their_users_first_org_its_role_and_an_expiry(executor):
    apps = old_apps(executor)
    User = apps.get_model("accounts", "User")
    Organization = apps.get_model("accounts", "Organization")
    Membership = apps.get_model("accounts", "Membership")
    Token = apps.get_model("accounts", "PersonalAccessToken")
    now = timezone.now()
    alice = User.objects.create(email="alice@example.test")
    loner = User.objects.create(email="loner@example.test")
    first = Organization.objects.create(slug="first", name="Zeta")  # joined first, sorts last by name
    later = Organization.objects.create(slug="later", name="Alpha")
    Membership.objects.create(user=alice, org=later, role="owner", created_at=now - timedelta(days=1))
    Membership.objects.create(user=alice, org=first, role="admin", created_at=now - timedelta(days=30))

    def token(user, name, expires_at):
        return Token.objects.create(
            user=user, name=name, prefix=f"pat-tokios-{name}", token_hash=name * 4, expires_at=expires_at
        )

    forever = token(alice, "forever", None)
    decade = token(alice, "decade", now + timedelta(days=3650))
    soon = token(alice, "soon", now + timedelta(days=5))
    token(loner, "orphan", None)

    executor = MigrationExecutor(connection)
    executor.migrate(AFTER)
    Token = executor.loader.project_state(AFTER).apps.get_model("accounts", "PersonalAccessToken")

    migrated = {t.name: t for t in Token.objects.all()}
    assert sorted(migrated) == ["decade", "forever", "soon"]  # the orphan could do nothing: gone
    assert {(t.org_id, t.role) for t in migrated.values()} == {(first.id, "admin")}
    assert abs(migrated["forever"].expires_at - (now + timedelta(days=90))) < timedelta(minutes=5)
    assert abs(migrated["decade"].expires_at - (now + timedelta(days=365))) < timedelta(minutes=5)
    assert migrated["soon"].expires_at == soon.expires_at
    assert {forever.pk, decade.pk} <= set(migrated[n].pk for n in migrated)
