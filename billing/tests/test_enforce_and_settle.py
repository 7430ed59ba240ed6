"""What the gateway calls: `limits.enforce` before the upstream, `limits.settle` once usage is known.

These drive billing alone, with access records built in memory: no gateway, no database (each key's
spend counters are seeded the way the database seed would, so admissions never ask for one).
"""

from __future__ import annotations

import time

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from billing import limits
from billing.limits import Bucket, LimitExceeded, Reservation, enforce, plan, settle
from billing.metering import UsageRecord

from .conftest import DEPLOYMENT, key_record

pytestmark = pytest.mark.asyncio


def record(**fields) -> UsageRecord:
    return UsageRecord(request_id="req_enforce", surface="chat", status_code=200, **fields)


async def warm(key, spent: int = 0):
    """The key, with its and its org's spend counters for this month set to `spent`, as the seed
    from the database leaves them on the key's first request."""
    _, budgets, _ = plan(key, DEPLOYMENT, 0, time.time())
    decision = await limits.get_limiter().acquire([], budgets, int(time.time() * 1000), {g.key: spent for g in budgets})
    assert decision.status == "ok"
    return key


async def test_an_admitted_request_gets_a_reservation_and_the_openai_rate_limit_headers(backend):
    headers: dict[str, str] = {}

    key = await warm(key_record(rpm_limit=3, tpm_limit=10_000))

    reservation = await enforce(key, DEPLOYMENT, 100, anthropic=False, headers=headers)

    assert isinstance(reservation, Reservation) and not reservation.settled
    assert reservation.tokens_reserved == {"tokios:rl:{o3}:k7:tpm": 100}
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "2"
    assert headers["x-ratelimit-remaining-tokens"] == "9900"
    assert not any(name.startswith("anthropic-") for name in headers)


async def test_a_request_over_the_rpm_limit_raises_limit_exceeded_in_the_openai_shape(backend):
    key = await warm(key_record(rpm_limit=1))
    await enforce(key, DEPLOYMENT, 10, anthropic=False, headers={})
    headers: dict[str, str] = {}

    with pytest.raises(LimitExceeded) as refused:
        await enforce(key, DEPLOYMENT, 10, anthropic=False, headers=headers)

    exc = refused.value
    assert (exc.status, exc.code, exc.error_type) == (429, "rate_limit_exceeded", "requests")
    assert "requests per minute (RPM) on this API key: limit 1, remaining 0" in exc.message
    assert str(exc) == exc.message
    assert set(exc.headers) == {"retry-after", "retry-after-ms"}
    assert 1 <= int(exc.headers["retry-after"]) <= 60
    assert 1 <= int(exc.headers["retry-after-ms"]) <= 60_000
    assert headers["x-ratelimit-remaining-requests"] == "0"  # written for the refusal too


async def test_a_request_over_the_tpm_limit_on_the_messages_surface_is_a_rate_limit_error(backend):
    key = await warm(key_record(org_tpm_limit=1000))
    await enforce(key, DEPLOYMENT, 900, anthropic=True, headers={})
    headers: dict[str, str] = {}

    with pytest.raises(LimitExceeded) as refused:
        await enforce(key, DEPLOYMENT, 500, anthropic=True, headers=headers)

    exc = refused.value
    assert (exc.status, exc.code, exc.error_type) == (429, "rate_limit_exceeded", "rate_limit_error")
    assert "tokens per minute (TPM) on organization acme" in exc.message
    assert headers["anthropic-ratelimit-tokens-limit"] == "1000"
    assert headers["anthropic-ratelimit-tokens-reset"].endswith("Z")
    assert headers["x-ratelimit-limit-tokens"] == "1000"


@pytest.mark.parametrize("anthropic, error_type", [(False, "insufficient_quota"), (True, "rate_limit_error")])
async def test_a_request_that_could_cross_the_budget_raises_insufficient_quota_in_either_shape(
    backend, anthropic, error_type
):
    key = await warm(key_record(budget_micros=5_000_000), spent=4_999_500)
    headers: dict[str, str] = {}

    with pytest.raises(LimitExceeded) as refused:
        await enforce(key, DEPLOYMENT, 1000, anthropic=anthropic, headers=headers)  # up to $0.0006

    exc = refused.value
    assert (exc.status, exc.code, exc.error_type) == (429, "insufficient_quota", error_type)
    assert "This API key has reached its monthly budget: $4.9995 of $5.00 spent" in exc.message
    assert list(exc.headers) == ["retry-after"]
    assert 1 <= int(exc.headers["retry-after"]) <= 31 * 86_400


async def test_a_limit_of_zero_blocks_the_key(backend):
    with pytest.raises(LimitExceeded) as refused:
        await enforce(key_record(rpm_limit=0), DEPLOYMENT, 10, anthropic=False, headers={})

    assert refused.value.code == "rate_limit_exceeded"
    assert refused.value.headers["retry-after"] == "60"


async def test_with_limits_turned_off_nothing_is_checked_reserved_or_reported(backend, settings):
    settings.LIMITS_ENABLED = False
    headers: dict[str, str] = {}

    reservation = await enforce(key_record(rpm_limit=0), DEPLOYMENT, 10, anthropic=False, headers=headers)

    assert reservation is None
    assert headers == {}


async def test_when_the_limiter_fails_the_request_is_admitted_without_a_reservation(backend, monkeypatch):
    async def unreachable(*args, **kwargs):
        raise RedisConnectionError("connection refused")

    monkeypatch.setattr(backend, "acquire", unreachable)
    headers: dict[str, str] = {}

    reservation = await enforce(key_record(rpm_limit=1), DEPLOYMENT, 10, anthropic=False, headers=headers)

    assert reservation is None
    assert headers == {}


async def test_settling_no_reservation_does_nothing(backend, monkeypatch):
    calls = []
    monkeypatch.setattr(backend, "settle_soon", lambda *args: calls.append(args))

    settle(None, record(input_tokens=10, output_tokens=20, cost_micros=30))

    assert calls == []


async def tokens_left(key) -> float:
    """The key's TPM bucket level now, read with an admission that takes nothing from it."""
    (bucket,), _, _ = plan(key, DEPLOYMENT, 0, time.time())
    probe = Bucket(bucket.key, bucket.scope, bucket.kind, bucket.capacity, 0)
    decision = await limits.get_limiter().acquire([probe], [], int(time.time() * 1000))
    return decision.levels[0]


async def test_settling_gives_back_what_the_record_did_not_use_once_however_often_it_is_called(backend):
    key = await warm(key_record(tpm_limit=100_000))
    reservation = await enforce(key, DEPLOYMENT, 50_000, anthropic=False, headers={})
    used = record(input_tokens=30_000, output_tokens=10_000, cost_micros=9)

    settle(reservation, used)
    settle(reservation, used)

    assert reservation.settled
    # 50,000 left after the admission, 10,000 given back once (twice would make 70,000); the bucket
    # refills ~1,667 tokens a second meanwhile, so the bound leaves a slow machine 3 s.
    assert 60_000 <= await tokens_left(key) < 65_000


async def test_settling_charges_a_reservation_with_the_records_real_cost(backend):
    key = await warm(key_record(budget_micros=10_000_000), spent=1_000)
    reservation = await enforce(key, DEPLOYMENT, 1000, anthropic=False, headers={})  # reserves 600

    settle(reservation, record(input_tokens=400, output_tokens=100, cost_micros=120))

    if isinstance(backend, limits.RedisLimiter):
        await backend.drain()
    assert await backend.spent(reservation.budgets[0].key) == 1_120
    assert await backend.spent(reservation.budgets[1].key) == 1_120
