"""The key list's filter and the key page's forms: rotate, expiry."""

from __future__ import annotations

from datetime import UTC, datetime, time

from django import forms
from django.core.exceptions import ValidationError

from accounts.keys import ROTATION_GRACE_CHOICES
from billing.forms import DayField
from billing.key_usage import KeyFilter

from .once import OneTimeForm

MAX_PAGE = 100_000


class KeyFilterForm(forms.Form):
    """`?q=` (a name or prefix), `?status=` (KeyFilter; revoked and expired keys only when asked for),
    `?page=`. Anything out of bounds falls back to the default rather than failing the page."""

    q = forms.CharField(
        required=False,
        max_length=100,
        label="Search",
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "name or sk-tokios-… prefix"}),
    )
    status = forms.ChoiceField(choices=KeyFilter.choices, required=False, initial=KeyFilter.CURRENT)
    page = forms.IntegerField(required=False, min_value=1, max_value=MAX_PAGE, widget=forms.HiddenInput)

    def values(self) -> tuple[str, str, int]:
        """(query, status, page); the defaults for whatever did not validate."""
        data = self.cleaned_data if self.is_valid() else {}
        return (
            (data.get("q") or "").replace("\x00", ""),
            data.get("status") or KeyFilter.CURRENT,
            data.get("page") or 1,
        )


class RotateForm(OneTimeForm):
    grace_seconds = forms.TypedChoiceField(
        label="Keep the old secret working for",
        choices=ROTATION_GRACE_CHOICES,
        coerce=int,
        initial=3600,
        help_text="Time to roll the new secret out to every client; after that the old one gets 401.",
    )


class ExpiryForm(forms.Form):
    expires_on = DayField(required=False, label="Expires on", help_text="UTC, at the end of the day. Empty: never.")

    def clean_expires_on(self):
        day = self.cleaned_data["expires_on"]
        if day is not None and self.expires_at(day) <= datetime.now(UTC):
            raise ValidationError("The expiry must be in the future.")
        return day

    @staticmethod
    def expires_at(day) -> datetime:
        return datetime.combine(day, time.max, tzinfo=UTC)

    def cleaned_expiry(self) -> datetime | None:
        day = self.cleaned_data["expires_on"]
        return self.expires_at(day) if day else None
