"""Error-rate alerts: the share of requests answered 5xx over a window, once per episode."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from alerts.actions import update_settings
from alerts.evaluation import evaluate

from .conftest import spend

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)


def events(raised) -> list[str]:
    return [item.alert.event for item in raised]


def test_the_error_rate_fires_once_over_its_threshold_and_resolves_below_half_of_it(org, key, deployment, endpoint):
    update_settings(org=org, error_rate_percent=20, error_rate_window_minutes=15, error_rate_min_requests=10)
    spend(org=org, key=key, deployment=deployment, at=T0, count=9)
    spend(org=org, key=key, deployment=deployment, at=T0, status=502)
    spend(org=org, key=key, at=T0, status=401, count=5)  # refused by Tokios: the caller's error, not an outage
    assert evaluate(now=T0 + timedelta(minutes=1)) == []  # 1 of 15

    spend(org=org, key=key, deployment=deployment, at=T0 + timedelta(minutes=1), status=504, count=3)  # 4 of 18
    raised = evaluate(now=T0 + timedelta(minutes=2))
    assert events(raised) == ["error_rate.firing"]
    assert raised[0].alert.data == {"requests": 18, "errors": 4, "window_minutes": 15, "threshold_percent": 20}
    assert evaluate(now=T0 + timedelta(minutes=3)) == []

    spend(org=org, key=key, deployment=deployment, at=T0 + timedelta(minutes=3), count=4)  # 4 of 22: 18 %
    assert evaluate(now=T0 + timedelta(minutes=4)) == []  # under 20 %, but not under 10 %: same episode
    spend(org=org, key=key, deployment=deployment, at=T0 + timedelta(minutes=4), count=20)  # 4 of 42
    assert events(evaluate(now=T0 + timedelta(minutes=5))) == ["error_rate.resolved"]


def test_too_few_requests_say_nothing(org, key, endpoint):
    update_settings(org=org, error_rate_min_requests=50)
    spend(org=org, key=key, at=T0, status=502, count=49)
    assert evaluate(now=T0 + timedelta(minutes=1)) == []


def test_only_the_window_counts(org, key, endpoint):
    update_settings(org=org, error_rate_window_minutes=5, error_rate_min_requests=5)
    spend(org=org, key=key, at=T0, status=500, count=10)
    spend(org=org, key=key, at=T0 + timedelta(minutes=6), count=10)
    assert evaluate(now=T0 + timedelta(minutes=6)) == []  # the failures are 6 minutes old
