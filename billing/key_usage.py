"""What an API key's usage says about it, for the key list, the key page and the API: its spend this
month, the share of its budget used, and whether it was rate limited recently.

Spend this month is what budgets count (billing.queries.spent_this_month): the daily rollups plus the
events the roll-up has not reached yet, so it is exact to the last written event. A key is "over
budget" once that spend reaches its monthly budget (the gateway then refuses it with 429
insufficient_quota until the month ends or the budget is raised), and "rate limited recently" when
a request with it was answered 429 in the last RATE_LIMITED_WINDOW. Both sit beside the key's own
status (active, paused, expired, revoked: ApiKey.status); neither changes what the gateway does.

A page of keys costs three queries whatever its length: the month's rollups and the events above the
roll-up's watermark, each grouped by key, and the recent 429s.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import models
from django.db.models import Count, Max, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.models import ApiKey, ApiKeyQuerySet, KeyStatus, Organization

from .models import RollupWatermark, UsageEvent, UsageRollup
from .periods import month_start, next_month_start
from .sums import saturated, split_sums, totals

RATE_LIMITED_WINDOW = timedelta(hours=1)
OVER_BUDGET = "over_budget"
RATE_LIMITED = "rate_limited"


class KeyFilter(models.TextChoices):
    """The key list's status filter. Its default, CURRENT, leaves out revoked and expired keys."""

    CURRENT = "current", "Active and paused"
    ACTIVE = KeyStatus.ACTIVE.value, "Active"
    PAUSED = KeyStatus.PAUSED.value, "Paused"
    OVER_BUDGET = OVER_BUDGET, "Over budget"
    RATE_LIMITED = RATE_LIMITED, "Rate limited recently"
    EXPIRED = KeyStatus.EXPIRED.value, "Expired"
    REVOKED = KeyStatus.REVOKED.value, "Revoked"
    ALL = "all", "All"


@dataclass(frozen=True)
class KeyUsage:
    """One key's month so far (`spent_micros`, `requests`) and its 429s in the recent window."""

    spent_micros: int = 0
    requests: int = 0
    limited: int = 0
    last_limited_at: datetime | None = None

    def budget_percent(self, key: ApiKey) -> int | None:
        """The share of the key's monthly budget spent, in whole percent (rounded down; may pass 100);
        None without a budget. A budget of 0 blocks the key: 100."""
        budget = key.monthly_budget_micros
        if budget is None:
            return None
        if budget <= 0:
            return 100
        return self.spent_micros * 100 // budget

    def over_budget(self, key: ApiKey) -> bool:
        budget = key.monthly_budget_micros
        return budget is not None and self.spent_micros >= budget

    @property
    def rate_limited(self) -> bool:
        return self.limited > 0

    def flags(self, key: ApiKey) -> list[str]:
        """What the usage adds to the status of a key that can still be used."""
        if key.status not in (KeyStatus.ACTIVE, KeyStatus.PAUSED):
            return []
        found = []
        if self.over_budget(key):
            found.append(OVER_BUDGET)
        if self.rate_limited:
            found.append(RATE_LIMITED)
        return found


NO_USAGE = KeyUsage()


def _watermark() -> Coalesce:
    """billing.queries.rolled_up_to() as a subquery: the events query reads it itself."""
    last = RollupWatermark.objects.filter(name="usage").values("last_event_id")[:1]
    return Coalesce(Subquery(last), Value(0), output_field=models.BigIntegerField())


def _spend_by_key(org_id: int, key_ids: list[int], now: datetime) -> dict[int, dict[str, int]]:
    start = month_start(now)
    end = next_month_start(start)
    found: dict[int, dict[str, int]] = {}
    rollups = (
        UsageRollup.objects.filter(org_id=org_id, api_key_id__in=key_ids)
        .daily()
        .between(start, end)
        .values("api_key_id")
        .annotate(n=models.Sum("requests"), **split_sums("cost_micros"))
        .order_by()
    )
    events = (
        UsageEvent.objects.filter(
            org_id=org_id, api_key_id__in=key_ids, id__gt=_watermark(), created_at__gte=start, created_at__lt=end
        )
        .values("api_key_id")
        .annotate(n=Count("id"), **split_sums("cost_micros"))
        .order_by()
    )
    for row in [*rollups, *events]:
        entry = found.setdefault(row["api_key_id"], {"requests": 0, "cost_micros": 0})
        entry["requests"] = saturated(entry["requests"] + int(row["n"] or 0))
        entry["cost_micros"] = saturated(entry["cost_micros"] + totals(row, "cost_micros")["cost_micros"])
    return found


def _recent_429s(org_id: int, now: datetime) -> models.QuerySet:
    # The partial index of error events (org, created_at) WHERE status_code >= 400 serves this.
    return UsageEvent.objects.filter(
        org_id=org_id, status_code=429, created_at__gte=now - RATE_LIMITED_WINDOW, api_key_id__isnull=False
    )


def usage_by_key(org: Organization, keys: list[ApiKey], *, now: datetime | None = None) -> dict[int, KeyUsage]:
    """Each key's KeyUsage, by key id (NO_USAGE for a key without any)."""
    key_ids = [key.pk for key in keys]
    if not key_ids:
        return {}
    now = now or timezone.now()
    spend = _spend_by_key(org.pk, key_ids, now)
    limited = {
        row["api_key_id"]: row
        for row in _recent_429s(org.pk, now)
        .filter(api_key_id__in=key_ids)
        .values("api_key_id")
        .annotate(n=Count("id"), last=Max("created_at"))
        .order_by()
    }
    usage = dict.fromkeys(key_ids, NO_USAGE)
    for key_id in set(spend) | set(limited):
        spent = spend.get(key_id, {"requests": 0, "cost_micros": 0})
        hit = limited.get(key_id)
        usage[key_id] = KeyUsage(
            spent_micros=spent["cost_micros"],
            requests=spent["requests"],
            limited=hit["n"] if hit else 0,
            last_limited_at=hit["last"] if hit else None,
        )
    return usage


def find_keys(org: Organization, *, status: str = KeyFilter.CURRENT, query: str = "") -> ApiKeyQuerySet:
    """The org's keys with this status (a KeyFilter value) whose name or prefix matches `query`."""
    keys = ApiKey.objects.for_org(org)
    if query.strip():
        keys = keys.search(query)
    if status == KeyFilter.ALL:
        return keys
    if status == KeyFilter.CURRENT:
        return keys.current()
    if status == KeyFilter.RATE_LIMITED:
        ids = _recent_429s(org.pk, timezone.now()).values("api_key_id")
        return keys.current().filter(pk__in=ids)
    if status == KeyFilter.OVER_BUDGET:
        candidates = list(keys.current().filter(monthly_budget_micros__isnull=False))
        usage = usage_by_key(org, candidates)
        over = [key.pk for key in candidates if usage.get(key.pk, NO_USAGE).over_budget(key)]
        return keys.filter(pk__in=over)
    return keys.with_status(KeyStatus(status))
