"""Metering: the per-request usage record, and its journey to the database after the response is done.

The gateway fills one `UsageRecord` per request and hands it to `submit` exactly once, after it has
settled the request's limits (`billing.limits.settle`): both are explicit calls from the one place
that owns the request's end, so nothing here keeps callbacks or counts submissions.

Writing usage must add no latency before the client's last byte, so records are queued in memory
and written by a background task, one statement per 50 ms window (`settings.USAGE_BATCH_WINDOW`). The insert goes
straight to the database — not through Redis or Celery — so a Redis or worker outage loses nothing.
What a process killed with SIGKILL loses is the current window, plus a batch whose commit had not
come back; a graceful shutdown flushes everything (see `flush` and the `atexit` hook below). Because
request ids are unique and inserts ignore conflicts, writing a record twice is harmless, so every
retry path prefers writing again to risking a loss.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
import psycopg
from django.conf import settings
from django.db import DatabaseError, connection, connections, transaction
from django.utils import timezone

from accounts.models import ApiKey

from .models import UsageEvent

log = logging.getLogger("tokios.usage")


@dataclass(slots=True)
class UsageRecord:
    """What one /v1 request used, filled in by the gateway as the request goes."""

    request_id: str
    surface: str
    started: float = field(default_factory=time.monotonic)
    created_at: float = field(default_factory=time.time)
    org_id: int | None = None
    key_id: int | None = None
    deployment_id: int | None = None
    status_code: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    usage_estimated: bool = False
    cost_micros: int = 0
    latency_ms: int = 0
    ttft_ms: int | None = None
    streamed: bool = False
    cancelled: bool = False
    error_code: str = ""

    def first_token(self) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = int((time.monotonic() - self.started) * 1000)

    def finish(self, status_code: int | None = None) -> None:
        if status_code is not None:
            self.status_code = status_code
        self.latency_ms = int((time.monotonic() - self.started) * 1000)


_queue: list[UsageRecord] = []
_writing: list[UsageRecord] = []  # drained but not yet known to be written
_flusher: asyncio.Task | None = None


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
    _queue.append(record)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        batch = _drain()
        try:
            write_batch(batch)
        except Exception:
            log.exception("could not write %d usage events; keeping them for the next try", len(batch))
            _queue[:0] = batch
        return
    if _flusher is None or _flusher.done() or _flusher.get_loop() is not loop:
        _flusher = loop.create_task(_flush_soon())


def _drain() -> list[UsageRecord]:
    batch = _queue[:]
    _queue.clear()
    return batch


async def _flush_soon() -> None:
    # Each batch gathers what finished in one window. Writing what queued up during the previous
    # write straight away instead would make many tiny batches, and the database's cost per
    # statement (~0.3 ms of its CPU, plus a send and a wake-up on each side) would dominate: at
    # 700 requests/s a 20 ms window made 14-event batches at ~53 µs of PostgreSQL CPU per event,
    # 40-event batches cost ~37. The window is what a SIGKILL can lose.
    while True:
        await asyncio.sleep(settings.USAGE_BATCH_WINDOW)
        if not _queue:
            return
        batch = _drain()
        _writing.extend(batch)
        try:
            await _write(batch)
        except Exception:
            log.exception("could not write %d usage events; keeping them for the next try", len(batch))
            _queue[:0] = batch
            await asyncio.sleep(1.0)
        finally:
            done = {id(r) for r in batch}
            _writing[:] = [r for r in _writing if id(r) not in done]


async def flush() -> None:
    """Write everything queued now (used at shutdown and by tests)."""
    batch = _drain()
    if batch:
        await _write(batch)
    if _flusher is not None and not _flusher.done():
        await _flusher


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
            await conn.execute(_json_insert_sql(), [_json_payload(batch)])
    except (psycopg.Error, TimeoutError):
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
                cursor.execute(_json_insert_sql(), [_json_payload(batch)])
        else:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.executemany(_insert_sql(connection), _rows(batch, connection))
    except DatabaseError:
        # The writer keeps its connection between batches (no health-check query per batch); a
        # broken one is dropped here so that the retry reconnects.
        if not connection.in_atomic_block:
            connection.close()
        raise
    due = _keys_due({r.key_id for r in batch if r.key_id})
    if due:
        _touch_keys(due)


_COLUMNS = (
    "request_id",
    "created_at",
    "org_id",
    "api_key_id",
    "deployment_id",
    "surface",
    "status_code",
    "input_tokens",
    "output_tokens",
    "usage_estimated",
    "cost_micros",
    "latency_ms",
    "ttft_ms",
    "streamed",
    "cancelled",
    "error_code",
)


def _insert_sql(connection) -> str:
    quote = connection.ops.quote_name
    return (
        f"INSERT INTO {quote(UsageEvent._meta.db_table)} ({', '.join(quote(c) for c in _COLUMNS)}) "
        f"VALUES ({', '.join(['%s'] * len(_COLUMNS))}) ON CONFLICT ({quote('request_id')}) DO NOTHING"
    )


def _json_payload(batch: list[UsageRecord]) -> str:
    """The batch as a JSON array for `_json_insert_sql` (orjson serialises the records in C)."""
    try:
        return orjson.dumps(batch).decode()
    except orjson.JSONEncodeError:  # an integer beyond 64 bits from a bogus upstream
        rows = _rows(batch, connection)
        return orjson.dumps(
            [{**dict(zip(_COLUMNS, row, strict=True)), "created_at": None, "created": row[1]} for row in rows]
        ).decode()


def _rows(batch: list[UsageRecord], connection) -> list[tuple]:
    created = _created_at_adapter(connection)  # looked up once: `connection` is a thread-local proxy
    return [
        (
            r.request_id,
            created(r.created_at),
            r.org_id,
            r.key_id,
            r.deployment_id,
            r.surface,
            r.status_code,
            _int32(r.input_tokens),
            _int32(r.output_tokens),
            r.usage_estimated,
            max(0, r.cost_micros),
            _int32(r.latency_ms),
            None if r.ttft_ms is None else _int32(r.ttft_ms),
            r.streamed,
            r.cancelled,
            r.error_code[:64],
        )
        for r in batch
    ]


def _created_at_adapter(connection):
    """Epoch seconds -> the created_at column's value. On SQLite with UTC storage that is what
    Django's adapt_datetimefield_value makes of an aware datetime (the naive UTC time as str), without
    its per-value timezone work; elsewhere it is Django's adapter itself."""
    if connection.vendor == "sqlite" and connection.timezone_name == "UTC":
        return lambda seconds: str(datetime.fromtimestamp(seconds, tz=UTC).replace(tzinfo=None))
    adapt = connection.ops.adapt_datetimefield_value
    return lambda seconds: adapt(datetime.fromtimestamp(seconds, tz=UTC))


