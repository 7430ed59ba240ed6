"""The usage filter, shared by the dashboard's usage page (and its CSV) and the management API."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from accounts.models import ApiKey, Organization
from deployments.models import Deployment

MAX_RANGE_DAYS = 400
MAX_TOP = 50  # rows of a usage breakdown before the rest become "other"

# The days a filter may name. Far inside `date`'s own range (0001-01-01 to 9999-12-31), so that a
# default range before a day, or the exclusive end after one, is still a date.
FIRST_DAY = date(2000, 1, 1)
LAST_DAY = date(2999, 12, 31)
DAY_RANGE = f"Pick a day from {FIRST_DAY:%Y-%m-%d} to {LAST_DAY:%Y-%m-%d}."


def _day_or_none(value: object) -> date | None:
    """A day from FIRST_DAY to LAST_DAY in ISO form, else None (the field itself reports what is wrong)."""
    try:
        day = date.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return day if day is not None and FIRST_DAY <= day <= LAST_DAY else None


class DayField(forms.DateField):
    """A UTC day from FIRST_DAY to LAST_DAY (the usage filter's, the audit log's, a key's expiry)."""

    default_validators = [MinValueValidator(FIRST_DAY, DAY_RANGE), MaxValueValidator(LAST_DAY, DAY_RANGE)]

    def __init__(self, **kwargs):
        kwargs.setdefault("widget", forms.DateInput(attrs={"type": "date"}))
        super().__init__(**kwargs)
        self.widget.attrs.update(min=FIRST_DAY.isoformat(), max=LAST_DAY.isoformat())


class Preset(models.TextChoices):
    """Date ranges by name, relative to today (UTC), so a bookmarked link keeps meaning "the last 7 days"."""

    TODAY = "today", "Today"
    DAYS_7 = "7d", "7 days"
    DAYS_30 = "30d", "30 days"
    THIS_MONTH = "this-month", "This month"
    LAST_MONTH = "last-month", "Last month"


def preset_days(preset: str, today: date) -> tuple[date, date]:
    """The first and last day (inclusive) of a preset range ending on or before `today`."""
    match Preset(preset):
        case Preset.TODAY:
            return today, today
        case Preset.DAYS_7:
            return today - timedelta(days=6), today
        case Preset.DAYS_30:
            return today - timedelta(days=29), today
        case Preset.THIS_MONTH:
            return today.replace(day=1), today
        case Preset.LAST_MONTH:
            last = today.replace(day=1) - timedelta(days=1)
            return last.replace(day=1), last


class UsageFilterForm(forms.Form):
    """Filters of the usage page and its CSV export; dates are inclusive UTC days.

    `range` (a Preset) sets both days, whatever `start` and `end` say; "today" comes in hourly
    buckets unless `period` says otherwise. Hourly buckets cover at most MAX_HOURLY_DAYS: a longer
    range asked per hour is narrowed to its last MAX_HOURLY_DAYS days (`narrowed_from` holds the
    first day asked for), not refused.
    """

    # Checked in clean(), so that a bad value is the form's error (the page shows it; a hidden field's it does not).
    range = forms.CharField(required=False, max_length=20, widget=forms.HiddenInput)
    start = DayField(required=False, label="From")
    end = DayField(required=False, label="To")
    key = forms.ModelChoiceField(
        queryset=ApiKey.objects.none(), required=False, empty_label="All keys", label="API key"
    )
    deployment = forms.ModelChoiceField(
        queryset=Deployment.objects.none(), required=False, empty_label="All models", label="Model"
    )
    period = forms.ChoiceField(choices=[("day", "Per day"), ("hour", "Per hour")], required=False, label="Buckets")
    top = forms.IntegerField(
        min_value=1,
        max_value=MAX_TOP,
        required=False,
        label="Top models and keys",
        help_text="The rest are summed as “other”.",
        widget=forms.NumberInput(attrs={"placeholder": "10"}),
    )

    DEFAULT_DAYS = 30
    MAX_HOURLY_DAYS = 14
    DEFAULT_TOP = 10

    @classmethod
    def with_defaults(cls, data, *, org: Organization, today: date) -> UsageFilterForm:
        """Bound to `data` with the default range filled in, so that the date inputs show it."""
        data = data.copy()
        if data.get("range") in Preset.values:
            data["start"], data["end"] = (day.isoformat() for day in preset_days(data["range"], today))
            if data["range"] == Preset.TODAY and not data.get("period"):
                data["period"] = "hour"
        end = data.get("end") or today.isoformat()
        if not data.get("start"):
            try:
                last = date.fromisoformat(end)
            except ValueError:
                last = None  # the field reports the bad "end"
            if last is not None and FIRST_DAY <= last <= LAST_DAY:
                data["start"] = cls.default_start(last).isoformat()
        if not data.get("end"):
            data["end"] = end
        # A long range asked per hour is narrowed here already, so that the date inputs show what the page shows.
        narrowed_from = None
        if data.get("period") == "hour":
            asked_start, asked_end = _day_or_none(data.get("start")), _day_or_none(data["end"])
            if asked_start and asked_end and (asked_end - asked_start).days + 1 > cls.MAX_HOURLY_DAYS:
                narrowed_from = asked_start
                data["start"] = cls.hourly_start(asked_end).isoformat()
        form = cls(data, org=org, today=today)
        form.narrowed_from = narrowed_from
        return form

    def __init__(self, data, *, org: Organization, today: date):
        super().__init__(data)
        self.today = today
        self.narrowed_from: date | None = None
        self.fields["key"].queryset = ApiKey.objects.for_org(org).order_by("name")  # type: ignore[attr-defined]
        self.fields["deployment"].queryset = Deployment.objects.usable_by(org).order_by("name")  # type: ignore[attr-defined]

    @classmethod
    def default_start(cls, end: date) -> date:
        """The first of DEFAULT_DAYS ending on `end` (a valid day), FIRST_DAY at the earliest."""
        return max(FIRST_DAY, end - timedelta(days=cls.DEFAULT_DAYS - 1))

    def clean(self) -> dict[str, Any]:
        super().clean()
        if self.has_error("start") or self.has_error("end"):
            return self.cleaned_data  # the day's own error says what is wrong
        data = self.cleaned_data
        preset = data.get("range") or ""
        if preset and preset not in Preset.values:
            raise ValidationError(f"Pick a date range from: {', '.join(Preset.values)}.")
        if preset:
            start, end = preset_days(preset, self.today)
        else:
            end = data.get("end") or self.today
            start = data.get("start") or self.default_start(end)
        if start > end:
            raise ValidationError("“From” must be on or before “To”.")
        period = data.get("period") or ("hour" if preset == Preset.TODAY else "day")
        if period == "hour" and (end - start).days + 1 > self.MAX_HOURLY_DAYS:
            self.narrowed_from = start
            start = self.hourly_start(end)
        if (end - start).days + 1 > MAX_RANGE_DAYS:
            raise ValidationError(f"Pick at most {MAX_RANGE_DAYS} days.")
        data.update(start=start, end=end, period=period, range=preset, top=data.get("top") or self.DEFAULT_TOP)
        return data

    @classmethod
    def hourly_start(cls, end: date) -> date:
        """The first day hourly buckets show for a range ending on `end`."""
        return max(FIRST_DAY, end - timedelta(days=cls.MAX_HOURLY_DAYS - 1))

    def query(self) -> dict:
        """Arguments for billing.queries.usage_series: aware UTC datetimes, end exclusive."""
        data = self.cleaned_data
        return {
            "start": datetime.combine(data["start"], time.min, tzinfo=UTC),
            "end": datetime.combine(data["end"] + timedelta(days=1), time.min, tzinfo=UTC),
            "key": data.get("key"),
            "deployment": data.get("deployment"),
            "period": data["period"],
        }
