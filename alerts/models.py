"""Alerts: what an org wants to hear about (AlertSettings), where (WebhookEndpoint, and e-mail to its
owners and admins), the episodes the evaluator has opened (AlertState), the alerts it raised (Alert),
and how each was delivered (Delivery, one DeliveryAttempt per try).

Bounds: every number here comes from an admin (dashboard, API, Django admin) and is checked by the
fields' validators on every path (`clean_fields`), so the evaluator's arithmetic never meets a
negative window or a threshold of 10^18 %.
"""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from accounts.models import Organization
from deployments.models import ConnectorToken, Deployment

MAX_THRESHOLD_PERCENT = 1000  # a budget alert at 10x the budget is the most anyone asked for
MAX_THRESHOLDS = 10
MAX_MINUTES = 10080  # a week
# The error rate is counted on the raw usage events; a day of them is what one query may scan.
MAX_ERROR_WINDOW_MINUTES = 1440
MAX_FLAP_CONNECTS = 1000
MAX_MIN_REQUESTS = 1_000_000
MAX_ENDPOINTS_PER_ORG = 10
DEFAULT_BUDGET_THRESHOLDS = (50, 80, 100)


def default_thresholds() -> list[int]:
    return list(DEFAULT_BUDGET_THRESHOLDS)


def validate_thresholds(value: object) -> None:
    """A list of 0..10 distinct whole percentages, each 1..1000."""
    if not isinstance(value, list):
        raise ValidationError("Budget thresholds must be a list of percentages.")
    if len(value) > MAX_THRESHOLDS:
        raise ValidationError(f"At most {MAX_THRESHOLDS} budget thresholds.")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= MAX_THRESHOLD_PERCENT:
            raise ValidationError(f"Each budget threshold is a whole percentage from 1 to {MAX_THRESHOLD_PERCENT}.")
    if len(set(value)) != len(value):
        raise ValidationError("Budget thresholds must be distinct.")


def _bounded(low: int, high: int) -> list:
    return [MinValueValidator(low), MaxValueValidator(high)]


class AlertSettings(models.Model):
    """An org's alert rules. An org without a row gets the defaults (`AlertSettings.for_org`)."""

    org = models.OneToOneField(Organization, on_delete=models.CASCADE, related_name="alert_settings")
    email_enabled = models.BooleanField(
        default=True, help_text="E-mail alerts to the organisation's owners and admins."
    )
    budget_enabled = models.BooleanField(default=True)
    budget_thresholds = models.JSONField(
        default=default_thresholds,
        blank=True,
        validators=[validate_thresholds],
        help_text="Percentages of a monthly budget (the org's, and each key's) that raise an alert once a month.",
    )
    connector_down_enabled = models.BooleanField(default=True)
    connector_down_minutes = models.PositiveIntegerField(
        default=5, validators=_bounded(1, MAX_MINUTES), help_text="Minutes a deployment may be without a connector."
    )
    flapping_enabled = models.BooleanField(default=True)
    flapping_connects = models.PositiveIntegerField(
        default=5,
        validators=_bounded(2, MAX_FLAP_CONNECTS),
        help_text="Connects of a deployment's connectors within the window that count as flapping.",
    )
    flapping_window_minutes = models.PositiveIntegerField(default=15, validators=_bounded(1, MAX_MINUTES))
    error_rate_enabled = models.BooleanField(default=True)
    error_rate_percent = models.PositiveIntegerField(
        default=10, validators=_bounded(1, 100), help_text="Share of requests answered 5xx that raises an alert."
    )
    error_rate_window_minutes = models.PositiveIntegerField(
        default=15, validators=_bounded(1, MAX_ERROR_WINDOW_MINUTES)
    )
    error_rate_min_requests = models.PositiveIntegerField(
        default=20,
        validators=_bounded(1, MAX_MIN_REQUESTS),
        help_text="Fewer requests than this in the window say nothing about the error rate.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "alert settings"

    def __str__(self) -> str:
        return f"alert settings of {self.org_id}"

    @classmethod
    def for_org(cls, org: Organization) -> AlertSettings:
        """The org's saved settings, or the defaults (unsaved) if it never changed them."""
        return cls.objects.filter(org=org).first() or cls(org=org)

    @property
    def thresholds(self) -> list[int]:
        return sorted(self.budget_thresholds or [])


class WebhookEndpointQuerySet(models.QuerySet["WebhookEndpoint"]):
    def for_org(self, org: Organization) -> WebhookEndpointQuerySet:
        return self.filter(org=org)

    def enabled(self) -> WebhookEndpointQuerySet:
        return self.filter(enabled=True)


class WebhookEndpoint(models.Model):
    """A URL that receives an org's alerts as signed JSON POSTs.

    The signing secret is not stored: it is HMAC-SHA256(SECRET_KEY, "tokios-webhook:<id>:<salt>")
    (alerts.webhooks.signing_secret), so the database alone cannot sign. It is shown once, at
    creation and at each rotation. After a rotation the previous secret still signs (a second `v1=`
    in the header) until `previous_valid_until`, so receivers can switch without losing alerts.
    """

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="webhook_endpoints")
    url = models.URLField(max_length=2000)
    description = models.CharField(max_length=200, blank=True)
    enabled = models.BooleanField(default=True)
    salt = models.CharField(max_length=64)
    prefix = models.CharField(max_length=32, help_text="The start of the secret, to tell secrets apart.")
    previous_salt = models.CharField(max_length=64, blank=True)
    previous_valid_until = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    rotated_at = models.DateTimeField(null=True, blank=True)

    objects = WebhookEndpointQuerySet.as_manager()

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"webhook {self.pk} of {self.org_id}"

    @property
    def host(self) -> str:
        """What logs and the delivery log show: the URL's host, never its path (it may hold a token)."""
        return urlsplit(self.url).hostname or "?"


