"""Waiting for a slot in one process (the embedded server: in-memory queue, no Redis): TunnelCall
against connectors held by this process, whose sessions are driven by hand as in test_router.py.

What is checked: a connector takes no more requests than its slots; the rest wait in the
deployment's queue and are sent, in the fair order, as slots free; a full queue and a wait that
runs out are 503s that leave nothing behind; a request that leaves the queue, or a connector that
leaves, leaks no slot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
import pytest_asyncio

from proxy.calls import CallError, Started
from proxy.tunnel import presence, queue
from proxy.tunnel.presence import ConnectorInfo
from proxy.tunnel.router import TunnelCall
from proxy.tunnel.session import LOCAL, ConnectorSession
from tokios_connector import protocol
from tokios_connector.protocol import Cancel, Request, ResponseEnd, ResponseStart

pytestmark = pytest.mark.asyncio

DEPLOYMENT = 990_002  # no database here: an id no real deployment of the test database has


class Connector:
    """A connector held by this process, with `slots` slots; records the frames sent to it."""

    def __init__(self, name: str, slots: int) -> None:
        now = time.time()
        self.texts: list[str] = []
        info = ConnectorInfo(
            channel=f"specific.queue-test!{name}",
            deployment_id=DEPLOYMENT,
            token_id=1,
            connector_id=f"conn_{name}",
            version="test",
            remote="127.0.0.1:1",
            connected_since=now,
            last_heartbeat=now,
            max_concurrency=64,
            slots=slots,
        )
        self.session = ConnectorSession(info=info, send_text=self._send_text, layer=None, window=8)

    async def _send_text(self, text: str) -> None:
        self.texts.append(text)

    @property
    def requests(self) -> list[str]:
        """Ids of the requests sent to it, in order."""
        return [frame.id for frame in map(protocol.decode_from_server, self.texts) if isinstance(frame, Request)]

    @property
    def cancels(self) -> list[str]:
        return [frame.id for frame in map(protocol.decode_from_server, self.texts) if isinstance(frame, Cancel)]

    async def finish(self, rid: str) -> None:
        """The model answers `rid` at once, whole."""
        await self.session.on_frame(ResponseStart(rid, 200, {}))
        await self.session.on_frame(ResponseEnd(rid))


@pytest_asyncio.fixture
async def connect(settings):
    settings.QUEUE_MAX_DEPTH = 256
    settings.QUEUE_MAX_WAIT = 30.0
    settings.REDIS_URL = ""  # the embedded server: one process, the queue in memory
    connectors: list[Connector] = []

    async def connect(name: str = "a", *, slots: int = 2) -> Connector:
        connector = Connector(name, slots)
        LOCAL[connector.session.info.channel] = connector.session
        await presence.publish(connector.session.info)
        connectors.append(connector)
        return connector

    yield connect
    for connector in connectors:
        await presence.withdraw(connector.session.info)
    queue.WAITERS.clear()
    queue._local.clear()


def new_call(rid: str, *, org: int = 1, key: int = 1) -> TunnelCall:
    return TunnelCall(
        deployment_id=DEPLOYMENT,
        request_id=rid,
        method="POST",
        path="/v1/chat/completions",
        body=b"{}",
        org_id=org,
        key_id=key,
    )


async def until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.001)


def starting(call: TunnelCall, timeout: float = 5.0) -> asyncio.Task:
    return asyncio.create_task(call.start(timeout))


async def queued(call: TunnelCall) -> asyncio.Task:
    """Start a call that must wait in line."""
    task = starting(call)
    await until(lambda: call.waiter is not None)
    return task


def assert_nothing_left(*connectors: Connector) -> None:
    for connector in connectors:
        session = connector.session
        assert session.pending == {} and session.reserved == {} and session.reserving == 0
        assert session.free_slots() == session.info.slots
    assert queue.WAITERS == {} and queue._local == {}


async def test_a_connector_takes_no_more_requests_than_its_slots_and_the_rest_wait_their_turn(connect):
    connector = await connect(slots=2)
    first, second = starting(new_call("r1")), starting(new_call("r2"))
    await until(lambda: connector.requests == ["r1", "r2"])

    third = await queued(new_call("r3"))
    assert connector.requests == ["r1", "r2"]  # the model is not sent a third request
    assert await queue.depth(DEPLOYMENT) == 1 and queue.depth_sync(DEPLOYMENT) == 1

    await connector.finish("r1")  # a slot frees: the one waiting goes
    await until(lambda: connector.requests == ["r1", "r2", "r3"])
    await connector.session.on_frame(ResponseStart("r3", 200, {}))
    assert await third == Started(200, {})
    assert await first == Started(200, {})
    await connector.finish("r2")
    await connector.session.on_frame(ResponseEnd("r3"))
    await second
    assert_nothing_left(connector)


async def test_an_org_behind_a_flood_is_served_at_the_next_free_slot(connect):
    connector = await connect(slots=1)
    busy = starting(new_call("busy", org=1))
    await until(lambda: connector.requests == ["busy"])
    flood = [await queued(new_call(f"flood{i}", org=1, key=1)) for i in range(5)]
    light = await queued(new_call("light", org=2, key=2))

    served = []
    current = "busy"
    for _ in range(7):
        await connector.finish(current)
        await until(lambda: len(connector.requests) == len(served) + 2 or len(served) == 6)
        if len(served) == 6:
            break
        current = connector.requests[-1]
        served.append(current)

    assert served == ["flood0", "light", "flood1", "flood2", "flood3", "flood4"]
    await asyncio.gather(busy, light, *flood)
    assert_nothing_left(connector)


async def test_a_full_queue_answers_503_queue_full_at_once(connect, settings):
    settings.QUEUE_MAX_DEPTH = 1
    connector = await connect(slots=1)
    starting(new_call("busy"))
    await until(lambda: connector.requests == ["busy"])
    waiting = await queued(new_call("waiting"))

    began = time.monotonic()
    with pytest.raises(CallError) as caught:
        await new_call("excess").start(5)

    assert (caught.value.status, caught.value.code) == (503, "queue_full")
    assert time.monotonic() - began < 1
    assert await queue.depth(DEPLOYMENT) == 1 and "excess" not in queue.WAITERS
    await connector.finish("busy")
    await until(lambda: connector.requests == ["busy", "waiting"])
    await connector.finish("waiting")
    await waiting
    assert_nothing_left(connector)


async def test_a_queue_depth_of_zero_means_busy_is_503_at_once(connect, settings):
    settings.QUEUE_MAX_DEPTH = 0
    connector = await connect(slots=1)
    starting(new_call("busy"))
    await until(lambda: connector.requests == ["busy"])

    with pytest.raises(CallError) as caught:
        await new_call("excess").start(5)

    assert (caught.value.status, caught.value.code) == (503, "queue_full")
    await connector.finish("busy")


async def test_a_wait_past_the_maximum_is_503_queue_timeout_and_leaves_the_queue(connect, settings):
    settings.QUEUE_MAX_WAIT = 0.2
    connector = await connect(slots=1)
    starting(new_call("busy"))
    await until(lambda: connector.requests == ["busy"])
    call = new_call("late")

    began = time.monotonic()
    with pytest.raises(CallError) as caught:
        await call.start(5)

    assert (caught.value.status, caught.value.code) == (503, "queue_timeout")
    assert 0.2 <= time.monotonic() - began < 1.5
    assert 180 <= call.queue_wait_ms < 1500
    assert await queue.depth(DEPLOYMENT) == 0 and queue.WAITERS == {}
    await connector.finish("busy")
    assert connector.requests == ["busy"]  # the one that gave up is not sent after all
    assert_nothing_left(connector)


async def test_a_request_that_leaves_the_queue_is_never_sent_and_takes_no_slot(connect):
    connector = await connect(slots=1)
    starting(new_call("busy"))
    await until(lambda: connector.requests == ["busy"])
    leaving = new_call("leaving")
    task = await queued(leaving)
    after = await queued(new_call("after", org=2))

    await leaving.cancel()  # the client went away (the request scope cancels its call)
    task.cancel()
    await connector.finish("busy")

    await until(lambda: connector.requests == ["busy", "after"])
    await connector.finish("after")
    await after
    assert "leaving" not in connector.requests
    assert_nothing_left(connector)


async def test_a_cancelled_wait_then_the_scope_cancel_leave_no_slot_promised(connect):
    """The view is cancelled while its call waits (client gone), then the scope cancels the call:
    what happens when a slot was handed to it in between."""
    connector = await connect(slots=1)
    starting(new_call("busy"))
    await until(lambda: connector.requests == ["busy"])
    call = new_call("gone")
    task = await queued(call)

    await connector.finish("busy")  # the slot is handed to "gone"...
    task.cancel()  # ...whose task is cancelled before it could use it
    with pytest.raises(asyncio.CancelledError):
        await task
    await call.cancel()

    assert_nothing_left(connector)


async def test_admit_with_a_notice_returns_the_place_in_line_until_a_slot_frees(connect):
    connector = await connect(slots=1)
    starting(new_call("busy"))
    await until(lambda: connector.requests == ["busy"])
    await queued(new_call("ahead"))
    call = new_call("mine", org=1)

    assert await call.admit(5, notice=0.05) == 2
    assert await call.admit(5, notice=0.05) == 2  # still waiting, same place
    await connector.finish("busy")  # "ahead" goes
    assert await call.admit(5, notice=0.05) == 1
    await connector.finish("ahead")
    assert await call.admit(5, notice=0.05) == 0  # sent
    assert connector.requests == ["busy", "ahead", "mine"]
    assert call.queue_wait_ms > 0
    await connector.finish("mine")
    assert await call.start(5) == Started(200, {})


async def test_a_connector_that_gets_more_slots_serves_the_queue_at_once(connect):
    connector = await connect(slots=1)
    starting(new_call("busy"))
    await until(lambda: connector.requests == ["busy"])
    waiting = await queued(new_call("waiting"))

    await connector.session.on_frame(protocol.Slots(2))

    await until(lambda: connector.requests == ["busy", "waiting"])
    assert connector.session.info.slots == 2
    await connector.finish("busy")
    await connector.finish("waiting")
    await waiting


async def test_slots_are_never_more_than_the_connector_s_max_concurrency(connect):
    connector = await connect(slots=1)
    connector.session.info.max_concurrency = 3

    await connector.session.on_frame(protocol.Slots(1000))

    assert connector.session.info.slots == 3


async def test_a_connector_that_leaves_takes_its_slots_and_the_queue_goes_to_another(connect):
    first = await connect("first", slots=1)
    starting(new_call("busy"))
    await until(lambda: first.requests == ["busy"])
    waiting = await queued(new_call("waiting"))

    await presence.withdraw(first.session.info)  # what the consumer does when it goes
    LOCAL.pop(first.session.info.channel)
    await first.session.fail_all("connector_disconnected", "gone")
    second = await connect("second", slots=1)
    await queue.fill(second.session, force=True)  # what the consumer does on hello

    await until(lambda: second.requests == ["waiting"])
    await second.finish("waiting")
    assert await waiting == Started(200, {})
    assert_nothing_left(second)


async def test_a_waiting_request_whose_deployment_loses_every_connector_is_503_offline(connect, monkeypatch):
    monkeypatch.setattr(queue, "POLL", 0.05)
    connector = await connect(slots=1)
    starting(new_call("busy"))
    await until(lambda: connector.requests == ["busy"])
    waiting = await queued(new_call("waiting"))

    await presence.withdraw(connector.session.info)
    LOCAL.pop(connector.session.info.channel)
    await connector.session.fail_all("connector_disconnected", "gone")

    with pytest.raises(CallError) as caught:
        await waiting
    assert (caught.value.status, caught.value.code) == (503, "connector_offline")
    assert queue.WAITERS == {} and queue._local == {}


async def test_a_slot_promised_to_a_request_that_never_comes_goes_to_the_next(connect, monkeypatch):
    monkeypatch.setattr(queue, "RESERVE_TIMEOUT", 0.05)
    connector = await connect(slots=1)
    connector.session.reserve("ghost", "")  # popped for a request whose process then died

    waiting = await queued(new_call("waiting"))

    await until(lambda: connector.requests == ["waiting"])
    assert "ghost" not in connector.session.reserved
    await connector.finish("waiting")
    await waiting
    assert_nothing_left(connector)


async def test_an_uncontended_request_never_touches_the_queue(connect, monkeypatch):
    async def no_queue(**kwargs):
        raise AssertionError("the queue was used with a slot free")

    monkeypatch.setattr(queue, "enqueue", no_queue)
    connector = await connect(slots=2)

    task = starting(new_call("r1"))
    await until(lambda: connector.requests == ["r1"])
    await connector.finish("r1")
    assert await task == Started(200, {})


async def test_a_call_that_may_not_wait_is_sent_to_a_free_slot_and_never_takes_a_place_in_line(connect, monkeypatch):
    async def no_queue(**kwargs):
        raise AssertionError("a call that may not wait took a place in line")

    monkeypatch.setattr(queue, "enqueue", no_queue)
    connector = await connect(slots=2)
    busy = starting(new_call("busy"))
    await until(lambda: connector.requests == ["busy"])

    assert await new_call("beside").admit(0.0) == 0  # the second slot is free
    full = new_call("refused")
    with pytest.raises(CallError) as caught:
        await full.admit(0.0)

    assert (caught.value.status, caught.value.code) == (503, "queue_timeout")
    assert full.finished and connector.requests == ["busy", "beside"]
    await connector.finish("busy")
    await connector.finish("beside")
    await busy
    assert_nothing_left(connector)
