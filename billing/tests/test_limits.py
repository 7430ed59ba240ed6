"""The limiters, in process and in Redis: buckets, reservations, settlement, budgets, seeding.

Admissions go through `acquire` of the limiter in use (what `limits.acquire`, and so `enforce`,
calls) and settlements through `settle_soon` (what `limits.settle` calls), then `drain`, which
sends what the Redis limiter still holds.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import replace

import pytest
import redis
from asgiref.sync import sync_to_async

from billing import limits
from billing.limits import Bucket, Budget, Reservation, plan, scripts, shared
from billing.metering import UsageRecord

from .conftest import DEPLOYMENT, key_record, make_event, utc

NOW_MS = 1_795_000_000_000  # a fixed instant (2026-11-18), so refill is exactly what a test adds


def rpm(limit: int, name: str = "k1") -> Bucket:
    return Bucket(f"tokios:rl:{{o1}}:{name}:rpm", "key", "requests", limit, 1)


def tpm(limit: int, cost: int, name: str = "k1") -> Bucket:
    return Bucket(f"tokios:rl:{{o1}}:{name}:tpm", "key", "tokens", limit, cost)


def budget(limit: int | None, cost: int, name: str = "k1", month: str = "2026-11") -> Budget:
    return Budget(f"tokios:spend:{{o1}}:{name}:{month}", "key", 1, 1, month, limit, cost)


@pytest.fixture(autouse=True)
def clock_at_now_ms(monkeypatch):
    """The wall clock stands at NOW_MS, so settlements sent on their own (stamped with the time they
    are sent) and admissions (stamped NOW_MS) see the same instant: no refill in between. Only
    time.time(): the event loop's clock (monotonic) keeps running."""
    monkeypatch.setattr(time, "time", lambda: NOW_MS / 1000)


async def settle(limiter, reservation: Reservation, tokens: int, cost: int) -> None:
    limiter.settle_soon(reservation, tokens, cost, NOW_MS)
    await limiter.drain()


# --- buckets --------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_exactly_the_limit_of_concurrent_requests_is_admitted(backend):
    decisions = await asyncio.gather(*(backend.acquire([rpm(20)], [], NOW_MS) for _ in range(50)))

    assert sum(d.status == "ok" for d in decisions) == 20
    assert {d.status for d in decisions} == {"ok", "limited"}


@pytest.mark.asyncio
async def test_a_bucket_refills_at_its_limit_per_minute(backend):
    for _ in range(20):
        assert (await backend.acquire([rpm(20)], [], NOW_MS)).status == "ok"
    refused = await backend.acquire([rpm(20)], [], NOW_MS + 2_999)

    admitted = await backend.acquire([rpm(20)], [], NOW_MS + 3_000)  # 20 per minute = one per 3 s

    assert refused.status == "limited"
    assert refused.retry_ms == 1
    assert admitted.status == "ok"
    assert (await backend.acquire([rpm(20)], [], NOW_MS + 3_000)).status == "limited"


@pytest.mark.asyncio
async def test_a_refused_request_takes_nothing_from_any_bucket(backend):
    await backend.acquire([rpm(5), tpm(100, 90)], [], NOW_MS)

    refused = await backend.acquire([rpm(5), tpm(100, 50)], [], NOW_MS)
    after = await backend.acquire([rpm(5), tpm(100, 10)], [], NOW_MS)

    assert refused.status == "limited" and refused.denied == 1
    assert refused.retry_ms == 24_000  # 40 tokens short at 100 per minute
    assert after.status == "ok"
    assert after.levels == [3.0, 0.0]


@pytest.mark.asyncio
async def test_settling_gives_back_the_unused_part_of_a_token_reservation(backend):
    bucket = tpm(2000, 1000)
    await backend.acquire([rpm(10), bucket], [], NOW_MS)

    await settle(backend, Reservation((rpm(10), bucket), ()), 300, 0)

    probe = await backend.acquire([tpm(2000, 1700)], [], NOW_MS)
    assert probe.status == "ok"
    assert probe.levels == [0.0]


