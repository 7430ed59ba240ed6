"""One owner per request: whatever way a /v1 request ends, its call is cancelled if still running,
its limits reservation is settled once, and exactly one usage record is submitted.

These drive the real /v1 ASGI app (`GatewayHandler`) in process with hand-written receive/send
callables, so a test can make the client leave at any moment, and a scripted `UpstreamCall` in
place of the tunnel (`ScriptedCall`, installed where `proxy.upstream` makes its calls). The org, key
and deployment are real rows; `metering.submit`, `limits.enforce` and `limits.settle` are watched
(and still run), so each test sees what the request scope handed to billing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from dataclasses import dataclass, field

import orjson
import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async

from accounts.access import clear_local_cache
from accounts.actions import create_api_key, create_org
from billing import limits, metering
from billing.metering import UsageRecord
from billing.models import UsageEvent
from deployments.actions import create_deployment
from lib.redis import get_sync_redis, redis_enabled
from proxy import upstream as upstream_module
from proxy.calls import CallError, Data, Ended, Failed, Started
from proxy.handler import GatewayHandler
from proxy.surfaces import chat as chat_surface
from proxy.tunnel.router import OFFLINE_MESSAGE, call_error

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio, pytest.mark.timeout(60)]

ANTHROPIC = {"anthropic-version": "2023-06-01"}
PROMPT_TOKENS, COMPLETION_TOKENS = 1000, 500
COST = 450  # 1000 x $0.15/MTok + 500 x $0.60/MTok, in micro-USD


# --- what the model sends ---------------------------------------------------------------------------


def chunk(choices: list, **extra) -> bytes:
    """One Chat Completions stream event, as the model writes it."""
    event = {"id": "up-1", "object": "chat.completion.chunk", "model": "upstream", "choices": choices, **extra}
    return b"data: " + orjson.dumps(event) + b"\n\n"


def delta(text: str) -> bytes:
    return chunk([{"index": 0, "delta": {"content": text}, "finish_reason": None}])


USAGE_REPORT = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS}
FINISH = chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}])
USAGE = chunk([], usage={**USAGE_REPORT, "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS})
DONE = b"data: [DONE]\n\n"
STREAMED_ANSWER = [Started(200, {}), Data(delta("Hel")), Data(delta("lo")), Data(FINISH + USAGE + DONE), Ended(12, 3)]
ANSWER = {"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}
CHAT_BODY = orjson.dumps({"id": "up-1", "object": "chat.completion", "choices": [ANSWER], "usage": USAGE_REPORT})
SILENCE = "silence"  # in a script: the model sends nothing more, however long one waits


class Upstream:
    """Stands in for the tunnel: each call the gateway opens answers with the next script."""

    def __init__(self) -> None:
        self.scripts: list[list] = []
        self.calls: list[ScriptedCall] = []
        self.silent = asyncio.Event()  # set once a call waits on a silent model
        self.cancel_takes = 0.0  # seconds a cancel takes to send (to another process, say)

    def answer(self, *items) -> None:
        self.scripts.append(list(items))

    def __call__(self, *, deployment_id: int, request_id: str, method: str, path: str, body: bytes) -> ScriptedCall:
        call = ScriptedCall(self, self.scripts.pop(0) if self.scripts else [SILENCE], path=path, body=body)
        self.calls.append(call)
        return call

    @property
    def call(self) -> ScriptedCall:
        assert len(self.calls) == 1, f"{len(self.calls)} upstream calls"
        return self.calls[0]


class ScriptedCall:
    """A test double of proxy.calls.UpstreamCall that behaves as TunnelCall does at each step."""

    def __init__(self, upstream: Upstream, script: list, *, path: str, body: bytes) -> None:
        self.upstream = upstream
        self.items = deque(script)
        self.path = path
        self.body = orjson.loads(body) if body else None
        self.finished = False
        self.cancels = 0
        self.cancel_takes = upstream.cancel_takes
        self.reading = False  # someone is waiting in start() or next_item() right now

    async def start(self, timeout: float) -> Started:
        item = await self._next(timeout)
        match item:
            case Started():
                return item
            case Failed():
                self.finished = True
                raise call_error(item)
            case CallError():
                raise item  # no connector took it: TunnelCall raises from its dispatch, unfinished
            case None:
                await self.cancel()
                raise CallError(504, "upstream_timeout", "The model did not answer in time.")
        raise AssertionError(f"a script must begin with Started, Failed, CallError or silence, not {item!r}")

    async def next_item(self, timeout: float) -> Data | Ended | Failed | None:
        item = await self._next(timeout)
        if isinstance(item, Ended | Failed):
            self.finished = True
        return item

    async def _next(self, timeout: float):
        self.reading = True
        try:
            if not self.items or self.items[0] == SILENCE:
                self.upstream.silent.set()
                await asyncio.sleep(timeout)
                return None
            return self.items.popleft()
        finally:
            self.reading = False

    async def cancel(self) -> None:
        self.cancels += 1
        self.finished = True
        if self.cancel_takes:
            await asyncio.sleep(self.cancel_takes)


# --- the client -------------------------------------------------------------------------------------


@dataclass
class Exchange:
    """What the client received."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    parts: list[bytes] = field(default_factory=list)

    @property
    def body(self) -> bytes:
        return b"".join(self.parts)

    def json(self) -> dict:
        return orjson.loads(self.body)

    def events(self) -> list[dict]:
        """The JSON payloads of a server-sent event stream."""
        return [
            orjson.loads(line[6:])
            for line in self.body.decode().splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"
        ]


