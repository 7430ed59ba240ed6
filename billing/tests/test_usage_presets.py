"""The usage filter's date presets (today, 7 d, 30 d, this month, last month) and its hourly narrowing:
per hour over more than MAX_HOURLY_DAYS shows the last MAX_HOURLY_DAYS days of the range instead of
refusing it, on the dashboard (whose date inputs then show the narrowed range) and in the API."""

from __future__ import annotations

from datetime import date

import pytest
from django.http import QueryDict

from billing.forms import MAX_TOP, Preset, UsageFilterForm, preset_days

pytestmark = pytest.mark.django_db

TODAY = date(2026, 11, 15)


def dashboard_form(org, today=TODAY, **data) -> UsageFilterForm:
    query = QueryDict(mutable=True)
    query.update(data)
    return UsageFilterForm.with_defaults(query, org=org, today=today)


def api_form(org, today=TODAY, **data) -> UsageFilterForm:
    return UsageFilterForm(data, org=org, today=today)


@pytest.mark.parametrize(
    ("preset", "today", "first", "last"),
    [
        ("today", TODAY, TODAY, TODAY),
        ("7d", TODAY, date(2026, 11, 9), TODAY),
        ("30d", TODAY, date(2026, 10, 17), TODAY),
        ("this-month", TODAY, date(2026, 11, 1), TODAY),
        ("last-month", TODAY, date(2026, 10, 1), date(2026, 10, 31)),
        ("this-month", date(2026, 11, 1), date(2026, 11, 1), date(2026, 11, 1)),
        ("last-month", date(2027, 1, 1), date(2026, 12, 1), date(2026, 12, 31)),
        ("last-month", date(2028, 3, 31), date(2028, 2, 1), date(2028, 2, 29)),
        ("7d", date(2026, 3, 2), date(2026, 2, 24), date(2026, 3, 2)),
    ],
)
def test_presets_name_ranges_relative_to_today(preset, today, first, last):
    assert preset_days(preset, today) == (first, last)


@pytest.mark.parametrize("make", [dashboard_form, api_form], ids=["dashboard", "api"])
@pytest.mark.parametrize("preset", Preset.values)
def test_a_preset_overrides_the_days_given(org, make, preset):
    form = make(org, range=preset, start="2026-01-01", end="2026-01-02")
    assert form.is_valid(), form.errors
    assert (form.cleaned_data["start"], form.cleaned_data["end"]) == preset_days(preset, TODAY)
    assert form.cleaned_data["range"] == preset


def test_the_dashboards_date_inputs_show_the_presets_days(org):
    form = dashboard_form(org, range="last-month")
    assert form["start"].value() == "2026-10-01" and form["end"].value() == "2026-10-31"


@pytest.mark.parametrize("make", [dashboard_form, api_form], ids=["dashboard", "api"])
def test_today_comes_per_hour_unless_asked_per_day(org, make):
    form = make(org, range="today")
    assert form.is_valid() and form.cleaned_data["period"] == "hour"
    form = make(org, range="today", period="day")
    assert form.is_valid() and form.cleaned_data["period"] == "day"
    form = make(org, range="7d")
    assert form.is_valid() and form.cleaned_data["period"] == "day"


@pytest.mark.parametrize("make", [dashboard_form, api_form], ids=["dashboard", "api"])
@pytest.mark.parametrize("value", ["yesterday", "7D", "x" * 30, "30 d"])
def test_an_unknown_preset_is_the_forms_error(org, make, value):
    form = make(org, range=value)
    assert not form.is_valid()
    text = str(form.errors)
    assert "Pick a date range from" in text or "at most 20 characters" in text


@pytest.mark.parametrize("make", [dashboard_form, api_form], ids=["dashboard", "api"])
def test_per_hour_over_a_long_range_narrows_to_the_last_14_days(org, make):
    form = make(org, period="hour", start="2026-10-01", end="2026-11-15")
    assert form.is_valid(), form.errors
    assert (form.cleaned_data["start"], form.cleaned_data["end"]) == (date(2026, 11, 2), date(2026, 11, 15))
    assert form.narrowed_from == date(2026, 10, 1)
    query = form.query()
    assert (query["end"] - query["start"]).days == 14 and query["period"] == "hour"


def test_per_hour_over_the_default_30_days_narrows_and_the_inputs_show_it(org):
    form = dashboard_form(org, period="hour")
    assert form.is_valid(), form.errors
    assert form["start"].value() == "2026-11-02" and form.narrowed_from == date(2026, 10, 17)


@pytest.mark.parametrize("make", [dashboard_form, api_form], ids=["dashboard", "api"])
def test_a_preset_per_hour_is_narrowed_too(org, make):
    form = make(org, range="last-month", period="hour")
    assert form.is_valid(), form.errors
    assert (form.cleaned_data["start"], form.cleaned_data["end"]) == (date(2026, 10, 18), date(2026, 10, 31))
    assert form.narrowed_from == date(2026, 10, 1)


@pytest.mark.parametrize("make", [dashboard_form, api_form], ids=["dashboard", "api"])
def test_14_days_per_hour_are_not_narrowed(org, make):
    form = make(org, period="hour", start="2026-11-02", end="2026-11-15")
    assert form.is_valid() and form.narrowed_from is None
    assert form.cleaned_data["start"] == date(2026, 11, 2)


@pytest.mark.parametrize("make", [dashboard_form, api_form], ids=["dashboard", "api"])
def test_per_hour_a_backwards_range_is_still_an_error_and_a_very_long_one_narrows(org, make):
    assert not make(org, period="hour", start="2026-11-15", end="2026-11-01").is_valid()
    form = make(org, period="hour", start="2020-01-01", end="2026-11-15")  # over 400 days
    assert form.is_valid() and form.narrowed_from == date(2020, 1, 1)
    assert not make(org, period="day", start="2020-01-01", end="2026-11-15").is_valid()


@pytest.mark.parametrize("make", [dashboard_form, api_form], ids=["dashboard", "api"])
def test_top_defaults_to_10_and_is_bounded(org, make):
    default, three = make(org), make(org, top="3")
    assert default.is_valid() and default.cleaned_data["top"] == 10
    assert three.is_valid() and three.cleaned_data["top"] == 3
    for bad in ("0", str(MAX_TOP + 1), "-1", "ten", "1e9", "9" * 40):
        assert not make(org, top=bad).is_valid(), bad
