from __future__ import annotations

import random
import threading
from collections import Counter, defaultdict
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.db.models import Sum

from billing import rollups
from billing.models import Period, RollupWatermark, UsageEvent, UsageRollup
from billing.periods import floor_day, floor_hour

from .conftest import make_event, utc

FIELDS = ("requests", "errors", "input_tokens", "output_tokens", "cost_micros")


def expected_from_events(period: str) -> dict:
    """What the rollups must hold, computed independently in Python from the raw events."""
    floor = floor_hour if period == Period.HOUR else floor_day
    totals: dict = defaultdict(Counter)
    for e in UsageEvent.objects.exclude(org=None):
        bucket = totals[(floor(e.created_at), e.org_id, e.api_key_id, e.deployment_id)]
        bucket["requests"] += 1
        bucket["errors"] += int(e.status_code >= 400)
        bucket["input_tokens"] += e.input_tokens
        bucket["output_tokens"] += e.output_tokens
        bucket["cost_micros"] += e.cost_micros
    return {k: {f: v[f] for f in FIELDS} for k, v in totals.items()}


def actual_rollups(period: str) -> dict:
    return {
        (r.bucket_start, r.org_id, r.api_key_id, r.deployment_id): {f: getattr(r, f) for f in FIELDS}
        for r in UsageRollup.objects.filter(period=period)
    }


def random_events(org, keys, deployments, n: int, start, seed: int = 7) -> None:
    rng = random.Random(seed)
    for _ in range(n):
        make_event(
            org=org,
            key=rng.choice([*keys, None]),
            deployment=rng.choice([*deployments, None]),
            at=start + timedelta(seconds=rng.randrange(0, 3 * 86_400)),
            status=rng.choice([200, 200, 200, 404, 429, 502]),
            tokens_in=rng.randrange(0, 5000),
            tokens_out=rng.randrange(0, 5000),
        )


def test_rollups_equal_the_events_to_the_token_per_hour_and_per_day(org, key, key_b, deployment, deployment_b):
    random_events(org, [key, key_b], [deployment, deployment_b], 400, utc(2026, 10, 30, 22))

    rollups.roll_up()

    assert actual_rollups(Period.HOUR) == expected_from_events(Period.HOUR)
    assert actual_rollups(Period.DAY) == expected_from_events(Period.DAY)
    totals = UsageRollup.objects.daily().aggregate(t=Sum("output_tokens"), c=Sum("cost_micros"))
    events = UsageEvent.objects.aggregate(t=Sum("output_tokens"), c=Sum("cost_micros"))
    assert (totals["t"], totals["c"]) == (events["t"], events["c"])


def test_running_the_rollup_twice_gives_the_same_rows(org, key, deployment):
    random_events(org, [key], [deployment], 120, utc(2026, 11, 3))
    rollups.roll_up()
    first = actual_rollups(Period.HOUR), actual_rollups(Period.DAY)

    rollups.roll_up()
    rollups.roll_up()

    assert (actual_rollups(Period.HOUR), actual_rollups(Period.DAY)) == first


def test_events_added_between_runs_are_counted_once(org, key, deployment):
    make_event(org=org, key=key, deployment=deployment, at=utc(2026, 11, 3, 10, 5), tokens_out=7)
    rollups.roll_up()
    make_event(org=org, key=key, deployment=deployment, at=utc(2026, 11, 3, 10, 50), tokens_out=11)
    make_event(org=org, key=key, deployment=deployment, at=utc(2026, 11, 3, 11, 1), tokens_out=13)

    rollups.roll_up()
    rollups.roll_up()

    hour = UsageRollup.objects.hourly().get(bucket_start=utc(2026, 11, 3, 10))
    day = UsageRollup.objects.daily().get(bucket_start=utc(2026, 11, 3))
    assert (hour.requests, hour.output_tokens) == (2, 18)
    assert (day.requests, day.output_tokens) == (3, 31)


def test_an_event_committed_late_with_a_smaller_id_is_still_rolled_up(org, key, deployment):
    """Ids are assigned before commit: the roll-up may see id N+1 before id N exists."""
    early = make_event(org=org, key=key, deployment=deployment, at=utc(2026, 11, 3, 9), tokens_out=5)
    hidden = make_event(org=org, key=key, deployment=deployment, at=utc(2026, 11, 3, 9, 30), tokens_out=100)
    later = make_event(org=org, key=key, deployment=deployment, at=utc(2026, 11, 3, 9, 40), tokens_out=1)
    hidden_fields = {f.attname: getattr(hidden, f.attname) for f in UsageEvent._meta.concrete_fields}
    hidden.delete()  # as if its transaction had not committed yet when the roll-up ran
    rollups.roll_up()
    assert UsageRollup.objects.hourly().get().output_tokens == 6

    UsageEvent.objects.create(**hidden_fields)  # it commits now, with its old, smaller id
    rollups.roll_up()

    assert early.pk < hidden_fields["id"] < later.pk
    assert UsageRollup.objects.hourly().get().output_tokens == 106
    assert UsageRollup.objects.daily().get().output_tokens == 106


def test_events_without_an_org_are_not_rolled_up(org, key, deployment):
    make_event(org=None, status=401, tokens_in=0, tokens_out=0)
    make_event(org=org, key=key, deployment=deployment)

    rollups.roll_up()

    assert UsageRollup.objects.hourly().count() == 1