@pytest.mark.asyncio
async def test_usage_beyond_the_reservation_is_taken_and_the_bucket_goes_below_zero(backend):
    bucket = tpm(1000, 500)
    await backend.acquire([bucket], [], NOW_MS)

    await settle(backend, Reservation((bucket,), ()), 1300, 0)

    refused = await backend.acquire([tpm(1000, 1)], [], NOW_MS)
    assert refused.status == "limited"
    assert refused.levels == [-300.0]
    assert refused.retry_ms == 18_060  # 301 tokens at 1000 per minute


@pytest.mark.asyncio
async def test_a_request_that_used_what_it_reserved_has_nothing_to_settle(backend):
    bucket, counter = tpm(1000, 400), budget(None, 90)
    await backend.acquire([bucket], [counter], NOW_MS, {counter.key: 0})

    backend.settle_soon(Reservation((bucket,), (counter,)), 400, 90, NOW_MS)

    if isinstance(backend, limits.RedisLimiter):
        assert not backend._waiting  # nothing to send
    probe = await backend.acquire([tpm(1000, 0)], [budget(None, 0)], NOW_MS)
    assert (probe.levels, probe.used) == ([600.0], [90])


@pytest.mark.asyncio
async def test_an_absurd_real_cost_is_bounded_so_the_counter_stays_an_exact_integer(backend):
    counter = budget(None, 100)
    await backend.acquire([], [counter], NOW_MS, {counter.key: 0})
    record = UsageRecord(request_id="req_absurd", surface="chat", input_tokens=5, output_tokens=5)
    record.cost_micros = 2**63 - 1  # what the usage table holds at most

    limits.settle(Reservation((), (counter,)), record)
    await backend.drain()

    assert await backend.spent(counter.key) == 2**53 - 1  # a Lua number's exact range


# --- the Redis limiter's runs -----------------------------------------------------------------------


@pytest.fixture
def redis_limiter(settings):
    settings.REDIS_URL = os.environ.get("REDIS_URL", "")
    limiter = limits.get_limiter()
    assert isinstance(limiter, limits.RedisLimiter)
    return limiter


@pytest.fixture
def script_runs(redis_limiter, monkeypatch):
    """The script runs the limiter sends: (keys, specs, admissions) per admission run, and the
    number of keys per settlement run sent on its own."""
    runs: dict[str, list] = {"acquire": [], "settle": []}
    call, send = scripts.AdmissionRun.call, shared._send

    def spy_call(run, settlements):
        keys, args = call(run, settlements)
        runs["acquire"].append((len(keys), len(run.specs), len(run.futures)))
        return keys, args

    def spy_send(pipe, script, keys, args):
        if script is scripts.SETTLE:
            runs["settle"].append(len(keys))
        return send(pipe, script, keys, args)

    monkeypatch.setattr(scripts.AdmissionRun, "call", spy_call)
    monkeypatch.setattr(shared, "_send", spy_send)
    return runs


@pytest.mark.redis
@pytest.mark.asyncio
async def test_a_waiting_settlement_rides_with_the_orgs_next_admission(redis_limiter, script_runs):
    bucket = tpm(2000, 1500)
    await redis_limiter.acquire([bucket], [], NOW_MS)

    redis_limiter.settle_soon(Reservation((bucket,), ()), 100, 0, NOW_MS)  # 1,400 tokens to give back
    probe = await redis_limiter.acquire([tpm(2000, 1800)], [], NOW_MS)
    await asyncio.sleep(shared.SETTLE_DELAY * 3)

    assert probe.status == "ok"  # 2000 - 1500 + 1400 = 1900 were there
    assert probe.levels == [100.0]
    assert [keys for keys, _, _ in script_runs["acquire"]] == [1, 2]  # the bucket rode along, twice named
    assert script_runs["settle"] == []  # and was not sent again on its own


