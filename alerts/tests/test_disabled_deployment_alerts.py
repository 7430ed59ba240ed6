"""A disabled deployment raises no alert of its own making: its 503s `deployment_disabled` are not
failures for the error rate, and it is not watched for a missing connector while it is off."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from alerts.actions import update_settings
from alerts.evaluation import evaluate
from billing.models import UsageEvent
from deployments.lifecycle import disable_deployment, enable_deployment
from deployments.models import ConnectorToken

from .conftest import spend

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)


def events(raised) -> list[str]:
    return [item.alert.event for item in raised]


def test_refusals_of_a_disabled_deployment_are_not_errors_but_an_offline_one_s_are(org, key, deployment, endpoint):
    update_settings(org=org, error_rate_percent=20, error_rate_min_requests=10, connector_down_enabled=False)
    spend(org=org, key=key, deployment=deployment, at=T0, status=503, count=20)
    UsageEvent.objects.filter(org=org).update(error_code="deployment_disabled")
    assert evaluate(now=T0 + timedelta(minutes=1)) == []

    UsageEvent.objects.filter(org=org).update(error_code="connector_offline")
    assert events(evaluate(now=T0 + timedelta(minutes=2))) == ["error_rate.firing"]


def test_a_disabled_deployment_is_not_watched_for_a_missing_connector(org, deployment, connector_token, endpoint):
    update_settings(org=org, connector_down_minutes=5, flapping_enabled=False, error_rate_enabled=False)
    ConnectorToken.objects.filter(pk=connector_token.pk).update(last_seen_at=T0)
    disable_deployment(deployment=deployment)
    assert evaluate(now=T0 + timedelta(hours=1)) == []

    enable_deployment(deployment=deployment)
    assert events(evaluate(now=T0 + timedelta(hours=1, minutes=1))) == ["connector_down.firing"]
