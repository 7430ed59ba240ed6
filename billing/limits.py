"""Rate limits (RPM/TPM per key and per org) and monthly budgets, enforced on the /v1 hot path.

Shape of the algorithm (the same in Redis and in process, so the embedded default behaves like
production):

- Each RPM/TPM limit is a token bucket holding up to `limit` units, refilled continuously at
  `limit` per minute. A request takes 1 from every RPM bucket and its estimated tokens (prompt
  estimate + max output, clamped to the bucket size so a large `max_tokens` is not a permanent
  429) from every TPM bucket. It is admitted only if *every* bucket and budget has room, and then
  all are charged together. Afterwards the TPM reservation is settled with the real usage: the
  unused part goes back, an overrun is taken (a bucket may go below zero and then refills).
- Spend is a counter per (key, month) and per (org, month) in micro-USD, holding settled spend
  plus in-flight reservations. A request reserves its worst-case cost (estimated tokens at the
  deployment's higher price) and is refused with `insufficient_quota` if that could cross the
  budget; settlement replaces the reservation by the real cost. So concurrent requests can
  overspend only by what their real usage exceeded their reservations. Counters are keyed by UTC
  month, so budgets reset without a job. A missing counter (first use this month, or Redis lost
  it) is seeded from the database once — rollups plus not-yet-rolled events — and the seed is
  shared by concurrent requests of this process. Spend is tracked for every key and org, budget
  or not, so that a budget set mid-month starts from the real figure.
- Redis mode: one EVALSHA per admission (all checks and charges atomic in one Lua script, so the
  limits are exact across any number of processes), one more to settle after the response. All
  keys of a request share the hash tag `{o<org id>}` so the script also runs on Redis Cluster.
  If Redis is unreachable the gateway fails open (admits, logs) rather than taking /v1 down.
- Neither path touches the database on a warm request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError
from redis.exceptions import RedisError

from deployments.models import micros_to_usd
from tokios_site.redis import get_sync_redis, redis_enabled
from tokios_site.redis_pipe import RedisPipe, ReplyError, Script, get_pipe

from .periods import month_label, next_month_start

log = logging.getLogger("tokios.limits")

WINDOW_MS = 60_000  # RPM and TPM: per minute


# --- what is asked ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bucket:
    """One RPM or TPM limit, with what this request takes from it."""

    key: str
    scope: str  # "key" | "org"
    kind: str  # "requests" | "tokens"
    capacity: int
    cost: int


@dataclass(frozen=True, slots=True)
class Budget:
    """One month's spend counter (micro-USD), with an optional cap and what this request reserves."""

    key: str
    scope: str  # "key" | "org"
    org_id: int
    key_id: int | None
    month: str  # "2026-11"
    limit: int | None
    cost: int


@dataclass(slots=True)
class Decision:
    status: str  # "ok" | "limited" | "over_budget" | "seed"
    denied: int = -1  # index into buckets + budgets of the first refusal
    retry_ms: int = 0
    levels: list[float] = field(default_factory=list)  # units left per bucket (after charging, if ok)
    used: list[int] = field(default_factory=list)  # spend per budget (after charging, if ok)
    missing: list[int] = field(default_factory=list)  # budgets needing a seed


@dataclass(slots=True)
class Reservation:
    """What an admitted request took; given back or topped up once its real usage is known."""

    buckets: tuple[Bucket, ...]
    budgets: tuple[Budget, ...]
    settled: bool = False

    @property
    def tokens_reserved(self) -> dict[str, int]:
        return {b.key: b.cost for b in self.buckets if b.kind == "tokens"}


# --- the in-process limiter (embedded default) --------------------------------------------------


def _refill(level: float, last_ms: int, now_ms: int, capacity: int) -> float:
    if now_ms <= last_ms:
        return level
    return min(capacity, level + (now_ms - last_ms) * capacity / WINDOW_MS)


