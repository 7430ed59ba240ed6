"""The usage writer's SQL: a batch of `UsageRecord`s as rows of the usage table, or as one JSON
array PostgreSQL turns into rows, with every figure clamped into its column (billing/metering.py
writes them)."""

from __future__ import annotations

import functools
from datetime import UTC, datetime

import orjson
from django.db import connection

from .models import (
    MAX_CONNECTOR_ID_CHARS,
    MAX_EVENT_COST_MICROS,
    MAX_EVENT_TOKENS,
    MAX_REQUESTED_MODEL_CHARS,
    UsageEvent,
)
from .usage_record import UsageRecord

COLUMNS = (
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
    "requested_model",
    "connector_id",
    "queue_wait_ms",
    "retried",
    "served_by_fallback",
)


def insert_sql(connection) -> str:
    quote = connection.ops.quote_name
    return (
        f"INSERT INTO {quote(UsageEvent._meta.db_table)} ({', '.join(quote(c) for c in COLUMNS)}) "
        f"VALUES ({', '.join(['%s'] * len(COLUMNS))}) ON CONFLICT ({quote('request_id')}) DO NOTHING"
    )


def json_payload(batch: list[UsageRecord]) -> str:
    """The batch as a JSON array for `json_insert_sql` (orjson serialises the records in C)."""
    try:
        return orjson.dumps(batch).decode()
    except orjson.JSONEncodeError:  # an integer beyond 64 bits from a bogus upstream
        table = rows(batch, connection)
        return orjson.dumps(
            [{**dict(zip(COLUMNS, row, strict=True)), "created_at": None, "created": row[1]} for row in table]
        ).decode()


def rows(batch: list[UsageRecord], connection) -> list[tuple]:
    created = created_at_adapter(connection)  # looked up once: `connection` is a thread-local proxy
    return [
        (
            r.request_id,
            created(r.created_at),
            r.org_id,
            r.key_id,
            r.deployment_id,
            r.surface,
            r.status_code,
            int32(r.input_tokens),
            int32(r.output_tokens),
            r.usage_estimated,
            min(max(0, r.cost_micros), MAX_EVENT_COST_MICROS),
            int32(r.latency_ms),
            None if r.ttft_ms is None else int32(r.ttft_ms),
            r.streamed,
            r.cancelled,
            r.error_code[:64],
            r.requested_model[:MAX_REQUESTED_MODEL_CHARS],
            r.connector_id[:MAX_CONNECTOR_ID_CHARS],
            int32(r.queue_wait_ms),
            r.retried is True,
            r.served_by_fallback is True,
        )
        for r in batch
    ]


def created_at_adapter(connection):
    """Epoch seconds -> the created_at column's value. On SQLite with UTC storage that is what
    Django's adapt_datetimefield_value makes of an aware datetime (the naive UTC time as str), without
    its per-value timezone work; elsewhere it is Django's adapter itself."""
    if connection.vendor == "sqlite" and connection.timezone_name == "UTC":
        return lambda seconds: str(datetime.fromtimestamp(seconds, tz=UTC).replace(tzinfo=None))
    adapt = connection.ops.adapt_datetimefield_value
    return lambda seconds: adapt(datetime.fromtimestamp(seconds, tz=UTC))


@functools.cache
def json_insert_sql() -> str:
    """PostgreSQL: insert the events of a JSON array, each either a UsageRecord as orjson writes it
    or a row keyed by column name (the fallback); the same clamps as `rows` in SQL."""
    quote = connection.ops.quote_name
    int32 = "least(greatest(coalesce({}, 0), 0), " + str(MAX_EVENT_TOKENS) + ")"
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
        "cost_micros": f"least(greatest(coalesce(r.cost_micros, 0), 0), {MAX_EVENT_COST_MICROS})",
        "latency_ms": int32.format("r.latency_ms"),
        "ttft_ms": f"CASE WHEN r.ttft_ms IS NULL THEN NULL ELSE {int32.format('r.ttft_ms')} END",
        "streamed": "coalesce(r.streamed, false)",
        "cancelled": "coalesce(r.cancelled, false)",
        "error_code": "left(coalesce(r.error_code, ''), 64)",
        "requested_model": f"left(coalesce(r.requested_model, ''), {MAX_REQUESTED_MODEL_CHARS})",
        "connector_id": f"left(coalesce(r.connector_id, ''), {MAX_CONNECTOR_ID_CHARS})",
        "queue_wait_ms": int32.format("r.queue_wait_ms"),
        "retried": "coalesce(r.retried, false)",
        "served_by_fallback": "coalesce(r.served_by_fallback, false)",
    }
    shape = (
        "request_id text, created_at float8, created timestamptz, org_id bigint, key_id bigint, "
        "api_key_id bigint, deployment_id bigint, surface text, status_code int, input_tokens numeric, "
        "output_tokens numeric, usage_estimated boolean, cost_micros numeric, latency_ms numeric, "
        "ttft_ms numeric, streamed boolean, cancelled boolean, error_code text, requested_model text, "
        "connector_id text, queue_wait_ms numeric, retried boolean, served_by_fallback boolean"
    )
    return (
        f"INSERT INTO {quote(UsageEvent._meta.db_table)} ({', '.join(quote(c) for c in COLUMNS)}) "
        f"SELECT {', '.join(values[c] for c in COLUMNS)} FROM json_to_recordset(%s::json) AS r({shape}) "
        f"ON CONFLICT ({quote('request_id')}) DO NOTHING"
    )


def int32(value: int) -> int:
    """Token counts and timings fit the columns: a bogus upstream number must not poison a batch."""
    return min(max(0, int(value)), MAX_EVENT_TOKENS)
