"""Sums of usage never overflow 64 bits: rollups, usage pages, month-to-date, statements and folds
saturate at 2^63 - 1 instead of failing, so one org's absurd rows cannot stop the watermark (and with
it every org's rollups, pages, statements and pruning).

The absurd rows are events as an older version could write them (cost up to 2^63 - 1 per event, from
a price stored before prices were bounded); the writer now bounds a new event's cost to 2^53 - 1.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from billing import rollups
from billing.models import MAX_BIGINT, RollupWatermark, UsageEvent, UsageRollup
from billing.periods import floor_day, floor_hour
from billing.queries import month_to_date, spent_this_month, usage_series
from billing.statements import build_statements

from .conftest import make_event, utc

pytestmark = pytest.mark.django_db
MAX_TOKENS = 2**31 - 1


def legacy_event(*, org, key=None, deployment=None, at=None, cost: int = MAX_BIGINT, tokens: int = MAX_TOKENS):
    event = make_event(org=org, key=key, deployment=deployment, at=at, tokens_in=tokens, tokens_out=tokens)
    UsageEvent.objects.filter(pk=event.pk).update(cost_micros=cost)
    return event


def test_a_poisoned_hour_rolls_up_saturated_and_every_other_org_and_the_watermark_advance(
    org, outsider_org, key, deployment
):
    hour = utc(2026, 11, 3, 10)
    legacy_event(org=org, key=key, deployment=deployment, at=hour)
    legacy_event(org=org, key=key, deployment=deployment, at=hour + timedelta(minutes=1))
    other = [make_event(org=outsider_org, at=hour + timedelta(minutes=m), tokens_out=m) for m in (2, 3)]
    for event in other:
        UsageEvent.objects.filter(pk=event.pk).update(cost_micros=1000 + event.output_tokens)

    result = rollups.roll_up()

    assert result.last_event_id == RollupWatermark.objects.get().last_event_id == other[-1].pk
    poisoned = UsageRollup.objects.hourly().get(org=org)
    assert (poisoned.requests, poisoned.cost_micros) == (2, MAX_BIGINT)
    assert (poisoned.input_tokens, poisoned.output_tokens) == (2 * MAX_TOKENS, 2 * MAX_TOKENS)
    assert UsageRollup.objects.daily().get(org=org, bucket_start=floor_day(hour)).cost_micros == MAX_BIGINT
    fine = UsageRollup.objects.daily().get(org=outsider_org)
    assert (fine.requests, fine.output_tokens, fine.cost_micros) == (2, 5, 2005)


def test_a_day_of_saturated_hours_saturates_too(org, key, deployment):
    day = utc(2026, 11, 4)
    for hour in range(3):
        legacy_event(org=org, key=key, deployment=deployment, at=day + timedelta(hours=hour))

    rollups.roll_up()

    hours = UsageRollup.objects.hourly().filter(org=org).values_list("cost_micros", flat=True)
    assert list(hours) == [MAX_BIGINT] * 3
    assert UsageRollup.objects.daily().get(org=org).cost_micros == MAX_BIGINT


def test_pages_month_to_date_and_budget_seeding_saturate_instead_of_failing(org, key, deployment):
    now = timezone.now()
    legacy_event(org=org, key=key, deployment=deployment, at=now - timedelta(seconds=2))
    legacy_event(org=org, key=key, deployment=deployment, at=now - timedelta(seconds=1))
    assert month_to_date(org)["cost_micros"] == MAX_BIGINT  # events above the watermark
    rollups.roll_up()
    legacy_event(org=org, key=key, deployment=deployment, at=now)  # and one not rolled up yet

    month = month_to_date(org)
    series = usage_series(org, start=floor_day(now), end=floor_day(now) + timedelta(days=1))

    assert (month["requests"], month["cost_micros"]) == (3, MAX_BIGINT)
    assert spent_this_month(org_id=org.pk, key_id=key.pk)["cost_micros"] == MAX_BIGINT
    assert [row["cost_micros"] for row in series] == [MAX_BIGINT]
    assert series[0]["input_tokens"] == 2 * MAX_TOKENS


def test_statements_of_a_poisoned_org_saturate_and_every_org_gets_its_statement(
    org, outsider_org, key, deployment, deployment_b
):
    now = timezone.now()
    legacy_event(org=org, key=key, deployment=deployment, at=now - timedelta(seconds=1))
    legacy_event(org=org, key=key, deployment=deployment_b, at=now - timedelta(seconds=1))
    fine = make_event(org=outsider_org, at=now, tokens_out=9)
    UsageEvent.objects.filter(pk=fine.pk).update(cost_micros=123)
    rollups.roll_up()

    assert build_statements() == 2

    poisoned = org.statements.get()
    assert sorted(line.cost_micros for line in poisoned.lines.all()) == [MAX_BIGINT, MAX_BIGINT]
    assert poisoned.total_micros == MAX_BIGINT
    assert poisoned.input_tokens == 2 * MAX_TOKENS
    assert outsider_org.statements.get().total_micros == 123


def test_an_event_topping_up_a_pruned_hour_past_64_bits_saturates(org, key, deployment):
    now = utc(2026, 11, 20, 12)
    hour = utc(2026, 10, 1, 8)
    legacy_event(org=org, key=key, deployment=deployment, at=hour)
    rollups.roll_up()
    rollups.roll_up()
    assert rollups.prune_events(now=now, retention_days=30) == 1

    legacy_event(org=org, key=key, deployment=deployment, at=hour + timedelta(minutes=5))
    rollups.roll_up()

    row = UsageRollup.objects.hourly().get(bucket_start=floor_hour(hour))
    assert (row.requests, row.cost_micros) == (2, MAX_BIGINT)
    assert UsageRollup.objects.daily().get(bucket_start=floor_day(hour)).cost_micros == MAX_BIGINT


def test_deleting_a_key_folds_rows_past_64_bits_saturated(org, key, deployment):
    at = utc(2026, 11, 3, 9)
    legacy_event(org=org, key=key, deployment=deployment, at=at)
    legacy_event(org=org, key=None, deployment=deployment, at=at)
    rollups.roll_up()

    key.delete()

    row = UsageRollup.objects.hourly().get(org=org)
    assert (row.api_key_id, row.requests, row.cost_micros) == (None, 2, MAX_BIGINT)
