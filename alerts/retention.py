"""Pruning: the alerts history is kept ALERTS_RETENTION_DAYS, never for ever."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import Q

from billing.periods import month_label
from deployments.models import Deployment

from .models import Alert, AlertKind, AlertState, ConnectorEvent, Delivery


def prune(*, now: datetime, days: int) -> int:
    """Delete what is older than `days`: alerts (with their deliveries and attempts), connector
    events, ended episodes, budget episodes of past months, and episodes of deleted deployments.
    Running episodes are kept however old: deleting one would raise its alert again. Returns how
    many rows went."""
    cutoff = now - timedelta(days=days)
    deleted = Delivery.objects.filter(created_at__lt=cutoff).delete()[0]
    deleted += Alert.objects.filter(created_at__lt=cutoff).delete()[0]
    deleted += ConnectorEvent.objects.filter(at__lt=cutoff).delete()[0]
    ended = Q(active=False, updated_at__lt=cutoff) | Q(kind=AlertKind.BUDGET, period__lt=month_label(now))
    deleted += AlertState.objects.filter(ended).delete()[0]
    deployment_states = AlertState.objects.filter(subject__startswith="deployment:")
    existing = {f"deployment:{pk}" for pk in Deployment.objects.values_list("pk", flat=True)}
    gone = [pk for pk, subject in deployment_states.values_list("pk", "subject") if subject not in existing]
    if gone:
        deleted += AlertState.objects.filter(pk__in=gone).delete()[0]
    return deleted
