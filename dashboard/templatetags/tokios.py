from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from django import template
from django.forms import BaseForm, BoundField
from django.urls import reverse
from django.utils.html import format_html

from lib.money import micros_to_usd

register = template.Library()


@register.filter
def usd(micros: int | None) -> str:
    """Micro-USD as dollars: cents for amounts of a dollar or more, up to six places below."""
    if micros is None or micros == "":
        return "—"
    amount = micros_to_usd(int(micros))
    if abs(amount) >= 1 or amount == 0:
        return f"${amount.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,}"
    return f"${amount.normalize():f}"


@register.filter
def usd_plain(micros: int | None) -> str:
    """Exact dollars for CSV-like contexts and form values, e.g. 0.150000."""
    if micros is None or micros == "":
        return ""
    return f"{micros_to_usd(int(micros))}"


@register.filter
def number(value) -> str:
    if value is None or value == "":
        return "—"
    return f"{int(value):,}"


@register.filter
def compact(value) -> str:
    """1234 → 1.2k, 5600000 → 5.6M: for tiles where the exact figure sits in a title attribute."""
    if value is None:
        return "—"
    value = int(value)
    for limit, suffix in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "k")):
        if abs(value) >= limit:
            scaled = Decimal(value) / limit
            text = f"{scaled.quantize(Decimal('0.1'), rounding=ROUND_HALF_UP)}".removesuffix(".0")
            return f"{text}{suffix}"
    return str(value)


@register.filter
def percent(part, whole) -> str:
    if not whole:
        return "—"
    return f"{Decimal(part or 0) * 100 / Decimal(whole):.0f}%"


@register.filter
def percent_value(part, whole) -> int:
    """0–100 for a <meter>/<progress> value."""
    if not whole:
        return 0
    return max(0, min(100, int(Decimal(part or 0) * 100 / Decimal(whole))))


@register.filter
def autofocused(field: BoundField) -> str:
    """The field's widget with `autofocus`: the first field of a page that is one form."""
    return field.as_widget(attrs={"autofocus": True})


@register.filter
def error_items(form: BaseForm) -> list[dict[str, str]]:
    """A form's errors for its error summary: the form's own first, then each visible field's with the
    id of the input to link to (a list of checkboxes has none of its own: its first box)."""
    items = [{"text": str(error), "target": "", "label": ""} for error in form.non_field_errors()]
    for field in form.visible_fields():
        target = field.id_for_label or (f"{field.auto_id}_0" if field.auto_id else "")
        items += [{"text": str(error), "target": target, "label": str(field.label)} for error in field.errors]
    return items


@register.filter
def action_label(action: str) -> str:
    """Audit actions, including the dashboard's own (invitations), in words."""
    from ..forms import AUDIT_ACTION_CHOICES

    return dict(AUDIT_ACTION_CHOICES).get(action, action)


STATUS_CLASSES = {
    "active": "ok",
    "online": "ok",
    "pending": "info",
    "accepted": "ok",
    "revoked": "muted",
    "expired": "warn",
    "paused": "warn",  # API keys (accounts.keys); the two below: billing.key_usage
    "over_budget": "bad",
    "rate_limited": "warn",
    "offline": "bad",
    "draining": "warn",
    "running": "info",  # a statement's month (billing.models.StatementStatus)
    "closing": "warn",
    "issued": "ok",
}


@register.simple_tag
def badge(status: str, label: str | None = None) -> str:
    return format_html('<span class="badge badge-{}">{}</span>', STATUS_CLASSES.get(status, "muted"), label or status)


@register.simple_tag(takes_context=True)
def nav_link(context, name: str, label: str) -> str:
    request = context["request"]
    url = reverse(f"dashboard:{name}")
    match = request.resolver_match
    current = match is not None and (match.url_name == name or match.url_name.startswith(f"{name.rstrip('s')}_"))
    if current:
        return format_html('<a href="{}" aria-current="page">{}</a>', url, label)
    return format_html('<a href="{}">{}</a>', url, label)
