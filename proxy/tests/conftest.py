"""Tunnel fixtures: a deployment with a real connector token, and a clean slate of the tunnel's
process-wide state (sessions, presence, dispatch counts) around every test. For the in-process
tests of the /v1 path: `upstream`, the scripted model (fake_call.py) in place of the tunnel, and
`ledger`, what the request scope handed to billing.

With REDIS_URL set, presence and the channel layer are Redis: each test deletes only the presence
hash of its own deployment, never anything else (the Redis server is shared).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections

from billing import limits, metering
from billing.metering import UsageRecord
from lib.redis import get_sync_redis, redis_enabled
from proxy.access import clear_local_cache

from . import tunnel_state
from .fake_call import Upstream


@pytest.fixture(autouse=True)
def clean_tunnel_state():
    """Sessions and presence are per process; a test must not see another test's connectors."""
    tunnel_state.clear()
    yield
    tunnel_state.stop_keeper()
    tunnel_state.clear()


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
def credentials(transactional_db, deployment, connector_token) -> Iterator[ConnectorCredentials]:
    """The persona `deployment` and its live `connector_token`, committed (the consumer reads the
    token from a thread through sync_to_async)."""
    _delete_presence(deployment.id)  # a ghost left by an earlier run with the same id
    yield ConnectorCredentials(deployment.id, deployment.name, connector_token.id, connector_token.secret)
    _delete_presence(deployment.id)


@pytest_asyncio.fixture
async def consumer_db(credentials) -> AsyncIterator[ConnectorCredentials]:
    """`credentials`, for tests that run the consumer: it reads the database from asgiref's
    sync_to_async thread, whose connection must be closed before the test database is flushed or
    dropped (PostgreSQL refuses to drop a database someone is connected to)."""
    yield credentials
    await sync_to_async(connections.close_all)()


# --- the /v1 path in process, against a scripted model ------------------------------------------------


@pytest.fixture
def upstream(settings) -> Upstream:
    """The scripted model (TEST DOUBLE, fake_call.py), where `open_call` makes its calls."""
    fake = Upstream()
    settings.UPSTREAM_CALL = fake
    return fake


@dataclass
class Ledger:
    records: list[UsageRecord] = field(default_factory=list)  # handed to metering.submit
    reserved: list = field(default_factory=list)  # what limits.enforce returned
    settled: list = field(default_factory=list)  # (reservation, record) handed to limits.settle

    def only(self, **expected) -> UsageRecord:
        """The request's one usage record, with the `expected` fields, after checking that the
        request's reservation (or None) was settled once, with that record."""
        assert len(self.records) == 1, f"{len(self.records)} usage records"
        record = self.records[0]
        assert len(self.settled) == 1, f"limits.settle called {len(self.settled)} times"
        reservation, settled_record = self.settled[0]
        assert settled_record is record
        assert len(self.reserved) <= 1
        assert reservation is (self.reserved[0] if self.reserved else None)
        assert reservation is None or reservation.settled
        assert {name: getattr(record, name) for name in expected} == expected
        return record

    def forget(self) -> None:
        self.records.clear()
        self.reserved.clear()
        self.settled.clear()


@pytest.fixture
def fresh_limits():
    """Full buckets and no cached access records: on SQLite a new key may get an id an earlier
    test's key had."""
    clear_local_cache()
    limiter = limits.get_limiter()
    if isinstance(limiter, limits.LocalLimiter):
        limiter.reset()
    elif redis_enabled():  # only Tokios's limiter keys: the Redis server is shared
        client = get_sync_redis()
        for pattern in ("tokios:rl:*", "tokios:spend:*"):
            for name in client.scan_iter(match=pattern, count=1000):
                client.delete(name)
    yield
    clear_local_cache()


@pytest_asyncio.fixture
async def ledger(monkeypatch, fresh_limits):
    """Watches `metering.submit`, `limits.enforce` and `limits.settle` (they still run)."""
    ledger = Ledger()
    submit, enforce, settle = metering.submit, limits.enforce, limits.settle

    def watched_submit(record: UsageRecord) -> None:
        ledger.records.append(record)
        submit(record)  # the real one: it turns a request that never got a response into a 499

    async def watched_enforce(*args, **kwargs):
        reservation = await enforce(*args, **kwargs)
        ledger.reserved.append(reservation)
        return reservation

    def watched_settle(reservation, record: UsageRecord) -> None:
        ledger.settled.append((reservation, record))
        settle(reservation, record)

    monkeypatch.setattr(metering, "submit", watched_submit)
    monkeypatch.setattr(limits, "enforce", watched_enforce)
    monkeypatch.setattr(limits, "settle", watched_settle)
    yield ledger
    await metering.flush()
    limiter = limits.get_limiter()
    if isinstance(limiter, limits.RedisLimiter):
        await limiter.drain()