def test_events_naming_a_deleted_org_or_deployment_lose_the_dangling_id_before_they_are_rolled_up(
    org, key, deployment, deployment_b
):
    from accounts.models import Organization

    doomed_org = Organization.objects.create(name="Gone", slug="gone")
    doomed_org_id, deployment_b_id = doomed_org.pk, deployment_b.pk
    doomed_org.delete()
    deployment_b.delete()
    # Written after the deletes (their requests were still running): nothing refuses the ids.
    orphan = make_event(org=org, key=key, deployment=deployment, tokens_out=7)
    UsageEvent.objects.filter(pk=orphan.pk).update(deployment_id=deployment_b_id)
    stray = make_event(org=org, key=key, deployment=deployment, tokens_out=11)
    UsageEvent.objects.filter(pk=stray.pk).update(org_id=doomed_org_id)

    rollups.roll_up()

    orphan.refresh_from_db()
    stray.refresh_from_db()
    assert (orphan.org_id, orphan.deployment_id) == (org.pk, None)
    assert stray.org_id is None
    assert actual_rollups(Period.HOUR) == expected_from_events(Period.HOUR)
    assert UsageRollup.objects.hourly().get().deployment_id is None
    assert UsageRollup.objects.hourly().get().output_tokens == 7


def test_errors_count_requests_answered_with_status_400_or_more(org, key, deployment):
    for status in (200, 399, 400, 429, 503):
        make_event(org=org, key=key, deployment=deployment, status=status, at=utc(2026, 11, 3, 9))

    rollups.roll_up()

    row = UsageRollup.objects.hourly().get()
    assert (row.requests, row.errors) == (5, 3)


def test_the_watermark_records_how_far_the_rollup_read(org, key, deployment):
    events = [make_event(org=org, key=key, deployment=deployment) for _ in range(3)]

    rollups.roll_up()
    rollups.roll_up()

    mark = RollupWatermark.objects.get(name="usage")
    assert mark.last_event_id == events[-1].pk
    assert mark.safe_event_id == events[-1].pk


def test_pruning_deletes_only_old_events_that_were_rolled_up(org, key, deployment, settings):
    settings.USAGE_RETENTION_DAYS = 30
    now = utc(2026, 11, 20, 12)
    old = make_event(org=org, key=key, deployment=deployment, at=now - timedelta(days=40))
    recent = make_event(org=org, key=key, deployment=deployment, at=now - timedelta(days=2))
    rollups.roll_up()
    rollups.roll_up()  # old and recent are now below safe_event_id
    old_not_rolled = make_event(org=org, key=key, deployment=deployment, at=now - timedelta(days=41))

    deleted = rollups.prune_events(now=now)

    remaining = set(UsageEvent.objects.values_list("pk", flat=True))
    assert deleted == 1
    assert remaining == {recent.pk, old_not_rolled.pk}
    assert old.pk not in remaining
    assert UsageRollup.objects.hourly().filter(bucket_start=floor_hour(old.created_at)).get().requests == 1


def test_an_event_arriving_for_an_already_pruned_hour_is_added_to_that_hours_rollup(org, key, deployment):
    now = utc(2026, 11, 20, 12)
    hour = utc(2026, 10, 1, 8)
    make_event(org=org, key=key, deployment=deployment, at=hour, tokens_out=10)
    rollups.roll_up()
    rollups.roll_up()
    assert rollups.prune_events(now=now, retention_days=30) == 1

    make_event(org=org, key=key, deployment=deployment, at=hour + timedelta(minutes=5), tokens_out=3)
    rollups.roll_up()
    rollups.roll_up()

    row = UsageRollup.objects.hourly().get(bucket_start=hour)
    assert (row.requests, row.output_tokens) == (2, 13)
    assert UsageRollup.objects.daily().get(bucket_start=floor_day(hour)).output_tokens == 13


def test_deleting_a_deployment_folds_its_rollups_into_the_no_deployment_row(org, key, deployment, deployment_b):
    at = utc(2026, 11, 3, 9)
    make_event(org=org, key=key, deployment=deployment, at=at, tokens_out=5)
    make_event(org=org, key=key, deployment=None, at=at, status=404, tokens_in=0, tokens_out=0)
    make_event(org=org, key=key, deployment=deployment_b, at=at, tokens_out=7)
    rollups.roll_up()

    deployment.delete()

    row = UsageRollup.objects.hourly().get(deployment=None)
    assert (row.requests, row.output_tokens) == (2, 5)
    assert UsageRollup.objects.hourly().get(deployment=deployment_b).output_tokens == 7
    rollups.roll_up()  # a later recompute from the (now NULL) events agrees
    assert UsageRollup.objects.hourly().get(deployment=None).output_tokens == 5


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_rollups_on_postgresql_agree_with_the_events(org, key, key_b, deployment, deployment_b):
    assert connection.vendor == "postgresql"
    random_events(org, [key, key_b], [deployment, deployment_b], 300, utc(2026, 11, 1), seed=11)
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def run() -> None:
        try:
            start.wait()
            for _ in range(3):
                rollups.roll_up()
        except BaseException as exc:  # noqa: BLE001 — reported by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert actual_rollups(Period.HOUR) == expected_from_events(Period.HOUR)
    assert actual_rollups(Period.DAY) == expected_from_events(Period.DAY)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_events_written_while_rollups_run_concurrently_are_all_counted(org, key, deployment):
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(200):
                make_event(org=org, key=key, deployment=deployment, tokens_in=i, tokens_out=2 * i)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            stop.set()
            connections.close_all()

    def roller() -> None:
        try:
            while not stop.is_set():
                rollups.roll_up()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer), threading.Thread(target=roller), threading.Thread(target=roller)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rollups.roll_up()

    assert errors == []
    day = UsageRollup.objects.daily().aggregate(r=Sum("requests"), o=Sum("output_tokens"))
    assert (day["r"], day["o"]) == (200, sum(2 * i for i in range(200)))
