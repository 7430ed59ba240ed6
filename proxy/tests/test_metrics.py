"""The gateway's Prometheus metrics (proxy/request_metrics.py, lib/metrics.py), in process: /v1
requests through the real `GatewayHandler` against the scripted model (fake_call.py, a TEST
DOUBLE), frames through the real connector consumer, and the gauges a scrape reads from shared
state (connectors online, queued requests, the roll-up) through GET /metrics.

Counters are process-wide, so every test compares them before and after what it does.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from accounts.actions import create_api_key
from billing import metering
from billing.metering import WriterState
from billing.models import RollupWatermark, UsageEvent
from billing.rollups import WATERMARK
from lib import metrics
from proxy import request_metrics
from proxy.calls import CallError, Data, Ended, Started
from proxy.tunnel import presence, queue
from tokios_connector.protocol import ResponseEnd, chunk_prefix

from .fake_call import COMPLETION_TOKENS, PROMPT_TOKENS, Delay, chat_body, streamed
from .test_consumer import links, started_call  # noqa: F401  (links: the fixture)
from .v1 import V1_DB, call_v1

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def chat(model: str, *, stream: bool = False) -> dict:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": "Say hello"}]}


@pytest.fixture
def scrape_allowed(settings):
    settings.METRICS_TOKEN, settings.METRICS_ALLOW = "", ["127.0.0.1"]


async def scrape() -> dict[tuple[str, tuple], float]:
    response = await AsyncClient().get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


async def announced(deployment_id: int) -> None:
    """Wait for the consumer to publish its connector (with Redis, just after its welcome)."""
    deadline = time.monotonic() + 5
    while not (await sync_to_async(presence.online_counts_sync)([deployment_id]) or {}).get(deployment_id):
        assert time.monotonic() < deadline, "the connector was not published"
        await asyncio.sleep(0.02)


# --- per request ----------------------------------------------------------------------------------------


@V1_DB
async def test_an_answered_request_counts_once_with_its_tokens_and_the_time_split_between_gateway_and_model(
    key, deployment, upstream, ledger
):
    name = deployment.name
    before = {
        "requests": value("tokios_requests_total", surface="chat", deployment=name, status="200"),
        "input": value("tokios_tokens_total", surface="chat", deployment=name, direction="input"),
        "output": value("tokios_tokens_total", surface="chat", deployment=name, direction="output"),
        "count": value("tokios_request_duration_seconds_count", surface="chat"),
        "upstream": value("tokios_upstream_duration_seconds_sum", surface="chat"),
        "added": value("tokios_gateway_added_seconds_sum", surface="chat"),
        "in_flight": value("tokios_requests_in_flight"),
        "queue": value("tokios_queue_wait_seconds_count"),
    }
    upstream.answer(Started(200, {}), Delay(0.05), Data(chat_body()), Ended(upstream_ms=20, ttfb_ms=5))

    response = await call_v1("POST", "/v1/chat/completions", chat(name), secret=key.secret)

    assert response.status == 200
    record = ledger.only(status_code=200)
    assert record.latency_ms >= 50 and record.upstream_ms == 20
    assert value("tokios_requests_total", surface="chat", deployment=name, status="200") == before["requests"] + 1
    assert value("tokios_tokens_total", surface="chat", deployment=name, direction="input") == (
        before["input"] + PROMPT_TOKENS
    )
    assert value("tokios_tokens_total", surface="chat", deployment=name, direction="output") == (
        before["output"] + COMPLETION_TOKENS
    )
    assert value("tokios_request_duration_seconds_count", surface="chat") == before["count"] + 1
    assert value("tokios_upstream_duration_seconds_sum", surface="chat") == pytest.approx(before["upstream"] + 0.020)
    added = value("tokios_gateway_added_seconds_sum", surface="chat") - before["added"]
    assert added == pytest.approx((record.latency_ms - 20) / 1000)
    assert value("tokios_queue_wait_seconds_count") == before["queue"]  # it did not wait for a slot
    assert value("tokios_requests_in_flight") == before["in_flight"]  # back where it was


@V1_DB
async def test_a_streamed_request_has_its_time_to_first_token_split_too(key, deployment, upstream, ledger):
    name = deployment.name
    ttft_before = value("tokios_time_to_first_token_seconds_count", surface="chat")
    first_byte_before = value("tokios_upstream_first_byte_seconds_sum", surface="chat")
    upstream.answer(*streamed("Hel", "lo"))  # the connector timed it 12 ms, 3 ms to the first byte

    response = await call_v1("POST", "/v1/chat/completions", chat(name, stream=True), secret=key.secret)

    assert response.status == 200
    assert ledger.only(status_code=200).ttft_ms is not None
    assert value("tokios_time_to_first_token_seconds_count", surface="chat") == ttft_before + 1
    assert value("tokios_upstream_first_byte_seconds_sum", surface="chat") == pytest.approx(first_byte_before + 0.003)


@V1_DB
async def test_refusals_count_by_status_and_limits_by_kind(org, deployment, upstream, ledger, settings):
    settings.LIMITS_ENABLED = True
    name = deployment.name
    _, secret = await sync_to_async(create_api_key)(org=org, name="one a minute", rpm_limit=1)
    denied = {"surface": "chat", "deployment": metrics.NONE, "status": "401"}
    before = {
        "401": value("tokios_requests_total", **denied),
        "429": value("tokios_requests_total", surface="chat", deployment=name, status="429"),
        "rate": value("tokios_limit_refusals_total", kind="rate_limit", deployment=name),
        "queue": value("tokios_limit_refusals_total", kind="queue_full", deployment=name),
    }
    upstream.answer(Started(200, {}), Data(chat_body()), Ended())
    upstream.answer(CallError(503, "queue_full", "every slot is busy"))

    assert (await call_v1("POST", "/v1/chat/completions", chat(name), secret="sk-wrong")).status == 401
    assert (await call_v1("POST", "/v1/chat/completions", chat(name), secret=secret)).status == 200
    assert (await call_v1("POST", "/v1/chat/completions", chat(name), secret=secret)).status == 429
    settings.LIMITS_ENABLED = False
    assert (await call_v1("POST", "/v1/chat/completions", chat(name), secret=secret)).status == 503

    assert value("tokios_requests_total", **denied) == before["401"] + 1
    assert value("tokios_requests_total", surface="chat", deployment=name, status="429") == before["429"] + 1
    assert value("tokios_limit_refusals_total", kind="rate_limit", deployment=name) == before["rate"] + 1
    assert value("tokios_limit_refusals_total", kind="queue_full", deployment=name) == before["queue"] + 1


@V1_DB
async def test_a_path_no_surface_serves_is_counted_without_timings(key):
    labels = {"surface": metrics.NONE, "deployment": metrics.NONE, "status": "404"}
    before = value("tokios_requests_total", **labels)
    assert (await call_v1("GET", "/v1/no-such-thing", secret=key.secret)).status == 404
    assert value("tokios_requests_total", **labels) == before + 1


# --- the usage writer -------------------------------------------------------------------------------------


async def test_the_writer_gauges_follow_its_state_and_count_each_failed_batch_once():
    failures = value("tokios_usage_writer_batch_failures_total")
    seen = request_metrics._Writer.failures_seen

    busy = request_metrics.publish_writer_state(WriterState(3, 2.5, time.time() - 10, seen + 2))
    assert busy
    assert (value("tokios_usage_writer_queued_records"), value("tokios_usage_writer_oldest_queued_age_seconds")) == (
        3,
        2.5,
    )
    assert value("tokios_usage_writer_failing_seconds") == pytest.approx(10, abs=1)
    assert value("tokios_usage_writer_batch_failures_total") == failures + 2

    idle = request_metrics.publish_writer_state(WriterState(0, 0.0, None, seen + 2))
    assert not idle
    assert value("tokios_usage_writer_queued_records") == value("tokios_usage_writer_failing_seconds") == 0
    assert value("tokios_usage_writer_batch_failures_total") == failures + 2  # not counted twice


@V1_DB
async def test_the_writer_gauges_come_back_to_zero_once_a_request_s_record_is_written(
    key, deployment, upstream, ledger
):
    upstream.answer(Started(200, {}), Data(chat_body()), Ended())
    assert (await call_v1("POST", "/v1/chat/completions", chat(deployment.name), secret=key.secret)).status == 200
    await metering.flush()
    await request_metrics._Writer.task  # its next reading finds the writer idle, and it stops
    assert metering.writer_state().queued == 0
    assert value("tokios_usage_writer_queued_records") == 0


# --- the tunnel ---------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_frames_and_bytes_are_counted_by_direction_and_kind(links, credentials):  # noqa: F811
    def frames(direction: str, kind: str) -> float:
        return value("tokios_tunnel_frames_total", direction=direction, kind=kind)

    def sizes(direction: str, kind: str) -> float:
        return value("tokios_tunnel_bytes_total", direction=direction, kind=kind)

    kinds = [("in", "hello"), ("out", "welcome"), ("out", "request"), ("in", "response.start"), ("in", "chunk")]
    before = {kind: frames(*kind) for kind in kinds} | {("in", "response.end"): frames("in", "response.end")}
    chunk_bytes = sizes("in", "chunk")
    invalid = frames("in", "invalid")

    link = await links(credentials.secret)
    await link.hello()
    call = await started_call(link, credentials)  # request → response.start
    payload = chunk_prefix("req_1") + b"data: {}\n\n"
    await link.send(payload)
    await link.send_frame(ResponseEnd("req_1", 5, 1))
    while not call.finished:
        await call.next_item(5)
    await link.send('{"type": "no-such-frame"}')
    assert (await link.closed())[0] == 4002  # handled: it broke the protocol

    for kind in kinds:
        assert frames(*kind) == before[kind] + 1, kind
    assert frames("in", "response.end") == before[("in", "response.end")] + 1
    assert sizes("in", "chunk") == chunk_bytes + len(payload)
    assert frames("in", "invalid") == invalid + 1


@pytest.mark.django_db(transaction=True)
async def test_a_scrape_reads_connectors_online_and_requests_queued_per_deployment(
    links,  # noqa: F811
    credentials,
    scrape_allowed,
    org,
    other_deployment,
):
    name = credentials.deployment_name
    link = await links(credentials.secret)
    await link.hello()
    await announced(credentials.deployment_id)
    # In the line of a deployment whose connectors are all busy: here, one that has none.
    waiter = await queue.enqueue(deployment_id=other_deployment.pk, rid="req_waits", org=org.pk, key=1, wait=5)
    try:
        seen = await scrape()
    finally:
        await queue.leave(waiter)

    assert seen[("tokios_connectors_online", (("deployment", name),))] == 1
    assert seen[("tokios_connectors_online", (("deployment", other_deployment.name),))] == 0
    assert seen[("tokios_queued_requests", (("deployment", other_deployment.name),))] == 1
    assert seen[("tokios_queued_requests", (("deployment", name),))] == 0

    await link.disconnect()
    assert (await scrape())[("tokios_connectors_online", (("deployment", name),))] == 0


@pytest.mark.django_db(transaction=True)
async def test_deployments_beyond_the_cap_are_summed_under_other(
    links,  # noqa: F811
    credentials,
    scrape_allowed,
    other_deployment,
    monkeypatch,
):
    monkeypatch.setattr(metrics, "deployment_label", metrics.DeploymentLabels(limit=0))
    link = await links(credentials.secret)
    await link.hello()
    await announced(credentials.deployment_id)
    seen = await scrape()
    assert seen[("tokios_connectors_online", (("deployment", "other"),))] == 1  # both deployments, one online
    assert not [key for key in seen if key[0] == "tokios_connectors_online" and key[1] != (("deployment", "other"),)]


# --- the roll-up ------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_a_scrape_tells_how_long_ago_the_roll_up_ran_and_how_old_what_it_has_not_read_is(scrape_allowed):
    seen = await scrape()
    assert not [key for key in seen if key[0].startswith("tokios_rollup_")]  # it never ran

    @sync_to_async
    def history() -> None:
        event = UsageEvent.objects.create(request_id="req_rolled", surface="chat", status_code=200)
        RollupWatermark.objects.create(name=WATERMARK, last_event_id=event.pk)
        RollupWatermark.objects.filter(name=WATERMARK).update(updated_at=timezone.now() - timedelta(seconds=90))
        UsageEvent.objects.create(request_id="req_waits", surface="chat", status_code=200)
        UsageEvent.objects.filter(request_id="req_waits").update(created_at=timezone.now() - timedelta(seconds=30))

    await history()
    seen = await scrape()
    assert seen[("tokios_rollup_watermark_age_seconds", ())] == pytest.approx(90, abs=5)
    assert seen[("tokios_rollup_pending_age_seconds", ())] == pytest.approx(30, abs=5)
