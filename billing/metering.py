"""Metering: the per-request usage record, and its journey to the database after the response is done.

The gateway fills one `UsageRecord` per request and hands it to `submit` exactly once, after it has
settled the request's limits (`billing.limits.settle`): both are explicit calls from the one place
that owns the request's end, so nothing here keeps callbacks or counts submissions.

Writing usage must add no latency before the client's last byte, so records are queued in memory
and written by a background task, one statement per 50 ms window (`settings.USAGE_BATCH_WINDOW`). The insert goes
straight to the database — not through Redis or Celery — so a Redis or worker outage loses nothing.
What a process killed with SIGKILL loses is the current window, plus a batch whose commit had not
come back; a graceful shutdown flushes everything (see `flush` and `flush_at_exit` below). Because
request ids are unique and inserts ignore conflicts, writing a record twice is harmless, so every
retry path prefers writing again to risking a loss.

A batch holds many tenants' requests, so one row must never hold the others back (see
`write_isolating`): a batch that fails on its data is split until each refused row is alone, and
that row is written again flagged (`usage_invalid`, every field forced into its column) or, if even
that is refused, dropped with an error line naming it. Only a database that cannot be reached makes
records wait, and then at most `settings.USAGE_MAX_QUEUED` of them.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psycopg
from django.conf import settings
from django.db import DatabaseError, connection, connections, transaction
from django.utils import timezone

from accounts.models import ApiKey

from . import usage_sql
from .usage_record import UsageRecord
from .usage_rows import FLAGGED_ERROR_CODE, brief, figures, flagged_fields, is_unreachable

log = logging.getLogger("tokios.usage")


_queue: list[UsageRecord] = []
_writing: list[UsageRecord] = []  # drained but not yet known to be written
_flusher: asyncio.Task | None = None
_failing_since: float | None = None  # time.time() when the current run of failed batch writes began
_batch_failures = 0  # batch writes that had to keep records for a later try, since the process started


@dataclass(frozen=True, slots=True)
class WriterState:
    """How the usage writer of this process is doing, for /readyz and the metrics."""

    queued: int  # records waiting to be written (queued + the batch being written)
    oldest_age: float  # seconds since the oldest waiting record was submitted (0.0 when none)
    failing_since: float | None  # time.time() when the current run of failed batch writes began; None after a success
    batch_failures: int  # batch writes that failed (kept records for a later try) in this process since it started


def writer_state() -> WriterState:
    """A snapshot of the writer: cheap (no I/O, no lock), safe to call from a probe or a scrape.

    Both lists are oldest first (`_keep` puts what waited back at the head), so the oldest waiting
    record is the head of one of them."""
    heads = [r.submitted for r in (*_writing[:1], *_queue[:1]) if r.submitted]
    oldest_age = max(0.0, time.monotonic() - min(heads)) if heads else 0.0
    return WriterState(
        queued=len(_queue) + len(_writing),
        oldest_age=oldest_age,
        failing_since=_failing_since,
        batch_failures=_batch_failures,
    )


def _settle(kept: list[UsageRecord]) -> None:
    """After a batch write: what must wait goes back in the queue, and the writer's health is noted
    (a batch counts as failed when any of its records must wait for the database)."""
    global _failing_since, _batch_failures
    if kept:
        _keep(kept)
        _batch_failures += 1
        if _failing_since is None:
            _failing_since = time.time()
    else:
        _failing_since = None


def submit(record: UsageRecord) -> None:
    """Hand a finished request to the writer. Never blocks, never raises.

    Call it once per request: a second call queues the record again (its request id makes the second
    insert a no-op, but the write is wasted)."""
    if not settings.METERING_ENABLED:
        return
    if record.status_code == 0:
        # The client went away before any response existed (the view was cancelled).
        record.status_code = 499
        record.cancelled = True
    global _flusher
    record.submitted = time.monotonic()
    _queue.append(record)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        _settle(write_isolating(_drain()))
        return
    if _flusher is None or _flusher.done() or _flusher.get_loop() is not loop:
        _flusher = loop.create_task(_flush_soon())


def _drain() -> list[UsageRecord]:
    batch = _queue[:]
    _queue.clear()
    return batch


def _keep(records: list[UsageRecord]) -> None:
    """Put records the database could not take back at the head of the queue, oldest first, and
    drop the oldest beyond `USAGE_MAX_QUEUED` (a long outage must not exhaust the memory)."""
    if not records:
        return
    _queue[:0] = records
    excess = len(_queue) - settings.USAGE_MAX_QUEUED
    if excess > 0:
        dropped = _queue[:excess]
        del _queue[:excess]
        log.error(
            "dropped %d usage events (%s … %s): the database has not taken them and TOKIOS_USAGE_MAX_QUEUED=%d "
            "are waiting already",
            excess,
            dropped[0].request_id,
            dropped[-1].request_id,
            settings.USAGE_MAX_QUEUED,
        )


RETRY_MAX_DELAY = 30.0  # seconds between tries while the database cannot be reached (1, 2, 4 … 30)


async def _flush_soon() -> None:
    # Each batch gathers what finished in one window. Writing what queued up during the previous
    # write straight away instead would make many tiny batches, and the database's cost per
    # statement (~0.3 ms of its CPU, plus a send and a wake-up on each side) would dominate: at
    # 700 requests/s a 20 ms window made 14-event batches at ~53 µs of PostgreSQL CPU per event,
    # 40-event batches cost ~37. The window is what a SIGKILL can lose.
    failures = 0
    while True:
        await asyncio.sleep(settings.USAGE_BATCH_WINDOW)
        if not _queue:
            return
        batch = _drain()
        _writing.extend(batch)
        # Cancelled (the server's loop is shutting down), the batch stays in `_writing`, and the
        # exit flush writes it again: the rows that had landed are not written twice.
        try:
            kept = await _write_or_isolate(batch)
        except Exception:  # a bug of ours: keep the records rather than lose them, and go on
            log.exception("the usage writer failed on a batch of %d events; keeping them for the next try", len(batch))
            kept = batch
        done = {id(r) for r in batch}
        _writing[:] = [r for r in _writing if id(r) not in done]
        _settle(kept)
        if kept:
            failures += 1
            await asyncio.sleep(min(RETRY_MAX_DELAY, 2.0 ** (failures - 1)))
        else:
            failures = 0


async def flush() -> None:
    """Write everything queued now (used by tests). What the database cannot take stays queued."""
    batch = _drain()
    if batch:
        _settle(await _write_or_isolate(batch))
    if _flusher is not None and not _flusher.done():
        await _flusher


async def _write_or_isolate(batch: list[UsageRecord]) -> list[UsageRecord]:
    """Write a batch; returns what must wait for the database (nothing, unless it is unreachable).

    The fast path is one statement. Only when it fails on something other than the connection are
    the refused rows looked for, in the writer thread (`write_isolating`): that path is rare, so
    it may cost a statement per row."""
    try:
        await _write(batch)
    except Exception as exc:
        if is_unreachable(exc):
            _log_unreachable(len(batch), exc)
            return batch
        log.warning("a batch of %d usage events was refused (%s); looking for the refused rows", len(batch), brief(exc))
        return await asyncio.get_running_loop().run_in_executor(_writer, write_isolating, batch)
    return []


async def _write(batch: list[UsageRecord]) -> None:
    if connection.vendor != "postgresql":
        # SQLite (the embedded default): the writer thread writes the batch and touches the keys.
        # Writing from the event loop through a connection of its own, as sessions 7-8 did, saved
        # no CPU measurable side by side; the thread costs ~1 futex call per request
        # (docs/benchmarks.md, "Framework contract").
        await _in_writer_thread(batch)
        return
    await _write_postgres(batch)
    due = _keys_due({r.key_id for r in batch if r.key_id})
    if due:
        await asyncio.get_running_loop().run_in_executor(_writer, _touch_keys, due)


# PostgreSQL: the batch is written from the event loop over an async connection. A writer thread
# would compete with the loop for the GIL, and every time the loop wakes up (a Redis reply, a
# client) while the writer holds it, the request in hand waits: measured at several percent of
# throughput and +0.3 ms p50 with limits on. The insert is one statement, so the loop's share of
# the work is serialising the batch (orjson, in C) and one round trip.
WRITE_TIMEOUT = 30.0
_pg_connections: dict[int, tuple[asyncio.AbstractEventLoop, psycopg.AsyncConnection]] = {}


async def _pg_connection() -> psycopg.AsyncConnection:
    loop = asyncio.get_running_loop()
    entry = _pg_connections.get(id(loop))
    if entry is not None and entry[0] is loop and not entry[1].closed:
        return entry[1]
    for stale in [k for k, (other, conn) in _pg_connections.items() if other.is_closed()]:
        _pg_connections.pop(stale)[1].pgconn.finish()  # tests run many loops; a server has one
    async with asyncio.timeout(WRITE_TIMEOUT):
        conn = await psycopg.AsyncConnection.connect(**pg_params(connections["default"].settings_dict), autocommit=True)
    _pg_connections[id(loop)] = (loop, conn)
    return conn


# OPTIONS that Django reads itself (its PostgreSQL notes); every other one is a libpq parameter.
DJANGO_ONLY_OPTIONS = ("assume_role", "isolation_level", "pool", "server_side_binding")


def pg_params(settings_dict: dict) -> dict:
    """psycopg's connection parameters for a database of settings.DATABASES, as Django would
    connect (less its cursor and adapter classes, which the writer does not use)."""
    params = {key: value for key, value in settings_dict["OPTIONS"].items() if key not in DJANGO_ONLY_OPTIONS}
    # As Django: no server-side prepared statements unless OPTIONS asks (connection poolers).
    params.setdefault("prepare_threshold", None)
    params["client_encoding"] = "UTF8"
    for key, name in (
        ("NAME", "dbname"),
        ("USER", "user"),
        ("PASSWORD", "password"),
        ("HOST", "host"),
        ("PORT", "port"),
    ):
        if settings_dict.get(key):
            params[name] = settings_dict[key]
    return params


def close_connections() -> None:
    """Close the writer's database connections (tests: each has its own event loop)."""
    while _pg_connections:
        _pg_connections.popitem()[1][1].pgconn.finish()
    _writer.submit(_close_thread_connection).result()  # the writer thread's own Django connection


