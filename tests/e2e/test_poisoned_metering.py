"""One org's poisoned usage cannot stop metering for the others: real uvicorn, real connectors, and
the roll-up run as `manage.py rollup_usage` — on SQLite, and on PostgreSQL with DATABASE_URL set.

The two findings of issue 17 these guard:
- a connector reporting token counts no column holds (`"prompt_tokens": "999…"`) once made the
  usage writer fail on its batch and put it back at the head of the queue every second, forever:
  no org's usage was written any more while requests kept answering 200;
- a price stored past the bound, two requests with many tokens, and the roll-up overflowed 64 bits
  in SUM(cost_micros): the watermark stopped, and no org's rollups, pages or statements advanced.

A row the database refuses, whatever the reason, is stood in for by a trigger that refuses every
usage row of one org (it refuses that row's flagged copy too: the writer's last resort is to drop it
with an error line, after proving with a probe row that the database takes rows at all).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager

import httpx
import pytest

from tests.e2e.conftest import ROOT, Tenant, base_env
from tests.e2e.scripted_upstream import ScriptedUpstream, chunk, sse

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MAX_TOKENS = 2**31 - 1
MAX_EVENT_COST = 2**53 - 1
HUGE = "999999999999999999999999999999"


def chat(server, key: str, text: str, **extra) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": text}], **extra}
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        content=json.dumps(body),
        headers={"content-type": "application/json", "authorization": f"Bearer {key}"},
        timeout=30,
    )


def other_tenant(tenant: Tenant) -> Tenant:
    """A second org with a model, a key and a connector token of its own."""
    from deployments.actions import create_connector_token, create_deployment

    org = tenant.new_org()
    deployment = create_deployment(
        org=org, name=f"other-{uuid.uuid4().hex[:8]}", price_input_micros=1_000_000, price_output_micros=1_000_000
    )
    token = create_connector_token(deployment=deployment, name="e2e")[1]
    other = Tenant(org=org, deployment=deployment, key="", token=token, owner=tenant.owner)
    other.key = tenant.make_key(org=org)
    return other


def events_of(org, count: int, timeout: float = 10.0) -> dict:
    from billing.models import UsageEvent

    deadline = time.monotonic() + timeout
    while True:
        found = {e.request_id: e for e in UsageEvent.objects.filter(org_id=org.pk)}
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def rollup_usage(db_env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "rollup_usage", "--statements"],
        cwd=ROOT,
        env=base_env(**db_env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def model(tenant: Tenant, text: str, **extra) -> dict:
    return {"model": tenant.model, "messages": [{"role": "user", "content": text}], **extra}


@contextmanager
def database_refusing_usage_of(org_id: int):
    """A trigger refusing every usage row of one org (as a CHECK would: an integrity error)."""
    from django.db import connection

    org_id = int(org_id)
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(
                "CREATE TRIGGER tokios_test_refuse_usage BEFORE INSERT ON billing_usageevent "
                f"WHEN NEW.org_id = {org_id} BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
        else:
            cursor.execute(
                "CREATE FUNCTION tokios_test_refuse_usage() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.org_id = {org_id} THEN RAISE EXCEPTION 'refused by the test' USING ERRCODE = 'check_violation'; "
                "END IF; RETURN NEW; END $$"
            )
            cursor.execute(
                "CREATE TRIGGER tokios_test_refuse_usage BEFORE INSERT ON billing_usageevent "
                "FOR EACH ROW EXECUTE FUNCTION tokios_test_refuse_usage()"
            )
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            if connection.vendor == "sqlite":
                cursor.execute("DROP TRIGGER IF EXISTS tokios_test_refuse_usage")
            else:
                cursor.execute("DROP TRIGGER IF EXISTS tokios_test_refuse_usage ON billing_usageevent")
                cursor.execute("DROP FUNCTION IF EXISTS tokios_test_refuse_usage()")


# --- finding 1: token counts no column holds ------------------------------------------------------


def hostile_answers(body: dict) -> tuple[int, str, bytes]:
    """The scripted model server: the user's text picks which usage it reports."""
    text = body["messages"][-1]["content"]
    usage = {
        "string": {"prompt_tokens": HUGE, "completion_tokens": 5},
        "bignum": f'{{"prompt_tokens": {HUGE}, "completion_tokens": {HUGE}}}',  # a JSON number: a float once parsed
        "u64": {"prompt_tokens": 2**64 - 1, "completion_tokens": 2**63 - 1},
        "negative": {"prompt_tokens": -5, "completion_tokens": 3},
    }[text.split()[0]]
    usage_json = usage if isinstance(usage, str) else json.dumps(usage)
    if body.get("stream"):
        head = sse(chunk({"role": "assistant", "content": "ok"}), chunk({}, "stop"), trailing_blank_line=True)
        tail = f'data: {{"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{usage_json}}}\n\ndata: [DONE]\n\n'
        return 200, "text/event-stream", head + tail.encode()
    answer = (
        '{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,'
        f'"message":{{"role":"assistant","content":"ok"}},"finish_reason":"stop"}}],"usage":{usage_json}}}'
    )
    return 200, "application/json", answer.encode()


