"""The exact input count in a streamed message's `message_start`, in process, against a scripted model.

When a connector of the model announced a tokenizer, the gateway asks it for the prompt's size
beside the generation; `message_start` carries that count if it came before the model's first event,
the estimate otherwise. Calls are ordered with the scripted model's `Gate` and `Signal` (no clock):
the model's first event is held until the count has answered, or the count is held for ever.
"""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
import pytest_asyncio

from proxy.calls import CallError, Data, Ended, Started
from proxy.surfaces import messages
from proxy.translate import anthropic
from proxy.tunnel import presence
from proxy.tunnel.presence import ConnectorInfo
from proxy.tunnel.router import QUEUE_TIMEOUT_MESSAGE

from .fake_call import DONE, Gate, Signal, delta, finish, usage, whole
from .v1 import ANTHROPIC, V1_DB, call_v1

pytestmark = [V1_DB, pytest.mark.asyncio, pytest.mark.timeout(30)]

PATH = "/v1/messages"
TEMPLATE = whole(b'{"prompt": "<user>Hi</user>"}')


def message(model: str, *, stream: bool = True) -> dict:
    return {"model": model, "max_tokens": 64, "stream": stream, "messages": [{"role": "user", "content": "Hi"}]}


async def send(key, body: dict):
    return await call_v1("POST", PATH, body, secret=key.secret, headers=ANTHROPIC)


def answer_after(gate: asyncio.Event, *, streaming: asyncio.Event | None = None, reports: bool = True) -> list:
    """A streamed model answer whose first event waits for `gate` (it reports 11 prompt tokens, or
    no usage); `streaming` is set once the gateway reads past the status, its stream begun."""
    began = [Signal(streaming)] if streaming else []
    events = delta("Hello") + finish() + (usage(11, 2) if reports else b"") + DONE
    return [Started(200, {}), *began, Gate(gate), Data(events), Ended()]


def tokens(count: int, *, after: asyncio.Event, then: asyncio.Event) -> list:
    """llama.cpp's /tokenize answer with `count` tokens, sent once `after` is set; `then` is set
    once it has been read."""
    body = Data(orjson.dumps({"tokens": list(range(count))}))
    return [Started(200, {}), Gate(after), body, Signal(then), Ended()]


def start_usage(response) -> int:
    events = response.events()
    assert events[0]["type"] == "message_start", events[0]
    return events[0]["message"]["usage"]["input_tokens"]


def estimate(generation) -> int:
    """The gateway's estimate for the messages the model was sent."""
    return anthropic.estimate_tokens(orjson.dumps(generation.body["messages"]).decode())


@pytest_asyncio.fixture
async def tokenizer_announced(deployment):
    """A live connector of `deployment` that announced llama.cpp's tokenizer in its hello."""
    now = time.time()
    info = ConnectorInfo(
        channel="specific.exact-start!a",
        deployment_id=deployment.id,
        token_id=1,
        connector_id="conn_scripted01",
        version="test",
        remote="127.0.0.1:1",
        connected_since=now,
        last_heartbeat=now,
        max_concurrency=4,
        slots=4,
        surfaces=["chat", "tokenize"],
    )
    await presence.publish(info)
    yield info
    await presence.withdraw(info)


async def test_message_start_has_the_exact_count_when_the_tokenizer_answers_before_the_first_event(
    key, deployment, upstream, ledger, tokenizer_announced
):
    streaming, counted = asyncio.Event(), asyncio.Event()
    upstream.answer(*answer_after(counted, streaming=streaming))
    upstream.answer(*TEMPLATE)
    upstream.answer(*tokens(7, after=streaming, then=counted))  # after message_start was held back

    response = await send(key, message(deployment.name))

    assert response.status == 200
    assert start_usage(response) == 7
    assert response.events()[-2]["usage"]["input_tokens"] == 11  # message_delta: the model's own count
    generation, template, tokenize = upstream.calls
    assert (template.path, tokenize.path) == ("/apply-template", "/tokenize")
    assert template.body == {"messages": generation.body["messages"]}
    assert tokenize.body == {"content": "<user>Hi</user>", "add_special": True}
    rid = response.headers["x-request-id"]
    assert generation.request_id == rid and template.request_id == tokenize.request_id == rid + "-count"
    assert template.admit_timeout == tokenize.admit_timeout == 0  # never a place in line
    ledger.only(status_code=200, input_tokens=11, output_tokens=2, usage_estimated=False)


