from __future__ import annotations

import json
import re
import secrets
from datetime import timedelta
from typing import ClassVar

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models.functions import Cast
from django.utils import timezone

SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?$")

# The largest limits and budgets an admin may set, on every path (dashboard, API, commands, Django
# admin: all go through these fields' validators). A rate limit fits PostgreSQL's 32-bit integer
# column; a budget (10^9 USD a month) is exact as a double, as Redis' Lua scripts count it, and with
# prices bounded too (deployments.models.MAX_PRICE_MICROS) no spend sum comes near 64 bits.
MAX_RATE_LIMIT = 1_000_000_000  # requests or tokens per minute
MAX_BUDGET_MICROS = 10**15  # micro-USD a month: 1,000,000,000 USD
RATE_LIMIT_VALIDATORS = [MaxValueValidator(MAX_RATE_LIMIT)]
BUDGET_VALIDATORS = [MinValueValidator(0), MaxValueValidator(MAX_BUDGET_MICROS)]


def validate_org_slug(value: str) -> None:
    if not SLUG_RE.fullmatch(value):
        raise ValidationError(
            f"{value!r} is not a valid organisation slug: use 1-50 lower-case letters, digits and "
            "hyphens, starting and ending with a letter or digit."
        )


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def _create_user(self, email: str, password: str | None, **extra) -> User:
        if not email:
            raise ValueError("An email address is required.")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        if password:
            user.set_password(password)
        else:
            user.set_unusable_password()
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **extra) -> User:
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create_user(email, password, **extra)

    def create_superuser(self, email: str, password: str | None = None, **extra) -> User:
        extra["is_staff"] = True
        extra["is_superuser"] = True
        return self._create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    """A person who signs in with an email address. Staff users are platform operators."""

    email = models.EmailField(unique=True)
    name = models.CharField(max_length=150, blank=True)
    is_staff = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)
    date_joined = models.DateTimeField(default=timezone.now)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    def __str__(self) -> str:
        return self.email


# An organisation's share ID: what its owners give a model owner who wants to share a model with it
# (a grant). It identifies, it does not authorise; but its 128 random bits make it unguessable, so a
# lookup that misses tells nobody which organisations exist. Slugs have no "_", so the two never meet.
SHARE_ID_PREFIX = "org_"
SHARE_ID_RE = re.compile(r"org_[A-Za-z0-9_-]{22}")
# The one answer, on the dashboard and the API, for a value that names no organisation one may grant to.
GRANTEE_MISS = "No organisation with this share ID or slug among yours."


def new_share_id() -> str:
    return SHARE_ID_PREFIX + secrets.token_urlsafe(16)


class OrganizationQuerySet(models.QuerySet["Organization"]):
    def for_user(self, user) -> OrganizationQuerySet:
        return self.filter(memberships__user=user).distinct()

    def grantee(self, value: str, *, yours: OrganizationQuerySet) -> Organization | None:
        """The organisation a grant lets in: any one by its share ID (exact), or one of `yours` by
        slug. None for anything else, so that a caller answers alike for an organisation that does
        not exist and one it may not see. A value neither could be costs no query."""
        value = value.strip()
        if SHARE_ID_RE.fullmatch(value):
            return self.filter(share_id=value).first()
        slug = value.lower()
        if SLUG_RE.fullmatch(slug):
            return yours.filter(slug=slug).first()
        return None


class Organization(models.Model):
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=50, unique=True, validators=[validate_org_slug])
    share_id = models.CharField(
        max_length=26,
        unique=True,
        default=new_share_id,
        editable=False,
        help_text="Given to a model owner who wants to share a model with this organisation; not a secret.",
    )
    created_at = models.DateTimeField(default=timezone.now)
    # Optional org-wide limits, enforced on top of each key's own.
    rpm_limit = models.PositiveIntegerField(null=True, blank=True, validators=RATE_LIMIT_VALIDATORS)
    tpm_limit = models.PositiveIntegerField(null=True, blank=True, validators=RATE_LIMIT_VALIDATORS)
    monthly_budget_micros = models.BigIntegerField(
        null=True,
        blank=True,
        validators=BUDGET_VALIDATORS,
        help_text="Monthly spend cap in micro-USD (1 USD = 1,000,000).",
    )
    # Limits a new key starts with: the dashboard's key form is filled with them, and a key created
    # through the API without a limit of its own gets them. Changing them leaves existing keys alone.
    default_key_rpm_limit = models.PositiveIntegerField(null=True, blank=True, validators=RATE_LIMIT_VALIDATORS)
    default_key_tpm_limit = models.PositiveIntegerField(null=True, blank=True, validators=RATE_LIMIT_VALIDATORS)
    default_key_budget_micros = models.BigIntegerField(
        null=True,
        blank=True,
        validators=BUDGET_VALIDATORS,
        help_text="A new key's monthly spend cap in micro-USD.",
    )

    objects = OrganizationQuerySet.as_manager()

    # What the org's owners change on its settings page and through the API (accounts.org_settings).
    SETTINGS_FIELDS: ClassVar[tuple[str, ...]] = (
        "name",
        "monthly_budget_micros",
        "rpm_limit",
        "tpm_limit",
        "default_key_rpm_limit",
        "default_key_tpm_limit",
        "default_key_budget_micros",
    )

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug

    def clean_settings(self) -> None:
        """The bounds of its settings (their fields' validators), without full_clean's queries;
        ValidationError names the field."""
        self.clean_fields(exclude=[f.name for f in self._meta.fields if f.name not in self.SETTINGS_FIELDS])

    def key_defaults(self) -> dict[str, int | None]:
        """The limits a new key starts with, by ApiKey's field names."""
        return {
            "rpm_limit": self.default_key_rpm_limit,
            "tpm_limit": self.default_key_tpm_limit,
            "monthly_budget_micros": self.default_key_budget_micros,
        }


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"


