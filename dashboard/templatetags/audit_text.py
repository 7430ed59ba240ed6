"""The audit log's details as words: a list is comma-separated names, not Python's repr."""

from __future__ import annotations

from django import template

register = template.Library()


@register.filter
def plain(value: object) -> str:
    """A detail value as text: lists joined by commas, mappings as "key: value", none as "—"."""
    if value is None or value == "" or value == [] or value == {}:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(plain(item) for item in value)
    if isinstance(value, dict):
        return "; ".join(f"{key}: {plain(item)}" for key, item in value.items())
    return str(value)