def test_token_counts_no_column_holds_are_bounded_estimated_logged_and_every_org_is_metered(
    start_server, tenant, start_connector, _db_env
):
    from billing.models import UsageRollup

    srv = start_server()
    other = other_tenant(tenant)
    start_connector(other.token, srv=srv)
    sent: dict[str, str] = {}  # request id -> what the model server reported
    good: list[str] = []
    with ScriptedUpstream({"/v1/chat/completions": hostile_answers}) as upstream:
        start_connector(tenant.token, srv=srv, upstream=upstream.base)
        for kind in ("string", "bignum", "u64", "negative"):
            for stream in (False, True):
                r = httpx.post(
                    f"{srv.url}/v1/chat/completions",
                    json=model(tenant, f"{kind} please", stream=stream),
                    headers={"authorization": f"Bearer {tenant.key}"},
                    timeout=30,
                )
                assert r.status_code == 200, r.text
                sent[r.headers["x-request-id"]] = kind
                r = httpx.post(
                    f"{srv.url}/v1/chat/completions",
                    json=model(other, "fine [[words=3]]"),
                    headers={"authorization": f"Bearer {other.key}"},
                    timeout=30,
                )
                assert r.status_code == 200, r.text
                good.append(r.headers["x-request-id"])

    others = events_of(other.org, len(good))
    assert set(others) == set(good)  # every other org's request is metered, to the token
    assert all((e.output_tokens, e.usage_estimated, e.error_code) == (3, False, "") for e in others.values())
    hostile = events_of(tenant.org, len(sent))
    assert set(hostile) == set(sent)
    price = tenant.deployment
    for request_id, event in hostile.items():
        assert event.usage_estimated, (sent[request_id], event.input_tokens, event.output_tokens)
        assert 0 <= event.input_tokens <= MAX_TOKENS and 0 <= event.output_tokens <= MAX_TOKENS
        assert event.cost_micros == price.cost_micros(event.input_tokens, event.output_tokens) <= MAX_EVENT_COST
        assert event.status_code == 200
    log = srv.proc.output()
    for request_id in sent:
        assert re.search(rf"not a token count .* for {request_id}", log), request_id

    done = rollup_usage(_db_env)
    assert done.returncode == 0, done.stdout + done.stderr
    daily = UsageRollup.objects.daily().get(org=other.org)
    assert (daily.requests, daily.output_tokens) == (len(good), 3 * len(good))


# --- finding 1: a row the database refuses ---------------------------------------------------------