async def call_v1(
    method: str,
    path: str,
    body: dict | bytes | None = None,
    *,
    secret: str | None = None,
    headers: dict[str, str] | None = None,
    leave_when: asyncio.Event | None = None,
) -> Exchange:
    """One request through GatewayHandler; the client disconnects once `leave_when` is set."""
    raw = body if isinstance(body, bytes) else orjson.dumps(body) if body is not None else b""
    sent = {"content-type": "application/json", "content-length": str(len(raw)), **(headers or {})}
    if secret is not None:
        sent["authorization"] = f"Bearer {secret}"
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(name.encode(), value.encode()) for name, value in sent.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    leave = leave_when or asyncio.Event()
    body_sent = False
    exchange = Exchange()

    async def receive() -> dict:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await leave.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        await asyncio.sleep(0)  # as a socket write may: other tasks (the client's leaving, timeouts) run
        if message["type"] == "http.response.start":
            exchange.status = message["status"]
            exchange.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        elif message.get("body"):
            exchange.parts.append(message["body"])

    async with asyncio.timeout(10):
        await GatewayHandler()(scope, receive, send)
    return exchange


# --- what reaches billing ---------------------------------------------------------------------------


@dataclass
class Ledger:
    records: list[UsageRecord] = field(default_factory=list)  # handed to metering.submit
    reserved: list = field(default_factory=list)  # what limits.enforce returned
    settled: list = field(default_factory=list)  # (reservation, record) handed to limits.settle

    def only(self, **expected) -> UsageRecord:
        """The request's one usage record, with the `expected` fields, after checking that the
        request's reservation (or None) was settled once, with that record."""
        assert len(self.records) == 1, f"{len(self.records)} usage records"
        record = self.records[0]
        assert len(self.settled) == 1, f"limits.settle called {len(self.settled)} times"
        reservation, settled_record = self.settled[0]
        assert settled_record is record
        assert len(self.reserved) <= 1
        assert reservation is (self.reserved[0] if self.reserved else None)
        assert reservation is None or reservation.settled
        assert {name: getattr(record, name) for name in expected} == expected
        return record

    def forget(self) -> None:
        self.records.clear()
        self.reserved.clear()
        self.settled.clear()


@pytest.fixture(autouse=True)
def fresh_limits():
    """Full buckets: on SQLite a new key may get an id an earlier test's key had."""
    clear_local_cache()
    limiter = limits.get_limiter()
    if isinstance(limiter, limits.LocalLimiter):
        limiter.reset()
    elif redis_enabled():  # only Tokios's limiter keys: the Redis server is shared
        client = get_sync_redis()
        for pattern in ("tokios:rl:*", "tokios:spend:*"):
            for name in client.scan_iter(match=pattern, count=1000):
                client.delete(name)
    yield
    clear_local_cache()


