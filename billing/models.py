from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.db import models
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.models import ApiKey, Organization
from deployments.models import Deployment
from lib.money import micros_to_usd

from .periods import next_month_start


class Surface(models.TextChoices):
    CHAT = "chat", "Chat Completions"
    RESPONSES = "responses", "Responses"
    MESSAGES = "messages", "Messages"
    COUNT_TOKENS = "count_tokens", "Count tokens"
    MODELS = "models", "Models"
    EMBEDDINGS = "embeddings", "Embeddings"


# What one usage event may hold, whatever the upstream or a stored price said: the writer clamps
# every record to these before it is stored (billing.metering), so that no sum over events can fail
# on a single absurd row. Tokens are the columns' own range; a cost of 2^53 - 1 micro-USD (9 billion
# USD) is far above the dearest bounded request (2 × (2^31 - 1) tokens at 1,000 USD / MTok: 4.3e12)
# and exact as a double (Lua, JSON).
MAX_EVENT_TOKENS = 2**31 - 1
MAX_EVENT_COST_MICROS = 2**53 - 1
MAX_BIGINT = 2**63 - 1  # a 64-bit column: rollups and statements saturate their sums here
# The model name a client sent, as the request log shows it (also when no deployment has it: the
# 404s and 403s). Deployment names are at most 64 characters; more than 200 is cut.
MAX_REQUESTED_MODEL_CHARS = 200
MAX_CONNECTOR_ID_CHARS = 40  # `conn_` and 12 hex digits today; as alerts' connect history stores it


class UsageEventQuerySet(models.QuerySet["UsageEvent"]):
    def for_org(self, org: Organization) -> UsageEventQuerySet:
        return self.filter(org=org)

    def for_keys(self, key_ids: list[int]) -> UsageEventQuerySet:
        return self.filter(api_key_id__in=key_ids)

    def errors(self) -> UsageEventQuerySet:
        return self.filter(status_code__gte=400)

    def for_model(self, name: str, deployment_id: int | None) -> UsageEventQuerySet:
        """Requests for the model `name`: by the name the client sent, or, for events written before
        that name was stored, by the deployment of that name (`deployment_id`, if one exists)."""
        match = models.Q(requested_model=name)
        if deployment_id is not None:
            match |= models.Q(deployment_id=deployment_id)
        return self.filter(match)


class UsageEvent(models.Model):
    """One row per /v1 request, success or failure. Append-only; rollups are what pages read."""

    # Every index and constraint costs each insert (this is the hottest table): request_id is unique
    # through a constraint, which on PostgreSQL skips the LIKE index a `unique=True` CharField adds,
    # and `org` is served by the (org, created_at) index instead of one of its own. The foreign keys
    # have no database constraint: checking three of them was half of PostgreSQL's work per event.
    # Deleting an org, key or deployment still sets its events' column to NULL (Django does it); an
    # event written after such a delete, by a request that was running meanwhile, keeps the
    # dangling id until the roll-up clears it (billing.rollups.forget_dangling_ids).
    request_id = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    org = models.ForeignKey(
        Organization, null=True, on_delete=models.SET_NULL, related_name="+", db_index=False, db_constraint=False
    )
    # Served by the (api_key, created_at) index: the request log's key filter and member scope.
    api_key = models.ForeignKey(
        ApiKey, null=True, on_delete=models.SET_NULL, related_name="+", db_index=False, db_constraint=False
    )
    deployment = models.ForeignKey(
        Deployment, null=True, on_delete=models.SET_NULL, related_name="+", db_constraint=False
    )
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
    # A default in the database too: a process still running the code of before these columns (a
    # rolling deploy) inserts without them, and its rows must not be refused.
    requested_model = models.CharField(max_length=MAX_REQUESTED_MODEL_CHARS, blank=True, default="", db_default="")
    connector_id = models.CharField(max_length=MAX_CONNECTOR_ID_CHARS, blank=True, default="", db_default="")
    queue_wait_ms = models.PositiveIntegerField(default=0, db_default=0)  # waiting for a slot of the model
    # Sent again to another connector after the first failed before answering (proxy/failover.py);
    # served by a fallback of the deployment the client named (`deployment` is the fallback).
    retried = models.BooleanField(default=False, db_default=False)
    served_by_fallback = models.BooleanField(default=False, db_default=False)

    objects = UsageEventQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["org", "created_at"]),
            models.Index(fields=["api_key", "created_at"], name="billing_event_key_created"),
            # The request log's "errors only": a few rows per thousand in a healthy org, so a partial
            # index finds them without reading the successes, and a successful insert only evaluates its condition.
            models.Index(
                fields=["org", "created_at"],
                name="billing_event_org_errors",
                condition=models.Q(status_code__gte=400),
            ),
        ]
        constraints = [models.UniqueConstraint(fields=["request_id"], name="billing_usageevent_request_id_unique")]

    def __str__(self) -> str:
        return f"{self.request_id} {self.status_code}"

    @property
    def model_name(self) -> str:
        """The model the client asked for; for an event written before that was stored, its deployment's."""
        return self.requested_model or (self.deployment.name if self.deployment is not None else "")


class Period(models.TextChoices):
    HOUR = "hour", "Hour"
    DAY = "day", "Day"


