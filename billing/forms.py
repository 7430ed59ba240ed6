"""The usage filter, shared by the dashboard's usage page (and its CSV) and the management API."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator

from accounts.models import ApiKey, Organization
from deployments.models import Deployment

MAX_RANGE_DAYS = 400

# The days a filter may name. Far inside `date`'s own range (0001-01-01 to 9999-12-31), so that a
# default range before a day, or the exclusive end after one, is still a date.
FIRST_DAY = date(2000, 1, 1)
LAST_DAY = date(2999, 12, 31)
DAY_RANGE = f"Pick a day from {FIRST_DAY:%Y-%m-%d} to {LAST_DAY:%Y-%m-%d}."


class DayField(forms.DateField):
    """A UTC day from FIRST_DAY to LAST_DAY (the usage filter's, the audit log's, a key's expiry)."""

    default_validators = [MinValueValidator(FIRST_DAY, DAY_RANGE), MaxValueValidator(LAST_DAY, DAY_RANGE)]

    def __init__(self, **kwargs):
        kwargs.setdefault("widget", forms.DateInput(attrs={"type": "date"}))
        super().__init__(**kwargs)
        self.widget.attrs.update(min=FIRST_DAY.isoformat(), max=LAST_DAY.isoformat())


class UsageFilterForm(forms.Form):
    """Filters of the usage page and its CSV export; dates are inclusive UTC days."""

    start = DayField(required=False, label="From")
    end = DayField(required=False, label="To")
    key = forms.ModelChoiceField(
        queryset=ApiKey.objects.none(), required=False, empty_label="All keys", label="API key"
    )
    deployment = forms.ModelChoiceField(
        queryset=Deployment.objects.none(), required=False, empty_label="All models", label="Model"
    )
    period = forms.ChoiceField(choices=[("day", "Per day"), ("hour", "Per hour")], required=False, label="Buckets")

    DEFAULT_DAYS = 30
    MAX_HOURLY_DAYS = 14

    @classmethod
    def with_defaults(cls, data, *, org: Organization, today: date) -> UsageFilterForm:
        """Bound to `data` with the default range filled in, so that the date inputs show it."""
        data = data.copy()
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
        return cls(data, org=org, today=today)

    def __init__(self, data, *, org: Organization, today: date):
        super().__init__(data)
        self.today = today
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
        end = data.get("end") or self.today
        start = data.get("start") or self.default_start(end)
        if start > end:
            raise ValidationError("“From” must be on or before “To”.")
        if (end - start).days + 1 > MAX_RANGE_DAYS:
            raise ValidationError(f"Pick at most {MAX_RANGE_DAYS} days.")
        period = data.get("period") or "day"
        if period == "hour" and (end - start).days + 1 > self.MAX_HOURLY_DAYS:
            raise ValidationError(f"Hourly buckets cover at most {self.MAX_HOURLY_DAYS} days; pick “Per day”.")
        data.update(start=start, end=end, period=period)
        return data

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