@pytest_asyncio.fixture
async def ledger(monkeypatch):
    ledger = Ledger()
    submit, enforce, settle = metering.submit, limits.enforce, limits.settle

    def watched_submit(record: UsageRecord) -> None:
        ledger.records.append(record)
        submit(record)  # the real one: it turns a request that never got a response into a 499

    async def watched_enforce(*args, **kwargs):
        reservation = await enforce(*args, **kwargs)
        ledger.reserved.append(reservation)
        return reservation

    def watched_settle(reservation, record: UsageRecord) -> None:
        ledger.settled.append((reservation, record))
        settle(reservation, record)

    monkeypatch.setattr(metering, "submit", watched_submit)
    monkeypatch.setattr(limits, "enforce", watched_enforce)
    monkeypatch.setattr(limits, "settle", watched_settle)
    yield ledger
    await metering.flush()
    limiter = limits.get_limiter()
    if isinstance(limiter, limits.RedisLimiter):
        await limiter.drain()


@pytest.fixture
def upstream(monkeypatch) -> Upstream:
    fake = Upstream()
    monkeypatch.setattr(upstream_module, "TunnelCall", fake)
    return fake


@dataclass
class Tenant:
    org: object
    key: object
    secret: str
    deployment: object

    @property
    def model(self) -> str:
        return self.deployment.name


@pytest.fixture
def tenant(db) -> Tenant:
    org = create_org(slug="acme", name="Acme")
    # A unique name: access records are cached by name, in Redis too, beyond this test's rows.
    deployment = create_deployment(
        org=org, name=f"gemma-{uuid.uuid4().hex[:8]}", price_input_micros=150_000, price_output_micros=600_000
    )
    key, secret = create_api_key(org=org, name="ci", rpm_limit=1000, tpm_limit=1_000_000)
    return Tenant(org=org, key=key, secret=secret, deployment=deployment)


def chat(tenant: Tenant, *, stream: bool = False, **extra) -> dict:
    return {"model": tenant.model, "stream": stream, "messages": [{"role": "user", "content": "Say hello"}], **extra}


