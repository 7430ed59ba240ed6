"""A connector's slots as the consumer reads them (hello, `slots` frames) and enforces them, also
for requests from other processes (`tunnel.request` answered `busy`). Same set-up as
test_consumer.py, whose helpers this module uses."""

from __future__ import annotations

import asyncio

import pytest
from channels.layers import get_channel_layer

from proxy.calls import Started
from proxy.tunnel import presence, queue
from tokios_connector import protocol
from tokios_connector.protocol import Request, ResponseEnd, ResponseStart

from .test_consumer import HELLO, TIMEOUT, links, new_call, until  # noqa: F401 - links is a fixture

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


async def test_hello_announces_the_slots_and_the_welcome_allows_slot_updates(links, credentials):  # noqa: F811
    link = await links(credentials.secret)

    welcome = await link.hello(slots=3)

    assert welcome.slot_updates is True
    assert link.session.info.slots == 3
    [info] = await presence.live_connectors(credentials.deployment_id, fresh=True)
    assert info.slots == 3 and info.capacity == 3


@pytest.mark.parametrize(("max_concurrency", "slots"), [(8, 8), (5000, protocol.MAX_SLOTS)])
async def test_a_connector_that_announces_no_slots_gets_its_max_concurrency_within_the_bound(
    links,  # noqa: F811
    credentials,
    max_concurrency,
    slots,
):
    link = await links(credentials.secret)

    await link.hello(max_concurrency=max_concurrency)  # HELLO has no `slots`: an older connector

    assert link.session.info.slots == slots


async def test_slots_above_max_concurrency_are_cut_to_it(links, credentials):  # noqa: F811
    link = await links(credentials.secret)

    await link.hello(max_concurrency=4, slots=100)

    assert link.session.info.slots == 4


@pytest.mark.parametrize("slots", [0, -1, protocol.MAX_SLOTS + 1, 10**30, "2", 2.5, True])
async def test_a_hello_with_slots_out_of_bounds_is_closed_with_4002(links, credentials, slots):  # noqa: F811
    link = await links(credentials.secret)

    await link.send({**HELLO, "slots": slots})

    assert (await link.closed())[0] == protocol.CLOSE_PROTOCOL_ERROR


async def test_a_slots_frame_changes_the_count_everywhere(links, credentials):  # noqa: F811
    link = await links(credentials.secret)
    await link.hello(slots=2)

    await link.send({"type": "slots", "slots": 5})

    await until(lambda: link.session.info.slots == 5)
    [info] = await presence.live_connectors(credentials.deployment_id, fresh=True)
    assert info.slots == 5


@pytest.mark.parametrize("slots", [0, protocol.MAX_SLOTS + 1, None, "3"])
async def test_a_slots_frame_out_of_bounds_is_closed_with_4002(links, credentials, slots):  # noqa: F811
    link = await links(credentials.secret)
    await link.hello()

    await link.send({"type": "slots", "slots": slots})

    assert (await link.closed())[0] == protocol.CLOSE_PROTOCOL_ERROR


async def test_a_request_beyond_the_slots_waits_for_one_to_free(links, credentials, settings):  # noqa: F811
    settings.REDIS_URL = ""  # one process: the queue in memory
    link = await links(credentials.secret)
    await link.hello(slots=1)
    first, second = new_call(credentials, "r1"), new_call(credentials, "r2")
    first_start = asyncio.create_task(first.start(TIMEOUT))
    assert (await link.frame()).id == "r1"
    second_start = asyncio.create_task(second.start(TIMEOUT))
    await until(lambda: second.waiter is not None)

    assert await link.quiet()  # nothing more reaches the connector while its slot is taken
    await link.send_frame(ResponseStart("r1", 200, {}))
    await link.send_frame(ResponseEnd("r1"))

    request = await link.frame()
    assert isinstance(request, Request) and request.id == "r2"
    await link.send_frame(ResponseStart("r2", 200, {}))
    assert await second_start == Started(200, {})
    assert await first_start == Started(200, {})
    await link.send_frame(ResponseEnd("r2"))
    await until(lambda: link.session.pending == {})
    assert queue.WAITERS == {}


async def test_another_process_s_request_to_a_full_connector_is_answered_busy(links, credentials):  # noqa: F811
    link = await links(credentials.secret)
    await link.hello(slots=1)
    busy = asyncio.create_task(new_call(credentials, "r1").start(TIMEOUT))
    assert (await link.frame()).id == "r1"
    layer = get_channel_layer()
    reply = await layer.new_channel()
    request = {"type": "tunnel.request", "reply": reply, "method": "POST", "path": "/chat/completions", "body": b"{}"}

    await layer.send(link.session.info.channel, {**request, "id": "r2"})
    ack = await asyncio.wait_for(layer.receive(reply), TIMEOUT)

    assert (ack["type"], ack["accepted"], ack["busy"]) == ("tunnel.ack", False, True)
    assert await link.quiet()  # the connector never sees it

    # A request the queue handed the slot to takes it, even with the slot otherwise taken.
    link.session.reserve("r3", "")
    await layer.send(link.session.info.channel, {**request, "id": "r3", "granted": True})
    ack = await asyncio.wait_for(layer.receive(reply), TIMEOUT)
    assert (ack["accepted"], ack["connector"]) == (True, link.session.info.connector_id)
    assert (await link.frame()).id == "r3"
    assert link.session.reserved == {}
    busy.cancel()
