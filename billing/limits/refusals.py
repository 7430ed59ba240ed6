"""The 429s: a refused request's error, with a message that says which limit, whose, and when."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from lib.money import micros_to_usd

from ..periods import next_month_start
from .core import WINDOW_MS, Bucket, Budget, Decision, KeyLimits
from .headers import go_duration


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


def _usd(micros: int) -> str:
    """`$4.99`, `$0.000150`: cents always, micro-dollars when there are any."""
    whole, frac = f"{micros_to_usd(micros):.6f}".split(".")
    return f"${whole}.{frac.rstrip('0').ljust(2, '0')}"


def _who(scope: str, key: KeyLimits) -> str:
    return "this API key" if scope == "key" else f"organization {key.org_slug}"


def refusal(
    key: KeyLimits, bucket_or_budget: Bucket | Budget, decision: Decision, index: int, now_ms: int, *, anthropic: bool
) -> LimitExceeded:
    """The 429 for a refused request, in the caller's shape (`anthropic`: /v1/messages). `index` is
    the refusing bucket's or budget's place in buckets + budgets, as in `decision.denied`."""
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
        f"{whose} has reached its monthly budget: {_usd(used)} of {_usd(budget.limit or 0)} spent in "
        f"{budget.month} (UTC), and this request could cost up to {_usd(budget.cost)}. "
        f"The budget resets on {resets:%Y-%m-%d} 00:00 UTC; an admin can raise it."
    )
    return LimitExceeded(
        message,
        code="insufficient_quota",
        error_type="rate_limit_error" if anthropic else "insufficient_quota",
        headers={"retry-after": str(wait_s)},
    )


def blocked(key: KeyLimits, buckets: list[Bucket], index: int, now_ms: int, *, anthropic: bool) -> LimitExceeded:
    """The 429 for a limit of 0, which blocks the key (it does not mean "unlimited")."""
    decision = Decision("limited", denied=index, retry_ms=WINDOW_MS, levels=[0.0] * len(buckets))
    return refusal(key, buckets[index], decision, index, now_ms, anthropic=anthropic)
