"""Celery tasks. Each takes ids (or nothing) and calls one function; running one twice raises and
sends nothing twice (episodes and attempts are claimed with conditional UPDATEs)."""

from __future__ import annotations

from collections.abc import Iterable

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from . import delivery, evaluation, retention


def enqueue(delivery_ids: Iterable[int]) -> None:
    """Send each delivery's first attempt to the workers once the current transaction commits."""
    ids = list(delivery_ids)
    if ids:
        transaction.on_commit(lambda: [deliver.delay(pk) for pk in ids])


@shared_task(name="alerts.evaluate")
def evaluate_alerts() -> int:
    """Check every org's alert rules; enqueue what they raised, and deliveries whose task was lost.
    Returns how many alerts were raised."""
    now = timezone.now()
    raised = evaluation.evaluate(now=now)
    enqueue([pk for item in raised for pk in item.deliveries] + delivery.overdue(now=now))
    return len(raised)


@shared_task(name="alerts.deliver", bind=True, max_retries=None)
def deliver(self, delivery_id: int) -> str:
    """One attempt of a delivery; a failure that may be retried comes back after its backoff. The
    number of attempts is bounded by the delivery's own count (WEBHOOK_MAX_ATTEMPTS), not by Celery."""
    outcome = delivery.attempt(delivery_id)
    if outcome.retry_in is not None:
        raise self.retry(countdown=outcome.retry_in)
    return outcome.status


@shared_task(name="alerts.prune")
def prune_alerts() -> int:
    """Delete alerts, delivery logs, connector events and ended episodes past ALERTS_RETENTION_DAYS."""
    return retention.prune(now=timezone.now(), days=settings.ALERTS_RETENTION_DAYS)
