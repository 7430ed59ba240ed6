"""Limits and budgets as a /v1 client sees them: statuses, bodies, headers, query budget.

Requests go through the real /v1 ASGI app (proxy.handler.GatewayHandler), in process. No connector
runs here, so an admitted request ends in 503 ("Connector offline") — after the limits were applied,
which is what these tests look at. Usage through a real tunnel is in tests/e2e.
"""

from __future__ import annotations

import asyncio
import socket
import time

import orjson
import pytest
from asgiref.sync import sync_to_async
from django.db.backends import utils as db_utils

from accounts.actions import create_api_key
from billing import limits, metering
from billing.models import UsageEvent
from proxy.access import authenticate_key
from tests.v1_client import Response, call_v1

from .conftest import make_event, utc

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


def chat(model: str, max_tokens: int = 50) -> dict:
    return {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hello there"}]}


async def post(path: str, secret: str, body: dict, **headers: str) -> Response:
    """One request through the /v1 app; returns once the request is over (its usage is queued)."""
    return await call_v1("POST", path, body, authorization=f"Bearer {secret}", **headers)


async def new_key(org, **fields):
    return await sync_to_async(create_api_key)(org=org, name="limited", **fields)


async def settle_everything():
    limiter = limits.get_limiter()
    if isinstance(limiter, limits.RedisLimiter):
        await limiter.drain()
    await metering.flush()


async def test_an_admitted_request_carries_the_openai_rate_limit_headers(org, deployment):
    _, secret = await new_key(org, rpm_limit=3, tpm_limit=10_000)

    response = await post("/v1/chat/completions", secret, chat(deployment.name, max_tokens=100))

    assert response.status_code == 503
    assert response["x-ratelimit-limit-requests"] == "3"
    assert response["x-ratelimit-remaining-requests"] == "2"
    assert response["x-ratelimit-reset-requests"] == "20s"
    assert response["x-ratelimit-limit-tokens"] == "10000"
    assert int(response["x-ratelimit-remaining-tokens"]) < 10_000 - 100
    assert response["x-ratelimit-reset-tokens"].endswith(("ms", "s"))
    assert "anthropic-ratelimit-requests-limit" not in response


async def test_a_key_over_its_requests_per_minute_gets_a_429_in_the_openai_shape(org, deployment):
    _, secret = await new_key(org, rpm_limit=2)
    for _ in range(2):
        assert (await post("/v1/chat/completions", secret, chat(deployment.name))).status_code == 503

    response = await post("/v1/chat/completions", secret, chat(deployment.name))

    assert response.status_code == 429
    error = orjson.loads(response.content)["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert "requests per minute" in error["message"]
    assert 1 <= int(response["retry-after"]) <= 30
    assert response["x-ratelimit-remaining-requests"] == "0"
    assert response["x-request-id"]


async def test_a_key_over_its_tokens_per_minute_gets_a_429_of_type_tokens(org, deployment):
    _, secret = await new_key(org, tpm_limit=1000)
    assert (await post("/v1/chat/completions", secret, chat(deployment.name, max_tokens=600))).status_code == 503
    # The 503 used no tokens: its reservation was given back, so this one fits too.
    assert (await post("/v1/chat/completions", secret, chat(deployment.name, max_tokens=600))).status_code == 503
    await settle_everything()
    limiter = limits.get_limiter()
    bucket = [b for b in limits.plan((await _record(secret)), None, 0, 0)[0] if b.kind == "tokens"][0]
    await limiter.acquire([limits.Bucket(bucket.key, "key", "tokens", 1000, 900)], [], _now_ms())

    response = await post("/v1/chat/completions", secret, chat(deployment.name, max_tokens=600))

    assert response.status_code == 429
    error = orjson.loads(response.content)["error"]
    assert (error["type"], error["code"]) == ("tokens", "rate_limit_exceeded")
    assert "tokens per minute" in error["message"]


async def test_an_org_limit_applies_to_all_of_its_keys_together(org, deployment):
    org.rpm_limit = 2
    await sync_to_async(org.save)()
    _, first = await new_key(org)
    _, second = await new_key(org)

    statuses = [
        (await post("/v1/chat/completions", s, chat(deployment.name))).status_code for s in (first, second, first)
    ]

    assert statuses == [503, 503, 429]


async def test_a_key_whose_budget_is_spent_gets_insufficient_quota(org, deployment, time_machine):
    time_machine.move_to(utc(2026, 11, 18, 12), tick=True)
    key, secret = await new_key(org, monthly_budget_micros=1_000)
    # 1,000 micro-USD already spent this month, through this key.
    await sync_to_async(make_event)(org=org, key=key, deployment=deployment, tokens_in=0, tokens_out=1_666)

    response = await post("/v1/chat/completions", secret, chat(deployment.name))

    assert response.status_code == 429
    error = orjson.loads(response.content)["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
    assert "This API key has reached its monthly budget" in error["message"]
    assert "$0.001" in error["message"]
    assert "2026-12-01" in error["message"]


async def test_an_org_whose_budget_is_spent_is_refused_on_every_key(org, deployment, time_machine):
    time_machine.move_to(utc(2026, 11, 18, 12), tick=True)
    org.monthly_budget_micros = 500
    await sync_to_async(org.save)()
    _, secret = await new_key(org)
    await sync_to_async(make_event)(org=org, deployment=deployment, tokens_in=0, tokens_out=1_000)

    response = await post("/v1/chat/completions", secret, chat(deployment.name))

    assert response.status_code == 429
    assert "Organization acme has reached its monthly budget" in orjson.loads(response.content)["error"]["message"]


async def test_budgets_reset_at_the_utc_month_boundary_without_a_job(org, deployment, time_machine):
    time_machine.move_to(utc(2026, 11, 30, 23, 59, 58), tick=False)
    key, secret = await new_key(org, monthly_budget_micros=1_000)
    await sync_to_async(make_event)(
        org=org, key=key, deployment=deployment, at=utc(2026, 11, 30, 12), tokens_in=0, tokens_out=1_666
    )
    assert (await post("/v1/chat/completions", secret, chat(deployment.name))).status_code == 429

    time_machine.move_to(utc(2026, 12, 1, 0, 0, 0), tick=False)
    response = await post("/v1/chat/completions", secret, chat(deployment.name))

    assert response.status_code == 503


async def test_the_messages_surface_gets_anthropic_headers_and_a_rate_limit_error(org, deployment):
    _, secret = await new_key(org, rpm_limit=1, tpm_limit=5_000)
    body = {"model": deployment.name, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    first = await post("/v1/messages", secret, body, **{"anthropic-version": "2023-06-01"})

    second = await post("/v1/messages", secret, body, **{"anthropic-version": "2023-06-01"})

    assert first.status_code == 503
    assert first["anthropic-ratelimit-requests-limit"] == "1"
    assert first["anthropic-ratelimit-requests-remaining"] == "0"
    assert first["anthropic-ratelimit-requests-reset"].endswith("Z")
    assert first["anthropic-ratelimit-tokens-limit"] == "5000"
    assert first["x-ratelimit-limit-requests"] == "1"
    assert second.status_code == 429
    data = orjson.loads(second.content)
    assert data["type"] == "error"
    assert data["error"]["type"] == "rate_limit_error"
    assert int(second["retry-after"]) >= 1


async def test_a_spent_budget_on_the_messages_surface_is_a_rate_limit_error_with_a_clear_message(
    org, deployment, time_machine
):
    time_machine.move_to(utc(2026, 11, 18, 12), tick=True)
    key, secret = await new_key(org, monthly_budget_micros=0)
    body = {"model": deployment.name, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}

    response = await post("/v1/messages", secret, body, **{"anthropic-version": "2023-06-01"})

    assert response.status_code == 429
    error = orjson.loads(response.content)["error"]
    assert error["type"] == "rate_limit_error"
    assert "monthly budget" in error["message"]


async def test_every_request_admitted_or_refused_is_recorded_once(org, deployment):
    key, secret = await new_key(org, rpm_limit=2)

    for _ in range(4):
        await post("/v1/chat/completions", secret, chat(deployment.name))
    await settle_everything()

    events = UsageEvent.objects.filter(api_key=key)
    statuses = await sync_to_async(lambda: sorted(events.values_list("status_code", flat=True)))()
    codes = await sync_to_async(lambda: sorted(events.values_list("error_code", flat=True)))()
    assert statuses == [429, 429, 503, 503]
    assert codes.count("rate_limit_exceeded") == 2


async def test_a_warm_request_makes_no_database_query_before_the_upstream(org, deployment, monkeypatch):
    _, secret = await new_key(org, rpm_limit=100, tpm_limit=100_000, monthly_budget_micros=10_000_000)
    seen: list[str] = []
    original = db_utils.CursorWrapper.execute

    def counting(self, sql, params=None):
        seen.append(sql)
        return original(self, sql, params)

    monkeypatch.setattr(db_utils.CursorWrapper, "execute", counting)  # every thread's queries
    assert (await post("/v1/chat/completions", secret, chat(deployment.name))).status_code == 503
    cold_queries = len(seen)  # key and deployment records, spend seeds
    await settle_everything()
    await asyncio.sleep(0.05)
    seen.clear()
    seeds_before = limits.seed_queries

    response = await post("/v1/chat/completions", secret, chat(deployment.name))
    warm = list(seen)
    monkeypatch.undo()

    assert cold_queries > 0
    assert response.status_code == 503
    assert response["x-ratelimit-remaining-requests"] == "98"
    assert warm == []
    assert limits.seed_queries == seeds_before


async def _record(secret: str):
    return await authenticate_key(secret)


def _now_ms() -> int:
    return int(time.time() * 1000)


async def test_with_redis_unreachable_requests_pass_unlimited_and_are_still_metered(org, deployment, settings):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # nothing listens here once the socket is closed
    settings.REDIS_URL = f"redis://127.0.0.1:{dead}/0"
    key, secret = await new_key(org, rpm_limit=1)

    responses = [await post("/v1/chat/completions", secret, chat(deployment.name)) for _ in range(3)]
    await metering.flush()

    # Admitted (503: no connector runs in these tests), neither refused by a limit nobody can
    # check nor failed because the shared caches are down.
    assert [r.status_code for r in responses] == [503, 503, 503]
    assert all("x-ratelimit-limit-requests" not in r for r in responses)
    count = await sync_to_async(UsageEvent.objects.filter(api_key=key).count)()
    assert count == 3
