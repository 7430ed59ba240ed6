"""Read side of metering: what usage pages, the API and budget seeding ask about usage.

Pages read the rollups only. The one exception is "this month so far", which adds the events the
roll-up has not reached yet (those above the watermark), so it is exact to the last written event.
Totals saturate at 2^63 - 1 rather than fail (billing.sums).
"""

from __future__ import annotations

from datetime import datetime

from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone

from accounts.models import ApiKey, Organization
from deployments.models import Deployment

from .models import Period, RollupWatermark, UsageEvent, UsageRollup
from .periods import DAY, HOUR, floor_day, floor_hour, month_start, next_month_start
from .sums import saturated, split_sums, totals

TOTAL_FIELDS = ("requests", "errors", "input_tokens", "output_tokens", "cost_micros")
LARGE_FIELDS = ("input_tokens", "output_tokens", "cost_micros")  # summed in halves (billing.sums)
_ROLLUP_SUMS = {"requests": Sum("requests"), "errors": Sum("errors"), **split_sums(*LARGE_FIELDS)}


def _zero() -> dict:
    return dict.fromkeys(TOTAL_FIELDS, 0)


def _totals(row: dict) -> dict:
    return {"requests": int(row["requests"] or 0), "errors": int(row["errors"] or 0), **totals(row, *LARGE_FIELDS)}


def _rollup_totals(qs: QuerySet[UsageRollup]) -> dict:
    return _totals(qs.aggregate(**_ROLLUP_SUMS))


def _event_totals(qs: QuerySet[UsageEvent]) -> dict:
    return _totals(
        qs.order_by().aggregate(
            requests=Count("id"), errors=Count("id", filter=Q(status_code__gte=400)), **split_sums(*LARGE_FIELDS)
        )
    )


def _add(a: dict, b: dict) -> dict:
    return {name: saturated(a[name] + b[name]) for name in TOTAL_FIELDS}


def rolled_up_to() -> int:
    """The largest event id the rollups account for; events above it are not in them yet."""
    return RollupWatermark.objects.filter(name="usage").values_list("last_event_id", flat=True).first() or 0


def usage_series(
    org: Organization,
    *,
    start: datetime,
    end: datetime,
    key: ApiKey | int | None = None,
    deployment: Deployment | int | None = None,
    period: str = "day",
) -> list[dict]:
    """Per-bucket totals for an org between `start` and `end` (UTC), from the rollups.

    Every bucket in the range is present, empty ones with zeros, oldest first:
    `[{"bucket_start": datetime, "requests", "errors", "input_tokens", "output_tokens",
    "cost_micros"}, ...]`. `start` is truncated to its bucket; `end` is exclusive.
    """
    period = Period(period)
    step, floor = (HOUR, floor_hour) if period == Period.HOUR else (DAY, floor_day)
    first = floor(start)
    qs = UsageRollup.objects.for_org(org).filter(period=period).between(first, end)
    if key is not None:
        qs = qs.filter(api_key=key)
    if deployment is not None:
        qs = qs.filter(deployment=deployment)
    rows = qs.values("bucket_start").annotate(**_ROLLUP_SUMS).order_by("bucket_start")
    found = {floor(row["bucket_start"]): row for row in rows}
    series = []
    bucket = first
    while bucket < end:
        row = found.get(bucket)
        series.append({"bucket_start": bucket, **(_totals(row) if row else _zero())})
        bucket += step
    return series


def month_to_date(org: Organization, *, now: datetime | None = None) -> dict:
    """This UTC month's requests, errors, tokens and cost for an org, exact to the last written event.

    `{"requests", "errors", "input_tokens", "output_tokens", "cost_micros"}` (integers).
    """
    return spent_this_month(org_id=org.pk, now=now)


def spent_this_month(*, org_id: int, key_id: int | None = None, now: datetime | None = None) -> dict:
    """Month-to-date totals for an org, or one of its keys: daily rollups plus events not rolled up yet."""
    start = month_start(now or timezone.now())
    end = next_month_start(start)
    rollups = UsageRollup.objects.filter(org_id=org_id).daily().between(start, end)
    events = UsageEvent.objects.filter(org_id=org_id, id__gt=rolled_up_to(), created_at__gte=start, created_at__lt=end)
    if key_id is not None:
        rollups = rollups.filter(api_key_id=key_id)
        events = events.filter(api_key_id=key_id)
    return _add(_rollup_totals(rollups), _event_totals(events))