class AlertKind(models.TextChoices):
    BUDGET = "budget", "Budget threshold"
    CONNECTOR_DOWN = "connector_down", "No connector"
    CONNECTOR_FLAPPING = "connector_flapping", "Connector flapping"
    ERROR_RATE = "error_rate", "Error rate"
    TEST = "test", "Test"


class AlertStatus(models.TextChoices):
    FIRING = "firing", "Firing"
    RESOLVED = "resolved", "Resolved"


class AlertState(models.Model):
    """One episode per (org, kind, subject, threshold, period): `active` while its condition holds.

    An alert is raised when a state turns active and (for kinds that resolve) when it turns back;
    the turn is a conditional UPDATE, so concurrent evaluators raise it once. Budget states carry
    the month as `period`, so each threshold fires once per budget period.
    """

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=24, choices=AlertKind.choices)
    subject = models.CharField(max_length=64, help_text="org, key:<id> or deployment:<id>")
    threshold = models.PositiveIntegerField(default=0)
    period = models.CharField(max_length=16, blank=True)
    active = models.BooleanField(default=False)
    opened_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["org", "kind", "subject", "threshold", "period"], name="alerts_unique_state_episode"
            )
        ]
        indexes = [models.Index(fields=["org", "active"])]

    def __str__(self) -> str:
        return f"{self.kind} {self.subject} {self.threshold} {self.period} {'on' if self.active else 'off'}"


class AlertQuerySet(models.QuerySet["Alert"]):
    def for_org(self, org: Organization) -> AlertQuerySet:
        return self.filter(org=org)


class Alert(models.Model):
    """A raised alert: what happened, in words and as the webhook payload's `data`."""

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="alerts")
    kind = models.CharField(max_length=24, choices=AlertKind.choices)
    status = models.CharField(max_length=10, choices=AlertStatus.choices, default=AlertStatus.FIRING)
    subject = models.CharField(max_length=64, blank=True)
    title = models.CharField(max_length=300)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = AlertQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["org", "created_at"])]

    def __str__(self) -> str:
        return self.title

    @property
    def event(self) -> str:
        """The payload's `event`: `budget.firing`, `connector_down.resolved`, ..."""
        return f"{self.kind}.{self.status}"


class Channel(models.TextChoices):
    WEBHOOK = "webhook", "Webhook"
    EMAIL = "email", "E-mail"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed"


class DeliveryQuerySet(models.QuerySet["Delivery"]):
    def for_org(self, org: Organization) -> DeliveryQuerySet:
        return self.filter(org=org)


class Delivery(models.Model):
    """An alert on its way to one webhook endpoint, or to the org's managers by e-mail."""

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="deliveries")
    channel = models.CharField(max_length=10, choices=Channel.choices)
    endpoint = models.ForeignKey(
        WebhookEndpoint, null=True, blank=True, on_delete=models.SET_NULL, related_name="deliveries"
    )
    status = models.CharField(max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # While an attempt is on its way: a second run of the task (Celery delivers at least once)
    # finds the delivery taken and sends nothing.
    claimed_until = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = DeliveryQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "deliveries"

    def __str__(self) -> str:
        return f"{self.channel} of alert {self.alert_id}: {self.status}"


MAX_ERROR_CHARS = 200
MAX_EXCERPT_CHARS = 500


class DeliveryAttempt(models.Model):
    """One try of a delivery: the delivery log."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveSmallIntegerField()
    started_at = models.DateTimeField(default=timezone.now)
    duration_ms = models.PositiveIntegerField(default=0)
    ok = models.BooleanField(default=False)
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.CharField(max_length=MAX_ERROR_CHARS, blank=True)
    response_excerpt = models.CharField(max_length=MAX_EXCERPT_CHARS, blank=True)

    org_path: ClassVar[str] = "delivery__org"

    class Meta:
        ordering = ["delivery", "number"]
        constraints = [models.UniqueConstraint(fields=["delivery", "number"], name="alerts_unique_attempt_number")]

    def __str__(self) -> str:
        return f"attempt {self.number} of delivery {self.delivery_id}"


class ConnectorEventKind(models.TextChoices):
    CONNECTED = "connected", "Connected"
    DISCONNECTED = "disconnected", "Disconnected"


class ConnectorEvent(models.Model):
    """A connector came or went (recorded from the tunnel's signals, never on the request path)."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=12, choices=ConnectorEventKind.choices)
    connector_id = models.CharField(max_length=40, blank=True)
    # The token the connector presented, so the history can name it; NULL once the token is gone.
    token = models.ForeignKey(ConnectorToken, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    reason = models.CharField(max_length=64, blank=True)
    # A disconnect's WebSocket close code (ours, or the connector's; 1006: no close frame at all).
    close_code = models.PositiveIntegerField(null=True, blank=True)
    at = models.DateTimeField(default=timezone.now)

    org_path: ClassVar[str] = "deployment__org"

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["deployment", "kind", "at"])]

    def __str__(self) -> str:
        return f"{self.connector_id} {self.kind} {self.at:%Y-%m-%d %H:%M:%S}"
