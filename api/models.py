from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

PAT_PREFIX = "pat-tokios-"


class PersonalAccessTokenQuerySet(models.QuerySet["PersonalAccessToken"]):
    def for_user(self, user) -> PersonalAccessTokenQuerySet:
        return self.filter(user=user)

    def active(self) -> PersonalAccessTokenQuerySet:
        return self.filter(revoked_at__isnull=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=timezone.now())
        )


class PersonalAccessToken(models.Model):
    """A `pat-tokios-…` token that lets automation call /api/ as its user, with that user's roles.

    Stored as a SHA-256 and a display prefix, like API keys: it carries ~240 random bits, so a
    slow password hash would buy nothing.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="access_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=32, unique=True)
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = PersonalAccessTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "personal access token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= timezone.now():
            return "expired"
        return "active"

    @property
    def is_usable(self) -> bool:
        return self.status == "active"

    @property
    def actor_label(self) -> str:
        return f"api-token:{self.prefix}"
