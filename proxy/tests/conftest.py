"""Tunnel fixtures: a deployment with a real connector token, and a clean slate of the tunnel's
process-wide state (sessions, presence, dispatch counts) around every test.

With REDIS_URL set, presence and the channel layer are Redis: each test deletes only the presence
hash of its own deployment, never anything else (the Redis server is shared).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections

from accounts.actions import create_org
from deployments.actions import create_connector_token, create_deployment
from proxy.tunnel import presence, router, session


def _clear_tunnel_state() -> None:
    session.LOCAL.clear()
    presence._local.clear()
    presence._read_cache.clear()
    router._dispatched.clear()


@pytest.fixture(autouse=True)
def clean_tunnel_state():
    """Sessions and presence are per process; a test must not see another test's connectors."""
    _clear_tunnel_state()
    yield
    keeper = presence._keeper
    if keeper is not None and not keeper.done() and not keeper.get_loop().is_closed():
        keeper.cancel()  # its loop ends with the test; the next test's publish starts a new one
    _clear_tunnel_state()


@dataclass(frozen=True)
class ConnectorCredentials:
    deployment_id: int
    deployment_name: str
    token_id: int
    secret: str


def _delete_presence(deployment_id: int) -> None:
    if not settings.REDIS_URL:
        return
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        client.delete(f"tokios:presence:{deployment_id}")
    finally:
        client.close()


@pytest.fixture
def credentials(transactional_db) -> ConnectorCredentials:
    """A deployment and a live connector token for it, committed (the consumer reads it from a
    thread through sync_to_async)."""
    org = create_org(slug="acme", name="Acme")
    deployment = create_deployment(org=org, name="gemma-small")
    token, secret = create_connector_token(deployment=deployment, name="laptop")
    _delete_presence(deployment.id)  # a ghost left by an earlier run with the same id
    yield ConnectorCredentials(deployment.id, deployment.name, token.id, secret)
    _delete_presence(deployment.id)


@pytest_asyncio.fixture
async def consumer_db(credentials) -> ConnectorCredentials:
    """`credentials`, for tests that run the consumer: it reads the database from asgiref's
    sync_to_async thread, whose connection must be closed before the test database is flushed or
    dropped (PostgreSQL refuses to drop a database someone is connected to)."""
    yield credentials
    await sync_to_async(connections.close_all)()
