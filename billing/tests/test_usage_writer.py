"""billing/metering.py: one UsageEvent per request, whatever happened to the request or its key.

Submitting a record twice is no longer guarded here: the gateway's RequestScope submits once, and
the tests at the end hold it to that.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from asgiref.sync import sync_to_async
from django.db import DatabaseError, connection
from django.db.utils import ConnectionHandler
from django.http import StreamingHttpResponse
from django.test import RequestFactory

from accounts.actions import create_api_key
from billing import limits, metering
from billing.models import UsageEvent, UsageRollup
from billing.rollups import roll_up
from proxy import gateway
from proxy.calls import Started
from proxy.gateway import RequestScope


def record(**fields) -> metering.UsageRecord:
    defaults: dict[str, Any] = {"request_id": "req_default", "surface": "chat"}
    defaults.update(fields)
    return metering.UsageRecord(**defaults)


@pytest.mark.django_db(transaction=True)
def test_an_event_naming_a_key_deleted_while_it_ran_is_kept_and_the_rollup_clears_the_dangling_id(org, key, deployment):
    gone = create_api_key(org=org, name="short-lived")[0]
    gone_id = gone.pk
    gone.delete()
    batch = [
        record(request_id="req_ok", org_id=org.pk, key_id=key.pk, deployment_id=deployment.pk, status_code=200),
        record(request_id="req_gone", org_id=org.pk, key_id=gone_id, deployment_id=deployment.pk, status_code=200),
    ]

    metering.write_batch(batch)  # nothing refuses it: the usage table has no foreign-key constraints
    roll_up()

    assert UsageEvent.objects.get(request_id="req_ok").api_key_id == key.pk
    survivor = UsageEvent.objects.get(request_id="req_gone")
    assert survivor.api_key_id is None
    assert (survivor.org_id, survivor.deployment_id) == (org.pk, deployment.pk)
    rows = UsageRollup.objects.hourly().order_by("api_key_id").values_list("api_key_id", "requests")
    assert sorted(rows, key=str) == sorted([(key.pk, 1), (None, 1)], key=str)


@pytest.mark.django_db(transaction=True)
def test_writing_the_same_batch_twice_stores_each_event_once(org, key):
    batch = [record(request_id=f"req_{i}", org_id=org.pk, key_id=key.pk, status_code=200) for i in range(3)]

    metering.write_batch(batch)
    metering.write_batch(batch)

    assert UsageEvent.objects.count() == 3


@pytest.mark.django_db
def test_a_request_whose_client_left_before_any_response_is_recorded_as_cancelled_499(org):
    metering.submit(record(request_id="req_gone_early", org_id=org.pk))

    event = UsageEvent.objects.get(request_id="req_gone_early")
    assert (event.status_code, event.cancelled) == (499, True)


@pytest.mark.django_db
def test_a_bogus_token_count_from_an_upstream_cannot_poison_a_batch(org):
    metering.write_batch(
        [record(request_id="req_bogus", org_id=org.pk, status_code=200, input_tokens=-5, output_tokens=10**12)]
    )

    event = UsageEvent.objects.get(request_id="req_bogus")
    assert (event.input_tokens, event.output_tokens) == (0, 2_147_483_647)


class RunningCall:
    """An UpstreamCall (proxy/calls.py) whose model has started answering and is still at it."""

    def __init__(self) -> None:
        self.finished = False
        self.cancels = 0

    async def start(self, timeout: float) -> Started:
        return Started(200, {})

    async def next_item(self, timeout: float) -> None:
        await asyncio.sleep(timeout)
        return None

    async def cancel(self) -> None:
        self.cancels += 1
        await asyncio.sleep(0)  # a real cancel goes out over a socket: another task may run meanwhile
        self.finished = True


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_stream_the_server_never_started_is_recorded_when_the_request_scope_closes(org, deployment):
    _, secret = await sync_to_async(create_api_key)(org=org, name="streamer")
    request = RequestFactory().post(
        "/v1/chat/completions", b"{}", content_type="application/json", headers={"authorization": f"Bearer {secret}"}
    )
    scope = request.request_scope = RequestScope(request)  # as proxy/handler.py opens it
    call = RunningCall()

    async def never_iterated():
        yield b"data: {}\n\n"

    async def handler(scope):
        await scope.resolve_model(deployment.name)
        scope.call = call
        scope.record.streamed = True
        return StreamingHttpResponse(never_iterated(), content_type="text/event-stream")

    response = await gateway.handle(request, "chat", handler)
    await metering.flush()
    assert response.status_code == 200
    assert await sync_to_async(UsageEvent.objects.count)() == 0  # recorded when the request ends, not before

    await scope.close()  # what the handler does when the client is gone before the first byte
    await metering.flush()

    event = await sync_to_async(UsageEvent.objects.get)()
    assert (event.status_code, event.streamed, event.cancelled) == (200, True, True)
    assert (event.org_id, event.deployment_id, event.request_id) == (org.pk, deployment.pk, scope.request_id)
    assert call.cancels == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_closing_a_request_scope_again_cancels_settles_and_records_nothing_more(org, monkeypatch):
    submitted, settled = [], []
    submit, settle = metering.submit, limits.settle

    def watched_submit(record):
        submitted.append(record)
        submit(record)

    def watched_settle(reservation, record):
        settled.append((reservation, record))
        settle(reservation, record)

    monkeypatch.setattr(metering, "submit", watched_submit)
    monkeypatch.setattr(limits, "settle", watched_settle)
    scope = RequestScope(RequestFactory().post("/v1/chat/completions"))
    scope.metered = True  # a surface took it
    scope.record.org_id, scope.record.status_code = org.pk, 200
    scope.reservation = limits.Reservation(buckets=[], budgets=[])
    scope.call = call = RunningCall()

    await asyncio.gather(scope.close(), scope.close())  # two exits at once: the second finds it closing
    await scope.close()  # and one after
    await metering.flush()

    assert submitted == [scope.record]
    assert settled == [(scope.reservation, scope.record)] and scope.reservation.settled
    assert call.cancels == 1
    event = await sync_to_async(UsageEvent.objects.get)()
    assert (event.request_id, event.status_code, event.cancelled) == (scope.request_id, 200, True)


@pytest.mark.django_db(transaction=True)
def test_every_field_of_a_record_arrives_as_written(org, key, deployment):
    # Outside a transaction PostgreSQL takes the one-statement JSON path; SQLite the executemany one.
    written = record(
        request_id="req_fields",
        org_id=org.pk,
        key_id=key.pk,
        deployment_id=deployment.pk,
        surface="messages",
        status_code=429,
        input_tokens=12,
        output_tokens=34,
        usage_estimated=True,
        cost_micros=56,
        latency_ms=78,
        ttft_ms=9,
        streamed=True,
        cancelled=True,
        error_code="rate_limit_exceeded",
    )

    metering.write_batch([written, record(request_id="req_plain", status_code=200)])

    event = UsageEvent.objects.get(request_id="req_fields")
    assert abs(event.created_at.timestamp() - written.created_at) < 1e-5
    assert (event.org_id, event.api_key_id, event.deployment_id) == (org.pk, key.pk, deployment.pk)
    assert (event.surface, event.status_code, event.input_tokens, event.output_tokens) == ("messages", 429, 12, 34)
    assert (event.usage_estimated, event.cost_micros, event.latency_ms, event.ttft_ms) == (True, 56, 78, 9)
    assert (event.streamed, event.cancelled, event.error_code) == (True, True, "rate_limit_exceeded")
    plain = UsageEvent.objects.get(request_id="req_plain")
    assert (plain.org_id, plain.ttft_ms, plain.streamed, plain.error_code) == (None, None, False, "")


@pytest.mark.django_db(transaction=True)
def test_numbers_beyond_any_column_are_clamped_outside_a_transaction_too(org):
    metering.write_batch(
        [
            record(request_id="req_huge", org_id=org.pk, status_code=200, input_tokens=10**30, cost_micros=-4),
            record(request_id="req_long", org_id=org.pk, status_code=502, output_tokens=-1, error_code="e" * 200),
        ]
    )

    huge = UsageEvent.objects.get(request_id="req_huge")
    assert (huge.input_tokens, huge.cost_micros) == (2_147_483_647, 0)
    long = UsageEvent.objects.get(request_id="req_long")
    assert (long.output_tokens, long.error_code) == (0, "e" * 64)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_connection_the_database_dropped_is_replaced_on_the_next_batch(org):
    metering.write_batch([record(request_id="req_before", org_id=org.pk, status_code=200)])
    own_pid = connection.connection.info.backend_pid
    with psycopg_admin() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [own_pid])

    with pytest.raises(DatabaseError):
        metering.write_batch([record(request_id="req_lost_try", org_id=org.pk, status_code=200)])
    metering.write_batch(
        [record(request_id="req_lost_try", org_id=org.pk, status_code=200)]
    )  # what the flusher retries

    assert set(UsageEvent.objects.values_list("request_id", flat=True)) == {"req_before", "req_lost_try"}


def psycopg_admin():
    return psycopg.connect(**metering.pg_params(connection.settings_dict), autocommit=True)


def test_the_writers_postgresql_connection_takes_what_django_would_from_the_settings():
    """The event loop's connection is made from settings.DATABASES (public), not from the keys of
    Django's own connect call; what libpq gets must still match Django's."""
    settings_dict = ConnectionHandler(
        {
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": "tokios",
                "USER": "gateway",
                "PASSWORD": "s3cret",
                "HOST": "db.internal",
                "PORT": "6432",
                "OPTIONS": {"sslmode": "require", "application_name": "tokios", "isolation_level": 1, "pool": False},
            }
        }
    )["default"].settings_dict
    djangos = ConnectionHandler({"default": settings_dict})["default"].get_connection_params()
    for used_by_django_only in ("cursor_factory", "context"):  # its cursor and adapter classes
        djangos.pop(used_by_django_only)

    assert metering.pg_params(settings_dict) == djangos
    assert djangos["prepare_threshold"] is None and djangos["sslmode"] == "require"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_on_postgresql_the_event_loop_writes_batches_and_survives_a_dropped_connection(org):
    metering.submit(record(request_id="req_async_1", org_id=org.pk, status_code=200, output_tokens=5))
    await metering.flush()
    connection = await metering._pg_connection()
    with psycopg_admin() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [connection.info.backend_pid])

    with pytest.raises(Exception):  # noqa: B017 — whatever psycopg raises for a killed backend
        await metering._write([record(request_id="req_async_2", org_id=org.pk, status_code=200)])
    await metering._write([record(request_id="req_async_2", org_id=org.pk, status_code=200)])  # the flusher's retry

    written = await sync_to_async(lambda: dict(UsageEvent.objects.values_list("request_id", "output_tokens")))()
    assert written == {"req_async_1": 5, "req_async_2": 0}
    assert (await metering._pg_connection()) is not connection
