"""The Redis limiter's two Lua scripts (in `lua/`), and the one place their KEYS and ARGV are
written and their replies read.

A settlement run (SETTLE):
    KEYS  the settled token buckets, then the settled spend counters
    ARGV  now_ms, nt, ns, (capacity, tokens to give back) per bucket, cost correction per counter

An admission run (ACQUIRE) starts the same way — the org's waiting settlements ride along and are
applied first — and goes on with
    KEYS  per spec: its nb buckets, then its ng spend counters
    ARGV  the number of specs; per spec: nb, ng, capacity per bucket, limit (-1: none) per counter,
          the epoch second its counters expire at;
          the number of admissions; per admission: its spec's number (from 1), cost per bucket,
          cost per counter, seed (-1: none) per counter.

`lua/args.lua` reads them in this order; `billing/tests/test_limits_scripts.py` runs that reader
on a real Redis against what this module writes.
"""

from __future__ import annotations

import asyncio
import functools
from datetime import UTC, datetime
from pathlib import Path

from lib.redis_pipe import Script

from ..periods import next_month_start
from .core import Bucket, Budget, Decision, Reservation, tag_of

LUA = Path(__file__).resolve().parent / "lua"


def lua(name: str) -> str:
    return (LUA / name).read_text(encoding="utf-8")


ACQUIRE = Script(lua("args.lua") + lua("state.lua") + lua("acquire.lua"))
SETTLE = Script(lua("args.lua") + lua("state.lua") + lua("settle.lua"))
STATUSES = ("ok", "limited", "over_budget")  # ACQUIRE's status numbers


@functools.cache
def _month_end(month: str) -> float:
    year, mon = (int(part) for part in month.split("-"))
    return next_month_start(datetime(year, mon, 1, tzinfo=UTC)).timestamp()


class Spec:
    """What the admissions of one key on one deployment in one month have in common: their Redis
    keys, capacities, budget limits and when the spend counters expire (the end of the month plus a
    day for late settlements). `plan` builds it once per key, deployment and month; a run sends it
    once however many of its admissions share it."""

    __slots__ = ("tag", "keys", "static", "no_seeds")

    def __init__(self, buckets: list[Bucket], budgets: list[Budget]) -> None:
        self.tag = tag_of((buckets or budgets)[0].key)  # every key of a request carries its org's tag
        self.keys = tuple(b.key.encode() for b in buckets) + tuple(g.key.encode() for g in budgets)
        expires = max((int(_month_end(g.month)) + 86_400 for g in budgets), default=0)
        static = [len(buckets), len(budgets), *(b.capacity for b in buckets)]
        static += [-1 if g.limit is None else g.limit for g in budgets]
        self.static = tuple(str(x).encode() for x in [*static, expires])
        self.no_seeds = (-1,) * len(budgets)


class Settlements:
    """One org's settlements waiting to be sent, summed per bucket and per counter."""

    __slots__ = ("backs", "deltas", "since")

    def __init__(self, since: float) -> None:
        self.backs: dict[str, list[int]] = {}  # TPM bucket key -> [capacity, tokens to give back]
        self.deltas: dict[str, int] = {}  # spend counter key -> real cost minus reserved
        self.since = since  # when the oldest of them came (time.monotonic())

    def add(self, reservation: Reservation, actual_tokens: int, actual_cost: int) -> None:
        for bucket in reservation.buckets:
            if bucket.kind == "tokens" and bucket.cost != actual_tokens:
                entry = self.backs.get(bucket.key)
                if entry is None:
                    self.backs[bucket.key] = [bucket.capacity, bucket.cost - actual_tokens]
                else:
                    entry[0] = bucket.capacity
                    entry[1] += bucket.cost - actual_tokens
        for budget in reservation.budgets:
            if actual_cost != budget.cost:
                self.deltas[budget.key] = self.deltas.get(budget.key, 0) + actual_cost - budget.cost


def settle_call(now_ms: int, settlements: Settlements | None) -> tuple[list, list]:
    """KEYS and ARGV of a settlement run, which are also how an admission run begins."""
    if settlements is None:
        return [], [now_ms, 0, 0]
    backs, deltas = settlements.backs, settlements.deltas
    args: list = [now_ms, len(backs), len(deltas)]
    for capacity, back in backs.values():
        args += (capacity, back)
    args += deltas.values()
    return [*backs, *deltas], args


class AdmissionRun:
    """The admissions of one org that go to Redis in one run of ACQUIRE, encoded as they come, and
    the futures waiting for their replies."""

    __slots__ = ("now_ms", "specs", "args", "futures")

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms
        self.specs: dict[Spec, int] = {}  # spec -> its number in the run (from 1)
        self.args: list = []  # per admission: spec number, costs, seeds
        self.futures: list[asyncio.Future] = []

    def add(
        self,
        spec: Spec,
        buckets: list[Bucket],
        budgets: list[Budget],
        seeds: dict[str, int] | None,
        now_ms: int,
        future: asyncio.Future,
    ) -> None:
        if now_ms > self.now_ms:
            self.now_ms = now_ms
        number = self.specs.get(spec)
        if number is None:
            number = self.specs[spec] = len(self.specs) + 1
        args = self.args
        args.append(number)
        for b in buckets:
            args.append(b.cost)
        for g in budgets:
            args.append(g.cost)
        args += [seeds.get(g.key, -1) for g in budgets] if seeds else spec.no_seeds
        self.futures.append(future)

    def call(self, settlements: Settlements | None) -> tuple[list, list]:
        """KEYS and ARGV of the run, with the org's waiting settlements riding along."""
        keys, args = settle_call(self.now_ms, settlements)
        args.append(len(self.specs))
        for spec in self.specs:
            keys += spec.keys
            args += spec.static
        args.append(len(self.futures))
        args += self.args
        return keys, args


def decision(reply: list, buckets: int) -> Decision:
    """One admission's reply from ACQUIRE (see `lua/acquire.lua`)."""
    if reply[0] == -1:
        return Decision(status="seed", missing=reply[1:])
    levels = [x / 1000 for x in reply[3 : 3 + buckets]]
    return Decision(STATUSES[reply[0]], reply[1], reply[2], levels, reply[3 + buckets :])