ROLE_RANK: dict[str, int] = {Role.MEMBER: 0, Role.ADMIN: 1, Role.OWNER: 2}


def lower_role(first: str, second: str) -> str:
    """The less powerful of two roles."""
    return first if ROLE_RANK[first] <= ROLE_RANK[second] else second


class Membership(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "org"], name="unique_membership")]

    def __str__(self) -> str:
        return f"{self.user} in {self.org} ({self.role})"


class KeyStatus(models.TextChoices):
    """A key's life: what the gateway decides on (accounts.keys adds what its usage says)."""

    ACTIVE = "active", "Active"
    PAUSED = "paused", "Paused"
    EXPIRED = "expired", "Expired"
    REVOKED = "revoked", "Revoked"


class ApiKeyQuerySet(models.QuerySet["ApiKey"]):
    def for_org(self, org: Organization) -> ApiKeyQuerySet:
        return self.filter(org=org)

    def current(self) -> ApiKeyQuerySet:
        """Keys that are neither revoked nor expired: the key list's default."""
        now = timezone.now()
        return self.filter(revoked_at__isnull=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )

    def with_status(self, status: str) -> ApiKeyQuerySet:
        """Keys whose `status` is `status` (a KeyStatus value)."""
        now = timezone.now()
        if status == KeyStatus.REVOKED:
            return self.filter(revoked_at__isnull=False)
        if status == KeyStatus.EXPIRED:
            return self.filter(revoked_at__isnull=True, expires_at__lte=now)
        if status == KeyStatus.PAUSED:
            return self.current().filter(paused_at__isnull=False)
        if status == KeyStatus.ACTIVE:
            return self.current().filter(paused_at__isnull=True)
        raise ValueError(f"unknown key status {status!r}")

    def search(self, text: str) -> ApiKeyQuerySet:
        """Keys whose name contains `text` (any case), or whose prefix, current or replaced, starts
        with it (a prefix is often pasted with its trailing "…")."""
        text = text.strip()
        prefix = text.rstrip("…. ")
        found = models.Q(name__icontains=text)
        if prefix:
            found |= models.Q(prefix__startswith=prefix) | models.Q(previous_prefix__startswith=prefix)
        return self.filter(found)


