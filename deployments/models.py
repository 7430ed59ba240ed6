from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from accounts.models import ApiKey, Organization

# The `model` string clients send. Dots allowed for names like `llama-3.1-8b`.
DEPLOYMENT_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$")


# The dearest price an admin may set, in micro-USD per million tokens (1,000 USD / MTok), on every
# path (dashboard, API, commands, Django admin: all go through the price fields' validators). A
# request's tokens are clamped to 2^31 - 1 each way, so tokens × price stays below 2^63 (4.3e18)
# and its cost in micro-USD below 2^53, exact as a double.
MAX_PRICE_MICROS = 1_000_000_000
PRICE_VALIDATORS = [MinValueValidator(0), MaxValueValidator(MAX_PRICE_MICROS)]

# A deployment's fallbacks are tried one after another while a request waits: a short list.
MAX_FALLBACKS = 5


def validate_deployment_name(value: str) -> None:
    if not DEPLOYMENT_NAME_RE.fullmatch(value):
        raise ValidationError(
            f"{value!r} is not a valid deployment name: use 1-64 lower-case letters, digits, '.', '-' "
            "and '_', starting and ending with a letter or digit (e.g. gemma-tunnel)."
        )


def suggest_deployment_name(model: str) -> str:
    """A valid deployment name made from an upstream model name (`Qwen/Qwen2.5-7B:Q4_K_M` →
    `qwen-qwen2.5-7b-q4_k_m`); "model" when nothing of it is usable."""
    name = re.sub(r"[^a-z0-9._-]+", "-", model.lower())[:64]
    name = re.sub(r"^[^a-z0-9]+|[^a-z0-9]+$", "", name)
    return name if DEPLOYMENT_NAME_RE.fullmatch(name) else "model"


class DeploymentQuerySet(models.QuerySet["Deployment"]):
    def for_org(self, org: Organization) -> DeploymentQuerySet:
        return self.filter(org=org)

    def usable_by(self, org: Organization | int) -> DeploymentQuerySet:
        """Deployments whose model an org's keys may call: its own, and those granted to it."""
        return self.filter(models.Q(org=org) | models.Q(grants__org=org)).distinct()

    def enabled(self) -> DeploymentQuerySet:
        return self.filter(disabled_at__isnull=True)


class SurfaceMode(models.TextChoices):
    """How /v1/messages and /v1/responses reach the model server (proxy/surfaces/)."""

    AUTO = "auto", "Automatic: pass through the surfaces the model server speaks, translate the rest"
    TRANSLATE = "translate", "Always translate to chat completions"
    PASSTHROUGH = "passthrough", "Always pass through (the model server speaks every surface)"


