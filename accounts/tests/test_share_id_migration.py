"""Migrations 0009-0011: organisations made before share IDs get one each, unique and unguessable."""

from __future__ import annotations

import re

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("accounts", "0008_pat_org_expiry_required")]
AFTER = [("accounts", "0011_organization_share_id_unique")]


@pytest.fixture
def executor(transactional_db):
    """Accounts back at 0008; the test database is migrated forward again whatever happens."""
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    yield executor
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_existing_orgs_get_distinct_share_ids_and_new_ones_get_one_too(executor):
    Organization = executor.loader.project_state(BEFORE).apps.get_model("accounts", "Organization")
    for n in range(5):
        Organization.objects.create(slug=f"org-{n}", name=f"Org {n}")

    executor = MigrationExecutor(connection)
    executor.migrate(AFTER)
    Organization = executor.loader.project_state(AFTER).apps.get_model("accounts", "Organization")

    share_ids = list(Organization.objects.values_list("share_id", flat=True))
    assert len(share_ids) == len(set(share_ids)) == 5
    assert all(re.fullmatch(r"org_[A-Za-z0-9_-]{22}", s) for s in share_ids), share_ids
    fresh = Organization.objects.create(slug="fresh", name="Fresh")
    assert fresh.share_id not in share_ids and fresh.share_id.startswith("org_")
    with pytest.raises(IntegrityError), transaction.atomic():
        Organization.objects.create(slug="copycat", name="Copycat", share_id=share_ids[0])