def _close_thread_connection() -> None:
    connection.close()  # `connection` is per thread: this is the writer thread's own


async def _write_postgres(batch: list[UsageRecord]) -> None:
    conn = await _pg_connection()
    try:
        async with asyncio.timeout(WRITE_TIMEOUT):
            await conn.execute(usage_sql.json_insert_sql(), [usage_sql.json_payload(batch)])
    except (psycopg.Error, TimeoutError) as exc:
        if is_unreachable(exc):
            conn.pgconn.finish()  # a broken or hung connection is replaced on the next batch
        raise


# One thread writes (SQLite's batches, PostgreSQL's key touches), so one database connection serves it.
_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokios-usage-writer")


def _in_writer_thread(batch: list[UsageRecord]) -> asyncio.Future:
    return asyncio.get_running_loop().run_in_executor(_writer, write_batch, batch)


def write_batch(batch: list[UsageRecord]) -> None:
    if not batch:
        return
    # Raw SQL instead of the ORM's bulk_create: this runs in a thread beside the event loop, and
    # building model instances held the GIL long enough to slow every request. ON CONFLICT DO
    # NOTHING: a retried batch must not write an event twice (request_id is unique). An event may
    # name a key, deployment or org deleted while its request ran: there is no constraint to
    # refuse it (see UsageEvent), and the roll-up clears the dangling id.
    try:
        if connection.vendor == "postgresql" and not connection.in_atomic_block:
            # The whole batch as one JSON parameter (orjson serialises the records in C) turned into
            # rows by PostgreSQL: one statement, one round trip in autocommit, and a few µs of Python
            # per event instead of ~40 for adapting sixteen arrays element by element.
            with connection.cursor() as cursor:
                cursor.execute(usage_sql.json_insert_sql(), [usage_sql.json_payload(batch)])
        else:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.executemany(usage_sql.insert_sql(connection), usage_sql.rows(batch, connection))
    except DatabaseError as exc:
        # The writer keeps its connection between batches (no health-check query per batch); a
        # broken one is dropped here so that the retry reconnects.
        if is_unreachable(exc) and not connection.in_atomic_block:
            connection.close()
        raise
    due = _keys_due({r.key_id for r in batch if r.key_id})
    if due:
        _touch_keys(due)