class ApiKey(models.Model):
    """An `sk-tokios-…` key. Only its SHA-256 and a short display prefix are stored."""

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=32, unique=True)
    key_hash = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Model access: every deployment the org may use, or only those listed in
    # `allowed_deployments` (the reverse of deployments' Deployment.allowed_keys).
    all_models = models.BooleanField(default=True)
    # Requests with this key may go to a deployment's fallbacks when it is offline or full.
    use_fallbacks = models.BooleanField(default=False)
    rpm_limit = models.PositiveIntegerField(null=True, blank=True, validators=RATE_LIMIT_VALIDATORS)
    tpm_limit = models.PositiveIntegerField(null=True, blank=True, validators=RATE_LIMIT_VALIDATORS)
    monthly_budget_micros = models.BigIntegerField(
        null=True,
        blank=True,
        validators=BUDGET_VALIDATORS,
        help_text="Monthly spend cap in micro-USD (1 USD = 1,000,000).",
    )
    # A paused key is refused (401 key_paused) until it is resumed; nothing else about it changes.
    paused_at = models.DateTimeField(null=True, blank=True)
    # Rotation (accounts.keys.rotate_api_key): the secret it replaced keeps working until
    # `previous_valid_until`, then is refused. One such secret at most: rotating again ends it.
    rotated_at = models.DateTimeField(null=True, blank=True)
    previous_prefix = models.CharField(max_length=32, blank=True, default="")
    previous_key_hash = models.CharField(max_length=64, unique=True, null=True, blank=True)
    previous_valid_until = models.DateTimeField(null=True, blank=True)
    # A dashboard user's playground key (accounts.playground): one unrevoked per user and org, made
    # and rotated by the playground page; admins see, pause and revoke it like any key.
    playground = models.BooleanField(default=False)

    objects = ApiKeyQuerySet.as_manager()

    LIMIT_FIELDS: ClassVar[tuple[str, ...]] = ("rpm_limit", "tpm_limit", "monthly_budget_micros")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["org", "created_by"],
                condition=models.Q(playground=True, revoked_at__isnull=True),
                name="one_playground_key_per_user",
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def clean_limits(self) -> None:
        """The bounds of its limits and budget (their fields' validators), without full_clean's
        queries; ValidationError names the field."""
        self.clean_fields(exclude=[f.name for f in self._meta.fields if f.name not in self.LIMIT_FIELDS])

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def is_paused(self) -> bool:
        return self.paused_at is not None

    @property
    def status(self) -> str:
        if self.is_revoked:
            return KeyStatus.REVOKED
        if self.is_expired:
            return KeyStatus.EXPIRED
        if self.is_paused:
            return KeyStatus.PAUSED
        return KeyStatus.ACTIVE

    @property
    def previous_secret_valid(self) -> bool:
        """Whether the secret replaced by the last rotation is still accepted (its grace period)."""
        return self.previous_valid_until is not None and self.previous_valid_until > timezone.now()


class AuditAction(models.TextChoices):
    KEY_CREATED = "key.created", "API key created"
    KEY_REVOKED = "key.revoked", "API key revoked"
    KEY_UPDATED = "key.updated", "API key updated"
    KEY_ROTATED = "key.rotated", "API key rotated"
    KEY_PAUSED = "key.paused", "API key paused"
    KEY_RESUMED = "key.resumed", "API key resumed"
    KEY_EXPIRY_CHANGED = "key.expiry_changed", "API key expiry changed"
    TOKEN_CREATED = "connector_token.created", "Connector token created"
    TOKEN_REVOKED = "connector_token.revoked", "Connector token revoked"
    GRANT_CREATED = "grant.created", "Model grant created"
    GRANT_REVOKED = "grant.revoked", "Model grant revoked"
    MEMBER_ADDED = "member.added", "Member added"
    MEMBER_ROLE_CHANGED = "member.role_changed", "Member role changed"
    MEMBER_REMOVED = "member.removed", "Member removed"
    MEMBER_INVITED = "member.invited", "Member invited"
    INVITATION_REVOKED = "invitation.revoked", "Invitation revoked"
    PAT_CREATED = "pat.created", "Personal access token created"
    PAT_REVOKED = "pat.revoked", "Personal access token revoked"
    DEPLOYMENT_CREATED = "deployment.created", "Deployment created"
    DEPLOYMENT_UPDATED = "deployment.updated", "Deployment updated"
    DEPLOYMENT_DISABLED = "deployment.disabled", "Deployment disabled"
    DEPLOYMENT_ENABLED = "deployment.enabled", "Deployment enabled"
    DEPLOYMENT_DELETED = "deployment.deleted", "Deployment deleted"
    ORG_CREATED = "org.created", "Organisation created"
    ORG_SHARE_ID_ROTATED = "org.share_id_rotated", "Share ID replaced"
    ORG_SETTINGS_UPDATED = "org.settings_updated", "Organisation settings changed"
    ALERT_RULES_UPDATED = "alerts.rules_updated", "Alert rules changed"


class AuditLogQuerySet(models.QuerySet["AuditLog"]):
    def for_org(self, org: Organization) -> AuditLogQuerySet:
        return self.filter(org=org)

    def matching(self, text: str, *, named_prefixes: models.QuerySet | None = None) -> AuditLogQuerySet:
        """Entries whose target or details contain `text` (any case), and those about an API key or
        personal access token whose name contains it: their rows name them by prefix only, so a key
        is found by its name even after a rename. `named_prefixes` (a `values("prefix")` query) adds
        other things named by prefix, e.g. connector tokens, which live in a higher layer.

        Details are JSON, searched as their stored text: also for `text` as JSON writes it (quotes
        are escaped everywhere; non-ASCII letters in SQLite's copy, not in PostgreSQL's)."""
        entries = self.annotate(detail_text=Cast("detail", models.TextField()))
        found = models.Q(target__icontains=text)
        for form in {text, json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1]}:
            found |= models.Q(detail_text__icontains=form)
        found |= models.Q(target__in=ApiKey.objects.filter(name__icontains=text).values("prefix"))
        found |= models.Q(target__in=PersonalAccessToken.objects.filter(name__icontains=text).values("prefix"))
        if named_prefixes is not None:
            found |= models.Q(target__in=named_prefixes)
        return entries.filter(found)


