"""billing/metering.py `writer_state()`: what /readyz and the metrics read of the usage writer.

`queued` counts the records waiting (queued, plus the batch in hand), `oldest_age` how long the oldest
of them has waited since it was submitted, `failing_since` when the current run of failed batch writes
began (None once one succeeds), `batch_failures` how many batch writes failed since the process began.
A failed write is one that had to keep records for a later try (the database could not be reached);
a row the database refuses on its data is written flagged, and that is not a failure of the writer.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from django.db import OperationalError

from billing import metering


def record(request_id: str, **fields) -> metering.UsageRecord:
    defaults: dict[str, Any] = {"request_id": request_id, "surface": "chat", "status_code": 200}
    defaults.update(fields)
    return metering.UsageRecord(**defaults)


def unreachable(batch):
    raise OperationalError("could not connect to server")


@pytest.fixture(autouse=True)
def no_failing_run(monkeypatch):
    """Each test starts with a writer whose last write succeeded (earlier tests may have failed some)."""
    monkeypatch.setattr(metering, "_failing_since", None)


def test_an_idle_writer_reports_nothing_waiting_and_no_failing_run():
    state = metering.writer_state()

    assert (state.queued, state.oldest_age, state.failing_since) == (0, 0.0, None)
    assert state.batch_failures >= 0


@pytest.mark.django_db(transaction=True)
def test_a_failed_write_starts_a_failing_run_that_further_failures_extend_and_a_success_ends(org, monkeypatch):
    before = metering.writer_state().batch_failures
    monkeypatch.setattr(metering, "write_batch", unreachable)

    began = time.time()
    metering.submit(record("req_1", org_id=org.pk))  # no event loop: written (here: tried) at once
    first = metering.writer_state()
    metering.submit(record("req_2", org_id=org.pk))
    second = metering.writer_state()

    assert first.queued == 1 and first.batch_failures == before + 1
    assert first.failing_since is not None and began <= first.failing_since <= time.time()
    assert second.queued == 2 and second.batch_failures == before + 2
    assert second.failing_since == first.failing_since  # the same run, not a new one
    assert second.oldest_age > 0.0

    monkeypatch.undo()
    metering.submit(record("req_3", org_id=org.pk))  # the database is back: all three land
    third = metering.writer_state()

    assert (third.queued, third.oldest_age, third.failing_since) == (0, 0.0, None)
    assert third.batch_failures == before + 2  # a count since the process began, not of the current run


@pytest.mark.django_db(transaction=True)
def test_a_row_the_database_refuses_is_written_flagged_and_is_not_a_failed_write(org):
    before = metering.writer_state().batch_failures

    metering.submit(record("req_poison", org_id=org.pk, status_code=-1))  # the CHECK (>= 0) refuses it

    state = metering.writer_state()
    assert (state.queued, state.failing_since, state.batch_failures) == (0, None, before)


@pytest.mark.django_db(transaction=True)
def test_the_oldest_age_counts_from_the_submission_not_from_the_request_start(org, monkeypatch):
    monkeypatch.setattr(metering, "write_batch", unreachable)
    long_stream = record("req_long", org_id=org.pk, started=time.monotonic() - 600)

    metering.submit(long_stream)

    assert metering.writer_state().oldest_age < 60  # it ran for ten minutes, but has waited a moment


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_the_batch_being_written_and_the_records_queued_behind_it_are_both_counted(org, monkeypatch):
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow_write(batch):
        started.set()
        await release.wait()

    monkeypatch.setattr(metering, "_write", slow_write)
    metering.submit(record("req_first", org_id=org.pk))
    await asyncio.wait_for(started.wait(), 5)  # the first batch is in hand
    metering.submit(record("req_second", org_id=org.pk))
    await asyncio.sleep(0.1)

    state = metering.writer_state()
    assert state.queued == 2
    assert 0.1 <= state.oldest_age < 30  # the first record's wait, not the second's

    release.set()
    deadline = time.monotonic() + 5
    while metering.writer_state().queued:
        assert time.monotonic() < deadline, "the writer never drained"
        await asyncio.sleep(0.02)
    assert metering.writer_state().oldest_age == 0.0


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_the_background_writer_reports_an_outage_and_its_end(org, monkeypatch):
    before = metering.writer_state().batch_failures
    outage = True
    real_write = metering._write

    async def flaky_write(batch):
        if outage:
            raise OperationalError("could not connect to server")
        await real_write(batch)

    monkeypatch.setattr(metering, "_write", flaky_write)
    metering.submit(record("req_during_outage", org_id=org.pk))

    deadline = time.monotonic() + 5
    while metering.writer_state().batch_failures == before:
        assert time.monotonic() < deadline, "the failed write was never reported"
        await asyncio.sleep(0.02)
    during = metering.writer_state()
    assert during.failing_since is not None and during.queued == 1

    outage = False  # the writer retries after its backoff (1 s after a first failure)
    deadline = time.monotonic() + 10
    while metering.writer_state().failing_since is not None:
        assert time.monotonic() < deadline, "the writer never recovered"
        await asyncio.sleep(0.05)
    assert metering.writer_state().queued == 0
