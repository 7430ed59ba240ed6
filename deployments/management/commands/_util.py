"""What the deployments commands share beyond accounts' helpers (accounts/management/commands/_util.py)."""

from __future__ import annotations

from django.core.management.base import CommandError

from deployments.models import Deployment


def get_deployment(name: str) -> Deployment:
    try:
        return Deployment.objects.select_related("org").get(name=name)
    except Deployment.DoesNotExist:
        raise CommandError(f"No deployment named {name!r}.") from None