async def test_the_exact_count_stands_in_when_the_model_reports_no_usage(
    key, deployment, upstream, ledger, tokenizer_announced
):
    streaming, counted = asyncio.Event(), asyncio.Event()
    upstream.answer(*answer_after(counted, streaming=streaming, reports=False))
    upstream.answer(*TEMPLATE)
    upstream.answer(*tokens(7, after=streaming, then=counted))

    response = await send(key, message(deployment.name))

    assert start_usage(response) == 7
    ledger.only(status_code=200, input_tokens=7, usage_estimated=True)  # output counted from deltas


async def test_the_estimate_stays_when_the_model_server_cannot_tokenize(
    key, deployment, upstream, ledger, tokenizer_announced
):
    streaming, failed = asyncio.Event(), asyncio.Event()
    upstream.answer(*answer_after(failed, streaming=streaming))
    upstream.answer(Started(404, {}), Gate(streaming), Data(b'{"error": "not found"}'), Signal(failed), Ended())

    response = await send(key, message(deployment.name))

    generation, template = upstream.calls  # no /tokenize after the template failed
    assert start_usage(response) == estimate(generation) != 7
    assert "Hello" in response.body.decode()
    ledger.only(status_code=200, input_tokens=11)


async def test_a_slow_count_does_not_hold_back_the_first_token(
    key, deployment, upstream, ledger, tokenizer_announced, monkeypatch
):
    monkeypatch.setattr(messages, "COUNT_BUDGET", 600.0)  # waiting for the count would hang the test
    asking, never = asyncio.Event(), asyncio.Event()
    upstream.answer(*answer_after(asking))
    upstream.answer(Signal(asking), Gate(never))  # the tokenizer never answers

    response = await send(key, message(deployment.name))

    generation, template = upstream.calls
    assert response.event_names()[:3] == ["message_start", "content_block_start", "content_block_delta"]
    assert start_usage(response) == estimate(generation)
    assert "Hello" in response.body.decode()
    assert not never.is_set() and template.cancels == 1  # abandoned once the first event went out
    assert not template.reading


async def test_a_ping_while_the_model_thinks_carries_message_start_before_it(
    key, deployment, upstream, ledger, tokenizer_announced, settings, monkeypatch
):
    settings.KEEPALIVE_INTERVAL = 0.05
    monkeypatch.setattr(messages, "COUNT_BUDGET", 600.0)
    pinged, never = asyncio.Event(), asyncio.Event()
    upstream.answer(Started(200, {}), Gate(pinged), Data(delta("Hi") + finish() + usage(11, 2) + DONE), Ended())
    upstream.answer(Gate(never))

    async def release_after_a_ping() -> None:
        while not any(call.path == "/apply-template" and call.cancels for call in upstream.calls):
            await asyncio.sleep(0.01)  # the ping went out and gave up on the count
        pinged.set()

    releaser = asyncio.create_task(release_after_a_ping())
    response = await send(key, message(deployment.name))
    await releaser

    names = response.event_names()
    assert names[:2] == ["message_start", "ping"]
    assert names.count("message_start") == 1
    assert start_usage(response) == estimate(upstream.calls[0])


async def test_no_count_is_asked_when_no_slot_is_free_right_now(key, deployment, upstream, ledger, tokenizer_announced):
    refused = asyncio.Event()
    upstream.answer(*answer_after(refused))
    upstream.answer(CallError(503, "queue_timeout", QUEUE_TIMEOUT_MESSAGE))  # admit(0): every slot taken

    request = asyncio.create_task(send(key, message(deployment.name)))
    while len(upstream.calls) < 2 or upstream.calls[1].admit_timeout is None:
        await asyncio.sleep(0.005)
    refused.set()
    response = await request

    generation, template = upstream.calls
    assert template.admit_timeout == 0
    assert start_usage(response) == estimate(generation)
    ledger.only(status_code=200, connector_id="conn_scripted01")  # the generation's call, not the count's


async def test_without_an_announced_tokenizer_or_a_stream_no_count_is_asked(key, deployment, upstream, ledger):
    upstream.answer(Started(200, {}), Data(delta("Hello") + finish() + usage(11, 2) + DONE), Ended())

    response = await send(key, message(deployment.name))

    assert len(upstream.calls) == 1
    assert start_usage(response) == estimate(upstream.calls[0])


async def test_a_whole_message_asks_no_count(key, deployment, upstream, ledger, tokenizer_announced):
    upstream.answer(Started(200, {}), Data(delta("Hello") + finish() + usage(11, 2) + DONE), Ended())

    response = await send(key, message(deployment.name, stream=False))

    assert response.json()["usage"]["input_tokens"] == 11
    assert len(upstream.calls) == 1