def test_a_row_the_database_refuses_never_holds_back_another_org_s_usage(start_server, tenant, start_connector):
    from billing.models import UsageEvent

    srv = start_server()
    other = other_tenant(tenant)
    start_connector(tenant.token, srv=srv)
    start_connector(other.token, srv=srv)
    poisoned: list[str] = []
    good: list[str] = []
    with database_refusing_usage_of(tenant.org.pk):
        for round_ in range(6):
            # The poisoned org's request first: with the old writer its batch went back to the head of
            # the queue and every later batch failed with it.
            for who, ids in ((tenant, poisoned), (other, good)):
                r = chat(srv, who.key, f"round {round_} [[words=2]]", model=who.model)
                assert r.status_code == 200, r.text
                ids.append(r.headers["x-request-id"])
        written = events_of(other.org, len(good))
        assert set(written) == set(good)
        assert all(e.output_tokens == 2 and not e.usage_estimated for e in written.values())
        time.sleep(1.5)  # long enough for the old writer's retries to show in the log

        log = srv.proc.output()
        for request_id in poisoned:
            lines = [line for line in log.splitlines() if request_id in line and "dropped" in line]
            assert len(lines) == 1, f"{request_id}: {lines}"  # written off once, not retried forever
            assert f"of org {tenant.org.pk}" in lines[0]
        assert not UsageEvent.objects.filter(org_id=tenant.org.pk).exists()

        # Later requests of either org are still written as they come.
        late = chat(srv, other.key, "late [[words=4]]", model=other.model).headers["x-request-id"]
        chat(srv, tenant.key, "late [[words=4]]", model=tenant.model)
        assert late in events_of(other.org, len(good) + 1)

    srv.proc.stop()  # graceful: the exit flush has nothing left it could not write
    assert "could not be written at exit" not in srv.proc.output()


# --- finding 2: a stored price past the bound, and sums past 64 bits -------------------------------


def test_a_price_stored_past_the_bound_cannot_stop_the_rollups_of_any_org(
    start_server, tenant, start_connector, _db_env
):
    from billing.models import RollupWatermark, Statement, UsageEvent, UsageRollup
    from deployments.models import Deployment

    srv = start_server()
    # Every input path refuses such a price now (deployments/tests/test_bounds.py, api/ and
    # dashboard/ bounds tests); one stored before prices were bounded, or written in SQL, remains.
    Deployment.objects.filter(pk=tenant.deployment.pk).update(price_input_micros=2**62, price_output_micros=2**62)
    other = other_tenant(tenant)
    start_connector(other.token, srv=srv)
    many = {"prompt_tokens": 1000, "completion_tokens": MAX_TOKENS}
    answer = (
        '{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,'
        f'"message":{{"role":"assistant","content":"ok"}},"finish_reason":"stop"}}],"usage":{json.dumps(many)}}}'
    ).encode()
    with ScriptedUpstream({"/v1/chat/completions": lambda body: (200, "application/json", answer)}) as upstream:
        start_connector(tenant.token, srv=srv, upstream=upstream.base)
        for _ in range(2):
            assert chat(srv, tenant.key, "a long answer", model=tenant.model).status_code == 200
            assert chat(srv, other.key, "fine [[words=3]]", model=other.model).status_code == 200

    assert len(events_of(tenant.org, 2)) == len(events_of(other.org, 2)) == 2

    for _ in range(2):  # and again: idempotent
        done = rollup_usage(_db_env)
        assert done.returncode == 0, done.stdout + done.stderr

    dear = events_of(tenant.org, 2)
    assert all(e.output_tokens == MAX_TOKENS and e.cost_micros == MAX_EVENT_COST for e in dear.values())

    last = UsageEvent.objects.order_by("-id").values_list("id", flat=True).first()
    assert RollupWatermark.objects.get(name="usage").last_event_id >= last
    poisoned = UsageRollup.objects.daily().get(org=tenant.org)
    assert (poisoned.requests, poisoned.output_tokens, poisoned.cost_micros) == (2, 2 * MAX_TOKENS, 2 * MAX_EVENT_COST)
    fine = UsageRollup.objects.daily().get(org=other.org)
    assert (fine.requests, fine.output_tokens) == (2, 6)
    assert fine.cost_micros == sum(e.cost_micros for e in events_of(other.org, 2).values())
    assert Statement.objects.get(org=tenant.org).total_micros == 2 * MAX_EVENT_COST
    assert Statement.objects.get(org=other.org).total_micros == fine.cost_micros
