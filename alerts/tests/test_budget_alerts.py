"""Budget alerts: each threshold fires once per budget month, for the org's budget and each key's,
delivered as a signed webhook and an e-mail to the org's managers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.core import mail

from accounts.actions import create_api_key, revoke_api_key
from alerts.actions import update_settings
from alerts.evaluation import OrgEvaluation, evaluate
from alerts.models import Alert, AlertKind, AlertSettings

from .conftest import deliver_pending, spend

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
USD = 1_000_000


def budgeted(org, usd: int):
    org.monthly_budget_micros = usd * USD
    org.save()
    return org


def thresholds(raised) -> list[int]:
    return [item.alert.data["threshold_percent"] for item in raised]


def test_a_webhook_receives_each_crossed_threshold_once_signed(org, key, endpoint, receiver, admin, member):
    budgeted(org, 10)
    spend(org=org, key=key, at=NOW - timedelta(days=2), cost_micros=4 * USD)
    assert evaluate(now=NOW) == []

    spend(org=org, key=key, at=NOW - timedelta(hours=1), cost_micros=2 * USD)  # $6: 50 %
    assert thresholds(evaluate(now=NOW)) == [50]
    assert evaluate(now=NOW + timedelta(minutes=1)) == []  # still over 50 %: no second alert

    spend(org=org, key=key, at=NOW, cost_micros=3 * USD)  # $9: 80 %
    assert thresholds(evaluate(now=NOW + timedelta(minutes=2))) == [80]
    spend(org=org, key=key, at=NOW, cost_micros=3 * USD)  # $12: 100 %
    assert thresholds(evaluate(now=NOW + timedelta(minutes=3))) == [100]
    assert evaluate(now=NOW + timedelta(minutes=4)) == []

    deliver_pending()
    payloads = receiver.signed()
    assert len(receiver.received) == 3  # nothing unsigned, nothing twice
    assert [p["data"]["threshold_percent"] for p in payloads] == [50, 80, 100]
    first = payloads[0]
    assert first["event"] == "budget.firing" and first["org"] == "acme" and first["subject"] == "org"
    assert first["data"] == {
        "subject": "org",
        "threshold_percent": 50,
        "period": "2026-11",
        "spent_micros": 6 * USD,
        "budget_micros": 10 * USD,
        "key_id": None,
    }
    assert receiver.received[0].headers["Tokios-Event-Id"] == str(first["id"])
    # E-mail: to the owner and the admin, not the member.
    assert len(mail.outbox) == 3
    assert sorted(mail.outbox[0].to) == ["admin@acme.test", "owner@acme.test"]
    assert "50% of its monthly budget" in mail.outbox[0].subject


def test_a_keys_budget_fires_for_that_key_only(org, owner, key, endpoint, receiver):
    small, _ = create_api_key(org=org, name="batch", created_by=owner, monthly_budget_micros=2 * USD)
    spend(org=org, key=small, at=NOW, cost_micros=2 * USD)
    spend(org=org, key=key, at=NOW, cost_micros=50 * USD)  # no budget on `key`, none on the org

    raised = evaluate(now=NOW)

    assert [(r.alert.subject, r.alert.data["threshold_percent"]) for r in raised] == [
        (f"key:{small.pk}", 50),
        (f"key:{small.pk}", 80),
        (f"key:{small.pk}", 100),
    ]
    assert (
        raised[0].alert.title
        == f"Acme: key “batch” ({small.prefix}…) has spent 50% of its monthly budget ($2.00 of $2.00, 2026-11)"
    )


def test_each_threshold_fires_again_in_the_next_budget_month(org, key, endpoint):
    budgeted(org, 10)
    spend(org=org, key=key, at=NOW, cost_micros=6 * USD)
    assert thresholds(evaluate(now=NOW)) == [50]

    next_month = datetime(2026, 12, 1, 0, 5, tzinfo=UTC)
    assert evaluate(now=next_month) == []  # December's spend is nothing yet
    spend(org=org, key=key, at=next_month, cost_micros=5 * USD)
    raised = evaluate(now=next_month + timedelta(minutes=1))
    assert thresholds(raised) == [50]
    assert raised[0].alert.data["period"] == "2026-12"


def test_two_overlapping_runs_raise_a_crossing_once(org, key, endpoint):
    """Both runs read the episodes before either turned one: the conditional update decides."""
    budgeted(org, 10)
    spend(org=org, key=key, at=NOW, cost_micros=9 * USD)
    rules = AlertSettings.for_org(org)
    first, second = OrgEvaluation(org, rules, NOW), OrgEvaluation(org, rules, NOW)

    assert thresholds(first.run()) == [50, 80]
    assert second.run() == []
    assert Alert.objects.filter(kind=AlertKind.BUDGET).count() == 2


def test_the_orgs_own_thresholds_apply_and_zero_or_revoked_budgets_are_ignored(org, owner, key, endpoint):
    update_settings(org=org, budget_thresholds=[150, 25])
    blocked, _ = create_api_key(org=org, name="blocked", created_by=owner, monthly_budget_micros=0)
    gone, _ = create_api_key(org=org, name="gone", created_by=owner, monthly_budget_micros=USD)
    revoke_api_key(key=gone, actor=owner)
    budgeted(org, 4)
    spend(org=org, key=blocked, at=NOW, cost_micros=USD)
    spend(org=org, key=gone, at=NOW, cost_micros=5 * USD)  # the org: $6 of $4 = 150 %

    raised = evaluate(now=NOW)

    assert [(r.alert.subject, r.alert.data["threshold_percent"]) for r in raised] == [("org", 25), ("org", 150)]


def test_budget_alerts_can_be_switched_off(org, key, endpoint):
    update_settings(org=org, budget_enabled=False)
    budgeted(org, 1)
    spend(org=org, key=key, at=NOW, cost_micros=5 * USD)
    assert evaluate(now=NOW) == []


def test_one_orgs_failure_does_not_stop_the_others(org, other_org, key, other_key, monkeypatch):
    budgeted(org, 1)
    budgeted(other_org, 1)
    spend(org=org, key=key, at=NOW, cost_micros=USD)
    spend(org=other_org, key=other_key, at=NOW, cost_micros=USD)
    original = OrgEvaluation.budgets

    def broken_for_acme(self):
        if self.org.slug == "acme":
            raise RuntimeError("boom")
        return original(self)

    monkeypatch.setattr(OrgEvaluation, "budgets", broken_for_acme)
    raised = evaluate(now=NOW)
    assert {r.alert.org.slug for r in raised} == {"globex"}
