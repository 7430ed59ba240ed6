"""Dashboard and API test helpers: a signed-in client per persona, fast password hashing, and
connector presence as a test declares it. The personas themselves (owner, admin, member, outsider,
their orgs, deployments, keys, connector tokens) are the suite's own: tests/personas.py."""

from __future__ import annotations

import time

import pytest
from django.test import Client

from proxy.tunnel import presence
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
