"""Rate limits (RPM/TPM per key and per org) and monthly budgets, enforced on the /v1 hot path.

Shape of the algorithm (the same in Redis and in process, so the embedded default behaves like
production):

- Each RPM/TPM limit is a token bucket holding up to `limit` units, refilled continuously at
  `limit` per minute. A request takes 1 from every RPM bucket and its estimated tokens from every
  TPM bucket. It is admitted only if *every* bucket and budget has room, and then all are charged
  together. Afterwards the TPM reservation is settled with the real usage: the unused part goes
  back, an overrun is taken (a bucket may go below zero and then refills).
- Spend is a counter per (key, month) and per (org, month) in micro-USD, holding settled spend
  plus in-flight reservations. A request reserves its worst-case cost and is refused with
  `insufficient_quota` if that could cross the budget; settlement replaces the reservation by the
  real cost. So concurrent requests can overspend only by what their real usage exceeded their
  reservations. Counters are keyed by UTC month, so budgets reset without a job. A missing counter
  (first use this month, or Redis lost it) is seeded from the database once — rollups plus
  not-yet-rolled events — and the seed is shared by concurrent requests of this process. Spend is
  tracked for every key and org, budget or not, so that a budget set mid-month starts from the
  real figure.
- Redis mode: all checks and charges of an admission run in one Lua script (atomic, so the limits
  are exact across any number of processes); the admissions of one org started in the same loop
  turn share one run, and settlements ride along with the org's next run. All keys of a request
  share the hash tag `{o<org id>}` so the script also runs on Redis Cluster. If Redis is
  unreachable the gateway fails open (admits, logs) rather than taking /v1 down.
- Neither path touches the database on a warm request.

The package: `plan` (what a request must pass), `local` (the in-process limiter), `shared` (the
Redis limiter), `scripts` (the Lua scripts in `lua/` and their arguments), `headers` and
`refusals` (what the caller is told), `core` (the types they share). This module chooses the
limiter, seeds spend counters, and holds what the gateway calls: `enforce` before the upstream is
called (it returns the request's Reservation, or raises LimitExceeded), and `settle` once the
request's usage record is final, just before it is submitted to `billing.metering`. billing never
imports the gateway: the key and deployment it is handed are anything with the attributes of
`KeyLimits` and `DeploymentPrices`, and a refusal is billing's own LimitExceeded, which the gateway
renders in the caller's shape.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.signals import setting_changed
from django.db import DatabaseError
from django.dispatch import receiver
from redis.exceptions import RedisError

from lib.redis import report_outage
from lib.redis_pipe import ReplyError

from ..metering import UsageRecord
from ..queries import spent_this_month
from .core import (
    MAX_MICROS,
    WINDOW_MS,
    Bucket,
    Budget,
    Decision,
    DeploymentPrices,
    KeyLimits,
    Reservation,
)
from .headers import go_duration, rate_headers, rfc3339
from .local import LocalLimiter
from .plan import plan
from .refusals import LimitExceeded, blocked, refusal
from .scripts import Spec
from .shared import SETTLE_DELAY, RedisLimiter

__all__ = [
    "SETTLE_DELAY",
    "WINDOW_MS",
    "Bucket",
    "Budget",
    "Decision",
    "DeploymentPrices",
    "KeyLimits",
    "LimitExceeded",
    "LocalLimiter",
    "RedisLimiter",
    "Reservation",
    "Spec",
    "acquire",
    "enforce",
    "get_limiter",
    "go_duration",
    "plan",
    "rate_headers",
    "refusal",
    "rfc3339",
    "settle",
]

log = logging.getLogger("tokios.limits")


# --- the limiter ----------------------------------------------------------------------------------

_limiters: dict[str, LocalLimiter | RedisLimiter] = {}
_current: LocalLimiter | RedisLimiter | None = None  # for settings.REDIS_URL; reset when it changes


def get_limiter() -> LocalLimiter | RedisLimiter:
    """The limiter for the configured backend. Kept between calls (reading a setting costs more than
    the rest of this) and looked up again when tests change REDIS_URL."""
    global _current
    limiter = _current
    if limiter is None:
        name = settings.REDIS_URL or ""
        limiter = _limiters.get(name)
        if limiter is None:
            limiter = _limiters[name] = RedisLimiter(name) if name else LocalLimiter()
        _current = limiter
    return limiter


@receiver(setting_changed)
def _forget_limiter(setting: str, **kwargs) -> None:
    global _current
    if setting == "REDIS_URL":
        _current = None


# --- seeding spend counters -----------------------------------------------------------------------

_seeding: dict[str, tuple[asyncio.Future, float]] = {}
SEED_REUSE_SECONDS = 60.0
seed_queries = 0  # how many seeds this process computed (tests assert it stays at one per counter)


def _spent_in_db(budget: Budget) -> int:
    year, month = (int(part) for part in budget.month.split("-"))
    moment = datetime(year, month, 1, tzinfo=UTC)
    return spent_this_month(org_id=budget.org_id, key_id=budget.key_id, now=moment)["cost_micros"]


async def _seed(budget: Budget) -> int:
    """The month's spend from the database, computed once however many requests are waiting for it.

    Replies asking for a seed can arrive just after a seed was computed (the first request's
    seeding round trip was still in flight), so a seed is reused for a minute; the script only
    applies it if the counter is still missing, so reuse cannot overwrite newer spend.
    """
    global seed_queries
    loop = asyncio.get_running_loop()
    entry = _seeding.get(budget.key)
    if entry is not None:
        future, started = entry
        fresh = time.monotonic() - started < SEED_REUSE_SECONDS
        if future.get_loop() is loop and fresh and not (future.done() and future.exception()):
            return await asyncio.shield(future)
    future = loop.create_future()
    _seeding[budget.key] = (future, time.monotonic())
    if len(_seeding) > 10_000:
        _seeding.clear()
        _seeding[budget.key] = (future, time.monotonic())
    try:
        seed_queries += 1
        value = await sync_to_async(_spent_in_db)(budget)
    except BaseException as exc:
        _seeding.pop(budget.key, None)
        future.set_exception(exc)
        future.exception()  # retrieved: waiters re-raise it, nobody else must be warned
        raise
    future.set_result(value)
    return value


async def acquire(buckets: list[Bucket], budgets: list[Budget], now_ms: int, spec: Spec | None = None) -> Decision:
    """Check and charge, seeding missing spend counters from the database first if need be."""
    limiter = get_limiter()
    decision = await limiter.acquire(buckets, budgets, now_ms, None, spec)
    if decision.status == "seed":
        missing = decision.missing
        values = await asyncio.gather(*(_seed(budgets[j]) for j in missing))
        seeds = {budgets[j].key: value for j, value in zip(missing, values, strict=True)}
        decision = await limiter.acquire(buckets, budgets, now_ms, seeds, spec)
    return decision


# --- what the gateway calls -----------------------------------------------------------------------


async def enforce(
    key: KeyLimits,
    deployment: DeploymentPrices | None,
    estimated_tokens: int,
    *,
    anthropic: bool,
    headers: dict[str, str],
) -> Reservation | None:
    """Admit and reserve a request by `key` on `deployment`, or raise LimitExceeded.

    Once the limiter has answered, writes the rate-limit headers (`x-ratelimit-*`, and also
    `anthropic-ratelimit-*` if `anthropic`: /v1/messages) into `headers`, so a refused request carries
    them as well as an admitted one. Returns the reservation to hand to `settle` whatever becomes of
    the request, or None when limits are off (settings.LIMITS_ENABLED) or the limiter failed open.
    Each call reserves anew: call it once per request."""
    if not settings.LIMITS_ENABLED:
        return None
    now = time.time()
    now_ms = int(now * 1000)
    buckets, budgets, spec = plan(key, deployment, estimated_tokens, now)
    for i, bucket in enumerate(buckets):
        if bucket.capacity <= 0:  # a limit of 0 means "blocked", not "unlimited"
            raise blocked(key, buckets, i, now_ms, anthropic=anthropic)
    try:
        decision = await acquire(buckets, budgets, now_ms, spec)
    except (RedisError, ReplyError, DatabaseError, OSError, TimeoutError) as exc:
        # Failing open keeps /v1 up through a Redis outage; every request is still metered.
        report_outage(log, "rate limits and budgets are not enforced: the limiter failed", exc)
        return None
    rate_headers(buckets, decision.levels, now_ms, anthropic=anthropic, into=headers)
    if decision.status != "ok":
        denied = decision.denied
        item = buckets[denied] if denied < len(buckets) else budgets[denied - len(buckets)]
        raise refusal(key, item, decision, denied, now_ms, anthropic=anthropic)
    return Reservation(buckets, budgets, spec.tag)


def settle(reservation: Reservation | None, record: UsageRecord) -> None:
    """Replace the reservation by the request's real usage (`record`, final). Nothing to do for None
    (limits off, failed open, or refused before admission) or a reservation already settled, so a
    second call changes nothing. Never raises: the request is over, its usage must still be written."""
    if reservation is None or reservation.settled:
        return
    reservation.settled = True
    # The gateway bounds the record's figures (tokens to 2**31 - 1 each, cost to 0..2**63 - 1); a
    # spend counter holds less, see MAX_MICROS.
    cost = min(record.cost_micros, MAX_MICROS)
    try:
        get_limiter().settle_soon(
            reservation, record.input_tokens + record.output_tokens, cost, int(time.time() * 1000)
        )
    except Exception:
        log.warning("could not settle a rate-limit reservation", exc_info=True)
