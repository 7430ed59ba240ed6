"""Billing fixtures: an org with two deployments and two keys, an outsider org, an event factory, the
limiter backends, and the access records the gateway hands to the limiter.

Redis-backed tests use the database number in REDIS_URL and delete only Tokios's own limiter,
spend and access-cache keys there, never FLUSHALL (the Redis server is shared).
"""

from __future__ import annotations

import itertools
import os
from datetime import UTC, datetime
from typing import Any

import pytest
from django.conf import settings

from accounts.actions import create_api_key, create_org
from billing import limits, metering
from billing.models import UsageEvent
from deployments.actions import create_deployment
from proxy.access import DeploymentRecord, KeyRecord, clear_local_cache

OUR_REDIS_PATTERNS = ("tokios:rl:*", "tokios:spend:*", "tokios:access:*")
_request_ids = itertools.count(1)


def clear_our_redis_keys() -> None:
    if not settings.REDIS_URL:
        return
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        for pattern in OUR_REDIS_PATTERNS:
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(autouse=True)
def fresh_limiter_state():
    """Each test starts with full buckets, no spend counters, no cached access records, and no usage
    records queued by an earlier test (their writer task died with that test's event loop)."""
    metering._queue.clear()
    metering._writing.clear()
    clear_our_redis_keys()
    for limiter in limits._limiters.values():
        if isinstance(limiter, limits.LocalLimiter):
            limiter.reset()
    limits._seeding.clear()
    clear_local_cache()
    yield
    metering._queue.clear()
    metering._writing.clear()
    clear_our_redis_keys()


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request, settings):
    """Run a test against the in-process limiter and against Redis."""
    settings.REDIS_URL = os.environ.get("REDIS_URL", "") if request.param == "redis" else ""
    limiter = limits.get_limiter()
    assert isinstance(limiter, limits.RedisLimiter if request.param == "redis" else limits.LocalLimiter)
    return limiter


def key_record(**limits_) -> KeyRecord:
    """A key's access record as the gateway has it (no database needed), with the limits given."""
    fields: dict[str, Any] = dict(
        id=7,
        org_id=3,
        org_slug="acme",
        key_hash="x" * 64,
        prefix="sk-tokios-abc",
        revoked=False,
        expires_at=None,
        all_models=True,
        allowed=(),
        rpm_limit=None,
        tpm_limit=None,
        budget_micros=None,
        org_rpm_limit=None,
        org_tpm_limit=None,
        org_budget_micros=None,
    )
    fields.update(limits_)
    return KeyRecord(**fields)


DEPLOYMENT = DeploymentRecord(
    id=5,
    name="gemma-small",
    org_id=3,
    upstream_model="",
    price_input_micros=150_000,
    price_output_micros=600_000,
    created_at=0.0,
    granted_orgs=(),
)


@pytest.fixture
def org(db):
    return create_org(slug="acme", name="Acme")


@pytest.fixture
def outsider_org(db):
    return create_org(slug="outsider", name="Outsider")


@pytest.fixture
def deployment(org):
    # $0.15 / MTok in, $0.60 / MTok out.
    return create_deployment(org=org, name="gemma-small", price_input_micros=150_000, price_output_micros=600_000)


@pytest.fixture
def deployment_b(org):
    return create_deployment(org=org, name="llama-big", price_input_micros=2_000_000, price_output_micros=8_000_000)


@pytest.fixture
def key(org):
    return create_api_key(org=org, name="ci")[0]


@pytest.fixture
def key_b(org):
    return create_api_key(org=org, name="laptop")[0]


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def make_event(*, org, key=None, deployment=None, at=None, status=200, tokens_in=10, tokens_out=20, **extra):
    """One UsageEvent as the gateway writes it, priced from the deployment."""
    cost = deployment.cost_micros(tokens_in, tokens_out) if deployment is not None else 0
    return UsageEvent.objects.create(
        request_id=f"req_test{next(_request_ids):016d}",
        created_at=at or datetime.now(UTC),
        org=org,
        api_key=key,
        deployment=deployment,
        surface=extra.pop("surface", "chat"),
        status_code=status,
        input_tokens=tokens_in,
        output_tokens=tokens_out,
        cost_micros=cost,
        **extra,
    )
