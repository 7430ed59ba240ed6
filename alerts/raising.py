"""Raising an alert: the Alert row and one pending Delivery per channel it goes to. The caller holds
the transaction (the episode's turn and the alert commit together) and enqueues the deliveries
(`alerts.tasks.enqueue`) once it has committed."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from accounts.models import Membership, Organization, Role

from .models import Alert, AlertSettings, AlertStatus, Channel, Delivery, WebhookEndpoint

MAX_RECIPIENTS = 50  # owners and admins an alert e-mail goes to


@dataclass
class Raised:
    alert: Alert
    deliveries: list[int] = field(default_factory=list)


def one_line(text: str, limit: int = 300) -> str:
    """Names from admins end up in e-mail subjects: no line breaks, bounded."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def manager_emails(org: Organization) -> list[str]:
    """Where an org's alert e-mails go: its active owners and admins (at most MAX_RECIPIENTS)."""
    emails = (
        Membership.objects.filter(org=org, role__in=[Role.OWNER, Role.ADMIN], user__is_active=True)
        .order_by("role", "user__email")
        .values_list("user__email", flat=True)[:MAX_RECIPIENTS]
    )
    return list(emails)


def raise_alert(
    *,
    org: Organization,
    rules: AlertSettings,
    kind: str,
    status: str = AlertStatus.FIRING,
    subject: str = "",
    title: str,
    data: dict[str, Any],
    now: datetime,
    endpoints: list[WebhookEndpoint] | None = None,
) -> Raised:
    """Write the alert and its deliveries: every enabled webhook of the org (or `endpoints`), and an
    e-mail if the org wants them."""
    alert = Alert.objects.create(
        org=org, kind=kind, status=status, subject=subject, title=one_line(title), data=data, created_at=now
    )
    targets = list(WebhookEndpoint.objects.for_org(org).enabled()) if endpoints is None else endpoints
    rows = [Delivery(org=org, alert=alert, channel=Channel.WEBHOOK, endpoint=e, created_at=now) for e in targets]
    if endpoints is None and rules.email_enabled:
        rows.append(Delivery(org=org, alert=alert, channel=Channel.EMAIL, created_at=now))
    created = Delivery.objects.bulk_create(rows)
    return Raised(alert=alert, deliveries=[d.pk for d in created])