@atexit.register
def flush_at_exit() -> None:
    """A graceful shutdown writes what is still queued or was mid-write: the server's from its ASGI
    lifespan (tokios_site/asgi.py; uvicorn ends a SIGTERM'd process without running `atexit`),
    any other process (Celery, a management command) from `atexit`. Safe to call twice: the queue
    is empty the second time, and a row written twice is a no-op."""
    batch = _writing[:] + _drain()
    if not batch or not settings.configured:
        return
    try:
        lost = write_isolating(batch)
    except Exception:
        log.exception("the usage writer failed at exit")
        lost = batch
    if lost:
        log.error(
            "%d usage events could not be written at exit (the database is unreachable): %s",
            len(lost),
            ", ".join(f"{r.request_id} org {r.org_id}" for r in lost[:20]) + (" …" if len(lost) > 20 else ""),
        )


# --- a batch the database refuses ------------------------------------------------------------------
#
# A refused batch is split in halves until each refused row is alone: good rows land at the cost
# of about 2·log2(n) statements per bad row. A row refused alone is written again as
# `flagged_copy`; a row refused even so is dropped with an error line carrying its figures, but
# only once a probe row (written and rolled back) shows that the database takes rows at all: if
# even that is refused, the database is at fault (a missing table, a full disk), not the rows, and
# they all wait.


