"""What the usage writer (billing/metering.py) needs to judge a row the database refused: whether
the failure was the connection or the data, and the row's flagged copy, forced into every column.

Kept apart from the writer so that its hot path stays short to read; nothing here runs unless a
write failed.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from django import db

from .models import MAX_CONNECTOR_ID_CHARS, MAX_EVENT_COST_MICROS, MAX_EVENT_TOKENS, MAX_REQUESTED_MODEL_CHARS

FLAGGED_ERROR_CODE = "usage_invalid"
MAX_STATUS = 32767  # the status column is a small integer
LAST_TIMESTAMP = 32_503_680_000.0  # 3000-01-01: a later (or NaN) created_at is not a time

# Errors that say the database could not be asked (the connection, a lock, a timeout): retrying
# later is right, and splitting the batch would only multiply the failures. Anything else (a
# constraint, a value out of range, a number Python cannot adapt) is about the rows.
UNREACHABLE = (db.OperationalError, db.InterfaceError, psycopg.OperationalError, psycopg.InterfaceError, OSError)


def is_unreachable(exc: BaseException) -> bool:
    return isinstance(exc, UNREACHABLE)


def brief(exc: BaseException) -> str:
    """An exception's type and first line, short, for a log line (the database may quote the row's
    values: usage figures, never a secret)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


def _text(value: object, length: int) -> str:
    """A string any text column of `length` takes: no NUL, no lone surrogate, not too long."""
    text = value if isinstance(value, str) else ""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")[:length]


def _clamped(value: object, high: int, default: int | None = 0) -> int | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return default
    return min(max(0, value), high)


def _row_id(value: object) -> int | None:
    """An org, key or deployment id, or None when the value cannot be one."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63 else None


def flagged_fields(record: Any) -> dict[str, Any]:
    """A UsageRecord's fields forced into their columns, marked estimated and `usage_invalid`:
    what is written in place of a row the database refused."""
    created = record.created_at
    if not isinstance(created, (int, float)) or not 0 < created < LAST_TIMESTAMP:  # NaN fails too
        created = time.time()
    status = record.status_code
    return {
        "request_id": _text(record.request_id, 64) or f"req_invalid_{time.time_ns():x}",
        "surface": _text(record.surface, 16),
        "created_at": float(created),
        "org_id": _row_id(record.org_id),
        "key_id": _row_id(record.key_id),
        "deployment_id": _row_id(record.deployment_id),
        "status_code": status if _clamped(status, MAX_STATUS, None) == status else 0,
        "input_tokens": _clamped(record.input_tokens, MAX_EVENT_TOKENS),
        "output_tokens": _clamped(record.output_tokens, MAX_EVENT_TOKENS),
        "usage_estimated": True,
        "cost_micros": _clamped(record.cost_micros, MAX_EVENT_COST_MICROS),
        "latency_ms": _clamped(record.latency_ms, MAX_EVENT_TOKENS),
        "ttft_ms": _clamped(record.ttft_ms, MAX_EVENT_TOKENS, None),
        "streamed": record.streamed is True,
        "cancelled": record.cancelled is True,
        "error_code": FLAGGED_ERROR_CODE,
        "requested_model": _text(record.requested_model, MAX_REQUESTED_MODEL_CHARS),
        "connector_id": _text(record.connector_id, MAX_CONNECTOR_ID_CHARS),
        "queue_wait_ms": _clamped(record.queue_wait_ms, MAX_EVENT_TOKENS),
        "retried": record.retried is True,
        "served_by_fallback": record.served_by_fallback is True,
    }


def figures(record: Any) -> str:
    """What a log line keeps of a record that could not be written, to rebuild it by hand."""
    return (
        f"created_at={record.created_at!r} org={record.org_id!r} key={record.key_id!r} "
        f"deployment={record.deployment_id!r} status={record.status_code!r} input_tokens={record.input_tokens!r} "
        f"output_tokens={record.output_tokens!r} cost_micros={record.cost_micros!r}"
    )[:600]
