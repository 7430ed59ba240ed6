"""The organisation settings form (dashboard/views/org_settings.py). Its bounds are the model's
(accounts.models MAX_RATE_LIMIT, MAX_BUDGET_MICROS); accounts.org_settings checks them again."""

from __future__ import annotations

from typing import Any

from django import forms

from accounts.models import MAX_RATE_LIMIT, Organization

from .forms import MAX_BUDGET_USD, UsdField


def _rate(label: str, help_text: str) -> forms.IntegerField:
    return forms.IntegerField(min_value=1, max_value=MAX_RATE_LIMIT, required=False, label=label, help_text=help_text)


class OrgSettingsForm(forms.Form):
    name = forms.CharField(max_length=200, label="Organisation name")
    monthly_budget_micros = UsdField(
        required=False,
        max_value=MAX_BUDGET_USD,
        label="Monthly budget (USD)",
        help_text="Requests are refused with 429 once the organisation has spent this much in a UTC month. "
        "Empty: no budget.",
    )
    rpm_limit = _rate("Requests per minute", "For the whole organisation, on top of each key's own. Empty: none.")
    tpm_limit = _rate("Tokens per minute", "For the whole organisation, on top of each key's own. Empty: none.")
    default_key_rpm_limit = _rate("New keys: requests per minute", "What a new key's limit starts at.")
    default_key_tpm_limit = _rate("New keys: tokens per minute", "What a new key's limit starts at.")
    default_key_budget_micros = UsdField(
        required=False,
        max_value=MAX_BUDGET_USD,
        label="New keys: monthly budget (USD)",
        help_text="What a new key's budget starts at.",
    )

    @classmethod
    def for_org(cls, org: Organization, data=None) -> OrgSettingsForm:
        return cls(data, initial={name: getattr(org, name) for name in Organization.SETTINGS_FIELDS})

    def settings(self) -> dict[str, Any]:
        return {name: self.cleaned_data[name] for name in Organization.SETTINGS_FIELDS}
