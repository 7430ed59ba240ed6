"""billing/metering.py: one bad row never holds back the rows around it, and nothing is lost quietly.

A batch that fails on its data is split until each refused row is alone; that row is written again
flagged (`usage_invalid`, its numbers clamped), or dropped with an error line naming its request and
org when even that is refused. A database that cannot be reached keeps the records (up to
`USAGE_MAX_QUEUED`) for the next try; a graceful exit writes what it can and logs what it could not.

The stand-in for a row the database refuses is a negative status: the column's CHECK (>= 0)
refuses it on SQLite and on PostgreSQL alike.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError

from billing import metering
from billing.models import MAX_EVENT_COST_MICROS, UsageEvent


def record(request_id: str, **fields) -> metering.UsageRecord:
    defaults: dict[str, Any] = {"request_id": request_id, "surface": "chat", "status_code": 200}
    defaults.update(fields)
    return metering.UsageRecord(**defaults)


def refused(request_id: str, **fields) -> metering.UsageRecord:
    return record(request_id, **{**fields, "status_code": -1})


def events() -> dict[str, UsageEvent]:
    return {e.request_id: e for e in UsageEvent.objects.all()}


async def async_events() -> dict[str, UsageEvent]:
    return await sync_to_async(events)()


async def settled(timeout: float = 5.0) -> None:
    """Until the background writer has nothing queued or in hand."""
    deadline = asyncio.get_running_loop().time() + timeout
    while metering._queue or metering._writing:
        assert asyncio.get_running_loop().time() < deadline, "the writer never settled"
        await asyncio.sleep(0.02)


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_refused_row_is_written_flagged_and_every_other_org_s_rows_land(org, outsider_org, caplog):
    caplog.set_level(logging.ERROR, logger="tokios.usage")
    for r in (
        record("req_a1", org_id=org.pk, input_tokens=3, output_tokens=4, cost_micros=5),
        refused("req_poison", org_id=outsider_org.pk, input_tokens=10**30, cost_micros=2**80),
        record("req_a2", org_id=org.pk, input_tokens=6, output_tokens=7, cost_micros=8),
    ):
        metering.submit(r)  # queued: the background writer takes them as one batch

    await settled()

    written = await async_events()
    assert set(written) == {"req_a1", "req_a2", "req_poison"}
    assert (written["req_a1"].input_tokens, written["req_a2"].cost_micros) == (3, 8)
    poison = written["req_poison"]
    assert (poison.usage_estimated, poison.error_code, poison.status_code) == (True, "usage_invalid", 0)
    assert (poison.org_id, poison.input_tokens, poison.cost_micros) == (
        outsider_org.pk,
        2**31 - 1,
        MAX_EVENT_COST_MICROS,
    )
    assert not any(r.request_id == "req_poison" for r in metering._queue)  # nothing went back in line
    [line] = [r.getMessage() for r in caplog.records if "req_poison" in r.getMessage()]
    assert f"org {outsider_org.pk}" in line and "usage_invalid" in line


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_flush_writes_around_a_refused_row_instead_of_failing(org):
    metering.submit(record("req_before", org_id=org.pk))
    metering.submit(refused("req_poison", org_id=org.pk))
    metering.submit(record("req_after", org_id=org.pk))

    await metering.flush()  # what tests and shutdowns call: it must not raise on one bad row

    assert set(await async_events()) == {"req_before", "req_poison", "req_after"}


@pytest.mark.django_db(transaction=True)
def test_a_row_refused_even_flagged_is_dropped_with_a_line_naming_it_and_the_rest_land(
    org, outsider_org, monkeypatch, caplog
):
    caplog.set_level(logging.ERROR, logger="tokios.usage")
    monkeypatch.setattr(metering, "flagged_copy", lambda r: r)  # the flagged copy is refused as well
    metering._queue.extend([record("req_ok1", org_id=org.pk), refused("req_poison", org_id=outsider_org.pk, key_id=77)])

    metering.submit(record("req_ok2", org_id=org.pk))  # no event loop: written at once

    assert set(events()) == {"req_ok1", "req_ok2"}
    assert metering._queue == []
    [line] = [r.getMessage() for r in caplog.records if "req_poison" in r.getMessage()]
    assert "dropped" in line and f"org {outsider_org.pk}" in line and "key=77" in line


@pytest.mark.django_db(transaction=True)
def test_a_lone_row_refused_even_flagged_is_dropped_once_a_probe_shows_the_database_takes_rows(
    org, monkeypatch, caplog
):
    caplog.set_level(logging.ERROR, logger="tokios.usage")
    monkeypatch.setattr(metering, "flagged_copy", lambda r: r)

    metering.submit(refused("req_poison", org_id=org.pk))  # nothing of its batch landed

    assert metering._queue == [] and not UsageEvent.objects.exists()  # the probe was rolled back
    assert any("req_poison" in r.getMessage() and "dropped" in r.getMessage() for r in caplog.records)


@pytest.mark.django_db(transaction=True)
def test_rows_are_kept_when_the_database_refuses_even_a_probe(org, monkeypatch):
    # Nothing lands and a clean probe row is refused too: the database (a missing table, a full
    # disk), not the rows, is at fault, so nothing is dropped.
    monkeypatch.setattr(metering, "flagged_copy", lambda r: r)
    monkeypatch.setattr(metering, "probe_record", lambda: refused("req_probe"))

    metering.submit(refused("req_poison", org_id=org.pk))

    assert [r.request_id for r in metering._queue] == ["req_poison"]
    metering.submit(record("req_ok", org_id=org.pk))  # the next batch lands something: now it goes
    assert set(events()) == {"req_ok"}
    assert metering._queue == []


@pytest.mark.django_db(transaction=True)
def test_an_unreachable_database_keeps_the_records_tries_once_and_logs(org, monkeypatch, caplog):
    calls: list[int] = []

    def unreachable(batch):
        calls.append(len(batch))
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(metering, "write_batch", unreachable)
    metering._queue.extend([record("req_1", org_id=org.pk), record("req_2", org_id=org.pk)])

    metering.submit(record("req_3", org_id=org.pk))

    assert calls == [3]  # not split row by row: the connection, not a row, failed
    assert [r.request_id for r in metering._queue] == ["req_1", "req_2", "req_3"]
    assert any("kept for the next try" in r.getMessage() for r in caplog.records)


@pytest.mark.django_db(transaction=True)
def test_what_waits_for_the_database_is_capped_oldest_dropped_first_with_a_line(org, monkeypatch, settings, caplog):
    caplog.set_level(logging.ERROR, logger="tokios.usage")
    settings.USAGE_MAX_QUEUED = 3

    def unreachable(batch):
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(metering, "write_batch", unreachable)
    for i in range(5):
        metering.submit(record(f"req_{i}", org_id=org.pk))

    assert [r.request_id for r in metering._queue] == ["req_2", "req_3", "req_4"]
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert dropped and all("USAGE_MAX_QUEUED" in line for line in dropped)
    assert sum(int(line.split()[1]) for line in dropped) == 2  # "dropped N usage events ..."


@pytest.mark.django_db(transaction=True)
def test_a_graceful_exit_writes_around_a_refused_row(org):
    metering._queue.extend(
        [record("req_x1", org_id=org.pk), refused("req_poison", org_id=org.pk), record("req_x2", org_id=org.pk)]
    )
    metering._writing.append(record("req_in_flight", org_id=org.pk))

    metering.flush_at_exit()

    assert set(events()) == {"req_x1", "req_x2", "req_poison", "req_in_flight"}
    assert events()["req_poison"].error_code == "usage_invalid"


@pytest.mark.django_db(transaction=True)
def test_a_graceful_exit_without_a_database_logs_how_many_it_could_not_write(org, monkeypatch, caplog):
    caplog.set_level(logging.ERROR, logger="tokios.usage")

    def unreachable(batch):
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(metering, "write_batch", unreachable)
    metering._queue.extend([record(f"req_{i}", org_id=org.pk) for i in range(3)])

    metering.flush_at_exit()

    [line] = [r.getMessage() for r in caplog.records if "at exit" in r.getMessage()]
    assert "3 usage events" in line and "req_0" in line and "req_2" in line


def test_the_flagged_copy_of_any_record_fits_every_column():
    bad = metering.UsageRecord(
        request_id="req_" + "x\x00" * 60,
        surface="chat\ud800" * 9,
        created_at=float("nan"),
        org_id=2**70,
        key_id=-3,
        deployment_id=5,
        status_code=70_000,
        input_tokens=-1,
        output_tokens=10**40,
        cost_micros=10**40,
        latency_ms=-7,
        ttft_ms=10**12,
        error_code="upstream_error",
    )

    copy = metering.flagged_copy(bad)

    assert len(copy.request_id) <= 64 and "\x00" not in copy.request_id and copy.request_id.startswith("req_x")
    assert len(copy.surface) <= 16 and copy.surface.encode()  # no lone surrogate left
    assert copy.created_at == copy.created_at  # a number, not NaN
    assert (copy.org_id, copy.key_id, copy.deployment_id) == (None, None, 5)
    assert (copy.status_code, copy.input_tokens, copy.output_tokens) == (0, 0, 2**31 - 1)
    assert (copy.cost_micros, copy.latency_ms, copy.ttft_ms) == (MAX_EVENT_COST_MICROS, 0, 2**31 - 1)
    assert (copy.usage_estimated, copy.error_code) == (True, "usage_invalid")


@pytest.mark.parametrize("transaction", [True, False], ids=["autocommit", "in-a-transaction"])
def test_a_cost_past_the_event_bound_is_clamped_on_every_write_path(request, transaction):
    # Outside a transaction PostgreSQL takes the one-statement JSON path; inside, executemany.
    request.getfixturevalue("transactional_db" if transaction else "db")
    org = request.getfixturevalue("org")
    metering.write_batch([record("req_dear", org_id=org.pk, cost_micros=2**63 - 1)])

    assert UsageEvent.objects.get(request_id="req_dear").cost_micros == MAX_EVENT_COST_MICROS


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_batch_whose_write_was_cancelled_at_shutdown_is_written_by_the_exit_flush(org, monkeypatch):
    started = asyncio.Event()

    async def hung_write(batch):
        started.set()
        await asyncio.sleep(3600)  # the database has not answered when the loop shuts down

    monkeypatch.setattr(metering, "_write", hung_write)
    metering.submit(record("req_mid_write", org_id=org.pk))
    await asyncio.wait_for(started.wait(), 5)
    metering._flusher.cancel()  # what asyncio.run() does to the tasks left when the server stops
    with pytest.raises(asyncio.CancelledError):
        await metering._flusher
    monkeypatch.undo()

    await sync_to_async(metering.flush_at_exit, thread_sensitive=True)()

    assert set(await async_events()) == {"req_mid_write"}