class UsageRollupQuerySet(models.QuerySet["UsageRollup"]):
    def for_org(self, org: Organization) -> UsageRollupQuerySet:
        return self.filter(org=org)

    def hourly(self) -> UsageRollupQuerySet:
        return self.filter(period=Period.HOUR)

    def daily(self) -> UsageRollupQuerySet:
        return self.filter(period=Period.DAY)

    def between(self, start, end) -> UsageRollupQuerySet:
        """Buckets starting in [start, end)."""
        return self.filter(bucket_start__gte=start, bucket_start__lt=end)


class UsageRollup(models.Model):
    """Pre-summed usage per (period, bucket, org, key, deployment), filled idempotently by
    `billing.rollups.roll_up()`. Usage pages and statements read these, never the raw events."""

    period = models.CharField(max_length=4, choices=Period.choices)
    bucket_start = models.DateTimeField(help_text="UTC start of the hour or day.")
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="usage_rollups")
    # SET_NULL keeps the money when a key or deployment is deleted; `billing.signals` first folds
    # the rows into the NULL row of the same bucket so the unique constraint still holds.
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    deployment = models.ForeignKey(Deployment, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0, help_text="Requests answered with status >= 400.")
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost_micros = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    objects = UsageRollupQuerySet.as_manager()

    class Meta:
        ordering = ["bucket_start"]
        constraints = [
            # NULL key/deployment (e.g. a 404 for an unknown model) must be one row per bucket, and
            # SQL treats NULLs as distinct in unique indexes. COALESCE to 0 (never a real id) works on
            # SQLite and every PostgreSQL, unlike `nulls_distinct=False` (PostgreSQL 15+ only).
            models.UniqueConstraint(
                "period",
                "bucket_start",
                "org",
                Coalesce("api_key", models.Value(0)),
                Coalesce("deployment", models.Value(0)),
                name="unique_usage_rollup_bucket",
            ),
        ]
        indexes = [models.Index(fields=["org", "period", "bucket_start"])]

    def __str__(self) -> str:
        return f"{self.period} {self.bucket_start:%Y-%m-%d %H:%M} org={self.org_id}"


class RollupWatermark(models.Model):
    """How far `roll_up()` has read the append-only UsageEvent table. One row per `name`.

    Event ids are assigned at insert but become visible at commit, so a smaller id can appear after
    a larger one was seen. A run therefore re-reads from `safe_event_id` (the largest id seen by the
    run before the last); hours are recomputed absolutely, so reading an event twice is harmless.
    """

    name = models.CharField(max_length=32, unique=True, default="usage")
    last_event_id = models.BigIntegerField(default=0, help_text="Largest event id the last run saw.")
    safe_event_id = models.BigIntegerField(default=0, help_text="Next run re-reads events above this id.")
    pruned_before = models.DateTimeField(
        null=True, blank=True, help_text="Raw events before this instant were pruned after roll-up."
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name} @ event {self.last_event_id}"


class StatementStatus(models.TextChoices):
    RUNNING = "running", "Running"  # the month is not over: figures so far, rebuilt every hour
    CLOSING = "closing", "Closing"  # the month is over, but the statement was last built before its end
    ISSUED = "issued", "Issued"  # built after the month ended: final (late events may still add to it)


class StatementQuerySet(models.QuerySet["Statement"]):
    def for_org(self, org: Organization) -> StatementQuerySet:
        return self.filter(org=org)


class Statement(models.Model):
    """What an org used and owes for one calendar month (UTC), built from the rollups."""

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="statements")
    month = models.DateField(help_text="First day of the month.")
    requests = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    total_micros = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    objects = StatementQuerySet.as_manager()

    class Meta:
        ordering = ["-month"]
        constraints = [models.UniqueConstraint(fields=["org", "month"], name="unique_statement_month")]

    def __str__(self) -> str:
        return f"{self.org} {self.month:%Y-%m}"

    @property
    def total_usd(self) -> Decimal:
        return micros_to_usd(self.total_micros)

    @property
    def month_end(self) -> datetime:
        """The instant the month ends (UTC), exclusive."""
        return next_month_start(self.month)

    def status_at(self, now: datetime) -> str:
        if now < self.month_end:
            return StatementStatus.RUNNING
        if self.updated_at is None or self.updated_at < self.month_end:
            return StatementStatus.CLOSING
        return StatementStatus.ISSUED

    @property
    def status(self) -> str:
        return self.status_at(timezone.now())

    @property
    def errors(self) -> int:
        """Requests answered with an error, over its lines (prefetch `lines` when listing many)."""
        return min(sum(line.errors for line in self.lines.all()), MAX_BIGINT)


class StatementLine(models.Model):
    statement = models.ForeignKey(Statement, on_delete=models.CASCADE, related_name="lines")
    deployment = models.ForeignKey(Deployment, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # Kept so the statement still reads right after the deployment is deleted.
    deployment_name = models.CharField(max_length=64, blank=True)
    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost_micros = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["deployment_name", "id"]

    def __str__(self) -> str:
        return f"{self.statement}: {self.deployment_name or '(no model)'}"

    @property
    def cost_usd(self) -> Decimal:
        return micros_to_usd(self.cost_micros)
