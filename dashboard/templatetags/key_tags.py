"""What the key pages show of a key's usage (billing.key_usage)."""

from __future__ import annotations

from django import template

from accounts.models import ApiKey
from billing.key_usage import KeyFilter, KeyUsage

register = template.Library()

LABELS = {value: label.lower() for value, label in KeyFilter.choices}


@register.filter
def key_flags(usage: KeyUsage, key: ApiKey) -> list[str]:
    return usage.flags(key)


@register.filter
def budget_percent(usage: KeyUsage, key: ApiKey) -> int | None:
    return usage.budget_percent(key)


@register.filter
def meter_value(percent: int | None) -> int:
    return max(0, min(100, percent or 0))


@register.filter
def flag_label(value: str) -> str:
    """`over_budget` → "over budget"."""
    return LABELS.get(value, value)
