"""The dashboard's alert forms. Bounds are the model fields' (alerts.models); the actions check them again."""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError

from .models import MAX_THRESHOLD_PERCENT, MAX_THRESHOLDS, AlertSettings, validate_thresholds
from .webhooks import MAX_URL_CHARS


class ThresholdsField(forms.CharField):
    """Budget thresholds typed as "50, 80, 100", cleaned to a sorted list of whole percentages."""

    def __init__(self, **kwargs):
        kwargs.setdefault("max_length", 100)
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def prepare_value(self, value):
        if isinstance(value, list):
            return ", ".join(str(item) for item in value)
        return value

    def clean(self, value):
        text = super().clean(value) or ""
        items = [item.strip().rstrip("%") for item in text.replace(";", ",").split(",") if item.strip()]
        if len(items) > MAX_THRESHOLDS:
            raise ValidationError(f"At most {MAX_THRESHOLDS} thresholds.")
        try:
            numbers = [int(item) for item in items]
        except ValueError:
            raise ValidationError(
                f"Whole percentages from 1 to {MAX_THRESHOLD_PERCENT}, separated by commas."
            ) from None
        numbers = sorted(set(numbers))
        validate_thresholds(numbers)
        return numbers


class AlertSettingsForm(forms.ModelForm):
    budget_thresholds = ThresholdsField(
        label="Budget thresholds (%)",
        help_text=f"Up to {MAX_THRESHOLDS} percentages of a monthly budget (1–{MAX_THRESHOLD_PERCENT}), e.g. 50, 80, 100. "
        "Each fires once a month for the organisation's budget and for each key's.",
    )

    class Meta:
        model = AlertSettings
        fields = [
            "email_enabled",
            "budget_enabled",
            "budget_thresholds",
            "connector_down_enabled",
            "connector_down_minutes",
            "flapping_enabled",
            "flapping_connects",
            "flapping_window_minutes",
            "error_rate_enabled",
            "error_rate_percent",
            "error_rate_window_minutes",
            "error_rate_min_requests",
        ]
        labels = {
            "email_enabled": "E-mail owners and admins",
            "budget_enabled": "Budget alerts",
            "connector_down_enabled": "Alert when a deployment has no connector",
            "connector_down_minutes": "… for this many minutes",
            "flapping_enabled": "Alert when connectors flap",
            "flapping_connects": "Connects that count as flapping",
            "flapping_window_minutes": "… within this many minutes",
            "error_rate_enabled": "Alert on the error rate",
            "error_rate_percent": "Error rate (% of requests answered 5xx)",
            "error_rate_window_minutes": "… over this many minutes",
            "error_rate_min_requests": "… with at least this many requests",
        }

    def settings_fields(self) -> dict:
        return {name: self.cleaned_data[name] for name in self.Meta.fields}


class WebhookEndpointForm(forms.Form):
    url = forms.URLField(
        label="URL",
        max_length=MAX_URL_CHARS,
        assume_scheme="https",
        help_text="An https:// address on the public internet. Alerts are POSTed to it as signed JSON.",
    )
    description = forms.CharField(max_length=200, required=False)
