"""The per-request record, and its journey to the database after the response is done.

Writing usage must add no latency before the client's last byte, so records are queued in memory
and written in batches by a background task (one bulk insert per batch, usually < 50 ms after the
request finished). The insert goes straight to the database — not through Redis or Celery — so a
Redis or worker outage loses nothing. What is lost is at most the last batch of a process killed
with SIGKILL; a graceful shutdown flushes it (see `flush` and the `atexit` hook below). Because
request ids are unique and inserts ignore conflicts, writing a record twice is harmless, so every
retry path prefers writing again to risking a loss.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import IntegrityError

log = logging.getLogger("tokios.usage")


@dataclass(slots=True)
class RequestRecord:
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
    submitted: bool = False

    def first_token(self) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = int((time.monotonic() - self.started) * 1000)

    def finish(self, status_code: int | None = None) -> None:
        if status_code is not None:
            self.status_code = status_code
        self.latency_ms = int((time.monotonic() - self.started) * 1000)


_queue: list[RequestRecord] = []
_writing: list[RequestRecord] = []  # drained but not yet known to be written
_flusher: asyncio.Task | None = None
_finishers: list = []  # callables run with each record before it is queued (limits settle, etc.)


def on_finish(callback) -> None:
    _finishers.append(callback)


def submit(record: RequestRecord) -> None:
    """Hand a finished request to the writer. Never blocks, never raises."""
    if not settings.METERING_ENABLED or record.submitted:
        return
    record.submitted = True  # one event per request, even if two paths finish it
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


def _drain() -> list[RequestRecord]:
    batch = _queue[:]
    _queue.clear()
    return batch


async def _flush_soon() -> None:
    await asyncio.sleep(0.02)  # gather whatever finishes in the next few milliseconds
    while _queue:
        batch = _drain()
        _writing.extend(batch)
        try:
            await sync_to_async(write_batch, thread_sensitive=False)(batch)
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
        await sync_to_async(write_batch, thread_sensitive=False)(batch)
    if _flusher is not None and not _flusher.done():
        await _flusher


def write_batch(batch: list[RequestRecord]) -> None:
    if not batch:
        return
    from django.db import close_old_connections, connection

    from billing.models import UsageEvent

    # Writer threads drop stale connections first; a caller inside a transaction keeps its own.
    if not connection.in_atomic_block:
        close_old_connections()
    events = [
        UsageEvent(
            request_id=r.request_id,
            created_at=datetime.fromtimestamp(r.created_at, tz=UTC),
            org_id=r.org_id,
            api_key_id=r.key_id,
            deployment_id=r.deployment_id,
            surface=r.surface,
            status_code=r.status_code,
            input_tokens=_int32(r.input_tokens),
            output_tokens=_int32(r.output_tokens),
            usage_estimated=r.usage_estimated,
            cost_micros=max(0, r.cost_micros),
            latency_ms=_int32(r.latency_ms),
            ttft_ms=None if r.ttft_ms is None else _int32(r.ttft_ms),
            streamed=r.streamed,
            cancelled=r.cancelled,
            error_code=r.error_code[:64],
        )
        for r in batch
    ]
    # ignore_conflicts: a retried batch must not write an event twice (request_id is unique).
    try:
        UsageEvent.objects.bulk_create(events, ignore_conflicts=True)
    except IntegrityError:
        # A key, deployment or org deleted while its request ran would make the batch fail on
        # every retry, holding up all metering behind it: keep the events, drop the dangling ids.
        _drop_dangling(events)
        UsageEvent.objects.bulk_create(events, ignore_conflicts=True)
    _touch_keys({r.key_id for r in batch if r.key_id})


def _int32(value: int) -> int:
    """Token counts and timings fit the columns: a bogus upstream number must not poison a batch."""
    return min(max(0, int(value)), 2_147_483_647)


def _drop_dangling(events: list) -> None:
    from accounts.models import ApiKey, Organization
    from deployments.models import Deployment

    for column, model in (("org_id", Organization), ("api_key_id", ApiKey), ("deployment_id", Deployment)):
        wanted = {getattr(e, column) for e in events if getattr(e, column) is not None}
        existing = set(model.objects.filter(pk__in=wanted).values_list("pk", flat=True))
        for event in events:
            if getattr(event, column) not in existing:
                setattr(event, column, None)


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


def _touch_keys(key_ids: set[int]) -> None:
    """Keep ApiKey.last_used_at roughly current without a write per request."""
    from django.utils import timezone

    from accounts.models import ApiKey

    now = time.monotonic()
    due = [kid for kid in key_ids if now - _last_touch.get(kid, 0) > 30]
    if due:
        ApiKey.objects.filter(pk__in=due).update(last_used_at=timezone.now())
        for kid in due:
            _last_touch[kid] = now
