from __future__ import annotations

import re

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from accounts.models import Organization

# The `model` string clients send. Dots allowed for names like `llama-3.1-8b`.
DEPLOYMENT_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$")


def validate_deployment_name(value: str) -> None:
    if not DEPLOYMENT_NAME_RE.match(value):
        raise ValidationError(
            f"{value!r} is not a valid deployment name: use 1-64 lower-case letters, digits, '.', '-' "
            "and '_', starting and ending with a letter or digit (e.g. gemma-tunnel)."
        )


class DeploymentQuerySet(models.QuerySet["Deployment"]):
    def for_org(self, org: Organization) -> DeploymentQuerySet:
        return self.filter(org=org)

    def usable_by(self, org: Organization | int) -> DeploymentQuerySet:
        """Deployments whose model an org's keys may call: its own, and those granted to it."""
        return self.filter(models.Q(org=org) | models.Q(grants__org=org)).distinct()


class Deployment(models.Model):
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="deployments")
    name = models.CharField(max_length=64, unique=True, validators=[validate_deployment_name])
    upstream_model = models.CharField(
        max_length=200, blank=True, help_text="What the connector puts in `model` upstream; empty keeps it."
    )
    # Prices in micro-USD per million tokens: 150000 = $0.15 / MTok.
    price_input_micros = models.BigIntegerField(default=0)
    price_output_micros = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    objects = DeploymentQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def cost_micros(self, input_tokens: int, output_tokens: int) -> int:
        """Cost of a request in micro-USD, rounded up so that usage is never billed at zero."""
        total = input_tokens * self.price_input_micros + output_tokens * self.price_output_micros
        return -(-total // 1_000_000)




class ConnectorTokenQuerySet(models.QuerySet["ConnectorToken"]):
    def active(self) -> ConnectorTokenQuerySet:
        return self.filter(revoked_at__isnull=True)


class ConnectorToken(models.Model):
    """A secret a connector presents to attach to its deployment. Stored hashed."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="connector_tokens")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=32, unique=True)
    token_hash = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ConnectorTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… for {self.deployment_id}"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


class ModelGrant(models.Model):
    """Lets another org's keys call a deployment. The owner org always has access."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="grants")
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="model_grants")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["deployment", "org"], name="unique_grant")]

    def __str__(self) -> str:
        return f"{self.org} → {self.deployment}"
