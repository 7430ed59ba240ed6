"""Celery tasks. Each calls one function and is safe to run twice or concurrently."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from .models import StoredResponse


@shared_task(name="proxy.prune_stored_responses")
def prune_stored_responses() -> int:
    """Delete the stored /v1/responses conversations idle for RESPONSES_RETENTION_DAYS. Returns how
    many responses were deleted."""
    return StoredResponse.objects.prune(now=timezone.now(), days=settings.RESPONSES_RETENTION_DAYS)
