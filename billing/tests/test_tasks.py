from __future__ import annotations

from datetime import timedelta

from django.conf import settings

from billing.models import UsageEvent, UsageRollup
from billing.tasks import prune_usage_events, roll_up_usage
from tokios_site.celery import app

from .conftest import make_event, utc


def test_the_beat_schedule_names_only_registered_tasks():
    app.loader.import_default_modules()

    names = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}

    assert names == {
        "billing.roll_up_usage",
        "billing.build_statements",
        "billing.prune_usage_events",
        "proxy.prune_stored_responses",
        "alerts.evaluate",
        "alerts.prune",
    }
    assert names <= set(app.tasks)


def test_the_roll_up_task_returns_how_far_it_read(org, key, deployment):
    last = make_event(org=org, key=key, deployment=deployment)

    assert roll_up_usage() == last.pk
    assert roll_up_usage() == last.pk


def test_the_prune_task_deletes_old_events_but_keeps_their_rollups(org, key, deployment, settings, time_machine):
    settings.USAGE_RETENTION_DAYS = 30
    time_machine.move_to(utc(2026, 11, 20, 12), tick=False)
    old = make_event(org=org, key=key, deployment=deployment, at=utc(2026, 10, 1, 8), tokens_out=9)
    recent = make_event(org=org, key=key, deployment=deployment, at=utc(2026, 11, 19), tokens_out=1)

    assert prune_usage_events() == 1

    assert list(UsageEvent.objects.values_list("pk", flat=True)) == [recent.pk]
    assert UsageRollup.objects.daily().get(bucket_start=utc(2026, 10, 1)).output_tokens == 9
    assert old.created_at < utc(2026, 11, 20) - timedelta(days=30)
