"""Delivering an alert: one attempt at a time, each written to the delivery log (DeliveryAttempt).

`attempt(delivery_id)` claims the next attempt number with a conditional UPDATE (so a task run twice,
or by two workers, never sends the same attempt twice), sends, logs, and says whether and when to
try again: exponential backoff from WEBHOOK_BACKOFF_SECONDS, doubled each time, capped at an hour,
for at most WEBHOOK_MAX_ATTEMPTS attempts. The payload is the same bytes at every attempt and
carries the alert's id, so a receiver can drop a repeat (delivery is at least once); the signature
and its timestamp are made afresh for each attempt.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.db.models import Q
from django.utils import timezone

from .models import (
    MAX_ERROR_CHARS,
    Alert,
    Channel,
    Delivery,
    DeliveryAttempt,
    DeliveryStatus,
)
from .raising import manager_emails
from .webhooks import SIGNATURE_HEADER, PostResult, post, secrets_for, sign

log = logging.getLogger("tokios.alerts")

MAX_BACKOFF_SECONDS = 3600
# Longer than an attempt can last (a webhook's TOTAL_TIMEOUT, an SMTP conversation), so a claim left by
# a worker that died mid-attempt frees itself.
CLAIM_FOR = timedelta(minutes=2)
# A pending delivery this late for its next attempt lost its task, and is enqueued again.
OVERDUE_AFTER = timedelta(minutes=10)
USER_AGENT = "Tokios-Webhooks/1"


@dataclass(frozen=True)
class Outcome:
    status: str
    retry_in: int | None = None  # seconds until the next attempt, if there is one


def backoff(attempt_number: int) -> int:
    """Seconds to wait after failed attempt `attempt_number` (1, 2, ...)."""
    return min(MAX_BACKOFF_SECONDS, settings.WEBHOOK_BACKOFF_SECONDS * 2 ** min(attempt_number - 1, 20))


def payload(alert: Alert) -> bytes:
    body = {
        "id": alert.pk,
        "event": alert.event,
        "kind": alert.kind,
        "status": alert.status,
        "org": alert.org.slug,
        "subject": alert.subject,
        "title": alert.title,
        "created_at": alert.created_at.isoformat(),
        "data": alert.data,
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def email_text(alert: Alert) -> tuple[str, str]:
    """Subject and body of an alert e-mail: the alert's words and figures, nothing secret."""
    lines = [alert.title, "", f"Organisation: {alert.org.name} ({alert.org.slug})", f"Event: {alert.event}"]
    lines += [f"{name}: {value}" for name, value in sorted(alert.data.items()) if value is not None]
    lines += ["", f"Raised at {alert.created_at:%Y-%m-%d %H:%M:%S} UTC.", "Change alert settings in Tokios: Alerts."]
    return f"[Tokios] {alert.title}", "\n".join(lines)


def _send_webhook(delivery: Delivery, number: int) -> tuple[PostResult, bool]:
    endpoint = delivery.endpoint
    if endpoint is None or not endpoint.enabled:
        result = PostResult(ok=False, http_status=None, error="endpoint deleted or disabled", excerpt="", duration_ms=0)
        return result, False
    body = payload(delivery.alert)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Tokios-Event-Id": str(delivery.alert_id),
        "Tokios-Delivery": f"{delivery.pk}.{number}",
        SIGNATURE_HEADER: sign(body, secrets_for(endpoint, timezone.now()), int(time.time())),
    }
    return post(endpoint.url, body, headers), True


def _send_email(delivery: Delivery) -> tuple[PostResult, bool]:
    started = time.monotonic()
    recipients = manager_emails(delivery.org)
    if not recipients:
        return PostResult(
            ok=False, http_status=None, error="no owner or admin to e-mail", excerpt="", duration_ms=0
        ), False
    subject, body = email_text(delivery.alert)
    error = ""
    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, recipients)
    except Exception as exc:  # SMTP and socket errors alike: logged, retried
        error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
    duration_ms = int((time.monotonic() - started) * 1000)
    return PostResult(ok=not error, http_status=None, error=error, excerpt="", duration_ms=duration_ms), True


def overdue(*, now: datetime, limit: int = 500) -> list[int]:
    """Pending deliveries whose next attempt is long late: its task was lost (a worker killed mid-way, a
    broker restarted with the retry in it). The evaluator enqueues them again; the claim in `attempt`
    keeps a task that was only slow from sending twice."""
    late = now - OVERDUE_AFTER
    free = Q(claimed_until__isnull=True) | Q(claimed_until__lte=now)
    waiting = Q(next_attempt_at__lte=late) | Q(next_attempt_at__isnull=True, created_at__lte=late)
    rows = Delivery.objects.filter(free, waiting, status=DeliveryStatus.PENDING).order_by("pk")
    return list(rows.values_list("pk", flat=True)[:limit])


def attempt(delivery_id: int) -> Outcome:
    """Make the next attempt of a pending delivery, log it, and say what comes next."""
    delivery = Delivery.objects.select_related("alert", "alert__org", "endpoint", "org").filter(pk=delivery_id).first()
    if delivery is None:
        return Outcome(status="gone")
    if delivery.status != DeliveryStatus.PENDING:
        return Outcome(status=delivery.status)
    number = delivery.attempts + 1
    started_at = timezone.now()
    free = Q(claimed_until__isnull=True) | Q(claimed_until__lte=started_at)
    claimed = Delivery.objects.filter(
        free, pk=delivery.pk, status=DeliveryStatus.PENDING, attempts=delivery.attempts
    ).update(attempts=number, claimed_until=started_at + CLAIM_FOR)
    if not claimed:
        return Outcome(status="claimed elsewhere")
    if delivery.channel == Channel.WEBHOOK:
        result, retryable = _send_webhook(delivery, number)
    else:
        result, retryable = _send_email(delivery)
    DeliveryAttempt.objects.create(
        delivery=delivery,
        number=number,
        started_at=started_at,
        duration_ms=result.duration_ms,
        ok=result.ok,
        http_status=result.http_status,
        error=result.error,
        response_excerpt=result.excerpt,
    )
    now = timezone.now()
    if result.ok:
        Delivery.objects.filter(pk=delivery.pk).update(
            status=DeliveryStatus.DELIVERED, delivered_at=now, next_attempt_at=None, claimed_until=None
        )
        return Outcome(status=DeliveryStatus.DELIVERED)
    where = delivery.endpoint.host if delivery.endpoint is not None else delivery.channel
    if not retryable or number >= settings.WEBHOOK_MAX_ATTEMPTS:
        Delivery.objects.filter(pk=delivery.pk).update(
            status=DeliveryStatus.FAILED, next_attempt_at=None, claimed_until=None
        )
        log.warning(
            "alert delivery %s to %s failed for good after %s attempt(s): %s", delivery.pk, where, number, result.error
        )
        return Outcome(status=DeliveryStatus.FAILED)
    delay = backoff(number)
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=now + timedelta(seconds=delay), claimed_until=None)
    log.info("alert delivery %s to %s failed (%s); retrying in %s s", delivery.pk, where, result.error, delay)
    return Outcome(status=DeliveryStatus.PENDING, retry_in=delay)
