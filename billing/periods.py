"""UTC calendar helpers shared by rollups, budgets and statements."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("naive datetime: Tokios keeps every time aware and in UTC")
    return moment.astimezone(UTC)


def floor_hour(moment: datetime) -> datetime:
    return as_utc(moment).replace(minute=0, second=0, microsecond=0)


def floor_day(moment: datetime) -> datetime:
    return as_utc(moment).replace(hour=0, minute=0, second=0, microsecond=0)


def month_start(moment: datetime | date) -> datetime:
    """The instant the UTC month containing `moment` began (a date means that day's month)."""
    if isinstance(moment, datetime):
        moment = as_utc(moment)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def next_month_start(moment: datetime | date) -> datetime:
    start = month_start(moment)
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)


def month_label(moment: datetime | date) -> str:
    """`2026-11`: the key under which a month's budget counters live."""
    start = month_start(moment)
    return f"{start.year:04d}-{start.month:02d}"