class Deployment(models.Model):
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="deployments")
    name = models.CharField(max_length=64, unique=True, validators=[validate_deployment_name])
    upstream_model = models.CharField(
        max_length=200, blank=True, help_text="What the connector puts in `model` upstream; empty keeps it."
    )
    # Prices in micro-USD per million tokens: 150000 = $0.15 / MTok.
    price_input_micros = models.BigIntegerField(default=0, validators=PRICE_VALIDATORS)
    price_output_micros = models.BigIntegerField(default=0, validators=PRICE_VALIDATORS)
    created_at = models.DateTimeField(default=timezone.now)
    # Set while an admin has switched the deployment off: /v1 answers 503 `deployment_disabled` and its
    # connectors stay connected with no traffic (deployments.lifecycle).
    disabled_at = models.DateTimeField(null=True, blank=True)
    # The keys limited to a list of models that includes this one (`key.allowed_deployments` from
    # the key's side); a key with `all_models` set ignores its list. The table was created when the
    # field was the key's, and keeps its name.
    allowed_keys = models.ManyToManyField(
        ApiKey, blank=True, related_name="allowed_deployments", db_table="accounts_apikey_allowed_deployments"
    )
    surface_mode = models.CharField(max_length=12, choices=SurfaceMode.choices, default=SurfaceMode.AUTO)
    # One connector, many models: a deployment of the same org whose connectors serve this one too
    # (each request names this deployment's `upstream_model`). Such a deployment has no connectors
    # of its own; one whose server is deleted is left with none, and is offline until given another.
    served_by = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="served_deployments",
        help_text="Another deployment of this organization whose connectors also serve this model.",
    )
    # Deployments tried, in order, when this one is offline or its queue is full, for keys that
    # opted in (ApiKey.use_fallbacks).
    fallbacks: models.ManyToManyField[Deployment, DeploymentFallback] = models.ManyToManyField(
        "self", symmetrical=False, through="DeploymentFallback", related_name="fallback_for", blank=True
    )

    objects = DeploymentQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_disabled(self) -> bool:
        return self.disabled_at is not None

    @property
    def pool_id(self) -> int:
        """The deployment its connectors announce themselves under (proxy.access.DeploymentRecord.pool):
        presence and the queue are keyed by it."""
        return self.served_by_id or self.id

    def clean_prices(self) -> None:
        """The bounds of its prices and its surface mode (their fields' validators), without
        full_clean's queries; ValidationError names the field."""
        checked = ("price_input_micros", "price_output_micros", "surface_mode")
        self.clean_fields(exclude=[f.name for f in self._meta.fields if f.name not in checked])

    def clean_served_by(self) -> None:
        """Whether `served_by` may serve it (every path: the dashboard, the API, the admin); ValidationError
        names the field. One level only: the server is not itself served, and a deployment that serves
        others is not served. A deployment with active connector tokens is not served either: its
        connectors would announce themselves under its own id, where no request looks for them."""
        server = self.served_by
        if server is None:
            return
        errors = []
        if self.pk is not None and server.pk == self.pk:
            errors.append(f"{self.name} cannot be served by itself.")
        elif server.org_id != self.org_id:
            errors.append(f"{server.name} belongs to another organisation; a deployment is served by one of its own.")
        elif server.served_by_id is not None:
            errors.append(f"{server.name} is itself served by another deployment; choose the one whose connectors run.")
        elif self.pk is not None and Deployment.objects.filter(served_by=self).exists():
            errors.append(f"{self.name} serves other deployments, so it cannot be served by another one.")
        elif self.pk is not None and self.connector_tokens.filter(revoked_at__isnull=True).exists():
            errors.append(
                f"{self.name} has active connector tokens of its own; revoke them before another deployment serves it."
            )
        if errors:
            raise ValidationError({"served_by": errors})

    def clean_fallbacks(self, fallbacks: Sequence[Deployment]) -> None:
        """Whether `fallbacks`, in that order, may be its fallbacks: at most MAX_FALLBACKS, each once,
        not itself, each a deployment its organisation may use (its own or one granted to it), so a
        fallback never lets a key reach a model its organisation could not call by name."""
        names = [d.name for d in fallbacks]
        if len(names) > MAX_FALLBACKS:
            raise ValidationError({"fallbacks": f"At most {MAX_FALLBACKS} fallbacks."})
        if len(set(names)) != len(names):
            raise ValidationError({"fallbacks": "Each fallback may be listed once."})
        if self.pk is not None and any(d.pk == self.pk for d in fallbacks):
            raise ValidationError({"fallbacks": f"{self.name} cannot be its own fallback."})
        usable = set(Deployment.objects.usable_by(self.org_id).values_list("id", flat=True)) if fallbacks else set()
        refused = [d.name for d in fallbacks if d.pk not in usable]
        if refused:
            raise ValidationError(
                {"fallbacks": f"Your organisation may not use {', '.join(refused)}, so it cannot be a fallback."}
            )

    def clean(self) -> None:
        self.clean_served_by()

    def cost_micros(self, input_tokens: int, output_tokens: int) -> int:
        """Cost of a request in micro-USD, rounded up so that usage is never billed at zero."""
        total = input_tokens * self.price_input_micros + output_tokens * self.price_output_micros
        return -(-total // 1_000_000)


class DeploymentFallback(models.Model):
    """One of a deployment's fallbacks, at its place in the order they are tried."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="fallback_links")
    fallback = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="+")
    position = models.PositiveSmallIntegerField(default=0)

    org_path: ClassVar[str] = "deployment__org"

    class Meta:
        ordering = ["position", "id"]
        constraints = [models.UniqueConstraint(fields=["deployment", "fallback"], name="unique_fallback")]

    def __str__(self) -> str:
        return f"{self.deployment_id} → {self.fallback_id} (#{self.position})"


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

    org_path: ClassVar[str] = "deployment__org"  # accounts.tenancy: the org that owns the row

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

    # A grant belongs to the deployment's org, which gave it; `org` is the org it lets in.
    org_path: ClassVar[str] = "deployment__org"

    class Meta:
        constraints = [models.UniqueConstraint(fields=["deployment", "org"], name="unique_grant")]

    def __str__(self) -> str:
        return f"{self.org} → {self.deployment}"
