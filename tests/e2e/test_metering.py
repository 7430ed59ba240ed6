"""Metering and limits through the real tunnel: uvicorn + connector + fake upstream processes.

Exactness: every request leaves one UsageEvent whose tokens are what the fake upstream reported
(estimated and flagged where it reported none), and the rollups equal the events to the token.
Limits: two ASGI processes sharing Redis admit exactly the key's limit between them.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def post(server, key: str, path: str, body: dict, **headers) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/{path}",
        content=json.dumps(body),
        headers={"content-type": "application/json", "authorization": f"Bearer {key}", **headers},
        timeout=30,
    )


def words(text: str) -> int:
    """The fake upstream's prompt_tokens: whitespace-separated words of the message texts."""
    return max(1, len(text.split()))


def sse_events(response: httpx.Response) -> list[dict]:
    return [
        json.loads(line[6:])
        for line in response.text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


@pytest.fixture(autouse=True)
def no_leftover_limiter_state(tenant):
    """Test databases are recreated per run, so ids repeat while Redis keeps the last run's buckets:
    forget this org's limiter and spend keys (only these — the Redis server is shared)."""
    from django.conf import settings

    if not settings.REDIS_URL:
        return
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    for pattern in (f"tokios:rl:{{o{tenant.org.pk}}}:*", f"tokios:spend:{{o{tenant.org.pk}}}:*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)
    client.close()


def wait_for_events(key_id: int, count: int, timeout: float = 15.0):
    from billing.models import UsageEvent

    deadline = time.monotonic() + timeout
    while True:
        events = {e.request_id: e for e in UsageEvent.objects.filter(api_key_id=key_id)}
        if len(events) >= count or time.monotonic() > deadline:
            return events
        time.sleep(0.1)


def test_usage_events_and_rollups_equal_what_the_upstream_reported(server, tenant, start_connector, fake_upstream):
    from django.db.models import Sum

    from accounts.models import ApiKey
    from billing import rollups
    from billing.models import UsageEvent, UsageRollup

    start_connector(tenant.token)
    key_id = ApiKey.objects.get(org=tenant.org, name="e2e key").pk
    expected: dict[str, dict] = {}  # request id -> what the event must say

    def chat(text: str, **extra) -> httpx.Response:
        body = {"model": tenant.model, "messages": [{"role": "user", "content": text}], **extra}
        return post(server, tenant.key, "chat/completions", body)

    # Not streamed: the usage in the body is what the upstream reported.
    for n in (1, 7, 30):
        r = chat(f"count please [[words={n}]]")
        assert r.status_code == 200
        usage = r.json()["usage"]
        assert usage["completion_tokens"] == n
        expected[r.headers["x-request-id"]] = dict(
            status_code=200, input_tokens=usage["prompt_tokens"], output_tokens=n, streamed=False, usage_estimated=False
        )
    # Streamed, usage asked for: the last chunk carries it.
    r = chat("stream it [[words=12]]", stream=True, stream_options={"include_usage": True})
    usage = sse_events(r)[-1]["usage"]
    expected[r.headers["x-request-id"]] = dict(
        status_code=200, input_tokens=usage["prompt_tokens"], output_tokens=12, streamed=True, usage_estimated=False
    )
    # Streamed, usage not asked for: Tokios still gets it from the upstream (and hides it).
    text = "stream quietly [[words=9]]"
    r = chat(text, stream=True)
    assert all(event.get("usage") is None for event in sse_events(r))
    expected[r.headers["x-request-id"]] = dict(
        status_code=200, input_tokens=words(text), output_tokens=9, streamed=True, usage_estimated=False
    )
    # Anthropic Messages on the same model.
    r = post(
        server,
        tenant.key,
        "messages",
        {"model": tenant.model, "max_tokens": 100, "messages": [{"role": "user", "content": "hello [[words=4]]"}]},
        **{"anthropic-version": "2023-06-01"},
    )
    assert r.status_code == 200
    expected[r.headers["request-id"]] = dict(
        status_code=200,
        input_tokens=r.json()["usage"]["input_tokens"],
        output_tokens=r.json()["usage"]["output_tokens"],
        streamed=False,
        usage_estimated=False,
    )
    assert expected[r.headers["request-id"]]["output_tokens"] == 4
    # The upstream fails: recorded, with no tokens.
    r = chat("break [[status=500]]")
    assert r.status_code == 502
    expected[r.headers["x-request-id"]] = dict(
        status_code=502, input_tokens=0, output_tokens=0, streamed=False, usage_estimated=False
    )
    # The upstream drops the stream after 3 words: no usage came, so it is estimated and flagged.
    r = chat("drop [[words=10 fail_after=3]]", stream=True)
    expected[r.headers["x-request-id"]] = dict(
        status_code=200,
        input_tokens=words("drop [[words=10 fail_after=3]]") + 4,
        output_tokens=3,
        streamed=True,
        usage_estimated=True,
    )

    # The client goes away mid-stream: billed for what was generated until the cancel reached the model.
    aborted_before = fake_upstream.stats()["aborted"]
    body = {
        "model": tenant.model,
        "stream": True,
        "messages": [{"role": "user", "content": "long [[words=400 delay_ms=20]]"}],
    }
    received = 0
    with httpx.stream(
        "POST",
        f"{server.url}/v1/chat/completions",
        content=json.dumps(body),
        headers={"content-type": "application/json", "authorization": f"Bearer {tenant.key}"},
        timeout=30,
    ) as stream:
        cancelled_id = stream.headers["x-request-id"]
        for line in stream.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                received += 1
            if received == 5:
                break

    events = wait_for_events(key_id, len(expected) + 1)
    assert len(events) == len(expected) + 1
    for request_id, want in expected.items():
        event = events[request_id]
        got = {name: getattr(event, name) for name in want}
        if want["usage_estimated"]:
            # The chat surface estimates the prompt at ~4 characters a token; only the output is counted.
            got["input_tokens"] = want["input_tokens"] = 0
        assert got == want, request_id
        assert event.cost_micros == tenant.deployment.cost_micros(event.input_tokens, event.output_tokens)
        assert (event.org_id, event.deployment_id, event.cancelled) == (tenant.org.pk, tenant.deployment.pk, False)
    cancelled = events[cancelled_id]
    assert (cancelled.cancelled, cancelled.streamed, cancelled.usage_estimated) == (True, True, True)
    assert received <= cancelled.output_tokens < 400
    deadline = time.monotonic() + 5
    while fake_upstream.stats()["aborted"] == aborted_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake_upstream.stats()["aborted"] > aborted_before  # the cancel reached the model

    rollups.roll_up()
    rolled = (
        UsageRollup.objects.for_org(tenant.org)
        .daily()
        .aggregate(
            r=Sum("requests"), e=Sum("errors"), i=Sum("input_tokens"), o=Sum("output_tokens"), c=Sum("cost_micros")
        )
    )
    raw = UsageEvent.objects.filter(org=tenant.org)
    assert rolled == {
        "r": raw.count(),
        "e": raw.filter(status_code__gte=400).count(),
        "i": raw.aggregate(s=Sum("input_tokens"))["s"],
        "o": raw.aggregate(s=Sum("output_tokens"))["s"],
        "c": raw.aggregate(s=Sum("cost_micros"))["s"],
    }
    assert rolled["o"] == sum(w["output_tokens"] for w in expected.values()) + cancelled.output_tokens


@pytest.mark.redis
def test_two_server_processes_sharing_redis_admit_exactly_the_rpm_limit(server, start_server, tenant, start_connector):
    from accounts.models import ApiKey

    limit, attempts = 8, 24
    second = start_server()
    start_connector(tenant.token)  # on the first server; the second reaches it through Redis
    secret = tenant.make_key(name="limited", rpm_limit=limit)
    key_id = ApiKey.objects.get(org=tenant.org, name="limited").pk
    body = {"model": tenant.model, "messages": [{"role": "user", "content": "hi [[words=1]]"}]}

    with ThreadPoolExecutor(attempts) as pool:
        responses = list(
            pool.map(lambda i: post(server if i % 2 else second, secret, "chat/completions", body), range(attempts))
        )

    admitted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(admitted) == limit
    assert len(refused) == attempts - limit
    assert all(r.headers["x-ratelimit-limit-requests"] == str(limit) for r in responses)
    # Each admission took exactly one unit of one shared bucket.
    assert sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in admitted) == list(range(limit))
    for r in refused:
        assert r.json()["error"]["type"] == "requests"
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert r.headers["x-ratelimit-reset-requests"].endswith("s")
    events = wait_for_events(key_id, attempts)
    assert sorted(e.status_code for e in events.values()) == [200] * limit + [429] * (attempts - limit)


def _requests_until_stopped(server, secret: str, model: str, seconds: float) -> list[tuple[str, float]]:
    """Sequential requests for `seconds`; (request id, when its response had fully arrived)."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi [[words=2]]"}]}
    finished = []
    with httpx.Client(timeout=10) as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            response = client.post(
                f"{server.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {secret}"}
            )
            assert response.status_code == 200, response.text
            finished.append((response.headers["x-request-id"], time.monotonic()))
    return finished


def _settled_event_ids(key_id: int) -> set[str]:
    from billing.models import UsageEvent

    seen: set[str] = set()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = set(UsageEvent.objects.filter(api_key_id=key_id).values_list("request_id", flat=True))
        if now == seen:
            break
        seen = now
    return seen


def _own_server_with_key(start_server, tenant, start_connector, name: str):
    """A server (to stop) with a connector on it, and a new key: (server, secret, key id)."""
    from accounts.models import ApiKey

    server = start_server()
    start_connector(tenant.token, srv=server)
    secret = tenant.make_key(name=name)
    return server, secret, ApiKey.objects.get(org=tenant.org, name=name).pk


def test_a_server_killed_with_sigkill_loses_at_most_its_last_batch_window(start_server, tenant, start_connector):
    doomed, secret, key_id = _own_server_with_key(start_server, tenant, start_connector, "killed")

    finished = _requests_until_stopped(doomed, secret, tenant.model, 1.5)
    doomed.proc.kill()  # SIGKILL: no atexit, no flush
    killed_at = time.monotonic()

    # A batch the server had sent still commits after the kill (PostgreSQL finishes the statement):
    # that is not a loss, so wait for the count to settle before looking.
    written = _settled_event_ids(key_id)
    # The window is 50 ms; the margin leaves room for a batch in flight on a busy CI machine.
    settled = [rid for rid, at in finished if at < killed_at - 0.5]
    assert len(settled) > 50
    assert set(settled) <= written
    assert written <= {rid for rid, _ in finished}


def test_a_server_stopped_gracefully_loses_no_usage_event(start_server, tenant, start_connector):
    from billing.models import UsageEvent

    stopping, secret, key_id = _own_server_with_key(start_server, tenant, start_connector, "stopped")

    finished = _requests_until_stopped(stopping, secret, tenant.model, 0.5)
    stopping.proc.stop()  # SIGTERM

    written = set(UsageEvent.objects.filter(api_key_id=key_id).values_list("request_id", flat=True))
    assert written == {rid for rid, _ in finished}


def test_a_server_stopped_gracefully_writes_the_events_its_batch_window_still_held(
    start_server, tenant, start_connector
):
    """uvicorn ends a SIGTERM'd process by raising the signal again, so `atexit` never runs there:
    the ASGI lifespan's shutdown is what writes the last window (tokios_site/asgi.py)."""
    from accounts.models import ApiKey
    from billing.models import UsageEvent

    server = start_server(TOKIOS_USAGE_BATCH_WINDOW="10")  # nothing is written on its own during the test
    start_connector(tenant.token, srv=server)
    secret = tenant.make_key(name="held")
    key_id = ApiKey.objects.get(org=tenant.org, name="held").pk

    finished = _requests_until_stopped(server, secret, tenant.model, 0.5)
    assert not UsageEvent.objects.filter(api_key_id=key_id).exists()  # still in the window
    server.proc.stop()  # SIGTERM
    written = set(UsageEvent.objects.filter(api_key_id=key_id).values_list("request_id", flat=True))
    assert written == {rid for rid, _ in finished}
