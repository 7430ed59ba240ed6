"""Shared bits of the management commands: errors become a clear message and a non-zero exit."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from accounts.models import MAX_RATE_LIMIT, Organization
from accounts.onboarding import check_server


@contextmanager
def clear_errors() -> Iterator[None]:
    try:
        yield
    except ValidationError as exc:
        raise CommandError(" ".join(exc.messages)) from None


def get_org(slug: str) -> Organization:
    try:
        return Organization.objects.get(slug=slug)
    except Organization.DoesNotExist:
        raise CommandError(f"No organisation with slug {slug!r}.") from None


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be greater than zero")
    return number


def rate_limit(value: str) -> int:
    """A requests- or tokens-per-minute limit: 1 to MAX_RATE_LIMIT."""
    number = positive_int(value)
    if number > MAX_RATE_LIMIT:
        raise argparse.ArgumentTypeError(f"{value} is more than the largest limit, {MAX_RATE_LIMIT:,}")
    return number


def server_address(value: str) -> str:
    """--server: the origin users open the dashboard at, e.g. https://tokios.example."""
    try:
        return check_server(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
