"""The slot count the connector announces: llama.cpp's own (`/props` total_slots, else the length
of `/slots`), never more than --max-concurrency nor the protocol's bound, and --max-concurrency when
the model server does not say. The upstream is the scripted TEST DOUBLE of tests/e2e (answers per
path), the server end the double of tests/connector/tunnel.py."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from tests.connector.conftest import StartConnector
from tests.connector.tunnel import FakeTokios
from tests.e2e.scripted_upstream import ScriptedUpstream
from tokios_connector import slots
from tokios_connector.protocol import MAX_SLOTS, Slots, Welcome

pytestmark = pytest.mark.asyncio


def json_answer(data: object):
    return lambda body: (200, "application/json", json.dumps(data).encode())


def not_found(body: object):
    return 404, "application/json", b'{"error": {"message": "File Not Found", "code": 404}}'


async def probe(routes: dict) -> int | None:
    with ScriptedUpstream(routes) as upstream:
        async with httpx.AsyncClient() as http:
            return await slots.probe(http, upstream.base.removesuffix("/v1"), None)


async def test_llama_cpp_s_props_give_the_slot_count():
    assert await probe({"/props": json_answer({"total_slots": 4, "default_generation_settings": {}})}) == 4


async def test_without_props_the_slots_list_gives_the_count():
    assert await probe({"/props": not_found, "/slots": json_answer([{"id": 0}, {"id": 1}, {"id": 2}])}) == 3


@pytest.mark.parametrize(
    "routes",
    [
        {},  # vLLM, Ollama: neither path
        {"/props": json_answer({"total_slots": 0})},
        {"/props": json_answer({"total_slots": "4"})},
        {"/props": json_answer({"total_slots": True})},
        {"/props": json_answer([4])},
        {"/slots": json_answer([])},
        {"/props": lambda body: (200, "application/json", b"not json")},
    ],
)
async def test_an_upstream_that_does_not_say_gives_no_count(routes):
    assert await probe(routes) is None


async def test_an_answer_over_the_size_limit_is_not_read_to_the_end(monkeypatch):
    monkeypatch.setattr(slots, "PROBE_BODY_LIMIT", 1000)
    many = [{"id": i, "prompt": "x" * 100} for i in range(50)]

    assert await probe({"/slots": json_answer(many)}) is None


async def test_an_upstream_that_hangs_costs_the_probe_timeout_not_more(monkeypatch):
    monkeypatch.setattr(slots, "PROBE_TIMEOUT", 0.2)

    def hang(body):
        time.sleep(1.5)
        return 200, "application/json", b'{"total_slots": 2}'

    began = time.monotonic()
    assert await probe({"/props": hang, "/slots": hang}) is None
    assert time.monotonic() - began < 1.2  # two paths, 0.2 s each, plus a little


@pytest.mark.parametrize(
    ("probed", "max_concurrency", "announced"),
    [(4, 64, 4), (None, 64, 64), (100, 8, 8), (10**9, 100_000, MAX_SLOTS), (None, 5000, MAX_SLOTS)],
)
async def test_the_count_announced_stays_within_max_concurrency_and_the_protocol(probed, max_concurrency, announced):
    assert slots.slot_count(probed, max_concurrency) == announced


async def test_the_hello_carries_llama_cpp_s_slot_count(tunnel: FakeTokios, start_connector: StartConnector):
    with ScriptedUpstream({"/props": json_answer({"total_slots": 3})}) as upstream:
        await start_connector(upstream=upstream.base, max_concurrency=16)
        peer = await tunnel.accept()

        hello = await peer.handshake()

    assert (hello.max_concurrency, hello.slots) == (16, 3)


async def test_a_server_that_reads_slot_updates_hears_of_a_new_count(
    tunnel: FakeTokios, start_connector: StartConnector, monkeypatch
):
    monkeypatch.setattr(slots, "PROBE_INTERVAL", 0.05)
    total = {"total_slots": 2}
    with ScriptedUpstream({"/props": lambda body: (200, "application/json", json.dumps(total).encode())}) as upstream:
        await start_connector(upstream=upstream.base, max_concurrency=16)
        peer = await tunnel.accept()
        assert (await peer.handshake(slot_updates=True)).slots == 2

        total["total_slots"] = 6  # llama.cpp restarted with --parallel 6

        assert await peer.next_control() == Slots(6)


async def test_an_older_server_is_sent_no_slots_frame(tunnel: FakeTokios, start_connector: StartConnector, monkeypatch):
    monkeypatch.setattr(slots, "PROBE_INTERVAL", 0.05)
    total = {"total_slots": 2}
    with ScriptedUpstream({"/props": lambda body: (200, "application/json", json.dumps(total).encode())}) as upstream:
        await start_connector(upstream=upstream.base, max_concurrency=16)
        peer = await tunnel.accept()
        await peer.handshake()  # a welcome without slot_updates
        total["total_slots"] = 6

        with pytest.raises(asyncio.TimeoutError):
            await peer.next_control(timeout=0.4)


async def test_welcome_without_slot_updates_reads_as_false():
    assert Welcome("d", "c", 15, 45).slot_updates is False
