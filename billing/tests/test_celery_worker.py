"""A real Celery worker process (not eager) rolls usage up through the Redis broker into PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.db import connection
from django.db.models import Sum

from billing.models import UsageEvent, UsageRollup
from tokios_site.celery import app

from .conftest import make_event, utc

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def worker(tmp_path):
    """`celery -A tokios_site worker` on a queue of its own, against the test database."""
    db = connection.settings_dict
    queue = f"tokios-test-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}",
        "TOKIOS_DATA_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "tokios_site.settings",
    }
    log = open(tmp_path / "worker.log", "wb")
    args = [sys.executable, "-m", "celery", "-A", "tokios_site", "worker", "-P", "solo", "-Q", queue]
    args += ["--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO"]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while b"ready." not in (tmp_path / "worker.log").read_bytes():
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()
            assert time.monotonic() < deadline, "the worker did not start:\n" + (tmp_path / "worker.log").read_text()
            time.sleep(0.2)
        yield queue, tmp_path / "worker.log"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        app.connection_for_write().default_channel.queue_delete(queue)


def run_task(queue: str, log: Path, name: str) -> None:
    """Send a task through the broker and wait for the worker to log that it succeeded."""
    task_id = app.send_task(name, queue=queue).id
    deadline = time.monotonic() + 30
    while f"[{task_id}] succeeded" not in log.read_text():
        assert f"[{task_id}] raised" not in log.read_text(), log.read_text()
        assert time.monotonic() < deadline, "the task did not finish:\n" + log.read_text()
        time.sleep(0.2)


def test_a_real_worker_rolls_usage_up_exactly_and_a_second_run_changes_nothing(worker, org, key, deployment):
    queue, log = worker
    for i in range(30):
        make_event(org=org, key=key, deployment=deployment, at=utc(2026, 11, 3, i % 24), tokens_in=i, tokens_out=3 * i)

    run_task(queue, log, "billing.roll_up_usage")
    hourly = UsageRollup.objects.hourly().aggregate(r=Sum("requests"), o=Sum("output_tokens"), c=Sum("cost_micros"))
    events = UsageEvent.objects.aggregate(o=Sum("output_tokens"), c=Sum("cost_micros"))
    run_task(queue, log, "billing.roll_up_usage")

    assert hourly == {"r": 30, "o": events["o"], "c": events["c"]}
    daily = UsageRollup.objects.daily().aggregate(r=Sum("requests"), o=Sum("output_tokens"), c=Sum("cost_micros"))
    assert daily == hourly
    assert UsageRollup.objects.hourly().count() == 24
