"""/healthz and /readyz (tokios_site/health.py), in process through Django's async client.

/healthz does no I/O. /readyz checks the database (the test database, PostgreSQL or SQLite), Redis
when REDIS_URL is set, and this process's usage writer; a check that fails is named with why, and
never with a password. Breaking a dependency here means pointing the check elsewhere (a closed port,
a missing file, a listener that never answers); tests/e2e/test_readyz.py stops real servers.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from django.db import connections
from django.test import AsyncClient

from billing import metering
from tokios_site import health
from tokios_site.probe_logging import QuietReadiness

pytestmark = [pytest.mark.django_db, pytest.mark.timeout(60)]


@pytest.fixture(autouse=True)
def fresh_probe(monkeypatch):
    """No report carried over from another test, and a writer whose last write succeeded."""
    health._probes.clear()
    monkeypatch.setattr(metering, "_failing_since", None)
    yield
    health._probes.clear()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A listener that accepts connections and never says a word (a hung server)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


async def readyz() -> tuple[int, dict]:
    response = await AsyncClient().get("/readyz")
    assert response["Cache-Control"] == "no-store"
    return response.status_code, response.json()


def test_healthz_answers_ok_without_touching_the_database(client, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = client.get("/healthz")

    assert (response.status_code, response.content) == (200, b"ok")


@pytest.mark.asyncio
async def test_readyz_is_green_when_the_database_redis_and_the_writer_are_fine(settings):
    status, body = await readyz()

    assert status == 200, body
    assert body["status"] == "ready" and "failed" not in body
    database = body["checks"]["database"]
    assert database["ok"] is True and database["database"] and database["ms"] >= 0
    assert body["checks"]["usage_writer"]["ok"] is True
    assert ("redis" in body["checks"]) == bool(settings.REDIS_URL)


@pytest.mark.asyncio
async def test_a_database_that_cannot_be_reached_is_red_naming_it_and_no_password(monkeypatch):
    connection = connections["default"]
    if connection.vendor == "postgresql":
        monkeypatch.setitem(connection.settings_dict, "PORT", str(closed_port()))
        monkeypatch.setitem(connection.settings_dict, "PASSWORD", "hunter2-secret")
        named = connection.settings_dict["NAME"]
    else:
        monkeypatch.setitem(connection.settings_dict, "NAME", "/nonexistent/dir/tokios.sqlite3")
        named = "tokios.sqlite3"

    status, body = await readyz()

    assert status == 503
    assert (body["status"], body["failed"]) == ("not_ready", ["database"])
    database = body["checks"]["database"]
    assert database["ok"] is False and database["database"] == named and database["error"]
    assert "hunter2" not in str(body)
    assert body["checks"]["usage_writer"]["ok"] is True  # the others are still reported


@pytest.mark.asyncio
async def test_redis_on_a_closed_port_is_red_and_its_password_is_not_shown(settings):
    settings.REDIS_URL = f"redis://:hunter2-secret@127.0.0.1:{closed_port()}/3"

    status, body = await readyz()

    assert status == 503 and "redis" in body["failed"]
    redis = body["checks"]["redis"]
    assert redis["ok"] is False and redis["db"] == 3 and redis["host"].startswith("127.0.0.1:")
    assert "Connection" in redis["error"] or "connect" in redis["error"]
    assert "hunter2" not in str(body)


@pytest.mark.asyncio
async def test_a_hung_redis_fails_within_the_timeout_instead_of_hanging_the_probe(settings, silent_port):
    settings.REDIS_URL = f"redis://127.0.0.1:{silent_port}/0"
    settings.READY_TIMEOUT = 0.5

    started = time.monotonic()
    status, body = await readyz()

    assert time.monotonic() - started < 3
    assert status == 503 and body["failed"] == ["redis"]
    assert body["checks"]["redis"]["error"] == "no answer within 0.5 s"


@pytest.mark.asyncio
async def test_a_channel_layer_on_another_redis_is_checked_too(settings, silent_port):
    settings.REDIS_URL = ""
    settings.READY_TIMEOUT = 0.5
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [f"redis://127.0.0.1:{silent_port}"]},
        }
    }

    status, body = await readyz()

    assert status == 503 and body["failed"] == ["channel_layer"]


@pytest.mark.asyncio
async def test_a_writer_failing_longer_than_the_limit_is_red(settings, monkeypatch):
    settings.READY_WRITER_FAILING = 60
    monkeypatch.setattr(metering, "_failing_since", time.time() - 30)
    status, body = await readyz()
    assert status == 200 and body["checks"]["usage_writer"]["failing_for_s"] >= 30  # failing, not for long yet

    health._probes.clear()
    monkeypatch.setattr(metering, "_failing_since", time.time() - 90)
    status, body = await readyz()

    assert status == 503 and body["failed"] == ["usage_writer"]
    assert "failed for 90 s" in body["checks"]["usage_writer"]["error"]


@pytest.mark.asyncio
async def test_a_record_waiting_longer_than_the_limit_is_red_and_a_zero_limit_turns_the_check_off(settings):
    settings.READY_WRITER_MAX_AGE = 120
    stale = metering.UsageRecord(request_id="req_stale", surface="chat", submitted=time.monotonic() - 300)
    metering._queue.append(stale)
    try:
        status, body = await readyz()
        assert status == 503 and body["failed"] == ["usage_writer"]
        writer = body["checks"]["usage_writer"]
        assert writer["queued"] == 1 and writer["oldest_age_s"] >= 300 and "waited 300 s" in writer["error"]

        health._probes.clear()
        settings.READY_WRITER_MAX_AGE = 0
        status, body = await readyz()
        assert status == 200
    finally:
        metering._queue.remove(stale)


@pytest.mark.asyncio
async def test_concurrent_probes_share_one_run_and_its_result_serves_for_a_second_only(monkeypatch):
    runs = 0
    real = health.database_check

    def counted(probe):
        nonlocal runs
        runs += 1
        return real(probe)

    monkeypatch.setattr(health, "database_check", counted)

    reports = await asyncio.gather(*(health.readiness() for _ in range(20)))
    assert runs == 1 and all(r is reports[0] for r in reports)
    assert await health.readiness() is reports[0]  # within the second: the same report

    await asyncio.sleep(health.REUSE_SECONDS + 0.1)
    assert await health.readiness() is not reports[0]
    assert runs == 2


@pytest.mark.asyncio
async def test_a_failure_is_not_remembered_past_a_second(settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{closed_port()}/0"
    assert (await health.readiness()).ready is False

    settings.REDIS_URL = ""
    await asyncio.sleep(health.REUSE_SECONDS + 0.1)

    assert (await health.readiness()).ready is True


@pytest.mark.asyncio
async def test_readyz_is_not_redirected_to_https_like_healthz(settings):
    settings.SECURE_SSL_REDIRECT = True

    ready = await AsyncClient().get("/readyz")
    page = await AsyncClient().get("/login/")

    assert ready.status_code == 200
    assert page.status_code == 301  # the rest of the site is


@pytest.mark.asyncio
async def test_a_503_from_readyz_is_not_a_django_error_line_per_probe_but_a_change_is_logged_once(settings, caplog):
    settings.REDIS_URL = f"redis://127.0.0.1:{closed_port()}/0"

    assert (await AsyncClient().get("/readyz")).status_code == 503
    await asyncio.sleep(health.REUSE_SECONDS + 0.1)  # a second run, as red as the first
    assert (await AsyncClient().get("/readyz")).status_code == 503

    assert not [r for r in caplog.records if r.name == "django.request"]
    changes = [r.getMessage() for r in caplog.records if r.name == "tokios.health"]
    assert len(changes) == 1 and changes[0].startswith("not ready: redis: ")


def test_the_quiet_filter_lets_every_other_error_through():
    quiet = QuietReadiness()

    def record(path: str, status: int) -> logging.LogRecord:
        made = logging.LogRecord("django.request", logging.ERROR, __file__, 1, "Service Unavailable", None, None)
        made.status_code, made.request = status, SimpleNamespace(path=path)
        return made

    assert quiet.filter(record("/readyz", 503)) is False
    assert quiet.filter(record("/readyz", 500)) is True
    assert quiet.filter(record("/api/orgs/", 503)) is True