@pytest.mark.redis
@pytest.mark.asyncio
async def test_a_settlement_with_no_admission_after_it_is_sent_on_its_own(redis_limiter, script_runs):
    bucket = tpm(2000, 1500)
    await redis_limiter.acquire([bucket], [], NOW_MS)

    redis_limiter.settle_soon(Reservation((bucket,), ()), 500, 0, NOW_MS)
    await asyncio.sleep(shared.SETTLE_DELAY * 10)

    assert script_runs["settle"] == [1]
    stored = redis.Redis.from_url(os.environ["REDIS_URL"]).get(bucket.key)
    assert stored.split() == [b"1500", str(NOW_MS).encode()]  # "<level> <stamp>": 500 left + 1,000 given back


@pytest.mark.redis
@pytest.mark.asyncio
async def test_a_settlement_is_sent_on_its_own_only_once_it_has_waited_the_whole_delay(redis_limiter, script_runs):
    bucket = tpm(2000, 500)
    await redis_limiter.acquire([bucket], [], NOW_MS)
    redis_limiter.settle_soon(Reservation((bucket,), ()), 100, 0, NOW_MS)
    await redis_limiter.acquire([tpm(2000, 0)], [], NOW_MS)  # takes that settlement along
    redis_limiter.settle_soon(Reservation((bucket,), ()), 200, 0, NOW_MS)  # a new one, just now

    redis_limiter._flush_settlements()  # the timer armed by the first settlement goes off

    assert script_runs["settle"] == []
    await asyncio.sleep(shared.SETTLE_DELAY * 10)
    assert script_runs["settle"] == [1]


@pytest.mark.redis
@pytest.mark.asyncio
async def test_a_settlement_riding_with_an_admission_that_asks_for_a_seed_is_applied_once(redis_limiter):
    bucket = tpm(2000, 1000)
    counter = budget(5_000, 10)
    await redis_limiter.acquire([bucket], [], NOW_MS)
    redis_limiter.settle_soon(Reservation((bucket,), ()), 400, 0, NOW_MS)  # 600 back

    asks = await redis_limiter.acquire([tpm(2000, 0)], [counter], NOW_MS)  # the counter is missing
    seeded = await redis_limiter.acquire([tpm(2000, 0)], [counter], NOW_MS, {counter.key: 0})

    assert asks.status == "seed"
    assert seeded.status == "ok"
    assert seeded.levels == [1600.0]  # 2000 - 1000 + 600, not + 1200


@pytest.mark.redis
@pytest.mark.asyncio
async def test_settlements_of_many_requests_are_summed_per_bucket_and_counter(redis_limiter, script_runs):
    bucket = tpm(10_000, 100)
    counter = budget(None, 50)
    await redis_limiter.acquire([], [counter], NOW_MS, {counter.key: 0})
    for _ in range(20):
        await redis_limiter.acquire([bucket], [counter], NOW_MS)
    for actual_tokens in range(20):
        redis_limiter.settle_soon(Reservation((bucket,), (counter,)), actual_tokens, 30, NOW_MS)

    await redis_limiter.drain()

    assert script_runs["settle"] == [2]  # one run: the bucket and the counter, once each
    assert await redis_limiter.spent(counter.key) == 20 * 30 + 50  # the seed admission's 50 stays reserved
    probe = await redis_limiter.acquire([tpm(10_000, 0)], [], NOW_MS)
    assert probe.levels == [10_000 - 20 * 100 + (20 * 100 - sum(range(20)))]


