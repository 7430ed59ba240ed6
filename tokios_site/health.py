"""The probes: `/healthz` (liveness) and `/readyz` (readiness).

`/healthz` says the process answers HTTP: no I/O at all, so a slow database never gets a healthy
process restarted. `/readyz` says whether this process can serve and record requests now:

- `database`: a fresh connection and one query, bounded by `settings.READY_TIMEOUT` (2 s), so a
  hung database fails the probe in time instead of hanging it. PostgreSQL must also accept writes
  (not a standby in recovery); SQLite's file must open read-write (it is never created here).
- `redis` (when `REDIS_URL` is set), and the channel layer's Redis when that is another server: a
  PING over a fresh connection, bounded alike.
- `usage_writer`: billing.metering's writer in this process (`writer_state()`): not ready once its
  batch writes have failed for `READY_WRITER_FAILING` seconds in a row, or a record has waited
  `READY_WRITER_MAX_AGE` seconds for the database.

200 `{"status": "ready", "checks": {...}}`, or 503 `{"status": "not_ready", "failed": [...],
"checks": {...}}` naming each failed check and why: the database's name and host, never a password
or a connection string. A probe runs the checks at most once at a time per process: probes that
arrive meanwhile wait for that run, and its result serves them for at most `REUSE_SECONDS`, so a
failure is never remembered for long and a burst of probes makes one set of connections.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import psycopg
import redis.asyncio as aioredis
from django.conf import settings
from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse

from billing.metering import pg_params, writer_state
from lib.loops import for_this_loop
from lib.redact import redact

log = logging.getLogger("tokios.health")

REUSE_SECONDS = 1.0  # a finished run answers the probes of the next second, no longer
MAX_REASON_CHARS = 200


async def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")


async def readyz(request: HttpRequest) -> JsonResponse:
    report = await readiness()
    body: dict[str, Any] = {"status": "ready" if report.ready else "not_ready"}
    if not report.ready:
        body["failed"] = [name for name, check in report.checks.items() if not check["ok"]]
    body["checks"] = report.checks
    response = JsonResponse(body, status=200 if report.ready else 503)
    response["Cache-Control"] = "no-store"
    return response


@dataclass(frozen=True, slots=True)
class Report:
    checks: dict[str, dict[str, Any]]

    @property
    def ready(self) -> bool:
        return all(check["ok"] for check in self.checks.values())


@dataclass(slots=True)
class Probe:
    """One event loop's probe state: the run in flight, and the last report with its time."""

    task: asyncio.Task[Report] | None = None
    report: Report | None = None
    at: float = 0.0
    was_ready: bool = True
    sqlite: Future[None] | None = None  # a SQLite check, maybe still running in its thread


_probes: dict = {}


async def readiness() -> Report:
    """The current report: the last one if it is at most REUSE_SECONDS old, else the run in
    flight, else a new run."""
    probe: Probe = for_this_loop(_probes, "readyz", Probe)
    if probe.report is not None and time.monotonic() - probe.at <= REUSE_SECONDS:
        return probe.report
    if probe.task is None or probe.task.done():
        probe.task = asyncio.get_running_loop().create_task(_run(probe))
    # Shielded: a prober that hangs up does not cancel the run the others wait for.
    return await asyncio.shield(probe.task)


async def _run(probe: Probe) -> Report:
    timeout = settings.READY_TIMEOUT
    runs = [("database", *database_check(probe))]
    runs += [(name, *redis_check(url, timeout)) for name, url in redis_targets().items()]
    results = await asyncio.gather(*(_bounded(target, check, timeout) for _, target, check in runs))
    checks = {name: result for (name, _, _), result in zip(runs, results, strict=True)}
    checks["usage_writer"] = check_writer()
    report = Report(checks)
    probe.report, probe.at = report, time.monotonic()
    if report.ready != probe.was_ready:
        probe.was_ready = report.ready
        if report.ready:
            log.warning("ready again")
        else:
            reasons = "; ".join(f"{name}: {c.get('error', '')}" for name, c in checks.items() if not c["ok"])
            log.warning("not ready: %s", reasons)
    return report


@dataclass(frozen=True, slots=True)
class Target:
    """What a check looks at, as the report names it (never credentials), and the secrets its
    connection uses, masked in any error text."""

    names: dict[str, Any]
    hidden: tuple[str, ...] = ()


Check = Callable[[], Awaitable[dict[str, Any] | None]]


async def _bounded(target: Target, check: Check, timeout: float) -> dict[str, Any]:
    """Run one check within `timeout`: {"ok": True, <names>, "ms": …} or, failed, "ok": False and "error"."""
    started = time.monotonic()
    result: dict[str, Any] = {"ok": True, **target.names}
    try:
        async with asyncio.timeout(timeout):
            result.update(await check() or {})
    except TimeoutError:
        result.update(ok=False, error=f"no answer within {timeout:g} s")
    except NotReady as exc:
        result.update(ok=False, error=str(exc))
    except Exception as exc:  # a driver's error, or a bug of ours: either way, not ready
        result.update(ok=False, error=_reason(exc, *target.hidden))
    result["ms"] = int((time.monotonic() - started) * 1000)
    return result


class NotReady(Exception):
    """A check's own finding (not a driver's error), worded for the report."""


