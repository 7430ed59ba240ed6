"""Usage events as the gateway writes them, for the request log's tests (dashboard, API, browser)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from billing.models import UsageEvent

_ids = itertools.count(1)
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def request_event(org, *, key=None, deployment=None, minutes_ago: float = 0, at: datetime | None = None, **fields):
    """One request's event. Defaults: a 200 on chat for `deployment`'s model, 12 minutes to the hour."""
    number = next(_ids)
    values = {
        "request_id": f"req_{number:032x}",
        "created_at": at or NOW - timedelta(minutes=minutes_ago),
        "org": org,
        "api_key": key,
        "deployment": deployment,
        "surface": "chat",
        "status_code": 200,
        "input_tokens": 100,
        "output_tokens": 20,
        "cost_micros": 18,
        "latency_ms": 850,
        "ttft_ms": 120,
        "streamed": True,
        "requested_model": deployment.name if deployment is not None else "",
        "connector_id": "conn_a1b2c3d4e5f6" if deployment is not None else "",
    }
    values.update(fields)
    return UsageEvent.objects.create(**values)
