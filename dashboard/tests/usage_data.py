"""Rollup rows for usage tests (what billing's roll-up would have written)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from billing.models import UsageRollup


def today() -> datetime:
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def rollup(org, *, days_ago=0, key=None, deployment=None, period="day", hours_ago=0, **totals) -> UsageRollup:
    start = today() - timedelta(days=days_ago)
    if period == "hour":
        start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours_ago)
    values = {"requests": 0, "errors": 0, "input_tokens": 0, "output_tokens": 0, "cost_micros": 0, **totals}
    return UsageRollup.objects.create(
        period=period, bucket_start=start, org=org, api_key=key, deployment=deployment, **values
    )


def a_year_of_rollups(org, key, deployment) -> int:
    rows = [
        UsageRollup(
            period="day",
            bucket_start=today() - timedelta(days=i),
            org=org,
            api_key=key,
            deployment=deployment,
            requests=10 + i,
            errors=i % 3,
            input_tokens=1000 + i,
            output_tokens=500 + i,
            cost_micros=2000 + i,
        )
        for i in range(366)
    ]
    UsageRollup.objects.bulk_create(rows)
    return len(rows)
