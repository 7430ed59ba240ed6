"""The queue in Redis mode (several server processes share one line per deployment), in process:
the line changed by concurrent transactions, slots handed to waiters of other processes as
`tunnel.grant` messages, and what a dead process leaves behind cleaned up through its lease.

Needs REDIS_URL; only the keys of this module's deployment id and its own leases are touched.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from lib.redis import get_async_redis
from proxy.tunnel import lease, presence, queue
from proxy.tunnel.fair import Ticket
from proxy.tunnel.inbox import Inbox
from proxy.tunnel.presence import ConnectorInfo
from proxy.tunnel.session import ConnectorSession, Pending
from tokios_connector import protocol

from .test_consumer import links  # noqa: F401 - a fixture

pytestmark = [pytest.mark.asyncio, pytest.mark.redis]

DEPLOYMENT = 990_003


@pytest_asyncio.fixture(autouse=True)
async def clean_line():
    if not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL")
    redis = get_async_redis()
    await redis.delete(queue._key(DEPLOYMENT))
    yield
    await redis.delete(queue._key(DEPLOYMENT))
    queue.WAITERS.clear()
    queue._maybe_waiting.discard(DEPLOYMENT)


def session(name: str = "a", slots: int = 1) -> tuple[ConnectorSession, list[str]]:
    sent: list[str] = []

    async def send_text(text: str) -> None:
        sent.append(text)

    now = time.time()
    info = ConnectorInfo(
        channel=f"specific.queue-redis!{name}",
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
    return ConnectorSession(info=info, send_text=send_text, layer=get_channel_layer(), window=8), sent


async def push(ticket: Ticket) -> None:
    await queue._change(DEPLOYMENT, lambda line: line.push(ticket))


async def test_concurrent_requests_never_overfill_the_line(settings):
    settings.QUEUE_MAX_DEPTH = 20

    async def one(i: int) -> bool:
        try:
            await queue.enqueue(deployment_id=DEPLOYMENT, rid=f"r{i}", org=i % 3, key=i, wait=30)
        except queue.QueueFull:
            return False
        return True

    admitted = await asyncio.gather(*(one(i) for i in range(50)))

    assert sum(admitted) == 20
    assert await queue.depth(DEPLOYMENT) == 20
    assert await sync_to_async(queue.depth_sync)(DEPLOYMENT) == 20


async def test_a_free_slot_goes_to_the_fair_next_waiter_of_whichever_process_as_a_grant():
    layer = get_channel_layer()
    replies = {name: await layer.new_channel() for name in ("flood", "light")}
    for i in range(3):
        await push(Ticket(f"flood{i}", 1, 1, time.time() + 30, replies["flood"], "proc-a"))
    await push(Ticket("light0", 2, 2, time.time() + 30, replies["light"], "proc-b"))
    connector, _ = session(slots=2)

    await queue.fill(connector, force=True)

    grants = [await asyncio.wait_for(layer.receive(replies[name]), 5) for name in ("flood", "light")]
    assert [(g["type"], g["id"], g["channel"]) for g in grants] == [
        ("tunnel.grant", "flood0", connector.info.channel),
        ("tunnel.grant", "light0", connector.info.channel),
    ]
    assert set(connector.reserved) == {"flood0", "light0"} and connector.free_slots() == 0
    assert await queue.depth(DEPLOYMENT) == 2


async def test_a_waiter_here_gets_its_slot_without_a_message_and_knows_its_place():
    connector, _ = session(slots=1)
    connector.pending["busy"] = _pending("busy")
    first = await queue.enqueue(deployment_id=DEPLOYMENT, rid="first", org=1, key=1, wait=30)
    second = await queue.enqueue(deployment_id=DEPLOYMENT, rid="second", org=1, key=1, wait=30)
    assert [await queue.position(first), await queue.position(second)] == [1, 2]

    del connector.pending["busy"]
    await queue.fill(connector)

    assert await queue.wait(first, 1) == connector.info.channel
    assert await queue.wait(second, 0.05) is None
    assert await queue.position(second) == 1


async def test_a_slot_handed_to_a_request_that_just_left_goes_back_to_its_connector():
    layer = get_channel_layer()
    connector_channel = await layer.new_channel()  # stands for the connector's consumer
    waiter = await queue.enqueue(deployment_id=DEPLOYMENT, rid="leaving", org=1, key=1, wait=30)
    # Another process pops it (its grant is on the way) while the client goes away here.
    await queue._change(DEPLOYMENT, lambda line: line.pop(time.time()))

    assert await queue.leave(waiter) is None  # not in line any more, and no slot yet
    await layer.send(waiter.ticket.reply, {"type": "tunnel.grant", "id": "leaving", "channel": connector_channel})

    given_back = await asyncio.wait_for(layer.receive(connector_channel), 5)
    assert given_back == {"type": "tunnel.cancel", "id": "leaving"}
    assert "leaving" not in queue.WAITERS


async def test_a_line_damaged_in_redis_starts_over_instead_of_failing_every_request():
    await get_async_redis().set(queue._key(DEPLOYMENT), b"{not json")

    waiter = await queue.enqueue(deployment_id=DEPLOYMENT, rid="after", org=1, key=1, wait=30)

    assert await queue.position(waiter) == 1


async def test_a_process_lease_lives_while_it_is_refreshed_and_a_dead_one_is_known():
    mine = await lease.hold()
    await get_async_redis().set(lease._key("ghost-process"), b"1", ex=1)

    assert await lease.dead([mine, "ghost-process", "never-was"]) == {"never-was"}
    await asyncio.sleep(1.2)
    assert await lease.dead([mine, "ghost-process"]) == {"ghost-process"}


async def test_requests_of_a_dead_process_are_cancelled_and_their_slots_freed(monkeypatch):
    monkeypatch.setattr(lease, "CONFIRM_AFTER", 0.2)
    connector, sent = session(slots=2)
    mine = await lease.hold()
    connector.pending["alive"] = _pending("alive", process=mine)
    connector.pending["orphan"] = _pending("orphan", process="dead-process")

    await connector.drop_orphans()  # missing once: maybe Redis restarted and lost every lease
    assert sent == [] and len(connector.pending) == 2
    await asyncio.sleep(0.25)
    await connector.drop_orphans()  # still missing: that process is gone

    assert list(connector.pending) == ["alive"]
    assert [protocol.decode_from_server(text) for text in sent] == [protocol.Cancel("orphan")]
    assert connector.free_slots() == 1


async def test_a_lease_that_comes_back_clears_the_suspicion(monkeypatch):
    monkeypatch.setattr(lease, "CONFIRM_AFTER", 0.2)
    connector, sent = session(slots=1)
    connector.pending["r"] = _pending("r", process="restarting-process")
    await connector.drop_orphans()

    await get_async_redis().set(lease._key("restarting-process"), b"1", ex=5)  # its next refresh
    await asyncio.sleep(0.25)
    await connector.drop_orphans()

    assert sent == [] and list(connector.pending) == ["r"] and connector.suspects == {}
    await get_async_redis().delete(lease._key("restarting-process"))


async def test_a_slot_kept_for_a_dead_process_lapses_and_its_other_waits_are_dropped(monkeypatch):
    monkeypatch.setattr(queue, "RESERVE_TIMEOUT", 0.05)
    layer = get_channel_layer()
    reply = await layer.new_channel()
    for i in range(3):
        await push(Ticket(f"dead{i}", 1, 1, time.time() + 30, reply, "dead-process"))
    alive_reply = await layer.new_channel()
    await push(Ticket("alive", 2, 2, time.time() + 30, alive_reply, await lease.hold()))
    connector, _ = session(slots=1)

    await queue.fill(connector, force=True)  # dead0 is handed the slot, and never comes

    grant = await asyncio.wait_for(layer.receive(alive_reply), 5)
    assert grant["id"] == "alive"  # after the lapse, the dead process's places were dropped
    assert await queue.depth(DEPLOYMENT) == 0


@pytest.mark.django_db(transaction=True)
async def test_a_connector_in_this_process_hears_a_notice_and_serves_the_line(online_connector):
    link, credentials = online_connector
    layer = get_channel_layer()
    reply = await layer.new_channel()
    await queue._change(
        credentials.deployment_id, lambda line: line.push(Ticket("remote", 1, 1, time.time() + 30, reply, "p"))
    )

    await layer.group_send(queue.group(credentials.deployment_id), {"type": "tunnel.waiting"})

    grant = await asyncio.wait_for(layer.receive(reply), 5)
    assert (grant["id"], grant["channel"]) == ("remote", link.session.info.channel)
    assert "remote" in link.session.reserved


def _pending(rid: str, process: str = "") -> Pending:
    return Pending(rid, Inbox(), None, 8, process=process)


@pytest_asyncio.fixture
async def online_connector(links, credentials):  # noqa: F811
    link = await links(credentials.secret)
    await link.hello(slots=1)
    await get_async_redis().delete(queue._key(credentials.deployment_id))
    yield link, credentials
    await get_async_redis().delete(queue._key(credentials.deployment_id))
    await presence.withdraw(link.session.info)
