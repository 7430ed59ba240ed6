"""Rolling the append-only UsageEvent table up into hourly and daily UsageRollup rows, and pruning it.

How it stays exact and idempotent:

- A run holds the watermark row's lock (`SELECT … FOR UPDATE`; SQLite's IMMEDIATE transactions
  serialise writers the same way), so concurrent runs queue instead of interleaving.
- It finds the hours touched by events above `safe_event_id`, and recomputes each of those hours
  *absolutely* from the raw events (delete the hour's rows, insert the fresh sums). Then the days
  holding those hours are recomputed from the hourly rows. Reading an event twice cannot count it
  twice, so a run repeated, or re-reading an overlap, gives the same totals.
- Ids are assigned at insert but visible at commit, so an id below one already seen can still
  appear. Each run therefore re-reads from the largest id the run *before* the previous one saw
  (`safe_event_id`); a late-committing batch lands in a re-read range and its hour is recomputed.
- Events are pruned only below `safe_event_id` and only in whole hours older than the retention
  age. Should an event for an already-pruned hour still arrive, it is added to that hour's rows
  (by id range, counted once) because the hour can no longer be recomputed from raw events.
- Usage events have no foreign-key constraints (they cost every insert). A run first clears the
  ids of orgs, keys and deployments that no longer exist from the events it is about to read,
  which is what the constraints' SET NULL would have done for an event written after the delete.
- No sum can fail: tokens and cost are summed with `billing.sums` and saturate at 2^63 - 1, so an
  org's absurd rows (say, from a price stored before prices were bounded) cannot stop the watermark.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Max, Q, Sum
from django.db.models.functions import TruncHour
from django.utils import timezone

from accounts.models import ApiKey, Organization
from deployments.models import Deployment

from .models import Period, RollupWatermark, UsageEvent, UsageRollup
from .periods import DAY, HOUR, floor_day, floor_hour
from .sums import saturated, saturating_add, split_sums, totals

log = logging.getLogger("tokios.billing")

WATERMARK = "usage"
SUM_FIELDS = ("requests", "errors", "input_tokens", "output_tokens", "cost_micros")
# Summed in halves (billing.sums): a count of rows cannot pass 2^63, these can.
LARGE_FIELDS = ("input_tokens", "output_tokens", "cost_micros")
GROUP = ("org_id", "api_key_id", "deployment_id")
PRUNE_BATCH = 5000


@dataclass(frozen=True)
class RollupResult:
    hours: int  # hourly buckets recomputed (or topped up)
    days: int  # daily buckets recomputed
    last_event_id: int


def _locked_watermark() -> RollupWatermark:
    RollupWatermark.objects.get_or_create(name=WATERMARK)
    return RollupWatermark.objects.select_for_update().get(name=WATERMARK)


def _with_totals(rows) -> list[dict]:
    """Rows of `split_sums` annotations with the saturated totals put together."""
    return [{**row, **totals(row, *LARGE_FIELDS)} for row in rows]


def _event_sums(events) -> list[dict]:
    return _with_totals(
        events.order_by()
        .annotate(hour=TruncHour("created_at", tzinfo=UTC))
        .values("hour", *GROUP)
        .annotate(
            requests=Count("id"),
            errors=Count("id", filter=Q(status_code__gte=400)),
            **split_sums(*LARGE_FIELDS),
        )
    )


def forget_dangling_ids(after_id: int, upto_id: int) -> int:
    """Set to NULL the org, key and deployment ids of events in (after_id, upto_id] that name a row
    deleted before the event was written (its request was running). Returns how many were fixed."""
    events = UsageEvent.objects.filter(id__gt=after_id, id__lte=upto_id)
    fixed = 0
    for column, model in (("org_id", Organization), ("api_key_id", ApiKey), ("deployment_id", Deployment)):
        dangling = events.filter(**{f"{column}__isnull": False}).exclude(
            **{f"{column}__in": model.objects.values("pk")}
        )
        fixed += dangling.update(**{column: None})
    if fixed:
        log.info("cleared %d ids of deleted orgs, keys or deployments from usage events", fixed)
    return fixed


def _contiguous(hours: list[datetime]) -> list[tuple[datetime, datetime]]:
    """[(start, end)) ranges covering sorted hours, so a late event days ago does not widen one scan."""
    ranges: list[tuple[datetime, datetime]] = []
    for hour in hours:
        if ranges and ranges[-1][1] == hour:
            ranges[-1] = (ranges[-1][0], hour + HOUR)
        else:
            ranges.append((hour, hour + HOUR))
    return ranges


def _rollup_row(period: str, bucket: datetime, row: dict) -> UsageRollup:
    return UsageRollup(
        period=period,
        bucket_start=bucket,
        org_id=row["org_id"],
        api_key_id=row["api_key_id"],
        deployment_id=row["deployment_id"],
        **{name: saturated(int(row[name] or 0)) for name in SUM_FIELDS},
    )


def _recompute_hours(hours: list[datetime], upto_id: int) -> None:
    for start, end in _contiguous(hours):
        rows = _event_sums(
            UsageEvent.objects.filter(created_at__gte=start, created_at__lt=end, id__lte=upto_id, org_id__isnull=False)
        )
        UsageRollup.objects.hourly().between(start, end).delete()
        UsageRollup.objects.bulk_create([_rollup_row(Period.HOUR, floor_hour(row["hour"]), row) for row in rows])


def _top_up_pruned_hours(hours: set[datetime], after_id: int, upto_id: int) -> None:
    """Add events that arrived for hours whose raw events are already gone (each id counted once)."""
    rows = _event_sums(
        UsageEvent.objects.filter(id__gt=after_id, id__lte=upto_id, org_id__isnull=False).filter(
            created_at__lt=max(hours) + HOUR
        )
    )
    for row in rows:
        bucket = floor_hour(row["hour"])
        if bucket not in hours:
            continue
        log.warning("usage events for %s arrived after the hour was pruned; adding them to its rollup", bucket)
        updated = UsageRollup.objects.filter(
            period=Period.HOUR,
            bucket_start=bucket,
            org_id=row["org_id"],
            api_key_id=row["api_key_id"],
            deployment_id=row["deployment_id"],
        ).update(**{name: saturating_add(name, int(row[name] or 0)) for name in SUM_FIELDS})
        if not updated:
            _rollup_row(Period.HOUR, bucket, row).save()


def _recompute_days(days: set[datetime]) -> None:
    for day in sorted(days):
        rows = _with_totals(
            UsageRollup.objects.hourly()
            .between(day, day + DAY)
            .values(*GROUP)
            .annotate(requests=Sum("requests"), errors=Sum("errors"), **split_sums(*LARGE_FIELDS))
            .order_by()
        )
        fresh = [_rollup_row(Period.DAY, day, row) for row in rows]
        UsageRollup.objects.daily().filter(bucket_start=day).delete()
        UsageRollup.objects.bulk_create(fresh)


def roll_up() -> RollupResult:
    """Bring the hourly and daily rollups up to date with every committed usage event."""
    with transaction.atomic():
        watermark = _locked_watermark()
        upto_id = max(UsageEvent.objects.aggregate(m=Max("id"))["m"] or 0, watermark.last_event_id)
        forget_dangling_ids(watermark.safe_event_id, upto_id)
        touched = sorted(
            floor_hour(hour)
            for hour in UsageEvent.objects.filter(id__gt=watermark.safe_event_id, id__lte=upto_id, org_id__isnull=False)
            .order_by()
            .annotate(hour=TruncHour("created_at", tzinfo=UTC))
            .values_list("hour", flat=True)
            .distinct()
        )
        pruned_before = watermark.pruned_before
        pruned = {h for h in touched if pruned_before is not None and h < pruned_before}
        live = [h for h in touched if h not in pruned]
        if live:
            _recompute_hours(live, upto_id)
        if pruned:
            _top_up_pruned_hours(pruned, watermark.last_event_id, upto_id)
        days = {floor_day(h) for h in touched}
        _recompute_days(days)
        watermark.safe_event_id = watermark.last_event_id
        watermark.last_event_id = upto_id
        watermark.save(update_fields=["safe_event_id", "last_event_id", "updated_at"])
    return RollupResult(hours=len(touched), days=len(days), last_event_id=upto_id)


def prune_events(*, now: datetime | None = None, retention_days: int | None = None) -> int:
    """Delete raw events older than the retention age that the rollups already hold. Returns how many."""
    days = settings.USAGE_RETENTION_DAYS if retention_days is None else retention_days
    if days <= 0:
        return 0
    cutoff = floor_hour((now or timezone.now()) - timedelta(days=days))
    with transaction.atomic():
        watermark = _locked_watermark()
        # From here on a run treats hours before the cutoff as pruned and tops them up instead.
        if watermark.pruned_before is None or watermark.pruned_before < cutoff:
            watermark.pruned_before = cutoff
            watermark.save(update_fields=["pruned_before", "updated_at"])
        safe_id = watermark.safe_event_id
    deleted = 0
    while True:
        # In batches, outside the watermark lock, so a large first prune does not stall the roll-up.
        ids = list(
            UsageEvent.objects.filter(created_at__lt=cutoff, id__lte=safe_id)
            .order_by("id")
            .values_list("id", flat=True)[:PRUNE_BATCH]
        )
        if not ids:
            return deleted
        # Nothing references UsageEvent, so this is one plain DELETE (no signals, no collector).
        deleted += UsageEvent.objects.filter(id__in=ids).delete()[0]
