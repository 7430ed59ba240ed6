"""What a request must pass: the buckets and budgets of its key and org, with its costs."""

from __future__ import annotations

import functools
from datetime import UTC, datetime

from ..periods import month_label, month_start, next_month_start
from .core import MAX_MICROS, MAX_TOKENS, Bucket, Budget, DeploymentPrices, KeyLimits, org_tag
from .scripts import Spec


@functools.lru_cache(maxsize=8192)
def _names(key_id: int, org_id: int, month: str) -> tuple[str, str, str, str, str, str]:
    """Redis keys of a key's limits and of this month's spend counters (built once per key and
    month, not per request)."""
    tag = org_tag(org_id)
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


class _Plan:
    """The parts of a key's plan that do not depend on the request: kept per key record, deployment
    record and month (see `_plan_for`)."""

    __slots__ = ("key", "deployment", "month", "limits", "spend", "price", "spec")

    def __init__(self, key: KeyLimits, deployment: DeploymentPrices | None, month: str) -> None:
        self.key, self.deployment, self.month = key, deployment, month
        key_rpm, key_tpm, org_rpm, org_tpm, key_spend, org_spend = _names(key.id, key.org_id, month)
        # Key RPM, key TPM, org RPM, org TPM (those set), in the order refusals and headers rely on;
        # a TPM bucket's cost is the request's, filled in by `ask`.
        limits = []
        if key.rpm_limit is not None:
            limits.append(Bucket(key_rpm, "key", "requests", key.rpm_limit, 1))
        if key.tpm_limit is not None:
            limits.append(Bucket(key_tpm, "key", "tokens", key.tpm_limit, 0))
        if key.org_rpm_limit is not None:
            limits.append(Bucket(org_rpm, "org", "requests", key.org_rpm_limit, 1))
        if key.org_tpm_limit is not None:
            limits.append(Bucket(org_tpm, "org", "tokens", key.org_tpm_limit, 0))
        self.limits = tuple(limits)
        self.spend = (key_spend, org_spend)  # the key's and the org's spend counter this month
        # The deployment's higher price, micro-USD per million tokens.
        self.price = max(deployment.price_input_micros, deployment.price_output_micros) if deployment else 0
        self.spec = Spec(*self.ask(0))

    def ask(self, tokens: int) -> tuple[list[Bucket], list[Budget]]:
        """This plan's buckets and budgets with the costs of a request of `tokens` (bounded)."""
        key = self.key
        buckets = [
            limit
            if limit.kind == "requests"
            else Bucket(limit.key, limit.scope, "tokens", limit.capacity, min(tokens, limit.capacity))
            for limit in self.limits
        ]
        cost = min(-(-tokens * self.price // 1_000_000), MAX_MICROS)
        key_spend, org_spend = self.spend
        budgets = [
            Budget(key_spend, "key", key.org_id, key.id, self.month, key.budget_micros, cost),
            Budget(org_spend, "org", key.org_id, None, self.month, key.org_budget_micros, cost),
        ]
        return buckets, budgets


_plans: dict[tuple[int, int], _Plan] = {}


def _plan_for(key: KeyLimits, deployment: DeploymentPrices | None, month: str) -> _Plan:
    """A key's plan, kept until the key or deployment record is replaced (its limits changed) or
    the month turns."""
    where = (key.id, deployment.id if deployment else 0)
    cached = _plans.get(where)
    if cached is not None and cached.key is key and cached.deployment is deployment and cached.month == month:
        return cached
    if len(_plans) > 10_000:
        _plans.clear()
    entry = _plans[where] = _Plan(key, deployment, month)
    return entry


def plan(
    key: KeyLimits, deployment: DeploymentPrices | None, estimated_tokens: int, now: float
) -> tuple[list[Bucket], list[Budget], Spec]:
    """The buckets and budgets a request by `key` on `deployment` must pass, and their spec for the
    Redis limiter. A request never needs more than a full bucket: its TPM cost is clamped to the
    bucket's size, so a large `max_tokens` is not a permanent 429. Its budget cost is its estimated
    tokens at the deployment's higher price, rounded up."""
    entry = _plan_for(key, deployment, _month_at(now))
    buckets, budgets = entry.ask(min(max(0, int(estimated_tokens)), MAX_TOKENS))
    return buckets, budgets, entry.spec
