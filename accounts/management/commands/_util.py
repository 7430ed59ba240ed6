"""Shared bits of the management commands: errors become a clear message and a non-zero exit."""

from __future__ import annotations

from contextlib import contextmanager

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError


@contextmanager
def clear_errors():
    try:
        yield
    except ValidationError as exc:
        raise CommandError(" ".join(exc.messages)) from None


def get_org(slug: str):
    from accounts.models import Organization

    try:
        return Organization.objects.get(slug=slug)
    except Organization.DoesNotExist:
        raise CommandError(f"No organisation with slug {slug!r}.") from None


def get_deployment(name: str):
    from deployments.models import Deployment

    try:
        return Deployment.objects.select_related("org").get(name=name)
    except Deployment.DoesNotExist:
        raise CommandError(f"No deployment named {name!r}.") from None


def positive_int(value: str) -> int:
    import argparse

    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be greater than zero")
    return number