def messages(tenant: Tenant, *, stream: bool = False) -> dict:
    return {"model": tenant.model, "stream": stream, "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}]}


def responses(tenant: Tenant, *, stream: bool = False) -> dict:
    return {"model": tenant.model, "stream": stream, "input": "Say hello"}


SURFACES = {
    "chat": ("/v1/chat/completions", chat, {}),
    "messages": ("/v1/messages", messages, ANTHROPIC),
    "responses": ("/v1/responses", responses, {}),
}


async def send(tenant: Tenant, surface: str, *, stream: bool = False, **kwargs) -> Exchange:
    path, body, headers = SURFACES[surface]
    return await call_v1("POST", path, body(tenant, stream=stream), secret=tenant.secret, headers=headers, **kwargs)


def assert_belongs_to(record: UsageRecord, tenant: Tenant, response: Exchange) -> None:
    assert record.request_id == response.headers["x-request-id"] == response.headers["request-id"]
    assert (record.org_id, record.key_id) == (tenant.org.pk, tenant.key.pk)
    assert record.deployment_id == tenant.deployment.pk


# --- a request that succeeds ------------------------------------------------------------------------


def answered(surface: str, response: Exchange, stream: bool) -> str:
    """The text the client got."""
    if not stream:
        data = response.json()
        return {
            "chat": lambda: data["choices"][0]["message"]["content"],
            "messages": lambda: data["content"][0]["text"],
            "responses": lambda: data["output"][0]["content"][0]["text"],
        }[surface]()
    text = ""
    for event in response.events():
        if surface == "chat":
            text += "".join(c["delta"].get("content") or "" for c in event["choices"])
        elif event.get("type") in ("content_block_delta", "response.output_text.delta"):
            text += event["delta"]["text"] if surface == "messages" else event["delta"]
    return text


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("surface", ["chat", "messages", "responses"])
async def test_a_request_that_succeeds_is_recorded_once_with_its_usage_and_cost(
    tenant, upstream, ledger, surface, stream
):
    if surface == "chat" and not stream:
        upstream.answer(Started(200, {}), Data(CHAT_BODY), Ended(12, 3))
    else:
        upstream.answer(*STREAMED_ANSWER)  # Messages and Responses always ask the model for a stream

    response = await send(tenant, surface, stream=stream)

    assert response.status == 200
    assert answered(surface, response, stream) == "Hello"
    record = ledger.only(surface=surface, status_code=200, streamed=stream, cancelled=False, error_code="")
    assert_belongs_to(record, tenant, response)
    assert (record.input_tokens, record.output_tokens, record.usage_estimated) == (1000, 500, False)
    assert record.cost_micros == COST == tenant.deployment.cost_micros(1000, 500)
    assert record.ttft_ms is not None and record.latency_ms >= record.ttft_ms
    assert ledger.reserved[0] is not None  # the key has limits: there was a reservation to settle
    assert upstream.call.cancels == 0 and upstream.call.finished


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_absurd_token_counts_from_the_model_are_bounded_before_the_cost_is_worked_out(
    tenant, upstream, ledger, stream
):
    most = 2**64 - 1  # the largest integer JSON parsing keeps an integer (beyond it comes a float)
    huge = {"prompt_tokens": most, "completion_tokens": most}
    if stream:
        usage = chunk([], usage={**huge, "total_tokens": most})
        upstream.answer(Started(200, {}), Data(delta("Hi") + FINISH + usage + DONE), Ended(1, 1))
    else:
        body = orjson.dumps({"id": "up-1", "object": "chat.completion", "choices": [ANSWER], "usage": huge})
        upstream.answer(Started(200, {}), Data(body), Ended(1, 1))

    response = await send(tenant, "chat", stream=stream)

    assert response.status == 200
    record = ledger.only(surface="chat", status_code=200)
    assert record.input_tokens == record.output_tokens == 2**31 - 1
    assert 0 < record.cost_micros <= 2**63 - 1
    assert record.cost_micros == tenant.deployment.cost_micros(2**31 - 1, 2**31 - 1)


async def test_the_reservation_is_settled_with_the_tokens_the_request_really_used(tenant, upstream, ledger):
    _, secret = await sync_to_async(create_api_key)(org=tenant.org, name="tpm", tpm_limit=10_000)
    upstream.answer(*STREAMED_ANSWER)
    upstream.answer(*STREAMED_ANSWER)
    first = await call_v1("POST", "/v1/chat/completions", chat(tenant, stream=True), secret=secret)
    estimate = 10_000 - int(first.headers["x-ratelimit-remaining-tokens"])

    second = await call_v1("POST", "/v1/chat/completions", chat(tenant, stream=True), secret=secret)

    assert estimate < PROMPT_TOKENS + COMPLETION_TOKENS  # so the first request used more than it reserved
    remaining = int(second.headers["x-ratelimit-remaining-tokens"])
    after_real_usage = 10_000 - (PROMPT_TOKENS + COMPLETION_TOKENS) - estimate
    assert after_real_usage <= remaining < after_real_usage + 250  # (the bucket refills 1/6 token per ms)
    assert [reservation for reservation, _ in ledger.settled] == ledger.reserved


# --- a request refused before the model is called ---------------------------------------------------


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("no key", 401, "missing_api_key"),
        ("unknown key", 401, "invalid_api_key"),
        ("unknown model", 404, "model_not_found"),
        ("no messages", 400, "invalid_value"),
        ("not json", 400, "invalid_json"),
    ],
)
async def test_a_request_refused_before_the_call_is_recorded_once_without_calling_the_model(
    tenant, upstream, ledger, case, status, code
):
    body: dict | bytes = chat(tenant)
    secret = {"no key": None, "unknown key": "sk-tokios-" + "0" * 40}.get(case, tenant.secret)
    if case == "unknown model":
        body["model"] = "no-such-model"
    elif case == "no messages":
        del body["messages"]
    elif case == "not json":
        body = b"{not json"

    response = await call_v1("POST", "/v1/chat/completions", body, secret=secret)

    assert (response.status, response.json()["error"]["code"]) == (status, code)
    assert upstream.calls == []
    record = ledger.only(surface="chat", status_code=status, error_code=code, cancelled=False, output_tokens=0)
    assert record.request_id == response.headers["x-request-id"]
    authenticated = status != 401
    assert record.key_id == (tenant.key.pk if authenticated else None)
    assert record.org_id == (tenant.org.pk if authenticated else None)
    assert record.deployment_id == (tenant.deployment.pk if case == "no messages" else None)
    assert ledger.reserved == []  # refused before the limits were asked


async def test_a_request_over_its_limit_is_recorded_once_and_settles_nothing(tenant, upstream, ledger):
    key, secret = await sync_to_async(create_api_key)(org=tenant.org, name="one a minute", rpm_limit=1)
    upstream.answer(*STREAMED_ANSWER)
    await call_v1("POST", "/v1/chat/completions", chat(tenant, stream=True), secret=secret)
    ledger.forget()

    response = await call_v1("POST", "/v1/chat/completions", chat(tenant, stream=True), secret=secret)

    assert response.status == 429
    assert len(upstream.calls) == 1  # the first request's
    record = ledger.only(status_code=429, error_code="rate_limit_exceeded", key_id=key.pk)
    assert ledger.settled == [(None, record)]


