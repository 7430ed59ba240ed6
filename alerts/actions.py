"""Writes about an org's alert settings and webhook endpoints, for the dashboard, the API and tests.

Each checks its bounds itself (the model fields' validators, `webhooks.check_url`) so no path can
store what the evaluator or the delivery could not handle."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from accounts.actions import audit
from accounts.models import AuditAction, Organization, User

from . import tasks
from .models import MAX_ENDPOINTS_PER_ORG, AlertKind, AlertSettings, WebhookEndpoint
from .raising import Raised, raise_alert
from .webhooks import check_url, display_prefix, new_salt, signing_secret

# After a rotation the previous secret signs too (a second v1=) for this long.
ROTATION_GRACE = timedelta(hours=24)
SETTINGS_FIELDS = (
    "email_enabled",
    "budget_enabled",
    "budget_thresholds",
    "connector_down_enabled",
    "connector_down_minutes",
    "flapping_enabled",
    "flapping_connects",
    "flapping_window_minutes",
    "error_rate_enabled",
    "error_rate_percent",
    "error_rate_window_minutes",
    "error_rate_min_requests",
)


@transaction.atomic
def update_settings(
    *, org: Organization, actor: User | None = None, actor_label: str = "", **changes: Any
) -> AlertSettings:
    """Change some of `org`'s alert rules; the audit log gets what changed, before and after."""
    unknown = set(changes) - set(SETTINGS_FIELDS)
    if unknown:
        raise ValidationError(f"Unknown alert settings: {', '.join(sorted(unknown))}.")
    rules = AlertSettings.objects.select_for_update().filter(org=org).first() or AlertSettings(org=org)
    before = {name: getattr(rules, name) for name in SETTINGS_FIELDS}
    for name, value in changes.items():
        setattr(rules, name, value)
    if isinstance(rules.budget_thresholds, list):
        rules.budget_thresholds = sorted(rules.budget_thresholds)
    rules.full_clean(exclude=["org"])
    rules.save()
    changed = {
        name: {"old": before[name], "new": getattr(rules, name)}
        for name in SETTINGS_FIELDS
        if before[name] != getattr(rules, name)
    }
    if changed:
        audit(
            org=org,
            action=AuditAction.ALERT_RULES_UPDATED,
            target=org.slug,
            actor=actor,
            actor_label=actor_label,
            **changed,
        )
    return rules


def _clean_endpoint(endpoint: WebhookEndpoint) -> None:
    try:
        check_url(endpoint.url)
    except ValidationError as exc:
        raise ValidationError({"url": exc.messages}) from None
    endpoint.full_clean(exclude=["org", "salt", "prefix", "created_by"])


@transaction.atomic
def create_endpoint(
    *, org: Organization, url: str, description: str = "", enabled: bool = True, created_by: User | None = None
) -> tuple[WebhookEndpoint, str]:
    """Add a webhook endpoint. Returns it and its signing secret, which is shown once."""
    # Locking the org row makes the count below exact under concurrent creations.
    Organization.objects.select_for_update().filter(pk=org.pk).first()
    if WebhookEndpoint.objects.for_org(org).count() >= MAX_ENDPOINTS_PER_ORG:
        raise ValidationError(f"An organisation has at most {MAX_ENDPOINTS_PER_ORG} webhook endpoints.")
    endpoint = WebhookEndpoint(
        org=org, url=url.strip(), description=description, enabled=enabled, salt=new_salt(), created_by=created_by
    )
    _clean_endpoint(endpoint)
    endpoint.save(force_insert=True)
    secret = signing_secret(endpoint.pk, endpoint.salt)
    endpoint.prefix = display_prefix(secret)
    endpoint.save(update_fields=["prefix"])
    return endpoint, secret


@transaction.atomic
def update_endpoint(*, endpoint: WebhookEndpoint, **changes: Any) -> WebhookEndpoint:
    allowed = {"url", "description", "enabled"}
    unknown = set(changes) - allowed
    if unknown:
        raise ValidationError(f"Cannot change {', '.join(sorted(unknown))} on a webhook endpoint.")
    for name, value in changes.items():
        setattr(endpoint, name, value.strip() if name == "url" else value)
    _clean_endpoint(endpoint)
    endpoint.save()
    return endpoint


@transaction.atomic
def rotate_secret(*, endpoint: WebhookEndpoint) -> tuple[WebhookEndpoint, str]:
    """A new signing secret (returned, shown once); the old one keeps signing for ROTATION_GRACE."""
    now = timezone.now()
    endpoint.previous_salt = endpoint.salt
    endpoint.previous_valid_until = now + ROTATION_GRACE
    endpoint.salt = new_salt()
    endpoint.rotated_at = now
    secret = signing_secret(endpoint.pk, endpoint.salt)
    endpoint.prefix = display_prefix(secret)
    endpoint.save(update_fields=["previous_salt", "previous_valid_until", "salt", "rotated_at", "prefix"])
    return endpoint, secret


def delete_endpoint(*, endpoint: WebhookEndpoint) -> None:
    """Deliveries to it stay in the log (without their endpoint) and are not tried again."""
    endpoint.delete()


@transaction.atomic
def send_test(*, endpoint: WebhookEndpoint) -> Raised:
    """A `test.firing` alert to one endpoint, enqueued once committed, to check a receiver's set-up."""
    raised = raise_alert(
        org=endpoint.org,
        rules=AlertSettings.for_org(endpoint.org),
        kind=AlertKind.TEST,
        title=f"{endpoint.org.name}: a test alert from Tokios",
        data={"test": True},
        now=timezone.now(),
        endpoints=[endpoint],
    )
    tasks.enqueue(raised.deliveries)
    return raised