@pytest.mark.redis
@pytest.mark.asyncio
async def test_a_bucket_left_in_the_previous_hash_layout_counts_as_full_and_is_replaced(redis_limiter):
    """Rolling upgrade: buckets were hashes {v, t} before they became "<level> <stamp>" strings."""
    bucket = tpm(2000, 300)
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    client.hset(bucket.key, mapping={"v": 10, "t": NOW_MS})

    decision = await redis_limiter.acquire([bucket], [], NOW_MS)

    assert decision.status == "ok"
    assert decision.levels == [1700.0]
    assert client.type(bucket.key) == b"string"
    assert 0 < client.pttl(bucket.key) <= 60_000 * 300 // 2000 + 1000


@pytest.mark.redis
@pytest.mark.asyncio
async def test_an_admission_after_redis_forgot_the_scripts_loads_them_again(redis_limiter):
    first = await redis_limiter.acquire([rpm(10)], [], NOW_MS)  # connects and loads the scripts
    redis.Redis.from_url(os.environ["REDIS_URL"]).script_flush()

    second = await redis_limiter.acquire([rpm(10)], [], NOW_MS)

    assert (first.status, second.status) == ("ok", "ok")
    assert second.levels == [8.0]


@pytest.mark.redis
@pytest.mark.asyncio
async def test_a_settlement_after_redis_forgot_the_scripts_is_still_applied(redis_limiter, script_runs):
    bucket = tpm(2000, 1500)
    await redis_limiter.acquire([bucket], [], NOW_MS)
    redis.Redis.from_url(os.environ["REDIS_URL"]).script_flush()

    await settle(redis_limiter, Reservation((bucket,), ()), 500, 0)

    assert script_runs["settle"] == [1]
    assert (await redis_limiter.acquire([tpm(2000, 0)], [], NOW_MS)).levels == [1500.0]


@pytest.mark.redis
@pytest.mark.asyncio
async def test_admissions_of_one_org_in_the_same_loop_turn_share_one_script_run_in_order(redis_limiter, script_runs):
    await redis_limiter.acquire([rpm(30)], [], NOW_MS)  # connects: later runs take the live path
    script_runs["acquire"].clear()

    decisions = await asyncio.gather(*(redis_limiter.acquire([rpm(30)], [], NOW_MS) for _ in range(31)))

    assert script_runs["acquire"] == [(31, 31, 31)]  # no spec given: each admission brings its own
    assert [d.levels for d in decisions[:29]] == [[float(level)] for level in range(28, -1, -1)]
    assert [d.status for d in decisions[29:]] == ["limited", "limited"]


@pytest.mark.redis
@pytest.mark.asyncio
async def test_admissions_sharing_a_spec_send_it_once_and_are_still_decided_in_order(redis_limiter, script_runs):
    await redis_limiter.acquire([rpm(30)], [], NOW_MS)  # connects: later runs take the live path
    script_runs["acquire"].clear()
    k1 = ([rpm(30), tpm(1000, 100)], [budget(250, 20)])
    k2 = ([rpm(3, name="k2")], [])
    spec1, spec2 = limits.Spec(*k1), limits.Spec(*k2)
    seeds = {k1[1][0].key: 0}

    decisions = await asyncio.gather(
        *(
            redis_limiter.acquire(*k1, NOW_MS, seeds, spec1)
            if i % 2
            else redis_limiter.acquire(*k2, NOW_MS, None, spec2)
            for i in range(16)
        )
    )

    assert script_runs["acquire"] == [(4, 2, 16)]  # 3 + 1 keys, each spec once, 16 admissions
    k1_decisions, k2_decisions = decisions[1::2], decisions[0::2]
    assert [d.status for d in k1_decisions] == ["ok"] * 8
    assert [d.levels for d in k1_decisions] == [[28.0 - i, 900.0 - 100 * i] for i in range(8)]  # RPM: 1 went above
    assert [d.used for d in k1_decisions] == [[20 * (i + 1)] for i in range(8)]
    assert [d.status for d in k2_decisions] == ["ok"] * 3 + ["limited"] * 5


