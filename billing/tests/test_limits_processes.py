"""Limits are exact across OS processes sharing one Redis (the HTTP-level version is in tests/e2e)."""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest

NOW_MS = 1_795_000_000_000
PROCESSES = 2
PER_PROCESS = 40


def _hammer(start_at: float, kind: str) -> list[str]:
    """In a fresh process: wait for the common start instant, then fire PER_PROCESS concurrent requests."""
    import asyncio

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokios_site.settings")
    django.setup()
    from billing.limits import Bucket, Budget, get_limiter

    limiter = get_limiter()
    if kind == "rpm":
        buckets, budgets = [Bucket("tokios:rl:{o900}:k1:rpm", "key", "requests", 25, 1)], []
    else:
        buckets, budgets = [], [Budget("tokios:spend:{o900}:k1:2026-11", "key", 900, 1, "2026-11", 10_000, 300)]

    async def run() -> list[str]:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        decisions = await asyncio.gather(*(limiter.acquire(buckets, budgets, NOW_MS) for _ in range(PER_PROCESS)))
        return [d.status for d in decisions]

    return asyncio.run(run())


def _run_in_processes(kind: str) -> list[str]:
    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 2.0  # both processes are set up by then, so their requests interleave
    with ctx.Pool(PROCESSES) as pool:
        results = pool.starmap(_hammer, [(start_at, kind)] * PROCESSES, chunksize=1)
    assert len(results) == PROCESSES
    return [status for statuses in results for status in statuses]


@pytest.mark.redis
def test_two_processes_sharing_redis_admit_exactly_the_rpm_limit():
    statuses = _run_in_processes("rpm")

    assert len(statuses) == PROCESSES * PER_PROCESS
    assert statuses.count("ok") == 25
    assert statuses.count("limited") == PROCESSES * PER_PROCESS - 25


@pytest.mark.redis
def test_two_processes_sharing_redis_cannot_reserve_past_a_budget(settings):
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.set("tokios:spend:{o900}:k1:2026-11", 9_000, ex=600)

    statuses = _run_in_processes("budget")

    assert statuses.count("ok") == 3  # 9000 + 3 x 300 = 9900 <= 10000 < 10200
    assert int(client.get("tokios:spend:{o900}:k1:2026-11")) == 9_900
    client.close()
