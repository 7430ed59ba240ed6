"""The Celery path: `alerts.evaluate` raises and enqueues, `alerts.deliver` attempts and retries
(in process, eagerly), and once through a real worker process and the Redis broker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone

from alerts.actions import update_settings
from alerts.models import Alert, AlertSettings, AlertState, ConnectorEvent, Delivery, DeliveryAttempt, DeliveryStatus
from alerts.raising import raise_alert
from alerts.retention import prune
from alerts.tasks import evaluate_alerts
from tokios_site.celery import app

from .conftest import spend

ROOT = Path(__file__).resolve().parents[2]
USD = 1_000_000


@pytest.fixture
def eager():
    """Tasks run in process; a retry runs again at once (eager mode skips the countdown), and an
    error comes back through the result's get()."""
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


@pytest.mark.django_db
def test_the_evaluate_task_delivers_what_it_raised_retrying_a_failure(
    org, key, endpoint, receiver, eager, django_capture_on_commit_callbacks
):
    update_settings(org=org, email_enabled=False)
    org.monthly_budget_micros = 2 * USD
    org.save()
    spend(org=org, key=key, at=timezone.now(), cost_micros=USD)
    receiver.replies = [503]

    with django_capture_on_commit_callbacks(execute=True):
        assert evaluate_alerts.delay().get() == 1
    with django_capture_on_commit_callbacks(execute=True):
        assert evaluate_alerts.delay().get() == 0

    assert [p["data"]["threshold_percent"] for p in receiver.signed()] == [50, 50]  # a 503, then the retry
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.DELIVERED, 2)


@pytest.mark.django_db
def test_a_delivery_whose_task_was_lost_is_sent_by_the_next_evaluation(
    org, endpoint, receiver, eager, django_capture_on_commit_callbacks
):
    now = timezone.now()
    raised = raise_alert(
        org=org, rules=AlertSettings.for_org(org), kind="test", title="t", data={}, now=now, endpoints=[endpoint]
    )
    [pk] = raised.deliveries
    with django_capture_on_commit_callbacks(execute=True):
        evaluate_alerts.delay().get()
    assert receiver.received == []  # just raised: its own task is on its way

    Delivery.objects.filter(pk=pk).update(created_at=now - timedelta(minutes=11))
    with django_capture_on_commit_callbacks(execute=True):
        evaluate_alerts.delay().get()
    assert len(receiver.signed()) == 1
    assert Delivery.objects.get(pk=pk).status == DeliveryStatus.DELIVERED


@pytest.mark.django_db
def test_pruning_keeps_running_episodes_and_recent_history(org, deployment, endpoint):
    now = timezone.now()
    old = now - timedelta(days=40)
    Alert.objects.create(org=org, kind="test", title="old", created_at=old)
    Alert.objects.create(org=org, kind="test", title="new", created_at=now)
    ConnectorEvent.objects.create(deployment=deployment, kind="connected", at=old)
    AlertState.objects.create(org=org, kind="connector_down", subject=f"deployment:{deployment.pk}", active=True)
    AlertState.objects.create(org=org, kind="error_rate", subject="org", active=False)
    AlertState.objects.create(org=org, kind="budget", subject="org", threshold=50, period="2000-01", active=True)
    AlertState.objects.create(org=org, kind="connector_down", subject="deployment:999999", active=True)
    AlertState.objects.filter(kind="error_rate").update(updated_at=old)

    prune(now=now, days=30)

    assert list(Alert.objects.values_list("title", flat=True)) == ["new"]
    assert not ConnectorEvent.objects.exists()
    assert list(AlertState.objects.values_list("subject", flat=True)) == [f"deployment:{deployment.pk}"]


# --- a real worker -----------------------------------------------------------------------------------


@pytest.fixture
def worker(tmp_path):
    """`celery -A tokios_site worker` against the test database and this test's Redis broker."""
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}",
        "TOKIOS_DATA_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "tokios_site.settings",
        "SECRET_KEY": django_settings.SECRET_KEY,  # the webhook secret is derived from it
        "TOKIOS_WEBHOOK_ALLOW_PRIVATE": "1",
        "TOKIOS_WEBHOOK_ALLOW_HTTP": "1",
    }
    log_path = tmp_path / "worker.log"
    log = open(log_path, "wb")
    args = [sys.executable, "-m", "celery", "-A", "tokios_site", "worker", "-P", "solo"]
    args += ["--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO"]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while b"ready." not in log_path.read_bytes():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the worker did not start:\n" + log_path.read_text()
            time.sleep(0.2)
        yield log_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_evaluates_and_delivers_a_signed_budget_alert_once(org, key, endpoint, receiver, worker):
    update_settings(org=org, email_enabled=False)
    org.monthly_budget_micros = 10 * USD
    org.save()
    spend(org=org, key=key, at=timezone.now(), cost_micros=8 * USD)

    for _ in range(2):  # the second run finds both episodes open: nothing more
        app.send_task("alerts.evaluate")
    deadline = time.monotonic() + 30
    while len(receiver.received) < 2 or DeliveryAttempt.objects.count() < 2:
        assert time.monotonic() < deadline, worker.read_text()
        time.sleep(0.2)
    time.sleep(1)  # room for a wrong third delivery to arrive

    assert sorted(p["data"]["threshold_percent"] for p in receiver.signed()) == [50, 80]
    assert len(receiver.received) == 2
    assert set(Delivery.objects.values_list("status", flat=True)) == {DeliveryStatus.DELIVERED}
