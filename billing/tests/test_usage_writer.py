"""proxy/usage.py: one UsageEvent per request, whatever happened to the request or its key."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.http import StreamingHttpResponse
from django.test import RequestFactory

from accounts.actions import create_api_key
from billing.models import UsageEvent
from proxy import gateway, usage


def record(**fields) -> usage.RequestRecord:
    defaults = dict(request_id="req_default", surface="chat")
    defaults.update(fields)
    return usage.RequestRecord(**defaults)


@pytest.mark.django_db(transaction=True)
def test_a_batch_naming_a_deleted_key_is_written_without_the_dangling_pointer(org, key, deployment):
    gone = create_api_key(org=org, name="short-lived")[0]
    gone_id = gone.pk
    gone.delete()
    batch = [
        record(request_id="req_ok", org_id=org.pk, key_id=key.pk, deployment_id=deployment.pk, status_code=200),
        record(request_id="req_gone", org_id=org.pk, key_id=gone_id, deployment_id=deployment.pk, status_code=200),
    ]

    usage.write_batch(batch)

    assert UsageEvent.objects.get(request_id="req_ok").api_key_id == key.pk
    survivor = UsageEvent.objects.get(request_id="req_gone")
    assert survivor.api_key_id is None
    assert (survivor.org_id, survivor.deployment_id) == (org.pk, deployment.pk)


@pytest.mark.django_db(transaction=True)
def test_writing_the_same_batch_twice_stores_each_event_once(org, key):
    batch = [record(request_id=f"req_{i}", org_id=org.pk, key_id=key.pk, status_code=200) for i in range(3)]

    usage.write_batch(batch)
    usage.write_batch(batch)

    assert UsageEvent.objects.count() == 3


@pytest.mark.django_db
def test_submitting_a_record_twice_queues_it_once(org):
    item = record(request_id="req_twice", org_id=org.pk, status_code=200)

    usage.submit(item)
    usage.submit(item)

    assert UsageEvent.objects.filter(request_id="req_twice").count() == 1


@pytest.mark.django_db
def test_a_request_whose_client_left_before_any_response_is_recorded_as_cancelled_499(org):
    usage.submit(record(request_id="req_gone_early", org_id=org.pk))

    event = UsageEvent.objects.get(request_id="req_gone_early")
    assert (event.status_code, event.cancelled) == (499, True)


@pytest.mark.django_db
def test_a_bogus_token_count_from_an_upstream_cannot_poison_a_batch(org):
    usage.write_batch(
        [record(request_id="req_bogus", org_id=org.pk, status_code=200, input_tokens=-5, output_tokens=10**12)]
    )

    event = UsageEvent.objects.get(request_id="req_bogus")
    assert (event.input_tokens, event.output_tokens) == (0, 2_147_483_647)


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_stream_the_server_never_started_is_recorded_when_the_response_closes(org, deployment):
    _, secret = await sync_to_async(create_api_key)(org=org, name="streamer")
    request = RequestFactory().post(
        "/v1/chat/completions", b"{}", content_type="application/json", headers={"authorization": f"Bearer {secret}"}
    )

    async def never_iterated():
        yield b"data: {}\n\n"

    async def handler(ctx):
        await gateway.resolve_model(ctx, deployment.name)
        ctx.record.streamed = True
        return StreamingHttpResponse(never_iterated(), content_type="text/event-stream")

    response = await gateway.handle(request, "chat", handler)
    assert await sync_to_async(UsageEvent.objects.count)() == 0  # the stream would record it at its end

    await sync_to_async(response.close)()  # what the ASGI handler does when the client is gone
    await usage.flush()

    event = await sync_to_async(UsageEvent.objects.get)()
    assert (event.status_code, event.streamed, event.cancelled) == (200, True, True)
    assert event.deployment_id == deployment.pk
