"""Fair queueing when the model is busy, through real processes: two uvicorn servers sharing Redis
(the queue, presence and the channel layer), one connector with two slots, the fake upstream
(a TEST DOUBLE that answers with a chosen delay).

- One key floods the deployment while another org's key sends a request a second: the other org's
  requests wait about one slot's turn, not behind the flood, and none fails.
- With the queue full, the excess gets 503 with retry-after at once (529 overloaded_error on
  /v1/messages), and the usage rows say so.
- A streamed request that waits gets its headers and `: queued, position N` comments, then its
  answer.

Redis: the database REDIS_URL names (db 9 for this helper's runs); only the keys of the test's own
deployment are deleted.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

# Each answer takes the model half a second (the fake upstream waits before it answers).
SLOW = "[[words=2 first_delay_ms=500]]"


def chat(server, key: str, model: str, text: str = SLOW, **extra) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": model, "messages": [{"role": "user", "content": text}], **extra},
        timeout=60,
    )


@pytest.fixture
def redis_env(tenant):
    """The Redis db of this run, without what an earlier run left for this deployment id (test
    databases are recreated per run, so ids repeat)."""
    from django.conf import settings

    if not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL")
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(f"tokios:queue:{tenant.deployment.pk}", f"tokios:presence:{tenant.deployment.pk}")
    for pattern in (f"tokios:rl:{{o{tenant.org.pk}}}:*", f"tokios:spend:{{o{tenant.org.pk}}}:*"):
        for name in client.scan_iter(match=pattern, count=1000):
            client.delete(name)
    client.close()
    return {"REDIS_URL": settings.REDIS_URL, "TOKIOS_PRESENCE_REFRESH": "0.5"}


def second_org_key(tenant) -> tuple[object, str]:
    from deployments.actions import grant_model

    other = tenant.new_org()
    grant_model(deployment=tenant.deployment, org=other)
    return other, tenant.make_key(org=other)


def wait_for_events(org, count: int, timeout: float = 20.0) -> list:
    from billing.models import UsageEvent

    deadline = time.monotonic() + timeout
    while True:
        events = list(UsageEvent.objects.filter(org=org))
        if len(events) >= count or time.monotonic() > deadline:
            return events
        time.sleep(0.1)


def test_a_flood_from_one_key_does_not_hold_back_another_org(start_server, tenant, start_connector, redis_env):
    holder = start_server(**redis_env)  # holds the connector
    front = start_server(**redis_env)  # the other org comes in here: its turns cross processes
    start_connector(tenant.token, "--max-concurrency", "2", srv=holder)
    light_org, light_key = second_org_key(tenant)

    # The light org's request alone: what the model takes for it (no waiting).
    alone = []
    for _ in range(3):
        began = time.monotonic()
        assert chat(front, light_key, tenant.model).status_code == 200
        alone.append(time.monotonic() - began)
    service = statistics.median(alone)

    stop = threading.Event()
    flood_results: list[tuple[int, float]] = []

    def flood(worker: int) -> None:
        server = holder if worker % 2 else front
        while not stop.is_set():
            began = time.monotonic()
            status = chat(server, tenant.key, tenant.model).status_code
            flood_results.append((status, time.monotonic() - began))

    light: list[tuple[int, float]] = []
    with ThreadPoolExecutor(max_workers=13) as pool:
        workers = [pool.submit(flood, i) for i in range(12)]  # 12 in flight for 2 slots: a line of 10
        time.sleep(3)  # the line forms
        for _ in range(6):  # one request a second
            began = time.monotonic()
            status = chat(front, light_key, tenant.model).status_code
            light.append((status, time.monotonic() - began))
            time.sleep(max(0.0, 1.0 - (time.monotonic() - began)))
        stop.set()
        for worker in workers:
            worker.result()

    light_waits = [max(0.0, took - service) for _, took in light]
    flood_waits = [max(0.0, took - service) for _, took in flood_results]
    report = (
        f"service {service:.2f}s; light waits {[round(w, 2) for w in light_waits]}; "
        f"flood mean wait {statistics.mean(flood_waits):.2f}s over {len(flood_results)}"
    )
    print(report)
    assert [status for status, _ in light] == [200] * 6, report  # none fails
    assert all(status == 200 for status, _ in flood_results), report  # the flood only waits too
    # A slot's turn is one answer's time; the light org waits about that, on average.
    assert statistics.mean(light_waits) <= service, report
    assert statistics.mean(flood_waits) > 3 * statistics.mean(light_waits), report
    # The same, as the server measured it: the usage rows' wait for a slot.
    events = wait_for_events(light_org, 9)
    waited = sorted(e.queue_wait_ms for e in events)[-6:]  # the 3 alone did not wait
    assert all(e.status_code == 200 for e in events), [(e.status_code, e.error_code) for e in events]
    assert statistics.mean(waited) <= service * 1000, (waited, report)


def test_a_full_queue_answers_503_with_retry_after_and_the_usage_rows_say_so(
    start_server, tenant, start_connector, redis_env
):
    from billing.models import UsageEvent

    env = {**redis_env, "TOKIOS_QUEUE_MAX_DEPTH": "2"}
    holder, front = start_server(**env), start_server(**env)
    start_connector(tenant.token, "--max-concurrency", "1", srv=holder)
    long = "[[words=2 first_delay_ms=2000]]"  # two seconds each: the line stays full while we look

    def send(i: int) -> httpx.Response:
        time.sleep(0.3 * (i > 0))  # the first takes the slot
        return chat(holder if i % 2 else front, tenant.key, tenant.model, long)

    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(send, i) for i in range(8)]
        time.sleep(1.0)
        # Anthropic's clients hear "overloaded" (529), with the same retry-after.
        message = httpx.post(
            f"{front.url}/v1/messages",
            headers={"x-api-key": tenant.key, "anthropic-version": "2023-06-01"},
            json={"model": tenant.model, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        responses = [future.result() for future in futures]
        refusals = [r for r in responses if r.status_code == 503]

    served = [r for r in responses if r.status_code == 200]
    assert len(served) == 3 and len(refusals) == 5, [r.status_code for r in responses]  # 1 slot + a line of 2
    for refused in refusals:
        assert refused.json()["error"]["code"] == "queue_full"
        assert refused.json()["error"]["type"] == "server_error"
        assert refused.headers["retry-after"] == "1"
    assert message.status_code == 529, message.text
    assert message.json()["error"]["type"] == "overloaded_error"
    assert message.headers["retry-after"] == "1"
    assert time.monotonic() - began < 15

    events = wait_for_events(tenant.org, 9)
    by_code = {}
    for event in events:
        by_code.setdefault((event.status_code, event.error_code), 0)
        by_code[(event.status_code, event.error_code)] += 1
    assert by_code == {(200, ""): 3, (503, "queue_full"): 5, (529, "queue_full"): 1}, by_code
    # The two that waited for the slot say how long; the refused ones did not wait.
    assert sorted(e.queue_wait_ms > 1000 for e in events if e.status_code == 200) == [False, True, True]
    assert all(e.queue_wait_ms == 0 for e in events if e.error_code == "queue_full")
    assert all(e.input_tokens == 0 and e.cost_micros == 0 for e in events if e.error_code == "queue_full")
    assert UsageEvent.objects.filter(org=tenant.org, error_code="queue_full").count() == 6


def test_a_streamed_request_that_waits_hears_its_place_in_line_then_its_answer(
    start_server, tenant, start_connector, redis_env
):
    holder = start_server(**redis_env)
    start_connector(tenant.token, "--max-concurrency", "1", srv=holder)

    with ThreadPoolExecutor(max_workers=1) as pool:
        busy = pool.submit(chat, holder, tenant.key, tenant.model, "[[words=2 first_delay_ms=3000]]")
        time.sleep(0.5)
        began = time.monotonic()
        with httpx.stream(
            "POST",
            f"{holder.url}/v1/chat/completions",
            headers={"authorization": f"Bearer {tenant.key}"},
            json={"model": tenant.model, "messages": [{"role": "user", "content": "[[words=2]]"}], "stream": True},
            timeout=60,
        ) as response:
            headers_after = time.monotonic() - began
            lines = [line for line in response.iter_lines() if line]
        assert busy.result().status_code == 200

    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert headers_after < 2.0  # the headers did not wait for the slot
    queued = [line for line in lines if line.startswith(": queued")]
    assert queued and queued[0] == ": queued, position 1", lines
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert "".join(d["choices"][0]["delta"].get("content") or "" for d in data if d.get("choices")) == "w0 w1"
    assert lines[-1] == "data: [DONE]"
    assert lines.index(queued[-1]) < lines.index(next(line for line in lines if line.startswith("data: ")))


def test_a_streamed_wait_that_runs_out_ends_in_band_in_the_surface_s_shape(
    start_server, tenant, start_connector, redis_env
):
    holder = start_server(**redis_env, TOKIOS_QUEUE_MAX_WAIT="1.5")
    start_connector(tenant.token, "--max-concurrency", "1", srv=holder)

    with ThreadPoolExecutor(max_workers=1) as pool:
        busy = pool.submit(chat, holder, tenant.key, tenant.model, "[[words=2 first_delay_ms=4000]]")
        time.sleep(0.5)
        with httpx.stream(
            "POST",
            f"{holder.url}/v1/messages",
            headers={"x-api-key": tenant.key, "anthropic-version": "2023-06-01"},
            json={
                "model": tenant.model,
                "max_tokens": 10,
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            },
            timeout=60,
        ) as response:
            lines = [line for line in response.iter_lines() if line]
        assert busy.result().status_code == 200

    assert response.status_code == 200  # the headers went out while it waited
    assert lines[0].startswith(": queued, position 1"), lines
    assert lines[-2:] == [
        "event: error",
        'data: {"type":"error","error":{"type":"overloaded_error","message":"The model stayed busy for as long '
        'as a request may wait for it; try again shortly."}}',
    ], lines
    events = wait_for_events(tenant.org, 2)
    assert sorted((e.status_code, e.error_code) for e in events) == [(200, ""), (529, "queue_timeout")]
    [timed_out] = [e for e in events if e.error_code == "queue_timeout"]
    assert 1400 <= timed_out.queue_wait_ms < 4000  # TOKIOS_QUEUE_MAX_WAIT=1.5


def test_the_sdks_read_a_stream_that_waited_in_line_as_any_other(start_server, tenant, start_connector, redis_env):
    import anthropic
    import openai

    holder = start_server(**redis_env)
    start_connector(tenant.token, "--max-concurrency", "1", srv=holder)
    oai = openai.OpenAI(api_key=tenant.key, base_url=f"{holder.url}/v1", max_retries=0, timeout=30)
    claude = anthropic.Anthropic(api_key=tenant.key, base_url=holder.url, max_retries=0, timeout=30)

    with ThreadPoolExecutor(max_workers=1) as pool:
        busy = pool.submit(chat, holder, tenant.key, tenant.model, "[[words=2 first_delay_ms=2000]]")
        time.sleep(0.5)
        stream = oai.chat.completions.create(
            model=tenant.model, messages=[{"role": "user", "content": "[[words=3]]"}], stream=True
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert busy.result().status_code == 200

    assert text == "w0 w1 w2"

    with ThreadPoolExecutor(max_workers=1) as pool:
        busy = pool.submit(chat, holder, tenant.key, tenant.model, "[[words=2 first_delay_ms=2000]]")
        time.sleep(0.5)
        with claude.messages.stream(
            model=tenant.model, max_tokens=10, messages=[{"role": "user", "content": "[[words=2]]"}]
        ) as stream:
            message = stream.get_final_message()
        assert busy.result().status_code == 200

    assert [block.text for block in message.content] == ["w0 w1"]
