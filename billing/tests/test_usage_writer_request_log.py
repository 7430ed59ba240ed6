"""billing/metering.py: what the request log adds to an event (the model name the client sent, the
connector that served the call, the wait for a slot of the model) reaches it through every write path — SQLite's rows, PostgreSQL's JSON
insert (from a thread and from the event loop), a refused row's flagged copy — cut to their columns,
so that a long text never makes a row refused."""

from __future__ import annotations

from typing import Any

import pytest

from billing import metering
from billing.models import MAX_CONNECTOR_ID_CHARS, MAX_EVENT_TOKENS, MAX_REQUESTED_MODEL_CHARS, UsageEvent


def record(request_id: str, **fields) -> metering.UsageRecord:
    defaults: dict[str, Any] = {"request_id": request_id, "surface": "chat", "status_code": 200}
    defaults.update(fields)
    return metering.UsageRecord(**defaults)


def stored(request_id: str) -> tuple[str, str, str, int]:
    event = UsageEvent.objects.get(request_id=request_id)
    return event.requested_model, event.connector_id, event.error_code, event.queue_wait_ms


@pytest.mark.django_db(transaction=True)
def test_the_model_name_and_connector_are_stored_and_too_long_ones_cut_to_their_columns(org):
    metering.write_batch(
        [
            record("req_short", org_id=org.pk, status_code=404, requested_model="gpt-4o", queue_wait_ms=1500),
            record("req_long", org_id=org.pk, requested_model="m" * 500, connector_id="c" * 90, queue_wait_ms=2**40),
        ]
    )

    assert stored("req_short") == ("gpt-4o", "", "", 1500)
    assert stored("req_long") == ("m" * MAX_REQUESTED_MODEL_CHARS, "c" * MAX_CONNECTOR_ID_CHARS, "", MAX_EVENT_TOKENS)


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_the_background_writer_stores_them_too(org):
    metering.submit(
        record("req_async", org_id=org.pk, requested_model="gemma-small", connector_id="conn_0123abcd", queue_wait_ms=7)
    )
    await metering.flush()

    event = await UsageEvent.objects.aget(request_id="req_async")
    assert (event.requested_model, event.connector_id, event.queue_wait_ms) == ("gemma-small", "conn_0123abcd", 7)


def test_a_refused_row_s_flagged_copy_keeps_its_texts_in_a_shape_every_column_takes():
    flagged = metering.flagged_copy(
        record("req_odd", status_code=-1, requested_model="a\x00b" + "x" * 300, connector_id=7, queue_wait_ms=-5)  # type: ignore[arg-type]
    )

    assert flagged.requested_model == ("ab" + "x" * 300)[:MAX_REQUESTED_MODEL_CHARS]
    assert flagged.connector_id == ""  # not a string: nothing
    assert flagged.queue_wait_ms == 0
    assert flagged.error_code == "usage_invalid"
