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
- Redis mode: all checks and charges of an admission run in one Lua script (atomic, so the limits
  are exact across any number of processes); the admissions of one org started in the same loop
  turn share one run, and settlements ride along with the org's next run (see RedisLimiter), so
  steady traffic costs at most one script run per request. All
  keys of a request share the hash tag `{o<org id>}` so the script also runs on Redis Cluster.
  If Redis is unreachable the gateway fails open (admits, logs) rather than taking /v1 down.
- Neither path touches the database on a warm request.

The gateway calls this module explicitly: `enforce` before the upstream is called (it returns the
request's Reservation, or raises LimitExceeded), and `settle` once the request's usage record is
final, just before it is submitted to `billing.metering`. billing never imports the gateway: a
refusal is billing's own LimitExceeded, which the gateway renders in the caller's shape.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.signals import setting_changed
from django.db import DatabaseError
from django.dispatch import receiver
from redis.exceptions import NoScriptError, RedisError

from accounts.access import DeploymentRecord, KeyRecord
from lib.loops import for_this_loop
from lib.money import micros_to_usd
from lib.redis import get_sync_redis, report_outage
from lib.redis_pipe import RedisPipe, ReplyError, Script, get_pipe

from .metering import UsageRecord
from .periods import month_label, month_start, next_month_start
from .queries import spent_this_month

log = logging.getLogger("tokios.limits")

WINDOW_MS = 60_000  # RPM and TPM: per minute


# --- what is asked ------------------------------------------------------------------------------


# NamedTuples rather than frozen dataclasses: several are built per request, and a frozen
# dataclass costs ~1.5 µs to construct against ~0.3 µs for a NamedTuple.
class Bucket(NamedTuple):
    """One RPM or TPM limit, with what this request takes from it."""

    key: str
    scope: str  # "key" | "org"
    kind: str  # "requests" | "tokens"
    capacity: int
    cost: int


class Budget(NamedTuple):
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

    buckets: Sequence[Bucket]
    budgets: Sequence[Budget]
    tag: str = ""  # the org's hash tag, if the caller knows it
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
        self,
        buckets: list[Bucket],
        budgets: list[Budget],
        now_ms: int,
        seeds: dict[str, int] | None = None,
        spec: Spec | None = None,  # the Redis limiter's; nothing to prepare here
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

# Shared by both scripts. Every key the run touches is read with one MGET up front and written
# once at the end, so a request whose settlements ride along costs 1 + (buckets) + (counters)
# redis.call()s however many of its keys the settlements share. A token bucket is a string
# "<level> <ms stamp>" with a PX expiry (it expires once it would be full again); a spend counter
# is an integer string (micro-USD) that lives to the end of its month.
# settle(kb, ab, nt, ng): KEYS[kb…] are nt token buckets then ng spend counters; ARGV[ab…] hold
# (capacity, tokens to give back — negative takes more) per bucket, then the cost correction (real
# minus reserved) per counter. A counter that does not exist is left alone (it will be seeded).
LUA_COMMON = """
local window = 60000
local now = tonumber(ARGV[1])
local stored = {}
if #KEYS > 0 then
  local found = redis.call('MGET', unpack(KEYS))
  for i = 1, #KEYS do stored[KEYS[i]] = found[i] end
end
local buckets, bucket_order, spend, spend_order = {}, {}, {}, {}
local function bucket(key, cap)
  local b = buckets[key]
  if b == nil then
    local v, t
    local raw = stored[key]
    if raw then
      local gap = string.find(raw, ' ', 1, true)
      if gap then v, t = tonumber(string.sub(raw, 1, gap - 1)), tonumber(string.sub(raw, gap + 1)) end
    end
    if v == nil or t == nil then
      v, t = cap, now
    elseif now > t then
      v, t = math.min(cap, v + (now - t) * cap / window), now
    end
    b = {v = v, t = t, cap = cap, dirty = false}
    buckets[key] = b
    bucket_order[#bucket_order + 1] = key
  end
  return b
end
local function counter(key)
  local c = spend[key]
  if c == nil then
    local raw = stored[key]
    c = {used = raw and tonumber(raw) or nil, add = 0, ttl = nil}
    spend[key] = c
    spend_order[#spend_order + 1] = key
  end
  return c
end
local function settle(kb, ab, nt, ng)
  for i = 1, nt do
    local cap = tonumber(ARGV[ab + 2 * i - 2])
    local b = bucket(KEYS[kb + i - 1], cap)
    b.v, b.dirty = math.min(cap, b.v + tonumber(ARGV[ab + 2 * i - 1])), true
  end
  for j = 1, ng do
    local c = counter(KEYS[kb + nt + j - 1])
    if c.used ~= nil then
      local delta = tonumber(ARGV[ab + 2 * nt + j - 1])
      c.used, c.add = c.used + delta, c.add + delta
    end
  end
end
local function write()
  for _, key in ipairs(bucket_order) do
    local b = buckets[key]
    if b.dirty then
      redis.call('SET', key, b.v .. ' ' .. b.t, 'PX', math.ceil((b.cap - b.v) * window / b.cap) + 1000)
    end
  end
  for _, key in ipairs(spend_order) do
    local c = spend[key]
    if c.ttl ~= nil then
      redis.call('SET', key, c.used, 'EX', c.ttl)
    elseif c.add ~= 0 then
      redis.call('INCRBY', key, c.add)
    end
  end
end
"""

# One run admits a batch: every admission of one org that this process started in the same loop
# turn, in order, each seeing the charges of those before it; the whole run is atomic like a single
# admission, so exactness across processes is unchanged, while Redis reads and writes each key once
# per batch instead of once per request.
# What does not change from one request to the next (its keys, capacities, budget limits and when
# its counters expire) is a "spec", sent once per batch however many admissions share it; an
# admission sends only its spec's number and its costs.
# KEYS: the settlements' keys (see settle), then per spec nb buckets and ng spend counters.
# ARGV: now_ms, nt, ns, the settlements' arguments; the number of specs, then per spec nb, ng,
# capacity per bucket, limit (or -1) per counter, and the epoch second its counters expire at;
# the number of admissions, then per admission its spec's number (from 1), cost per bucket, cost
# per counter, and seed (or -1) per counter.
# Settlements are applied first, so an admission sees every settlement this process finished
# before it. Returns one reply per admission: {status, denied, retry_ms, milli-levels..., used...}
# with status 0 ok, 1 limited, 2 over budget, or {-1, missing budget indexes...} when a counter
# needs a seed (that admission charges nothing; the settlements are applied either way).
ACQUIRE_LUA = (
    LUA_COMMON
    + """
local nt, ns = tonumber(ARGV[2]), tonumber(ARGV[3])
settle(1, 4, nt, ns)
local k = 1 + nt + ns  -- KEYS index of the next spec's first key
local p = 4 + 2 * nt + ns  -- ARGV index of the next thing to read: the number of specs
local specs = {}
for s = 1, tonumber(ARGV[p]) do
  local nb, ng = tonumber(ARGV[p + 1]), tonumber(ARGV[p + 2])
  local spec = {nb = nb, ng = ng, b = {}, c = {}, limit = {}}
  p = p + 2
  for i = 1, nb do spec.b[i] = bucket(KEYS[k + i - 1], tonumber(ARGV[p + i])) end
  p = p + nb
  for j = 1, ng do
    spec.c[j] = counter(KEYS[k + nb + j - 1])
    spec.limit[j] = tonumber(ARGV[p + j])
  end
  p = p + ng + 1
  spec.ttl = math.max(3600, tonumber(ARGV[p]) - math.floor(now / 1000))
  specs[s] = spec
  k = k + nb + ng
end
local replies = {}
p = p + 1  -- the number of admissions
for r = 1, tonumber(ARGV[p]) do
  local spec = specs[tonumber(ARGV[p + 1])]
  local nb, ng, b, c = spec.nb, spec.ng, spec.b, spec.c
  local cost = p + 1  -- ARGV[cost + i]: the i-th bucket's cost; then each counter's cost, then its seed
  local status, denied, retry, missing = 0, -1, 0, nil
  for i = 1, nb do
    local need = tonumber(ARGV[cost + i])
    if denied < 0 and b[i].v < need then
      status, denied = 1, i - 1
      retry = math.ceil((need - b[i].v) * window / b[i].cap)
    end
  end
  for j = 1, ng do
    local cj = c[j]
    if cj.used == nil then
      local seed = ARGV[cost + nb + ng + j]
      if seed == '-1' then
        missing = missing or {}
        missing[#missing + 1] = j - 1
      else
        cj.used, cj.ttl = tonumber(seed), spec.ttl
      end
    end
    local limit = spec.limit[j]
    if cj.used ~= nil and denied < 0 and limit >= 0 and cj.used + tonumber(ARGV[cost + nb + j]) > limit then
      status, denied = 2, nb + j - 1
    end
  end
  local out
  if missing then
    out = {-1}
    for _, j in ipairs(missing) do out[#out + 1] = j end
  else
    if status == 0 then
      for i = 1, nb do
        b[i].v, b[i].dirty = b[i].v - tonumber(ARGV[cost + i]), true
      end
      for j = 1, ng do
        local add = tonumber(ARGV[cost + nb + j])
        c[j].used, c[j].add = c[j].used + add, c[j].add + add
      end
    end
    out = {status, denied, retry}
    for i = 1, nb do out[#out + 1] = math.floor(b[i].v * 1000) end
    for j = 1, ng do out[#out + 1] = c[j].used end
  end
  replies[r] = out
  p = cost + nb + 2 * ng
end
write()
return replies
"""
)

# KEYS and ARGV[4…]: see settle. ARGV: now_ms, nt, ng, …
SETTLE_LUA = (
    LUA_COMMON
    + """
settle(1, 4, tonumber(ARGV[2]), tonumber(ARGV[3]))
write()
return 1
"""
)


_acquire_script = Script(ACQUIRE_LUA)
_settle_script = Script(SETTLE_LUA)


@functools.cache
def _month_end(month: str) -> float:
    year, mon = (int(part) for part in month.split("-"))
    return next_month_start(datetime(year, mon, 1, tzinfo=UTC)).timestamp()


class Spec:
    """What the admissions of one key on one deployment in one month have in common: their Redis
    keys, capacities, budget limits and when the spend counters expire (the end of the month plus a
    day for late settlements). `plan` builds it once per key, deployment and month; a batch sends
    it once however many of its admissions share it. Encoded once, here."""

    __slots__ = ("tag", "keys", "static", "no_seeds")

    def __init__(self, buckets: list[Bucket], budgets: list[Budget]) -> None:
        self.tag = _tag_of((buckets or budgets)[0].key)  # every key of a request carries its org's tag
        self.keys = tuple(b.key.encode() for b in buckets) + tuple(g.key.encode() for g in budgets)
        expires = max((int(_month_end(g.month)) + 86_400 for g in budgets), default=0)
        static = [len(buckets), len(budgets), *(b.capacity for b in buckets)]
        static += [-1 if g.limit is None else g.limit for g in budgets]
        self.static = tuple(str(x).encode() for x in [*static, expires])
        self.no_seeds = (-1,) * len(budgets)


@dataclass(slots=True)
class _Batch:
    """Admissions for one org that go to Redis in one script run."""

    now_ms: int
    specs: dict[Spec, int] = field(default_factory=dict)  # spec -> its number in the run (from 1)
    args: list = field(default_factory=list)  # per admission: spec number, costs, seeds
    futures: list[asyncio.Future] = field(default_factory=list)


class _LoopState:
    """What the limiter keeps per event loop: its Redis pipe and the admissions of this turn."""

    __slots__ = ("loop", "pipe", "batches")

    def __init__(self, loop: asyncio.AbstractEventLoop, pipe: RedisPipe) -> None:
        self.loop = loop
        self.pipe = pipe
        self.batches: dict[str, _Batch] = {}  # org hash tag -> admissions waiting for the turn's end


class RedisLimiter:
    """Scripts go through `lib.redis_pipe`: commands issued in the same loop turn share
    one write and one read, and a command costs a few µs of loop time instead of redis-py's ~150 µs.

    Admissions are not sent one by one either: those of one org started in the same loop turn go
    in one script run at the end of the turn (a `_Batch`), which decides them in order, each
    seeing the charges of the ones before it. A run is atomic whatever it holds, so exactness
    across processes is unchanged; what changes is that Redis parses one command and reads and
    writes each key once per batch (under load, several requests of a turn share one key's buckets).
    Alone in its turn, an admission waits for no one: its run leaves when the turn ends.

    Settlements are not sent one by one: they are summed per org in memory and ride along with the
    next admission batch for that org (the acquire script applies them first), or are sent on
    their own after SETTLE_DELAY if no admission comes. So a steady stream of requests costs at
    most one script run per request, and a request always sees the settlements this process
    finished before it.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._states: dict = {}  # per event loop: its pipe and its admissions waiting to be sent
        self._cached: tuple[asyncio.AbstractEventLoop | None, _LoopState | None] = (None, None)
        self._pending: set[asyncio.Future] = set()
        # org hash tag -> ({TPM bucket key: [capacity, tokens to give back]}, {counter key: cost delta})
        self._waiting: dict[str, tuple[dict[str, list[int]], dict[str, int]]] = {}
        self._waiting_since: dict[str, float] = {}  # org hash tag -> when its oldest waiting settlement came
        self._flush_handle: asyncio.TimerHandle | None = None
        self._flush_loop: asyncio.AbstractEventLoop | None = None
        atexit.register(self._flush_at_exit)

    def _state(self) -> _LoopState:
        """The running loop's pipe and batches (looked up once per loop, not per request). One
        tuple is swapped, so loops running in other threads never see each other's state."""
        loop = asyncio.get_running_loop()
        cached = self._cached
        if cached[0] is not loop:
            state = for_this_loop(
                self._states,
                self.url,
                lambda: _LoopState(loop, get_pipe(self.url, scripts=(_acquire_script, _settle_script))),
            )
            cached = self._cached = (loop, state)
        return cached[1]

    def _pipe(self) -> RedisPipe:
        return self._state().pipe

    def _flush_at_exit(self) -> None:
        if self._waiting:
            try:
                self.flush_settlements_sync()
            except Exception:
                log.warning("could not settle rate-limit reservations at exit", exc_info=True)

    async def acquire(
        self,
        buckets: list[Bucket],
        budgets: list[Budget],
        now_ms: int,
        seeds: dict[str, int] | None = None,
        spec: Spec | None = None,
    ) -> Decision:
        """Check and charge in Redis. `spec` is `Spec(buckets, budgets)`, passed by callers that
        keep one (see `plan`) so that a batch can send it once for all the admissions sharing it."""
        if not buckets and not budgets:
            return Decision(status="ok")
        if spec is None:
            spec = Spec(buckets, budgets)
        state = self._state()
        batches = state.batches
        if not batches:
            state.loop.call_soon(self._send_admissions, state)
        batch = batches.get(spec.tag)
        if batch is None:
            batch = batches[spec.tag] = _Batch(now_ms)
        elif now_ms > batch.now_ms:
            batch.now_ms = now_ms
        number = batch.specs.get(spec)
        if number is None:
            number = batch.specs[spec] = len(batch.specs) + 1
        args = batch.args
        args.append(number)
        for b in buckets:
            args.append(b.cost)
        for g in budgets:
            args.append(g.cost)
        args += [seeds.get(g.key, -1) for g in budgets] if seeds else spec.no_seeds
        future = state.loop.create_future()
        batch.futures.append(future)
        reply = await future
        if reply[0] == -1:
            return Decision(status="seed", missing=reply[1:])
        nb = len(buckets)
        return Decision(_STATUSES[reply[0]], reply[1], reply[2], [x / 1000 for x in reply[3 : 3 + nb]], reply[3 + nb :])

    def _send_admissions(self, state: _LoopState) -> None:
        """One script run per org for the admissions of the last loop turn, its settlements riding along."""
        batches, state.batches = state.batches, {}
        pipe = state.pipe
        for tag, batch in batches.items():
            keys, settle_args = self._take_settlements(tag)
            args = [batch.now_ms, *settle_args, len(batch.specs)]
            for spec in batch.specs:
                keys += spec.keys
                args += spec.static
            args.append(len(batch.futures))
            args += batch.args
            if pipe.connected:
                reply = pipe.send_nowait("EVALSHA", _acquire_script.sha, len(keys), *keys, *args)
            else:
                reply = asyncio.ensure_future(pipe.evalsha(_acquire_script, keys, args))
            reply.add_done_callback(functools.partial(self._answer, batch.futures, keys, args))
        pipe.flush()  # this already is the end of the turn the admissions came in

    def _answer(self, futures: list[asyncio.Future], keys: list[str], args: list, reply: asyncio.Future) -> None:
        exc = ConnectionError("the admission was cancelled") if reply.cancelled() else reply.exception()
        if isinstance(exc, ReplyError) and str(exc).startswith("NOSCRIPT") and keys:  # Redis was flushed
            retry = asyncio.ensure_future(self._pipe().evalsha(_acquire_script, keys, args))
            retry.add_done_callback(functools.partial(self._answer, futures, [], []))
            return
        if exc is None:
            results = reply.result()
            if isinstance(results, list) and len(results) == len(futures):
                for future, result in zip(futures, results, strict=True):
                    if not future.done():
                        future.set_result(result)
                return
            exc = ReplyError(f"the admission script answered {results!r} to {len(futures)} admissions")
        for future in futures:
            if not future.done():
                future.set_exception(exc)

    async def settle(self, reservation: Reservation, actual_tokens: int, actual_cost: int, now_ms: int) -> None:
        """Settle one reservation now (and whatever was waiting for its org)."""
        self._add_settlement(reservation, actual_tokens, actual_cost)
        for tag in list(self._waiting):
            keys, args = self._take_settlements(tag)
            await self._pipe().evalsha(_settle_script, keys, [now_ms, *args])

    def settle_soon(self, reservation: Reservation, actual_tokens: int, actual_cost: int, now_ms: int) -> None:
        """Settle after the response: with the org's next admission batch, or on its own once it has
        waited SETTLE_DELAY. Until then the reservation stays charged, which errs on the safe side."""
        self._add_settlement(reservation, actual_tokens, actual_cost)
        if not self._waiting:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush_settlements_sync()
            return
        if self._flush_handle is not None and self._flush_loop is loop:
            return  # a flush is already due on this loop (a handle left by a finished loop is not)
        self._flush_loop = loop
        self._flush_handle = loop.call_later(SETTLE_DELAY, self._flush_settlements)

    def _add_settlement(self, reservation: Reservation, actual_tokens: int, actual_cost: int) -> None:
        tag = reservation.tag
        if not tag:
            keys = reservation.buckets or reservation.budgets
            if not keys:
                return
            tag = _tag_of(keys[0].key)  # every key of a request carries its org's tag
        waiting = self._waiting.get(tag)
        for bucket in reservation.buckets:
            if bucket.kind == "tokens" and bucket.cost != actual_tokens:
                if waiting is None:
                    waiting = self._waiting[tag] = ({}, {})
                    self._waiting_since[tag] = time.monotonic()
                entry = waiting[0].get(bucket.key)
                if entry is None:
                    waiting[0][bucket.key] = [bucket.capacity, bucket.cost - actual_tokens]
                else:
                    entry[0] = bucket.capacity
                    entry[1] += bucket.cost - actual_tokens
        for budget in reservation.budgets:
            if actual_cost != budget.cost:
                if waiting is None:
                    waiting = self._waiting[tag] = ({}, {})
                    self._waiting_since[tag] = time.monotonic()
                deltas = waiting[1]
                deltas[budget.key] = deltas.get(budget.key, 0) + actual_cost - budget.cost

    def _take_settlements(self, tag: str) -> tuple[list[str], list]:
        """The org's summed settlements as extra KEYS and ARGV (nt, ng, …) for either script."""
        waiting = self._waiting.pop(tag, None)
        self._waiting_since.pop(tag, None)
        if waiting is None:
            return [], [0, 0]
        backs, deltas = waiting
        args: list = [len(backs), len(deltas)]
        for capacity, back in backs.values():
            args += [capacity, back]
        args += deltas.values()
        return [*backs, *deltas], args

    def _flush_settlements(self, *, due_only: bool = True) -> None:
        """Send the settlements that waited SETTLE_DELAY for an admission batch to take them, and
        wake up again for the others: under steady traffic the batches take nearly all of them."""
        self._flush_handle = None
        pipe = self._pipe()
        now_ms = int(time.time() * 1000)
        now = time.monotonic()
        next_due = math.inf
        for tag in list(self._waiting):
            due = self._waiting_since.get(tag, 0.0) + SETTLE_DELAY
            if due_only and due > now + SETTLE_DELAY / 10:
                next_due = min(next_due, due)
                continue
            keys, args = self._take_settlements(tag)
            args = [now_ms, *args]
            if pipe.connected:
                future = pipe.send_nowait("EVALSHA", _settle_script.sha, len(keys), *keys, *args)
            else:
                future = asyncio.ensure_future(pipe.evalsha(_settle_script, keys, args))
            self._pending.add(future)
            future.add_done_callback(functools.partial(self._settled, keys=keys, args=args))
        if next_due < math.inf:
            self._flush_loop = asyncio.get_running_loop()
            self._flush_handle = self._flush_loop.call_later(next_due - now, self._flush_settlements)

    def flush_settlements_sync(self) -> None:
        """Send what is waiting with the blocking client (no event loop; process exit)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        now_ms = int(time.time() * 1000)
        for tag in list(self._waiting):
            keys, args = self._take_settlements(tag)
            _run_sync(_settle_script, keys, [now_ms, *args])

    def _settled(self, future: asyncio.Future, *, keys: list[str], args: list) -> None:
        self._pending.discard(future)
        exc = None if future.cancelled() else future.exception()
        if exc is None:
            return
        if isinstance(exc, ReplyError) and str(exc).startswith("NOSCRIPT"):  # Redis was flushed meanwhile
            retry = asyncio.ensure_future(self._pipe().evalsha(_settle_script, keys, args))
            self._pending.add(retry)
            retry.add_done_callback(functools.partial(self._settled, keys=keys, args=args))
            return
        log.warning("could not settle a rate-limit reservation in Redis: %r", exc)

    async def drain(self) -> None:
        """Send the summed settlements now and wait for them (tests, shutdown)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._waiting:
            self._flush_settlements(due_only=False)
        loop = asyncio.get_running_loop()
        # A settlement sent from an event loop that has since closed can never finish (tests).
        self._pending = {f for f in self._pending if f.get_loop() is loop}
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def spent(self, budget_key: str) -> int | None:
        raw = await self._pipe().execute("GET", budget_key)
        return None if raw is None else int(raw)


_STATUSES = ("ok", "limited", "over_budget")  # the acquire script's status numbers
SETTLE_DELAY = 0.02  # seconds a settlement may wait for an admission batch to take it along (then sent alone)


def _tag_of(key: str) -> str:
    return key[key.index("{") : key.index("}") + 1]


def _run_sync(script: Script, keys: list[str], args: list) -> list:
    client = get_sync_redis()
    try:
        return client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        client.script_load(script.source)
        return client.evalsha(script.sha, len(keys), *keys, *args)


_limiters: dict[str, object] = {}
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


# --- seeding spend counters ---------------------------------------------------------------------

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
    decision = await get_limiter().acquire(buckets, budgets, now_ms, None, spec)
    if decision.status == "seed":
        decision = await _acquire_seeded(buckets, budgets, now_ms, spec, decision.missing)
    return decision


async def _acquire_seeded(buckets, budgets, now_ms: int, spec: Spec | None, missing: list[int]) -> Decision:
    """Check and charge again, with the missing counters' seeds computed from the database."""
    values = await asyncio.gather(*(_seed(budgets[j]) for j in missing))
    seeds = {budgets[j].key: value for j, value in zip(missing, values, strict=True)}
    return await get_limiter().acquire(buckets, budgets, now_ms, seeds, spec)


# --- what a request asks for --------------------------------------------------------------------


def _tag(org_id: int) -> str:
    return f"{{o{org_id}}}"


@functools.lru_cache(maxsize=8192)
def _names(key_id: int, org_id: int, month: str) -> tuple[str, str, str, str, str, str]:
    """Redis keys of a key's limits and of this month's spend counters (built once per key and
    month, not per request)."""
    tag = _tag(org_id)
    return (
        f"tokios:rl:{tag}:k{key_id}:rpm",
        f"tokios:rl:{tag}:k{key_id}:tpm",
        f"tokios:rl:{tag}:org:rpm",
        f"tokios:rl:{tag}:org:tpm",
        f"tokios:spend:{tag}:k{key_id}:{month}",
        f"tokios:spend:{tag}:org:{month}",
    )


_month: tuple[float, float, str] = (0.0, 0.0, "")  # [start, end) of the UTC month last asked for, label


def _month_at(now: float) -> str:
    global _month
    start, end, label = _month
    if not start <= now < end:
        moment = datetime.fromtimestamp(now, UTC)
        label = month_label(moment)
        _month = (month_start(moment).timestamp(), next_month_start(moment).timestamp(), label)
    return label


class _Plan(NamedTuple):
    """What `plan` keeps per key record, deployment record and month (see `_plan_for`)."""

    key: object
    deployment: object
    month: str
    limits: tuple  # in the order refusals and headers rely on: key RPM, key TPM, org RPM, org TPM
    # (those set), RPM as its Bucket (it takes 1 whatever the request), TPM as (key, scope, capacity)
    spend: tuple[str, str]  # the key's and the org's spend counter this month
    price: int  # the deployment's higher price, micro-USD per million tokens
    spec: Spec


_plans: dict[tuple[int, int], _Plan] = {}


def _plan_for(key, deployment, month: str) -> _Plan:
    """The parts of a key's plan that do not depend on the request, kept until the key or deployment
    record is replaced (its limits changed) or the month turns."""
    where = (key.id, deployment.id if deployment else 0)
    cached = _plans.get(where)
    if cached is not None and cached.key is key and cached.deployment is deployment and cached.month == month:
        return cached
    key_rpm, key_tpm, org_rpm, org_tpm, key_spend, org_spend = _names(key.id, key.org_id, month)
    limits = []
    if key.rpm_limit is not None:
        limits.append(Bucket(key_rpm, "key", "requests", key.rpm_limit, 1))
    if key.tpm_limit is not None:
        limits.append((key_tpm, "key", key.tpm_limit))
    if key.org_rpm_limit is not None:
        limits.append(Bucket(org_rpm, "org", "requests", key.org_rpm_limit, 1))
    if key.org_tpm_limit is not None:
        limits.append((org_tpm, "org", key.org_tpm_limit))
    price = max(deployment.price_input_micros, deployment.price_output_micros) if deployment else 0
    entry = _Plan(key, deployment, month, tuple(limits), (key_spend, org_spend), price, None)
    buckets, budgets = _ask(entry, 0)
    entry = entry._replace(spec=Spec(buckets, budgets))
    if len(_plans) > 10_000:
        _plans.clear()
    _plans[where] = entry
    return entry


def _ask(entry: _Plan, tokens: int) -> tuple[list[Bucket], list[Budget]]:
    key = entry.key
    buckets = [
        limit if type(limit) is Bucket else Bucket(limit[0], limit[1], "tokens", limit[2], min(tokens, limit[2]))
        for limit in entry.limits
    ]
    cost = -(-tokens * entry.price // 1_000_000)
    key_spend, org_spend = entry.spend
    budgets = [
        Budget(key_spend, "key", key.org_id, key.id, entry.month, key.budget_micros, cost),
        Budget(org_spend, "org", key.org_id, None, entry.month, key.org_budget_micros, cost),
    ]
    return buckets, budgets


def plan(key, deployment, estimated_tokens: int, now: float) -> tuple[list[Bucket], list[Budget], Spec]:
    """The buckets and budgets a request by `key` (a KeyRecord) on `deployment` must pass, and their
    spec for the Redis limiter."""
    entry = _plan_for(key, deployment, _month_at(now))
    buckets, budgets = _ask(entry, max(0, int(estimated_tokens)))
    return buckets, budgets, entry.spec


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


def rate_headers(
    buckets: list[Bucket], levels: list[float], now_ms: int, *, anthropic: bool = False, into: dict | None = None
) -> dict[str, str]:
    """`x-ratelimit-*` (and on /v1/messages `anthropic-ratelimit-*`) for the tightest key/org limit,
    added to `into` if given."""
    tightest: dict[str, tuple[int, Bucket, float]] = {}  # kind -> (remaining, bucket, level); first wins ties
    for bucket, level in zip(buckets, levels):  # noqa: B905 (no levels, no headers)
        remaining = int(level) if level > 0 else 0  # whole units left
        best = tightest.get(bucket.kind)
        if best is None or remaining < best[0]:
            tightest[bucket.kind] = (remaining, bucket, level)
    headers = {} if into is None else into
    for kind, (remaining, bucket, level) in tightest.items():
        capacity = bucket.capacity
        reset = max(0, math.ceil((capacity - level) * WINDOW_MS / capacity))  # ms until the bucket is full
        limit_name, remaining_name, reset_name = _HEADER_NAMES[kind]
        headers[limit_name] = str(capacity)
        headers[remaining_name] = str(remaining)
        headers[reset_name] = f"{reset}ms" if 0 < reset < 1000 else go_duration(reset)
        if anthropic:
            headers[f"anthropic-ratelimit-{kind}-limit"] = str(capacity)
            headers[f"anthropic-ratelimit-{kind}-remaining"] = str(remaining)
            headers[f"anthropic-ratelimit-{kind}-reset"] = rfc3339(now_ms + reset)
    return headers


_HEADER_NAMES = {
    kind: (f"x-ratelimit-limit-{kind}", f"x-ratelimit-remaining-{kind}", f"x-ratelimit-reset-{kind}")
    for kind in ("requests", "tokens")
}


def _usd(micros: int) -> str:
    """`$4.99`, `$0.000150`: cents always, micro-dollars when there are any."""
    whole, frac = f"{micros_to_usd(micros):.6f}".split(".")
    return f"${whole}.{frac.rstrip('0').ljust(2, '0')}"


def _who(scope: str, key) -> str:
    return "this API key" if scope == "key" else f"organization {key.org_slug}"


class LimitExceeded(Exception):
    """A request refused by a rate limit or a budget. billing's own error: the gateway turns it into
    its 429 in the caller's shape, with these fields (type and code already chosen for that shape)."""

    status = 429

    def __init__(self, message: str, *, code: str, error_type: str, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.error_type = error_type
        self.headers = headers


def refusal(
    key: KeyRecord, bucket_or_budget: Bucket | Budget, decision: Decision, index: int, now_ms: int, *, anthropic: bool
) -> LimitExceeded:
    """The 429 for a refused request, in the caller's shape (`anthropic`: /v1/messages)."""
    if isinstance(bucket_or_budget, Bucket):
        bucket = bucket_or_budget
        wait = max(1, decision.retry_ms)
        unit = "requests per minute (RPM)" if bucket.kind == "requests" else "tokens per minute (TPM)"
        left = max(0, math.floor(decision.levels[index]))
        message = (
            f"Rate limit reached for {unit} on {_who(bucket.scope, key)}: limit {bucket.capacity}, "
            f"remaining {left}, requested {bucket.cost}. Please try again in {go_duration(wait)}."
        )
        return LimitExceeded(
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
    return LimitExceeded(
        message,
        code="insufficient_quota",
        error_type="rate_limit_error" if anthropic else "insufficient_quota",
        headers={"retry-after": str(wait_s)},
    )


# --- what the gateway calls ---------------------------------------------------------------------


async def enforce(
    key: KeyRecord,
    deployment: DeploymentRecord | None,
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
            decision = Decision("limited", denied=i, retry_ms=WINDOW_MS, levels=[0.0] * len(buckets))
            raise refusal(key, bucket, decision, i, now_ms, anthropic=anthropic)
    try:
        decision = await get_limiter().acquire(buckets, budgets, now_ms, None, spec)  # `acquire`, one frame less
        if decision.status == "seed":
            decision = await _acquire_seeded(buckets, budgets, now_ms, spec, decision.missing)
    except (RedisError, ReplyError, DatabaseError, OSError, TimeoutError) as exc:
        # Failing open keeps /v1 up through a Redis outage; every request is still metered.
        report_outage(log, "rate limits and budgets are not enforced: the limiter failed", exc)
        return None
    rate_headers(buckets, decision.levels, now_ms, anthropic=anthropic, into=headers)
    if decision.status != "ok":
        items = [*buckets, *budgets]
        raise refusal(key, items[decision.denied], decision, decision.denied, now_ms, anthropic=anthropic)
    return Reservation(buckets, budgets, spec.tag)


def settle(reservation: Reservation | None, record: UsageRecord) -> None:
    """Replace the reservation by the request's real usage (`record`, final). Nothing to do for None
    (limits off, failed open, or refused before admission) or a reservation already settled, so a
    second call changes nothing. Never raises: the request is over, its usage must still be written."""
    if reservation is None or reservation.settled:
        return
    reservation.settled = True
    try:
        get_limiter().settle_soon(
            reservation, record.input_tokens + record.output_tokens, record.cost_micros, int(time.time() * 1000)
        )
    except Exception:
        log.warning("could not settle a rate-limit reservation", exc_info=True)
