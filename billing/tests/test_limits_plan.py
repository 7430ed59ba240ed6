"""What a request must pass (`limits.plan`): its key's and org's buckets and spend counters, with
its costs, from any record that has the attributes limits need of a key and a deployment."""

from __future__ import annotations

from dataclasses import dataclass, replace

from billing.limits import plan
from billing.limits.core import MAX_TOKENS

from .conftest import utc


@dataclass(frozen=True, slots=True)
class Key:
    """All that limits read of an API key's access record (`KeyLimits`)."""

    id: int = 7
    org_id: int = 3
    org_slug: str = "acme"
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    budget_micros: int | None = None
    org_rpm_limit: int | None = None
    org_tpm_limit: int | None = None
    org_budget_micros: int | None = None


@dataclass(frozen=True, slots=True)
class Deployment:
    """All that limits read of a deployment's access record (`DeploymentPrices`)."""

    id: int = 5
    price_input_micros: int = 150_000  # $0.15 / MTok in
    price_output_micros: int = 600_000  # $0.60 / MTok out


NOVEMBER = utc(2026, 11, 18).timestamp()


def test_a_request_is_planned_against_key_and_org_limits_and_both_spend_counters():
    key = Key(rpm_limit=60, tpm_limit=1000, org_rpm_limit=600, budget_micros=5_000_000)

    buckets, budgets, _ = plan(key, Deployment(), 4000, utc(2026, 11, 30, 23, 59, 59).timestamp())

    assert [(b.key, b.scope, b.kind, b.capacity, b.cost) for b in buckets] == [
        ("tokios:rl:{o3}:k7:rpm", "key", "requests", 60, 1),
        ("tokios:rl:{o3}:k7:tpm", "key", "tokens", 1000, 1000),  # clamped: never more than a full bucket
        ("tokios:rl:{o3}:org:rpm", "org", "requests", 600, 1),
    ]
    assert [(g.key, g.scope, g.key_id, g.limit, g.cost, g.month) for g in budgets] == [
        ("tokios:spend:{o3}:k7:2026-11", "key", 7, 5_000_000, 2400, "2026-11"),  # 4000 tokens at $0.60/MTok
        ("tokios:spend:{o3}:org:2026-11", "org", None, None, 2400, "2026-11"),
    ]


def test_the_spec_holds_what_the_script_is_sent_once_per_run():
    key = Key(rpm_limit=60, tpm_limit=1000, org_rpm_limit=600, budget_micros=5_000_000)

    buckets, budgets, spec = plan(key, Deployment(), 4000, NOVEMBER)

    assert spec.tag == "{o3}"
    assert spec.keys == tuple(k.key.encode() for k in [*buckets, *budgets])
    # nb, ng, capacities, limits (-1: none), and when the counters expire: the end of the month plus a day.
    expires = int(utc(2026, 12, 2).timestamp())
    assert spec.static == tuple(str(x).encode() for x in (3, 2, 60, 1000, 600, 5_000_000, -1, expires))


def test_a_plan_is_kept_until_the_key_record_changes_or_the_month_turns():
    key, deployment = Key(rpm_limit=60, tpm_limit=1000), Deployment()

    first = plan(key, deployment, 10, NOVEMBER)
    again = plan(key, deployment, 500, NOVEMBER)
    changed = plan(replace(key, tpm_limit=2000), deployment, 10, NOVEMBER)
    repriced = plan(key, replace(deployment, price_output_micros=1), 10, NOVEMBER)
    next_month = plan(key, deployment, 10, utc(2026, 12, 1).timestamp())

    assert again[2] is first[2]  # the same spec: a run sends it once for both
    assert [b.cost for b in again[0]] == [1, 500]  # but each request's own costs
    assert changed[2] is not first[2] and changed[0][1].capacity == 2000
    assert repriced[2] is not first[2] and repriced[1][0].cost == 2  # 10 tokens at the input price now
    assert next_month[2] is not first[2] and next_month[1][0].key.endswith(":2026-12")


def test_budget_counters_are_keyed_by_utc_month():
    key = Key(budget_micros=1)

    _, november, _ = plan(key, Deployment(), 1, utc(2026, 11, 30, 23, 59, 59).timestamp())
    _, december, _ = plan(key, Deployment(), 1, utc(2026, 12, 1).timestamp())

    assert november[0].key.endswith(":2026-11")
    assert december[0].key.endswith(":2026-12")


def test_the_reserved_cost_is_rounded_up_to_a_micro_dollar_at_the_higher_price():
    _, budgets, _ = plan(Key(), Deployment(price_input_micros=900_000, price_output_micros=100_000), 3, NOVEMBER)

    assert [g.cost for g in budgets] == [3, 3]  # 3 tokens at $0.90/MTok: 2.7 micro-dollars


def test_without_a_deployment_a_request_reserves_tokens_but_no_money():
    buckets, budgets, _ = plan(Key(tpm_limit=1000), None, 300, NOVEMBER)

    assert [b.cost for b in buckets] == [300]
    assert [g.cost for g in budgets] == [0, 0]


def test_an_absurd_estimate_is_bounded_before_it_is_priced():
    pricey = Deployment(price_output_micros=2**62)

    buckets, budgets, _ = plan(Key(tpm_limit=1000), Deployment(), 10**30, NOVEMBER)
    _, capped, _ = plan(Key(), pricey, 10**30, NOVEMBER)
    _, negative, _ = plan(Key(), Deployment(), -5, NOVEMBER)

    assert buckets[0].cost == 1000
    assert budgets[0].cost == -(-MAX_TOKENS * 600_000 // 1_000_000)
    assert capped[0].cost == 2**53 - 1  # what a Lua number holds exactly
    assert negative[0].cost == 0