def _log_unreachable(count: int, exc: BaseException) -> None:
    log.error("could not write %d usage events (%s); kept for the next try", count, brief(exc))


def write_isolating(batch: list[UsageRecord]) -> list[UsageRecord]:
    """Write a batch whatever rows it holds (see above). Returns the records that must wait
    because the database cannot be reached; every other record is written, flagged or dropped."""
    waiting: list[UsageRecord] = []
    unwritable: list[tuple[UsageRecord, BaseException]] = []
    landed = 0

    def attempt(rows: list[UsageRecord]) -> None:
        nonlocal landed
        if waiting:  # the database went away meanwhile: do not knock on it once per row
            waiting.extend(rows)
            return
        try:
            write_batch(rows)
            landed += len(rows)
        except Exception as exc:
            if is_unreachable(exc):
                _log_unreachable(len(rows), exc)
                waiting.extend(rows)
            elif len(rows) > 1:
                attempt(rows[: len(rows) // 2])
                attempt(rows[len(rows) // 2 :])
            else:
                landed += _write_flagged(rows[0], exc, unwritable, waiting)

    attempt(batch)
    if unwritable and not landed and not waiting and not _database_takes_rows():
        log.error("the database refuses every usage row, even a probe; keeping %d for the next try", len(unwritable))
        return [r for r, _ in unwritable]
    for r, exc in unwritable:
        log.error(
            "usage event %s of org %s was refused by the database (%s), even as a flagged copy; dropped: %s",
            r.request_id,
            r.org_id,
            brief(exc),
            figures(r),
        )
    return waiting


def _write_flagged(
    record: UsageRecord,
    refused: BaseException,
    unwritable: list[tuple[UsageRecord, BaseException]],
    waiting: list[UsageRecord],
) -> int:
    """Write the flagged copy of a row refused alone; returns 1 if it landed."""
    try:
        write_batch([flagged_copy(record)])
    except Exception as exc:
        if is_unreachable(exc):
            _log_unreachable(1, exc)
            waiting.append(record)
        else:
            unwritable.append((record, refused))
        return 0
    log.error(
        "usage event %s of org %s was refused by the database (%s); written flagged %s instead, was: %s",
        record.request_id,
        record.org_id,
        brief(refused),
        FLAGGED_ERROR_CODE,
        figures(record),
    )
    return 1


def flagged_copy(record: UsageRecord) -> UsageRecord:
    """The record with every field forced into its column, marked estimated and `usage_invalid`."""
    return dataclasses.replace(record, **flagged_fields(record))


def probe_record() -> UsageRecord:
    """A row any working database takes (written and rolled back by `_database_takes_rows`)."""
    return UsageRecord(request_id=f"req_probe_{time.time_ns():x}", surface="chat", status_code=0)


def _database_takes_rows() -> bool:
    try:
        with transaction.atomic():
            write_batch([probe_record()])
            transaction.set_rollback(True)
    except Exception as exc:
        log.warning("a probe usage row was refused too (%s)", brief(exc))
        return False
    return True


_last_touch: dict[int, float] = {}


def _keys_due(key_ids: set[int]) -> list[int]:
    now = time.monotonic()
    due = [kid for kid in key_ids if now - _last_touch.get(kid, 0) > 30]
    for kid in due:
        _last_touch[kid] = now
    return due


def _touch_keys(key_ids: list[int]) -> None:
    """Keep ApiKey.last_used_at roughly current without a write per request."""
    ApiKey.objects.filter(pk__in=key_ids).update(last_used_at=timezone.now())
