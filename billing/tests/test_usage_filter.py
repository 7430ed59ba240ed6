"""The usage filter (billing/forms.py) names days from FIRST_DAY to LAST_DAY only: the day before or
after any day it accepts is a date, so a default range or an exclusive end never leaves the
calendar. Out of bounds is a field error, from the dashboard's defaults and from the API alike."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from django.http import QueryDict

from billing.forms import FIRST_DAY, LAST_DAY, UsageFilterForm

pytestmark = pytest.mark.django_db

TODAY = date(2026, 11, 15)


def dashboard_form(org, **data) -> UsageFilterForm:
    query = QueryDict(mutable=True)
    query.update(data)
    return UsageFilterForm.with_defaults(query, org=org, today=TODAY)


def api_form(org, **data) -> UsageFilterForm:
    return UsageFilterForm(data, org=org, today=TODAY)


@pytest.mark.parametrize("make", [dashboard_form, api_form], ids=["dashboard", "api"])
@pytest.mark.parametrize(
    "data",
    [
        {"end": "9999-12-31"},
        {"end": "0001-01-01"},
        {"start": "0001-01-01"},
        {"start": "9999-12-31", "end": "9999-12-31"},
        {"start": (FIRST_DAY - timedelta(days=1)).isoformat(), "end": FIRST_DAY.isoformat()},
        {"start": LAST_DAY.isoformat(), "end": (LAST_DAY + timedelta(days=1)).isoformat()},
    ],
)
def test_a_day_out_of_bounds_is_a_field_error(org, make, data):
    form = make(org, **data)
    assert not form.is_valid()
    assert set(form.errors) <= {"start", "end"} and form.errors
    assert "2000-01-01" in str(form.errors)


@pytest.mark.parametrize("make", [dashboard_form, api_form], ids=["dashboard", "api"])
def test_the_default_range_stops_at_the_first_day(org, make):
    form = make(org, end=(FIRST_DAY + timedelta(days=3)).isoformat())
    assert form.is_valid(), form.errors
    assert (form.cleaned_data["start"], form.cleaned_data["end"]) == (FIRST_DAY, FIRST_DAY + timedelta(days=3))


def test_the_last_day_ends_the_day_after(org):
    form = api_form(org, start=LAST_DAY.isoformat(), end=LAST_DAY.isoformat())
    assert form.is_valid(), form.errors
    query = form.query()
    assert (query["end"] - query["start"]) == timedelta(days=1)


def test_the_default_is_the_last_30_days(org):
    form = dashboard_form(org)
    assert form.is_valid(), form.errors
    assert (form.cleaned_data["start"], form.cleaned_data["end"]) == (TODAY - timedelta(days=29), TODAY)
