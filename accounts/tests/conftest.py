from __future__ import annotations

import pytest

from accounts.actions import create_api_key, create_org
from accounts.models import Role, User
from deployments.actions import create_connector_token, create_deployment


@pytest.fixture
def owner(db) -> User:
    return User.objects.create_user("owner@example.com", "pw-for-tests-only")


@pytest.fixture
def org(owner):
    return create_org(slug="acme", name="Acme", owner=owner)


@pytest.fixture
def outsider_org(db):
    outsider = User.objects.create_user("outsider@example.com", "pw-for-tests-only")
    return create_org(slug="other", owner=outsider)


@pytest.fixture
def deployment(org):
    return create_deployment(org=org, name="gemma-tunnel", price_input_micros=100_000, price_output_micros=400_000)


@pytest.fixture
def key(org):
    return create_api_key(org=org, name="default")


@pytest.fixture
def member(org):
    from accounts.actions import add_member

    user = User.objects.create_user("member@example.com", "pw-for-tests-only")
    add_member(org=org, user=user, role=Role.MEMBER)
    return user


@pytest.fixture
def connector_token(deployment):
    return create_connector_token(deployment=deployment)
