"""Personas shared by the dashboard and API tests: two orgs; in `acme` an owner, an admin and a
member; an outsider who owns `globex` and must see nothing of acme."""

from __future__ import annotations

import time

import pytest
from django.test import Client

from accounts.actions import add_member, create_api_key, create_org
from accounts.models import Role, User
from deployments.actions import create_connector_token, create_deployment
from proxy.tunnel.presence import ConnectorInfo


@pytest.fixture(autouse=True)
def _fast_passwords(request, settings):
    # Browser tests sign in on a separate server process, which must be able to check the hash.
    if request.node.get_closest_marker("browser") is None:
        settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def live(monkeypatch) -> dict[int, list[ConnectorInfo]]:
    """Connector presence as tests declare it: `live[deployment.id] = [connector_info(...)]`."""
    registry: dict[int, list[ConnectorInfo]] = {}
    import dashboard.presence as presence

    monkeypatch.setattr(presence, "live_connectors_sync", lambda deployment_id: list(registry.get(deployment_id, [])))
    monkeypatch.setattr(presence, "online_deployment_ids", lambda ids: {i for i in ids if registry.get(i)})
    return registry


def connector_info(deployment, **overrides) -> ConnectorInfo:
    now = time.time()
    values = {
        "channel": "specific.test!1",
        "deployment_id": deployment.id,
        "token_id": 1,
        "connector_id": "c-1",
        "version": "0.1.0",
        "remote": "203.0.113.7:52114",
        "connected_since": now - 3600,
        "last_heartbeat": now - 2,
        "inflight": 3,
        "max_concurrency": 64,
    }
    values.update(overrides)
    return ConnectorInfo(**values)


@pytest.fixture
def owner(db) -> User:
    return User.objects.create_user("owner@acme.test", "correct horse battery", name="Olive Owner")


@pytest.fixture
def org(owner):
    return create_org(slug="acme", name="Acme", owner=owner)


@pytest.fixture
def admin(org) -> User:
    user = User.objects.create_user("admin@acme.test", name="Ada Admin")
    add_member(org=org, user=user, role=Role.ADMIN)
    return user


@pytest.fixture
def member(org) -> User:
    user = User.objects.create_user("member@acme.test", name="Max Member")
    add_member(org=org, user=user, role=Role.MEMBER)
    return user


@pytest.fixture
def outsider(db) -> User:
    return User.objects.create_user("boss@globex.test", name="Otto Outsider")


@pytest.fixture
def other_org(outsider):
    return create_org(slug="globex", name="Globex", owner=outsider)


def _client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def as_owner(owner, org) -> Client:
    return _client_for(owner)


@pytest.fixture
def as_admin(admin) -> Client:
    return _client_for(admin)


@pytest.fixture
def as_member(member) -> Client:
    return _client_for(member)


@pytest.fixture
def as_outsider(outsider, other_org) -> Client:
    return _client_for(outsider)


@pytest.fixture
def deployment(org):
    return create_deployment(org=org, name="gemma-tunnel", price_input_micros=100_000, price_output_micros=400_000)


@pytest.fixture
def other_deployment(other_org):
    return create_deployment(org=other_org, name="globex-llama")


@pytest.fixture
def key(org, owner):
    return create_api_key(org=org, name="backend", created_by=owner)[0]


@pytest.fixture
def other_key(other_org):
    return create_api_key(org=other_org, name="globex key")[0]


@pytest.fixture
def connector_token(deployment):
    return create_connector_token(deployment=deployment, name="gpu-box")[0]


@pytest.fixture
def other_connector_token(other_deployment):
    return create_connector_token(deployment=other_deployment, name="globex box")[0]
