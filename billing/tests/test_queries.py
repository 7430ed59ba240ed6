from __future__ import annotations

from billing import rollups
from billing.queries import month_to_date, spent_this_month, usage_series

from .conftest import make_event, utc


def test_the_usage_series_has_every_bucket_in_the_range_empty_ones_with_zeros(org, key, deployment):
    make_event(org=org, key=key, deployment=deployment, at=utc(2026, 11, 2, 10), tokens_in=5, tokens_out=7)
    make_event(
        org=org, key=key, deployment=deployment, at=utc(2026, 11, 4, 23, 59), status=500, tokens_in=1, tokens_out=0
    )
    rollups.roll_up()

    series = usage_series(org, start=utc(2026, 11, 1, 15), end=utc(2026, 11, 5))

    assert [row["bucket_start"] for row in series] == [utc(2026, 11, d) for d in (1, 2, 3, 4)]
    assert [row["requests"] for row in series] == [0, 1, 0, 1]
    assert [row["errors"] for row in series] == [0, 0, 0, 1]
    assert series[1]["input_tokens"] == 5 and series[1]["output_tokens"] == 7
    assert series[1]["cost_micros"] == deployment.cost_micros(5, 7)


def test_the_hourly_series_can_be_narrowed_to_one_key_or_one_deployment(org, key, key_b, deployment, deployment_b):
    at = utc(2026, 11, 2, 10, 30)
    make_event(org=org, key=key, deployment=deployment, at=at, tokens_out=1)
    make_event(org=org, key=key_b, deployment=deployment, at=at, tokens_out=10)
    make_event(org=org, key=key_b, deployment=deployment_b, at=at, tokens_out=100)
    rollups.roll_up()
    window = dict(start=utc(2026, 11, 2, 10), end=utc(2026, 11, 2, 12), period="hour")

    everything = usage_series(org, **window)
    by_key = usage_series(org, key=key_b, **window)
    by_deployment = usage_series(org, deployment=deployment.pk, **window)

    assert [r["output_tokens"] for r in everything] == [111, 0]
    assert [r["output_tokens"] for r in by_key] == [110, 0]
    assert [r["output_tokens"] for r in by_deployment] == [11, 0]


def test_an_org_sees_none_of_another_orgs_usage(org, outsider_org, key, deployment):
    make_event(org=org, key=key, deployment=deployment, at=utc(2026, 11, 2, 10))
    rollups.roll_up()

    series = usage_series(outsider_org, start=utc(2026, 11, 1), end=utc(2026, 12, 1))

    assert len(series) == 30
    assert sum(r["requests"] for r in series) == 0
    assert month_to_date(outsider_org, now=utc(2026, 11, 20))["requests"] == 0


def test_month_to_date_adds_events_not_yet_rolled_up_without_counting_any_twice(org, key, deployment):
    make_event(org=org, key=key, deployment=deployment, at=utc(2026, 11, 2), tokens_in=100, tokens_out=10)
    make_event(org=org, key=key, deployment=deployment, at=utc(2026, 10, 31, 23, 59, 59), tokens_out=1000)
    rollups.roll_up()
    make_event(org=org, key=key, deployment=deployment, at=utc(2026, 11, 19), tokens_in=1, tokens_out=2)

    totals = month_to_date(org, now=utc(2026, 11, 20))

    assert totals == {
        "requests": 2,
        "errors": 0,
        "input_tokens": 101,
        "output_tokens": 12,
        "cost_micros": deployment.cost_micros(100, 10) + deployment.cost_micros(1, 2),
    }
    rollups.roll_up()
    assert month_to_date(org, now=utc(2026, 11, 20)) == totals


def test_spend_this_month_can_be_taken_for_one_key(org, key, key_b, deployment):
    make_event(org=org, key=key, deployment=deployment, at=utc(2026, 11, 2), tokens_in=0, tokens_out=1_000_000)
    make_event(org=org, key=key_b, deployment=deployment, at=utc(2026, 11, 2), tokens_in=0, tokens_out=2_000_000)
    rollups.roll_up()

    assert spent_this_month(org_id=org.pk, key_id=key.pk, now=utc(2026, 11, 3))["cost_micros"] == 600_000
    assert spent_this_month(org_id=org.pk, now=utc(2026, 11, 3))["cost_micros"] == 1_800_000