@pytest.mark.redis
def test_event_loops_in_two_threads_batch_their_own_admissions_and_together_stay_exact(redis_limiter):
    start = threading.Barrier(2)
    results: list[list[str]] = []

    async def burst():
        await redis_limiter.acquire([rpm(1000, name="warm")], [], NOW_MS)  # connect first
        start.wait()
        for _ in range(10):
            decisions = await asyncio.gather(*(redis_limiter.acquire([rpm(40)], [], NOW_MS) for _ in range(5)))
            results.append([d.status for d in decisions])

    threads = [threading.Thread(target=asyncio.run, args=(burst(),)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert not any(thread.is_alive() for thread in threads)
    statuses = [status for burst_ in results for status in burst_]
    assert len(statuses) == 100
    assert statuses.count("ok") == 40


@pytest.mark.redis
@pytest.mark.asyncio
async def test_each_org_gets_its_own_script_run_so_a_run_stays_in_one_cluster_slot(redis_limiter, script_runs):
    other_org = Bucket("tokios:rl:{o2}:k1:rpm", "key", "requests", 5, 1)
    await redis_limiter.acquire([rpm(5)], [], NOW_MS)
    script_runs["acquire"].clear()

    decisions = await asyncio.gather(
        *(redis_limiter.acquire([bucket], [], NOW_MS) for bucket in (rpm(5), other_org, rpm(5), other_org))
    )

    assert script_runs["acquire"] == [(2, 2, 2), (2, 2, 2)]
    assert [d.levels for d in decisions] == [[3.0], [4.0], [2.0], [3.0]]


@pytest.mark.redis
@pytest.mark.asyncio
async def test_an_admission_asking_for_a_seed_charges_nothing_and_leaves_the_rest_of_its_batch_alone(
    redis_limiter, script_runs
):
    counter = budget(1000, 10)
    await redis_limiter.acquire([rpm(10)], [], NOW_MS)
    script_runs["acquire"].clear()

    before, asks, after = await asyncio.gather(
        redis_limiter.acquire([rpm(10)], [], NOW_MS),
        redis_limiter.acquire([rpm(10)], [counter], NOW_MS),
        redis_limiter.acquire([rpm(10)], [], NOW_MS),
    )

    assert len(script_runs["acquire"]) == 1
    assert (before.status, before.levels) == ("ok", [8.0])
    assert (asks.status, asks.missing) == ("seed", [0])
    assert (after.status, after.levels) == ("ok", [7.0])
    assert await redis_limiter.spent(counter.key) is None


# --- budgets --------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_missing_spend_counter_asks_for_a_seed_and_charges_nothing(backend):
    decision = await backend.acquire([rpm(5)], [budget(1000, 10)], NOW_MS)

    assert decision.status == "seed"
    assert decision.missing == [0]
    assert (await backend.acquire([rpm(5)], [], NOW_MS)).levels == [4.0]


@pytest.mark.asyncio
async def test_a_request_that_could_cross_the_budget_is_refused(backend):
    first = await backend.acquire([], [budget(1000, 100)], NOW_MS, {budget(1000, 100).key: 850})

    refused = await backend.acquire([], [budget(1000, 100)], NOW_MS)
    exactly_to_the_cap = await backend.acquire([], [budget(1000, 50)], NOW_MS)

    assert first.status == "ok" and first.used == [950]
    assert refused.status == "over_budget"
    assert exactly_to_the_cap.status == "ok" and exactly_to_the_cap.used == [1000]


@pytest.mark.asyncio
async def test_concurrent_reservations_against_a_nearly_spent_budget_overspend_at_most_their_overruns(backend):
    limit, seed, reserve = 10_000, 9_000, 300
    await backend.acquire([], [budget(limit, 0)], NOW_MS, {budget(limit, 0).key: seed})

    decisions = await asyncio.gather(*(backend.acquire([], [budget(limit, reserve)], NOW_MS) for _ in range(60)))
    admitted = [d for d in decisions if d.status == "ok"]
    assert len(admitted) == 3  # 9000 + 3 x 300 = 9900; a fourth would reach 10200
    # Two finish within their reservation, one runs 120 over it.
    actual = [250, 300, 420]
    for cost in actual:
        backend.settle_soon(Reservation((), (budget(limit, reserve),)), 0, cost, NOW_MS)
    await backend.drain()

    spent = await backend.spent(budget(limit, 0).key)
    assert spent == seed + sum(actual)
    overspend = max(0, spent - limit)
    assert overspend <= sum(max(0, c - reserve) for c in actual)


@pytest.mark.asyncio
async def test_spend_is_tracked_for_keys_without_a_budget(backend):
    await backend.acquire([], [budget(None, 40)], NOW_MS, {budget(None, 40).key: 1_000_000})

    decision = await backend.acquire([], [budget(None, 40)], NOW_MS)

    assert decision.status == "ok"
    assert decision.used == [1_000_080]


@pytest.mark.asyncio
async def test_a_refused_request_does_not_reserve_budget(backend):
    await backend.acquire([rpm(1)], [budget(1000, 10)], NOW_MS, {budget(1000, 10).key: 0})

    refused = await backend.acquire([rpm(1)], [budget(1000, 10)], NOW_MS)

    assert refused.status == "limited"
    assert await backend.spent(budget(1000, 0).key) == 10


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("in_redis", [False, pytest.param(True, marks=pytest.mark.redis)])
async def test_counters_are_seeded_from_the_database_once_however_many_requests_wait(
    in_redis, settings, org, key, deployment, time_machine
):
    settings.REDIS_URL = os.environ.get("REDIS_URL", "") if in_redis else ""
    time_machine.move_to(utc(2026, 11, 18, 12), tick=False)
    await sync_to_async(make_event)(
        org=org, key=key, deployment=deployment, at=utc(2026, 11, 2), tokens_in=1_000_000, tokens_out=0
    )
    await sync_to_async(make_event)(  # last month: not this month's spend
        org=org, key=key, deployment=deployment, at=utc(2026, 10, 31, 23, 59), tokens_out=1_000_000
    )
    record = key_record(id=key.pk, org_id=org.pk, budget_micros=10_000_000)
    buckets, budgets, spec = plan(record, replace(DEPLOYMENT, id=deployment.pk), 100, utc(2026, 11, 18, 12).timestamp())
    before = limits.seed_queries

    decisions = await asyncio.gather(*(limits.acquire(buckets, budgets, NOW_MS, spec) for _ in range(20)))

    assert [d.status for d in decisions] == ["ok"] * 20
    assert limits.seed_queries - before == 2  # the key's counter and the org's, once each
    reserve = budgets[0].cost
    assert await limits.get_limiter().spent(budgets[0].key) == 150_000 + 20 * reserve
    assert await limits.get_limiter().spent(budgets[1].key) == 150_000 + 20 * reserve


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("in_redis", [False, pytest.param(True, marks=pytest.mark.redis)])
async def test_a_seed_that_fails_is_computed_again_by_the_next_request(in_redis, settings, org, key, monkeypatch):
    settings.REDIS_URL = os.environ.get("REDIS_URL", "") if in_redis else ""
    _, budgets, spec = plan(key_record(id=key.pk, org_id=org.pk), None, 0, utc(2026, 11, 18).timestamp())
    spent_in_db = limits._spent_in_db
    calls = []

    def down_once(budget: Budget) -> int:  # fails the key's first seed only
        calls.append(budget.key)
        if calls.count(budgets[0].key) == 1 and budget.key == budgets[0].key:
            raise ConnectionError("the database went away")
        return spent_in_db(budget)

    monkeypatch.setattr(limits, "_spent_in_db", down_once)

    with pytest.raises(ConnectionError):
        await limits.acquire([], budgets, NOW_MS, spec)
    decision = await limits.acquire([], budgets, NOW_MS, spec)

    assert decision.status == "ok"
    assert calls.count(budgets[0].key) == 2
