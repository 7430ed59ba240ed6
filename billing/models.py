from __future__ import annotations

from django.db import models
from django.utils import timezone

from accounts.models import ApiKey, Organization
from deployments.models import Deployment


class Surface(models.TextChoices):
    CHAT = "chat", "Chat Completions"
    RESPONSES = "responses", "Responses"
    MESSAGES = "messages", "Messages"
    COUNT_TOKENS = "count_tokens", "Count tokens"
    MODELS = "models", "Models"


class UsageEventQuerySet(models.QuerySet["UsageEvent"]):
    def for_org(self, org: Organization) -> UsageEventQuerySet:
        return self.filter(org=org)


class UsageEvent(models.Model):
    """One row per /v1 request, success or failure. Append-only; rollups are what pages read."""

    request_id = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    org = models.ForeignKey(Organization, null=True, on_delete=models.SET_NULL, related_name="+")
    api_key = models.ForeignKey(ApiKey, null=True, on_delete=models.SET_NULL, related_name="+")
    deployment = models.ForeignKey(Deployment, null=True, on_delete=models.SET_NULL, related_name="+")
    surface = models.CharField(max_length=16, choices=Surface.choices)
    status_code = models.PositiveSmallIntegerField()
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    usage_estimated = models.BooleanField(default=False)
    cost_micros = models.BigIntegerField(default=0)
    latency_ms = models.PositiveIntegerField(default=0)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    streamed = models.BooleanField(default=False)
    cancelled = models.BooleanField(default=False)
    error_code = models.CharField(max_length=64, blank=True)

    objects = UsageEventQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["org", "created_at"])]

    def __str__(self) -> str:
        return f"{self.request_id} {self.status_code}"
