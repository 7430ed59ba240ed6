"""Celery tasks. Each calls one function and is safe to run twice or concurrently."""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.utils import timezone

from . import rollups, statements
from .periods import month_start


@shared_task(name="billing.roll_up_usage")
def roll_up_usage() -> int:
    """Bring the hourly and daily rollups up to date. Returns the last event id rolled up."""
    return rollups.roll_up().last_event_id


@shared_task(name="billing.build_statements")
def build_statements() -> int:
    """Rebuild this month's statements, and last month's during the first days of a month (late
    events and the last roll-up of the month land then). Returns how many statements were built."""
    now = timezone.now()
    rollups.roll_up()
    count = statements.build_statements(month=now)
    if now - month_start(now) < timedelta(days=3):
        count += statements.build_statements(month=month_start(now) - timedelta(days=1))
    return count


@shared_task(name="billing.prune_usage_events")
def prune_usage_events() -> int:
    """Delete raw usage events older than USAGE_RETENTION_DAYS that are rolled up. Returns how many."""
    # Pruning stops at the id the run before last had seen; two runs make that everything so far.
    rollups.roll_up()
    rollups.roll_up()
    return rollups.prune_events()