class AuditLog(models.Model):
    org = models.ForeignKey(Organization, null=True, on_delete=models.CASCADE, related_name="audit_logs")
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Who acted when there is no user: "cli", "api-token:…".
    actor_label = models.CharField(max_length=100, blank=True)
    action = models.CharField(max_length=40, choices=AuditAction.choices)
    target = models.CharField(max_length=200, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = AuditLogQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.action} {self.target}"

    @property
    def actor_display(self) -> str:
        return str(self.actor) if self.actor_id else (self.actor_label or "system")


INVITATION_PREFIX = "inv-tokios-"
INVITATION_LIFETIME = timedelta(days=7)


def default_invitation_expiry():
    return timezone.now() + INVITATION_LIFETIME


class InvitationQuerySet(models.QuerySet["Invitation"]):
    def for_org(self, org: Organization) -> InvitationQuerySet:
        return self.filter(org=org)

    def pending(self) -> InvitationQuerySet:
        return self.filter(accepted_at__isnull=True, revoked_at__isnull=True, expires_at__gt=timezone.now())


class Invitation(models.Model):
    """An emailed link that creates (or attaches) a user and a membership. Stored hashed; expires."""

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    prefix = models.CharField(max_length=32, unique=True)
    token_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(default=default_invitation_expiry)
    accepted_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = InvitationQuerySet.as_manager()

    class Meta:
        db_table = "dashboard_invitation"  # created by the dashboard app, which held the model first
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.email} → {self.org} ({self.role})"

    @property
    def status(self) -> str:
        if self.accepted_at is not None:
            return "accepted"
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= timezone.now():
            return "expired"
        return "pending"

    @property
    def is_pending(self) -> bool:
        return self.status == "pending"


PAT_PREFIX = "pat-tokios-"


class PersonalAccessTokenQuerySet(models.QuerySet["PersonalAccessToken"]):
    def for_user(self, user) -> PersonalAccessTokenQuerySet:
        return self.filter(user=user)


class PersonalAccessToken(models.Model):
    """A `pat-tokios-…` token that lets automation call /api/ as its user, in one organisation.

    It acts at the lower of its own role and its user's current role in `org` (accounts.tenancy
    `token_membership`): demoting or removing the user demotes or stops the token at once. It always
    expires (settings.PAT_MAX_DAYS at most).

    Stored as a SHA-256 and a display prefix, like API keys: it carries ~240 random bits, so a
    slow password hash would buy nothing.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="access_tokens")
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="access_tokens")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=32, unique=True)
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = PersonalAccessTokenQuerySet.as_manager()

    class Meta:
        db_table = "api_personalaccesstoken"  # created by the api app, which held the model first
        ordering = ["-created_at"]
        verbose_name = "personal access token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= timezone.now():
            return "expired"
        return "active"

    @property
    def is_usable(self) -> bool:
        return self.status == "active"

    @property
    def actor_label(self) -> str:
        return f"api-token:{self.prefix}"


class ThrottleBucket(models.Model):
    """How often something was attempted in the current window: a password reset for one address, or
    from one client address (accounts.throttle). `key` is a keyed hash of what is counted, so the
    table holds no e-mail or IP address. Sign-in failures are counted by django-axes instead."""

    scope = models.CharField(max_length=32)
    key = models.CharField(max_length=64)
    window_start = models.DateTimeField()
    hits = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["scope", "key"], name="unique_throttle_bucket")]

    def __str__(self) -> str:
        return f"{self.scope} {self.key[:8]}… {self.hits} since {self.window_start:%Y-%m-%d %H:%M}"


class SubmittedForm(models.Model):
    """A create form that went through, by the one-time token the page carried (accounts.once).
    Submitting the same page again (a reload, a double click, the back button) finds this row and
    shows what was made, instead of making it twice."""

    class Kind(models.TextChoices):
        API_KEY = "api_key", "API key"
        KEY_ROTATION = "key_rotation", "API key rotation"
        CONNECTOR_TOKEN = "connector_token", "Connector token"
        DEPLOYMENT = "deployment", "Deployment"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    token = models.CharField(max_length=64)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    object_id = models.BigIntegerField(null=True, blank=True)
    label = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "token"], name="unique_submitted_form")]

    def __str__(self) -> str:
        return f"{self.kind} {self.label} ({self.created_at:%Y-%m-%d %H:%M})"
