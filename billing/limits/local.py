"""The in-process limiter: the embedded default (no Redis), the same algorithm as the scripts."""

from __future__ import annotations

import math
import threading
from datetime import UTC, datetime

from ..periods import month_label
from .core import WINDOW_MS, Bucket, Budget, Decision, Reservation
from .scripts import Spec

FORGET_ABOVE = 50_000  # buckets or counters held before the stale ones are dropped


def _refill(level: float, last_ms: int, now_ms: int, capacity: int) -> float:
    if now_ms <= last_ms:
        return level
    return min(capacity, level + (now_ms - last_ms) * capacity / WINDOW_MS)


class LocalLimiter:
    """Exact within one process; a lock makes check-and-charge atomic against other threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, int]] = {}  # key -> (level, ms stamp)
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
        if len(self._buckets) > FORGET_ABOVE:
            self._buckets = {k: (v, t) for k, (v, t) in self._buckets.items() if now_ms - t < 2 * WINDOW_MS}
        if len(self._spend) > FORGET_ABOVE:
            current = month_label(datetime.fromtimestamp(now_ms / 1000, UTC))
            self._spend = {k: v for k, v in self._spend.items() if k.endswith(current)}

    def settle_soon(self, reservation: Reservation, actual_tokens: int, actual_cost: int, now_ms: int) -> None:
        """Settle now: in process there is nothing to save by waiting."""
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

    async def drain(self) -> None:
        """Nothing waits here (see settle_soon); the Redis limiter's drain sends what waits."""

    async def spent(self, budget_key: str) -> int | None:
        return self._spend.get(budget_key)