class LocalLimiter:
    """Exact within one process; a lock makes check-and-charge atomic against other threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, int]] = {}
        self._spend: dict[str, int] = {}

    def reset(self) -> None:
        with self._lock:
            self._buckets.clear()
            self._spend.clear()

    def _level(self, bucket: Bucket, now_ms: int) -> tuple[float, int]:
        state = self._buckets.get(bucket.key)
        if state is None:
            return float(bucket.capacity), now_ms
        level, last = state
        return _refill(level, last, now_ms, bucket.capacity), max(last, now_ms)

    async def acquire(
        self, buckets: list[Bucket], budgets: list[Budget], now_ms: int, seeds: dict[str, int] | None = None
    ) -> Decision:
        seeds = seeds or {}
        with self._lock:
            decision = Decision(status="ok")
            states = []
            for i, bucket in enumerate(buckets):
                level, stamp = self._level(bucket, now_ms)
                states.append((level, stamp))
                decision.levels.append(level)
                if decision.denied < 0 and level < bucket.cost:
                    decision.status, decision.denied = "limited", i
                    decision.retry_ms = math.ceil((bucket.cost - level) * WINDOW_MS / bucket.capacity)
            for j, budget in enumerate(budgets):
                used = self._spend.get(budget.key)
                if used is None:
                    used = seeds.get(budget.key)
                    if used is None:
                        decision.missing.append(j)
                        continue
                    self._spend[budget.key] = used
                decision.used.append(used)
                if decision.denied < 0 and budget.limit is not None and used + budget.cost > budget.limit:
                    decision.status, decision.denied = "over_budget", len(buckets) + j
            if decision.missing:
                return Decision(status="seed", missing=decision.missing)
            if decision.status == "ok":
                for i, bucket in enumerate(buckets):
                    level, stamp = states[i]
                    decision.levels[i] = level - bucket.cost
                    self._buckets[bucket.key] = (decision.levels[i], stamp)
                for j, budget in enumerate(budgets):
                    decision.used[j] += budget.cost
                    self._spend[budget.key] = decision.used[j]
                self._forget_old(now_ms)
            return decision

    def _forget_old(self, now_ms: int) -> None:
        # Bounded memory: full buckets carry no information; last month's spend is never read again.
        if len(self._buckets) > 50_000:
            self._buckets = {k: (v, t) for k, (v, t) in self._buckets.items() if now_ms - t < 2 * WINDOW_MS}
        if len(self._spend) > 50_000:
            current = month_label(datetime.fromtimestamp(now_ms / 1000, UTC))
            self._spend = {k: v for k, v in self._spend.items() if k.endswith(current)}

    def settle_now(self, reservation: Reservation, actual_tokens: int, actual_cost: int, now_ms: int) -> None:
        with self._lock:
            for bucket in reservation.buckets:
                if bucket.kind != "tokens":
                    continue
                level, stamp = self._level(bucket, now_ms)
                level = min(bucket.capacity, level + bucket.cost - actual_tokens)
                self._buckets[bucket.key] = (level, stamp)
            for budget in reservation.budgets:
                if budget.key in self._spend:
                    self._spend[budget.key] += actual_cost - budget.cost

    def settle_soon(self, reservation: Reservation, actual_tokens: int, actual_cost: int, now_ms: int) -> None:
        self.settle_now(reservation, actual_tokens, actual_cost, now_ms)

    async def settle(self, reservation: Reservation, actual_tokens: int, actual_cost: int, now_ms: int) -> None:
        self.settle_now(reservation, actual_tokens, actual_cost, now_ms)

    async def spent(self, budget_key: str) -> int | None:
        return self._spend.get(budget_key)


# --- the Redis limiter (production) -------------------------------------------------------------

# KEYS: nb bucket hashes, then ng spend counters.
# ARGV: now_ms, nb, ng, then (capacity, cost) per bucket, then (limit or -1, cost, seed or -1, ttl_s)
# per budget. Returns {status, denied, retry_ms, milli-levels..., used...} with status 0 ok,
# 1 limited, 2 over budget, or {-1, missing budget indexes...} when a counter needs a seed.
ACQUIRE_LUA = """
local now = tonumber(ARGV[1])
local nb = tonumber(ARGV[2])
local ng = tonumber(ARGV[3])
local window = 60000
local levels, stamps, used, missing = {}, {}, {}, {}
local status, denied, retry = 0, -1, 0
for i = 1, nb do
  local cap = tonumber(ARGV[2 + 2 * i])
  local cost = tonumber(ARGV[3 + 2 * i])
  local state = redis.call('HMGET', KEYS[i], 'v', 't')
  local v, t = tonumber(state[1]), tonumber(state[2])
  if v == nil or t == nil then
    v, t = cap, now
  elseif now > t then
    v = math.min(cap, v + (now - t) * cap / window)
    t = now
  end
  levels[i], stamps[i] = v, t
  if denied < 0 and v < cost then
    status, denied = 1, i - 1
    retry = math.ceil((cost - v) * window / cap)
  end