# --- the model answers with an error ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("surface", "upstream_status", "status", "code"),
    [
        ("chat", 400, 400, "upstream_bad_request"),
        ("chat", 500, 502, "upstream_error"),
        ("chat", 503, 503, "server_is_overloaded"),
        ("messages", 503, 529, "server_is_overloaded"),
    ],
)
async def test_an_upstream_error_status_is_recorded_once_as_the_client_saw_it(
    tenant, upstream, ledger, surface, upstream_status, status, code
):
    error = orjson.dumps({"error": {"message": "no can do", "type": "server_error"}})
    upstream.answer(Started(upstream_status, {}), Data(error), Ended())

    response = await send(tenant, surface, stream=True)

    assert response.status == status
    assert "no can do" in response.json()["error"]["message"]
    record = ledger.only(status_code=status, error_code=code, cancelled=False, output_tokens=0, cost_micros=0)
    assert_belongs_to(record, tenant, response)
    assert upstream.call.cancels == 0


@pytest.mark.parametrize(
    ("first", "status", "code"),
    [
        (Failed("upstream_unreachable", "connection refused"), 502, "upstream_unreachable"),
        (Failed("overloaded"), 503, "overloaded"),
        (CallError(503, "connector_offline", OFFLINE_MESSAGE), 503, "connector_offline"),
    ],
    ids=["unreachable", "overloaded", "offline"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_call_that_fails_before_it_starts_is_a_gateway_error_recorded_once(
    tenant, upstream, ledger, first, status, code, stream
):
    upstream.answer(first)

    response = await send(tenant, "chat", stream=stream)

    assert (response.status, response.json()["error"]["code"]) == (status, code)
    assert response.headers["x-should-retry"] == ("true" if status == 503 else "false")
    # Nobody left and nothing was running: this request was refused, not cancelled.
    record = ledger.only(status_code=status, error_code=code, streamed=False, cancelled=False)
    assert_belongs_to(record, tenant, response)
    assert ledger.reserved[0] is not None


# --- the call fails or stalls once the response began -----------------------------------------------


async def test_a_call_that_fails_mid_stream_ends_with_an_in_band_error_and_is_recorded_once(tenant, upstream, ledger):
    upstream.answer(Started(200, {}), Data(delta("Hel")), Failed("connector_disconnected", "socket closed"))

    response = await send(tenant, "chat", stream=True)

    assert response.status == 200
    first, error = response.events()
    assert first["choices"][0]["delta"]["content"] == "Hel"
    assert error["error"]["code"] == "connector_disconnected"
    assert not response.body.endswith(DONE)
    # The response had begun as a 200; one delta and no usage report: estimated.
    record = ledger.only(status_code=200, error_code="connector_disconnected", streamed=True, cancelled=False)
    assert_belongs_to(record, tenant, response)
    assert record.usage_estimated
    assert upstream.call.cancels == 0


async def test_a_call_that_fails_mid_stream_on_the_messages_surface_ends_with_an_anthropic_error_event(
    tenant, upstream, ledger
):
    upstream.answer(Started(200, {}), Data(delta("Hel")), Failed("connector_disconnected"))

    response = await send(tenant, "messages", stream=True)

    assert response.status == 200
    assert response.events()[-1]["type"] == "error"
    assert "message_stop" not in response.body.decode()
    ledger.only(status_code=200, error_code="connector_disconnected", cancelled=False)


async def test_a_call_that_fails_mid_body_without_streaming_is_a_502_recorded_once(tenant, upstream, ledger):
    upstream.answer(Started(200, {}), Data(CHAT_BODY[:20]), Failed("upstream_error", "reset by peer"))

    response = await send(tenant, "chat")

    assert (response.status, response.json()["error"]["code"]) == (502, "upstream_error")
    ledger.only(status_code=502, error_code="upstream_error", cancelled=False)


async def test_a_model_that_goes_quiet_mid_stream_is_cut_off_at_the_idle_timeout(tenant, upstream, ledger, settings):
    settings.UPSTREAM_TIMEOUT = 0.2
    upstream.answer(Started(200, {}), Data(delta("Hel")), SILENCE)

    response = await send(tenant, "chat", stream=True)

    assert response.status == 200
    assert response.events()[-1]["error"]["code"] == "upstream_timeout"
    ledger.only(status_code=504, error_code="upstream_timeout", streamed=True)
    assert upstream.call.cancels == 1  # the model is told to stop


@pytest.mark.parametrize("surface", ["chat", "messages"])
async def test_a_request_past_its_deadline_before_the_answer_is_a_504_request_deadline(
    tenant, upstream, ledger, settings, surface
):
    settings.REQUEST_DEADLINE = 0.3
    upstream.answer(Started(200, {}), SILENCE)

    response = await send(tenant, surface)

    assert response.status == 504
    error = response.json()["error"]
    if surface == "messages":
        assert error["type"] == "timeout_error"  # Anthropic's error bodies have no code
    else:
        assert (error["type"], error["code"]) == ("server_error", "request_deadline")
    assert response.headers["x-should-retry"] == "false"
    ledger.only(status_code=504, error_code="request_deadline", cancelled=False)
    assert upstream.call.cancels == 1


async def test_a_request_past_its_deadline_before_the_model_started_is_a_504_request_deadline(
    tenant, upstream, ledger, settings
):
    settings.REQUEST_DEADLINE = 0.3
    upstream.answer(SILENCE)  # the first byte timeout is far away: the deadline is what ends the wait

    response = await send(tenant, "chat")

    assert (response.status, response.json()["error"]["code"]) == (504, "request_deadline")
    assert response.headers["x-should-retry"] == "false"
    ledger.only(status_code=504, error_code="request_deadline")
    assert upstream.call.cancels == 1


async def test_a_stream_past_its_deadline_ends_with_an_in_band_request_deadline_error(
    tenant, upstream, ledger, settings
):
    settings.REQUEST_DEADLINE = 0.3
    upstream.answer(Started(200, {}), Data(delta("Hel")), SILENCE)

    response = await send(tenant, "chat", stream=True)

    assert response.status == 200
    assert response.events()[-1]["error"]["code"] == "request_deadline"
    ledger.only(status_code=504, error_code="request_deadline", streamed=True)
    assert upstream.call.cancels == 1


@pytest.mark.parametrize("surface", ["chat", "responses"])
async def test_a_whole_response_larger_than_the_server_holds_is_a_502_and_the_call_is_cancelled(
    tenant, upstream, ledger, settings, surface
):
    settings.MAX_RESPONSE_BYTES = 200
    upstream.answer(Started(200, {}), *[Data(delta("word ")) for _ in range(10)], SILENCE)

    response = await send(tenant, surface)

    assert (response.status, response.json()["error"]["code"]) == (502, "response_too_large")
    ledger.only(status_code=502, error_code="response_too_large", cancelled=False)
    assert upstream.call.cancels == 1
    assert upstream.call.items  # the rest was never read


# --- the client leaves, or the server stops the request ---------------------------------------------


@pytest.mark.parametrize("surface", ["chat", "messages", "responses"])
async def test_a_client_that_leaves_mid_stream_cancels_the_call_once_and_is_recorded_as_cancelled(
    tenant, upstream, ledger, surface
):
    upstream.answer(Started(200, {}), Data(delta("Hel")), Data(delta("lo")), SILENCE)

    response = await send(tenant, surface, stream=True, leave_when=upstream.silent)

    assert response.status == 200
    assert "lo" in response.body.decode()
    record = ledger.only(status_code=200, streamed=True, cancelled=True, usage_estimated=True)
    assert_belongs_to(record, tenant, response)
    assert record.output_tokens >= 1  # billed for what was generated
    assert record.cost_micros == tenant.deployment.cost_micros(record.input_tokens, record.output_tokens)
    assert upstream.call.cancels == 1
    assert not upstream.call.reading  # nothing reads the call after the request ended


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_client_that_leaves_before_the_response_began_is_recorded_as_499(tenant, upstream, ledger, stream):
    upstream.answer(SILENCE)  # the model has not answered yet

    response = await send(tenant, "chat", stream=stream, leave_when=upstream.silent)

    assert response.status is None  # nothing was sent
    record = ledger.only(status_code=499, cancelled=True, streamed=False, deployment_id=tenant.deployment.pk)
    assert upstream.call.cancels == 1
    assert not upstream.call.reading
    await metering.flush()
    event = await sync_to_async(UsageEvent.objects.get)()
    assert (event.request_id, event.status_code, event.cancelled) == (record.request_id, 499, True)
    assert (event.org_id, event.api_key_id) == (tenant.org.pk, tenant.key.pk)


async def test_a_client_that_leaves_while_a_whole_answer_is_read_is_recorded_as_499(tenant, upstream, ledger):
    upstream.answer(Started(200, {}), Data(CHAT_BODY[:20]), SILENCE)

    response = await send(tenant, "chat", leave_when=upstream.silent)

    assert response.status is None
    ledger.only(status_code=499, cancelled=True)
    assert upstream.call.cancels == 1


async def test_a_failure_in_the_gateway_while_the_model_works_cancels_the_call_and_is_recorded_once(
    tenant, upstream, ledger, monkeypatch
):
    def broken(scope):
        raise RuntimeError("a bug")

    monkeypatch.setattr(chat_surface, "ChatBody", broken)
    upstream.answer(Started(200, {}), SILENCE)

    response = await send(tenant, "chat")

    assert (response.status, response.json()["error"]["code"]) == (500, "internal_error")
    assert response.headers["x-request-id"] in response.json()["error"]["message"]
    ledger.only(status_code=500, error_code="internal_error", cancelled=True)
    assert upstream.call.cancels == 1


async def test_a_server_that_cancels_the_request_mid_stream_still_ends_it_once(tenant, upstream, ledger):
    # What uvicorn does to requests still running when a graceful shutdown runs out of time.
    upstream.answer(Started(200, {}), Data(delta("Hel")), SILENCE)
    running = asyncio.ensure_future(send(tenant, "chat", stream=True))
    await asyncio.wait_for(upstream.silent.wait(), 5)

    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    await asyncio.sleep(0.05)

    ledger.only(status_code=200, cancelled=True)
    assert upstream.call.cancels == 1
    assert not upstream.call.reading  # the response's task did not outlive the request


async def test_a_server_that_cancels_the_request_while_it_cancels_the_call_still_records_it(tenant, upstream, ledger):
    upstream.cancel_takes = 1.0
    upstream.answer(Started(200, {}), Data(delta("Hel")), SILENCE)
    leave = asyncio.Event()
    running = asyncio.ensure_future(send(tenant, "chat", stream=True, leave_when=leave))
    await asyncio.wait_for(upstream.silent.wait(), 5)
    leave.set()  # the client goes; the request's scope sends the cancel…
    for _ in range(100):
        if upstream.call.cancels:
            break
        await asyncio.sleep(0.01)

    running.cancel()  # …and the server shuts down before that is done
    with pytest.raises(asyncio.CancelledError):
        await running

    ledger.only(status_code=200, cancelled=True)


# --- requests that are not a model's answer ---------------------------------------------------------


async def test_a_token_count_that_asks_the_model_twice_is_recorded_once(tenant, upstream, ledger):
    upstream.answer(Started(200, {}), Data(b'{"prompt": "<user>Hi</user>"}'), Ended())
    upstream.answer(Started(200, {}), Data(b'{"tokens": [1, 2, 3, 4, 5]}'), Ended())
    body = {"model": tenant.model, "messages": [{"role": "user", "content": "Hi"}]}

    response = await call_v1("POST", "/v1/messages/count_tokens", body, secret=tenant.secret, headers=ANTHROPIC)

    assert (response.status, response.json()) == (200, {"input_tokens": 5})
    assert [call.path for call in upstream.calls] == ["/apply-template", "/tokenize"]
    record = ledger.only(surface="count_tokens", status_code=200, cancelled=False)
    assert_belongs_to(record, tenant, response)
    assert ledger.reserved == []  # counting tokens is not limited


async def test_listing_models_is_recorded_once_without_a_call(tenant, upstream, ledger):
    response = await call_v1("GET", "/v1/models", secret=tenant.secret)

    assert response.status == 200
    assert [m["id"] for m in response.json()["data"]] == [tenant.model]
    record = ledger.only(surface="models", status_code=200, key_id=tenant.key.pk, deployment_id=None)
    assert record.request_id == response.headers["x-request-id"]
    assert upstream.calls == []


async def test_a_method_no_route_allows_is_answered_with_an_id_and_not_metered(tenant, upstream, ledger):
    response = await call_v1("GET", "/v1/chat/completions", secret=tenant.secret)

    assert response.status == 405
    assert response.headers["x-request-id"].startswith("req_")
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert ledger.records == [] and ledger.settled == []