def _reason(exc: BaseException, *hidden: str) -> str:
    """An exception as one short line, with any secret the check used masked (drivers do not quote
    passwords today; this keeps it so if one ever does)."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0].strip()}" if lines else type(exc).__name__
    for secret in hidden:
        if secret:
            text = text.replace(secret, "***")
    return redact(text)[:MAX_REASON_CHARS]


# --- the database ------------------------------------------------------------------------------

# SQLite's check runs in a thread of its own: a hung file system then holds that thread, not the
# event loop or Django's threads, and a check still running there is reported instead of queueing
# another behind it.
_sqlite_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokios-readyz")


def database_check(probe: Probe) -> tuple[Target, Check]:
    connection = connections["default"]
    settings_dict = connection.settings_dict
    name = str(settings_dict.get("NAME") or "")
    if connection.vendor == "postgresql":
        host = f"{settings_dict.get('HOST') or 'localhost'}:{settings_dict.get('PORT') or 5432}"
        params = pg_params(settings_dict)
        # libpq's own bound on connecting (whole seconds, at least 2); asyncio's is the real one.
        params["connect_timeout"] = max(2, math.ceil(settings.READY_TIMEOUT))
        target = Target({"database": name, "host": host}, (str(params.get("password") or ""),))
        return target, lambda: _check_postgres(params)
    if connection.vendor == "sqlite":
        if name in ("", ":memory:") or name.startswith("file:"):
            return Target({"database": name or ":memory:", "skipped": "not a file"}), _nothing
        return Target({"database": Path(name).name}), lambda: _check_sqlite(probe, name)
    return Target({"database": name, "skipped": f"no check for {connection.vendor}"}), _nothing


async def _nothing() -> None:
    return None


async def _check_postgres(params: dict[str, Any]) -> None:
    conn = await psycopg.AsyncConnection.connect(**params, autocommit=True)
    try:
        cursor = await conn.execute("SELECT pg_is_in_recovery()")
        row = await cursor.fetchone()
    finally:
        await conn.close()
    if row is None or row[0]:
        raise NotReady("the database is a standby in recovery: it takes no writes")


async def _check_sqlite(probe: Probe, path: str) -> None:
    if probe.sqlite is not None and not probe.sqlite.done():
        raise NotReady("the previous check of the database file has not returned yet")
    probe.sqlite = _sqlite_thread.submit(_open_sqlite, path, settings.READY_TIMEOUT)
    await asyncio.wrap_future(probe.sqlite)


def _open_sqlite(path: str, timeout: float) -> None:
    # mode=rw: a missing file is an error, not a new empty database.
    db = sqlite3.connect(f"file:{quote(path)}?mode=rw", uri=True, timeout=timeout)
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    finally:
        db.close()


# --- Redis -------------------------------------------------------------------------------------


def redis_targets() -> dict[str, str]:
    """The Redis servers this process needs: REDIS_URL (limits, access cache, queue, presence, cache)
    and the channel layer's hosts when they are other servers."""
    targets: dict[str, str] = {}
    if settings.REDIS_URL:
        targets["redis"] = settings.REDIS_URL
    layer: dict[str, Any] = settings.CHANNEL_LAYERS.get("default", {})
    if "redis" in str(layer.get("BACKEND", "")).lower():
        hosts: list[Any] = layer.get("CONFIG", {}).get("hosts", [])
        for index, host in enumerate(hosts):
            url = host.get("address") if isinstance(host, dict) else host
            if isinstance(url, str) and url not in targets.values():
                targets["channel_layer" + (f"_{index}" if index else "")] = url
    return targets


def redis_check(url: str, timeout: float) -> tuple[Target, Check]:
    parsed = urlparse(url)
    if parsed.scheme == "unix":
        names: dict[str, Any] = {"host": parsed.path}
    else:
        db = parsed.path.lstrip("/")
        names = {
            "host": f"{parsed.hostname or 'localhost'}:{parsed.port or 6379}",
            "db": int(db) if db.isdigit() else 0,
        }
    return Target(names, (parsed.password or "", url)), lambda: _ping(url, timeout)


async def _ping(url: str, timeout: float) -> None:
    client = aioredis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        await client.ping()
    finally:
        await client.aclose()


# --- the usage writer --------------------------------------------------------------------------


def check_writer() -> dict[str, Any]:
    if not settings.METERING_ENABLED:
        return {"ok": True, "skipped": "metering is off"}
    state = writer_state()
    failing_for = None if state.failing_since is None else max(0.0, time.time() - state.failing_since)
    problems = []
    failing_limit, age_limit = settings.READY_WRITER_FAILING, settings.READY_WRITER_MAX_AGE
    if failing_limit and failing_for is not None and failing_for > failing_limit:
        problems.append(f"usage writes have failed for {failing_for:.0f} s (limit {failing_limit:g} s)")
    if age_limit and state.oldest_age > age_limit:
        problems.append(f"a usage record has waited {state.oldest_age:.0f} s to be written (limit {age_limit:g} s)")
    result: dict[str, Any] = {
        "ok": not problems,
        "queued": state.queued,
        "oldest_age_s": round(state.oldest_age, 1),
        "failing_for_s": None if failing_for is None else round(failing_for, 1),
        "batch_failures": state.batch_failures,
    }
    if problems:
        result["error"] = "; ".join(problems)
    return result