end
local base = 4 + 2 * nb
for j = 1, ng do
  local at = base + 4 * (j - 1)
  local limit, cost, seed = tonumber(ARGV[at]), tonumber(ARGV[at + 1]), ARGV[at + 2]
  local u = redis.call('GET', KEYS[nb + j])
  if not u then
    if seed == '-1' then
      missing[#missing + 1] = j - 1
    else
      redis.call('SET', KEYS[nb + j], seed, 'EX', ARGV[at + 3], 'NX')
      u = redis.call('GET', KEYS[nb + j])
    end
  end
  if u then
    used[j] = tonumber(u)
    if denied < 0 and limit >= 0 and used[j] + cost > limit then
      status, denied = 2, nb + j - 1
    end
  end
end
if #missing > 0 then
  local out = {-1}
  for _, j in ipairs(missing) do out[#out + 1] = j end
  return out
end
if status == 0 then
  for i = 1, nb do
    local cap = tonumber(ARGV[2 + 2 * i])
    levels[i] = levels[i] - tonumber(ARGV[3 + 2 * i])
    redis.call('HSET', KEYS[i], 'v', levels[i], 't', stamps[i])
    redis.call('PEXPIRE', KEYS[i], math.ceil((cap - levels[i]) * window / cap) + 1000)
  end
  for j = 1, ng do
    used[j] = redis.call('INCRBY', KEYS[nb + j], ARGV[base + 4 * (j - 1) + 1])
  end
end
local out = {status, denied, retry}
for i = 1, nb do out[#out + 1] = math.floor(levels[i] * 1000) end
for j = 1, ng do out[#out + 1] = used[j] end
return out
"""

# KEYS: nt token-bucket hashes, then ng spend counters.
# ARGV: now_ms, nt, ng, (capacity, tokens to give back — negative takes more) per bucket, then the
# cost correction (real minus reserved) per counter.
SETTLE_LUA = """
local now = tonumber(ARGV[1])
local nt = tonumber(ARGV[2])
local ng = tonumber(ARGV[3])
local window = 60000
for i = 1, nt do
  local cap = tonumber(ARGV[2 + 2 * i])
  local back = tonumber(ARGV[3 + 2 * i])
  local state = redis.call('HMGET', KEYS[i], 'v', 't')
  local v, t = tonumber(state[1]), tonumber(state[2])
  if v == nil or t == nil then
    v, t = cap, now
  elseif now > t then
    v = math.min(cap, v + (now - t) * cap / window)
    t = now
  end
  v = math.min(cap, v + back)
  redis.call('HSET', KEYS[i], 'v', v, 't', t)
  redis.call('PEXPIRE', KEYS[i], math.ceil((cap - v) * window / cap) + 1000)
end
local base = 4 + 2 * nt
for j = 1, ng do
  local delta = ARGV[base + j - 1]
  if delta ~= '0' and redis.call('EXISTS', KEYS[nt + j]) == 1 then
    redis.call('INCRBY', KEYS[nt + j], delta)
  end
end
return 1
"""


_acquire_script = Script(ACQUIRE_LUA)
_settle_script = Script(SETTLE_LUA)


def _pipe() -> RedisPipe:
    return get_pipe(settings.REDIS_URL, scripts=(_acquire_script, _settle_script))


def _budget_ttl(month: str) -> int:
    """Seconds a month's counter is kept: to the end of the month plus a day for late settlements."""
    return max(3600, int(_month_end(month) - time.time()) + 86_400)


@functools.cache
def _month_end(month: str) -> float:
    year, mon = (int(part) for part in month.split("-"))
    return next_month_start(datetime(year, mon, 1, tzinfo=UTC)).timestamp()


class RedisLimiter:
    """Both scripts go through `tokios_site.redis_pipe`: commands issued in the same loop turn
    share one write and one read, and a command costs a few µs of loop time instead of redis-py's
    ~150 µs. Each request still runs its own atomic script, so exactness is unchanged."""

    def __init__(self) -> None:
        self._pending: set[asyncio.Future] = set()

    async def acquire(
        self, buckets: list[Bucket], budgets: list[Budget], now_ms: int, seeds: dict[str, int] | None = None
    ) -> Decision:
        seeds = seeds or {}
        keys = [b.key for b in buckets] + [g.key for g in budgets]
        args: list = [now_ms, len(buckets), len(budgets)]
        for b in buckets:
            args += [b.capacity, b.cost]
        for g in budgets:
            args += [-1 if g.limit is None else g.limit, g.cost, seeds.get(g.key, -1), _budget_ttl(g.month)]
        reply = await _pipe().evalsha(_acquire_script, keys, args)
        if reply[0] == -1:
            return Decision(status="seed", missing=[int(j) for j in reply[1:]])
        status, denied, retry = (int(x) for x in reply[:3])
        rest = reply[3:]
        return Decision(
            status=("ok", "limited", "over_budget")[status],
            denied=denied,
            retry_ms=retry,
            levels=[int(x) / 1000 for x in rest[: len(buckets)]],
            used=[int(x) for x in rest[len(buckets) :]],
        )

    @staticmethod
    def _settle_args(reservation: Reservation, actual_tokens: int, actual_cost: int, now_ms: int):
        tokens = [b for b in reservation.buckets if b.kind == "tokens"]
        keys = [b.key for b in tokens] + [g.key for g in reservation.budgets]
        args: list = [now_ms, len(tokens), len(reservation.budgets)]
        for b in tokens:
            args += [b.capacity, b.cost - actual_tokens]
        args += [actual_cost - g.cost for g in reservation.budgets]
        return keys, args

    async def settle(self, reservation: Reservation, actual_tokens: int, actual_cost: int, now_ms: int) -> None:
        keys, args = self._settle_args(reservation, actual_tokens, actual_cost, now_ms)
        if keys:
            await _pipe().evalsha(_settle_script, keys, args)

    def settle_soon(self, reservation: Reservation, actual_tokens: int, actual_cost: int, now_ms: int) -> None:
        """Settle after the response, without a task: the command joins this loop turn's write."""
        keys, args = self._settle_args(reservation, actual_tokens, actual_cost, now_ms)
        if not keys:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            _run_sync(_settle_script, keys, args)
            return
        pipe = _pipe()
        if pipe.connected:
            future = pipe.send_nowait("EVALSHA", _settle_script.sha, len(keys), *keys, *args)
        else:
            future = loop.create_task(pipe.evalsha(_settle_script, keys, args))
        self._pending.add(future)
        future.add_done_callback(lambda done: self._settled(done, keys, args))

    def _settled(self, future: asyncio.Future, keys: list[str], args: list) -> None:
        self._pending.discard(future)
        exc = None if future.cancelled() else future.exception()
        if exc is None:
            return
        if isinstance(exc, ReplyError) and str(exc).startswith("NOSCRIPT"):  # Redis was flushed meanwhile
            retry = asyncio.ensure_future(_pipe().evalsha(_settle_script, keys, args))
            self._pending.add(retry)
            retry.add_done_callback(lambda done: self._settled(done, keys, args))
            return
        log.warning("could not settle a rate-limit reservation in Redis: %r", exc)

    async def drain(self) -> None:
        """Wait for settlements in flight (tests, shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def spent(self, budget_key: str) -> int | None:
        raw = await _pipe().execute("GET", budget_key)
        return None if raw is None else int(raw)


def _run_sync(script: Script, keys: list[str], args: list) -> list:
    from redis.exceptions import NoScriptError

    client = get_sync_redis()
    try:
        return client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        client.script_load(script.source)
        return client.evalsha(script.sha, len(keys), *keys, *args)


_limiters: dict[str, object] = {}


def get_limiter() -> LocalLimiter | RedisLimiter:
    """The limiter for the configured backend (looked up per call so tests can switch settings)."""
    name = settings.REDIS_URL if redis_enabled() else ""
    limiter = _limiters.get(name)
    if limiter is None:
        limiter = _limiters[name] = RedisLimiter() if name else LocalLimiter()
    return limiter


# --- seeding spend counters ---------------------------------------------------------------------

_seeding: dict[str, tuple[asyncio.Future, float]] = {}
SEED_REUSE_SECONDS = 60.0
seed_queries = 0  # how many seeds this process computed (tests assert it stays at one per counter)


def _spent_in_db(budget: Budget) -> int:
    from .queries import spent_this_month

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


async def acquire(buckets: list[Bucket], budgets: list[Budget], now_ms: int) -> Decision:
    """Check and charge, seeding missing spend counters from the database first if need be."""
    limiter = get_limiter()
    decision = await limiter.acquire(buckets, budgets, now_ms)
    if decision.status == "seed":
        values = await asyncio.gather(*(_seed(budgets[j]) for j in decision.missing))
        seeds = {budgets[j].key: value for j, value in zip(decision.missing, values, strict=True)}
        decision = await limiter.acquire(buckets, budgets, now_ms, seeds)
    return decision


# --- what a request asks for --------------------------------------------------------------------


def _tag(org_id: int) -> str:
    return f"{{o{org_id}}}"


def plan(key, deployment, estimated_tokens: int, now: float) -> tuple[list[Bucket], list[Budget]]:
    """The buckets and budgets a request by `key` (a KeyRecord) on `deployment` must pass."""
    tag = _tag(key.org_id)
    tokens = max(0, int(estimated_tokens))
    buckets: list[Bucket] = []
    for scope, owner, rpm, tpm in (
        ("key", f"k{key.id}", key.rpm_limit, key.tpm_limit),
        ("org", "org", key.org_rpm_limit, key.org_tpm_limit),
    ):
        if rpm is not None:
            buckets.append(Bucket(f"tokios:rl:{tag}:{owner}:rpm", scope, "requests", rpm, 1))
        if tpm is not None:
            buckets.append(Bucket(f"tokios:rl:{tag}:{owner}:tpm", scope, "tokens", tpm, min(tokens, tpm)))
    month = month_label(datetime.fromtimestamp(now, UTC))
    worst_price = max(deployment.price_input_micros, deployment.price_output_micros) if deployment else 0
    cost = -(-tokens * worst_price // 1_000_000)
    budgets = [
        Budget(f"tokios:spend:{tag}:k{key.id}:{month}", "key", key.org_id, key.id, month, key.budget_micros, cost),
        Budget(f"tokios:spend:{tag}:org:{month}", "org", key.org_id, None, month, key.org_budget_micros, cost),
    ]
    return buckets, budgets


# --- response headers ---------------------------------------------------------------------------


def go_duration(ms: int) -> str:
    """A duration as Go prints it (OpenAI's reset headers): `12ms`, `1s`, `1.5s`, `6m0s`, `1h0m0s`."""
    ms = max(0, int(ms))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = str(rest // 1000) if rest % 1000 == 0 else f"{rest / 1000:.3f}".rstrip("0")
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


def rfc3339(epoch_ms: int) -> str:
    seconds = math.ceil(epoch_ms / 1000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ms_to_full(bucket: Bucket, level: float) -> int:
    return max(0, math.ceil((bucket.capacity - level) * WINDOW_MS / bucket.capacity))


def rate_headers(buckets: list[Bucket], levels: list[float], now_ms: int, *, anthropic: bool = False) -> dict[str, str]:
    """`x-ratelimit-*` (and on /v1/messages `anthropic-ratelimit-*`) for the tightest key/org limit."""
    headers: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        candidates = [(max(0, math.floor(levels[i])), i) for i, b in enumerate(buckets) if b.kind == kind]
        if not candidates:
            continue
        remaining, i = min(candidates)
        bucket = buckets[i]
        reset = _ms_to_full(bucket, levels[i])
        headers[f"x-ratelimit-limit-{kind}"] = str(bucket.capacity)
        headers[f"x-ratelimit-remaining-{kind}"] = str(remaining)
        headers[f"x-ratelimit-reset-{kind}"] = go_duration(reset)
        if anthropic:
            headers[f"anthropic-ratelimit-{kind}-limit"] = str(bucket.capacity)
            headers[f"anthropic-ratelimit-{kind}-remaining"] = str(remaining)
            headers[f"anthropic-ratelimit-{kind}-reset"] = rfc3339(now_ms + reset)
    return headers


def _usd(micros: int) -> str:
    """`$4.99`, `$0.000150`: cents always, micro-dollars when there are any."""
    whole, frac = f"{micros_to_usd(micros):.6f}".split(".")
    return f"${whole}.{frac.rstrip('0').ljust(2, '0')}"


def _who(scope: str, key) -> str:
    return "this API key" if scope == "key" else f"organization {key.org_slug}"


def refusal(key, bucket_or_budget, decision: Decision, index: int, now_ms: int, *, anthropic: bool):
    """The 429 GatewayError for a refused request, in the caller's shape."""
    from proxy.errors import GatewayError

    if isinstance(bucket_or_budget, Bucket):
        bucket = bucket_or_budget
        wait = max(1, decision.retry_ms)
        unit = "requests per minute (RPM)" if bucket.kind == "requests" else "tokens per minute (TPM)"
        left = max(0, math.floor(decision.levels[index]))
        message = (
            f"Rate limit reached for {unit} on {_who(bucket.scope, key)}: limit {bucket.capacity}, "
            f"remaining {left}, requested {bucket.cost}. Please try again in {go_duration(wait)}."
        )
        return GatewayError(
            429,
            message,
            code="rate_limit_exceeded",
            error_type="rate_limit_error" if anthropic else bucket.kind,
            headers={"retry-after": str(math.ceil(wait / 1000)), "retry-after-ms": str(wait)},
        )
    budget = bucket_or_budget
    used = decision.used[index - len(decision.levels)]
    resets = next_month_start(datetime.fromtimestamp(now_ms / 1000, UTC))
    wait_s = max(1, math.ceil(resets.timestamp() - now_ms / 1000))
    whose = "This API key" if budget.scope == "key" else f"Organization {key.org_slug}"
    message = (
        f"{whose} has reached its monthly budget: {_usd(used)} of {_usd(budget.limit)} spent in "
        f"{budget.month} (UTC), and this request could cost up to {_usd(budget.cost)}. "
        f"The budget resets on {resets:%Y-%m-%d} 00:00 UTC; an admin can raise it."
    )
    return GatewayError(
        429,
        message,
        code="insufficient_quota",
        error_type="rate_limit_error" if anthropic else "insufficient_quota",
        headers={"retry-after": str(wait_s)},
    )


# --- the gateway hooks --------------------------------------------------------------------------

_failing_since = 0.0


async def enforce(ctx, estimated_tokens: int) -> None:
    """`proxy.gateway.limit_hook`: admit and reserve, or raise a 429. Sets rate-limit headers."""
    global _failing_since
    if ctx.reservation is not None or ctx.key is None:
        return
    now = time.time()
    now_ms = int(now * 1000)
    buckets, budgets = plan(ctx.key, ctx.deployment, estimated_tokens, now)
    for i, bucket in enumerate(buckets):
        if bucket.capacity <= 0:  # a limit of 0 means "blocked", not "unlimited"
            decision = Decision("limited", denied=i, retry_ms=WINDOW_MS, levels=[0.0] * len(buckets))
            raise refusal(ctx.key, bucket, decision, i, now_ms, anthropic=ctx.anthropic)
    try:
        decision = await acquire(buckets, budgets, now_ms)
    except (RedisError, ReplyError, DatabaseError, OSError, TimeoutError) as exc:
        # Failing open keeps /v1 up through a Redis outage; every request is still metered.
        if now - _failing_since > 10:
            log.error("rate limits and budgets are not enforced: the limiter failed (%r)", exc)
            _failing_since = now
        return
    ctx.headers.update(rate_headers(buckets, decision.levels, now_ms, anthropic=ctx.anthropic))
    if decision.status != "ok":
        items = [*buckets, *budgets]
        raise refusal(ctx.key, items[decision.denied], decision, decision.denied, now_ms, anthropic=ctx.anthropic)
    ctx.reservation = Reservation(tuple(buckets), tuple(budgets))


def settle(ctx) -> None:
    """`proxy.usage.on_finish` callback: replace the reservation by the request's real usage."""
    reservation = ctx.reservation
    if not isinstance(reservation, Reservation) or reservation.settled:
        return
    reservation.settled = True
    record = ctx.record
    try:
        get_limiter().settle_soon(
            reservation, record.input_tokens + record.output_tokens, record.cost_micros, int(time.time() * 1000)
        )
    except Exception:
        log.warning("could not settle a rate-limit reservation", exc_info=True)


def install() -> None:
    """Plug the limiter into the gateway (called from BillingConfig.ready)."""
    from proxy import gateway, usage

    gateway.limit_hook = enforce
    if settle not in usage._finishers:
        usage.on_finish(settle)