@functools.cache
def _json_insert_sql() -> str:
    """PostgreSQL: insert the events of a JSON array, each either a UsageRecord as orjson writes it
    or a row keyed by column name (the fallback); the same clamps as `_rows` in SQL."""
    quote = connection.ops.quote_name
    int32 = "least(greatest(coalesce({}, 0), 0), 2147483647)"
    values = {
        "request_id": "r.request_id",
        "created_at": "coalesce(to_timestamp(r.created_at), r.created)",
        "org_id": "r.org_id",
        "api_key_id": "coalesce(r.key_id, r.api_key_id)",
        "deployment_id": "r.deployment_id",
        "surface": "r.surface",
        "status_code": "r.status_code",
        "input_tokens": int32.format("r.input_tokens"),
        "output_tokens": int32.format("r.output_tokens"),
        "usage_estimated": "coalesce(r.usage_estimated, false)",
        "cost_micros": "least(greatest(coalesce(r.cost_micros, 0), 0), 9223372036854775807)",
        "latency_ms": int32.format("r.latency_ms"),
        "ttft_ms": f"CASE WHEN r.ttft_ms IS NULL THEN NULL ELSE {int32.format('r.ttft_ms')} END",
        "streamed": "coalesce(r.streamed, false)",
        "cancelled": "coalesce(r.cancelled, false)",
        "error_code": "left(coalesce(r.error_code, ''), 64)",
    }
    shape = (
        "request_id text, created_at float8, created timestamptz, org_id bigint, key_id bigint, "
        "api_key_id bigint, deployment_id bigint, surface text, status_code int, input_tokens numeric, "
        "output_tokens numeric, usage_estimated boolean, cost_micros numeric, latency_ms numeric, "
        "ttft_ms numeric, streamed boolean, cancelled boolean, error_code text"
    )
    return (
        f"INSERT INTO {quote(UsageEvent._meta.db_table)} ({', '.join(quote(c) for c in _COLUMNS)}) "
        f"SELECT {', '.join(values[c] for c in _COLUMNS)} FROM json_to_recordset(%s::json) AS r({shape}) "
        f"ON CONFLICT ({quote('request_id')}) DO NOTHING"
    )


def _int32(value: int) -> int:
    """Token counts and timings fit the columns: a bogus upstream number must not poison a batch."""
    return min(max(0, int(value)), 2_147_483_647)


@atexit.register
def _flush_at_exit() -> None:
    """A graceful shutdown (uvicorn, Celery) writes what is still queued or was mid-write."""
    batch = _writing[:] + _drain()
    if batch and settings.configured:
        try:
            write_batch(batch)
        except Exception:
            log.exception("lost %d usage events at exit: the database is unreachable", len(batch))


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
