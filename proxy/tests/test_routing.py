"""Conversation affinity (proxy/routing.py and the router's choice): the key a body gives, the
rendezvous ranking of connectors, the previous_response_id chain, and TunnelCall keeping a
conversation on its connector while that one is live and free, and never going where a retry must
not."""

from __future__ import annotations

import asyncio
import time

import pytest
import pytest_asyncio

from proxy import routing
from proxy.calls import CallError
from proxy.tunnel import presence, router
from proxy.tunnel.inbox import Inbox
from proxy.tunnel.router import TunnelCall
from proxy.tunnel.session import LOCAL
from tokios_connector import protocol

from .fake_call import streamed
from .test_router import DEPLOYMENT, Connector, until
from .v1 import V1_DB, call_v1

# --- the key -------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def forget_responses():
    routing.forget_responses()
    yield
    routing.forget_responses()


def test_a_clients_own_key_comes_first():
    assert routing.client_key({"prompt_cache_key": "abc", "metadata": {"user_id": "u"}}) == "pck:abc"
    assert routing.client_key({"metadata": {"user_id": "user_1"}}) == "user:user_1"
    assert routing.client_key({"prompt_cache_key": 5, "metadata": "x"}) is None
    assert routing.client_key({"prompt_cache_key": "k" * 10_000}) == "pck:" + "k" * routing.MAX_KEY_CHARS


def test_the_opening_key_is_the_system_text_and_first_user_message_only():
    start = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}]
    later = [*start, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "More"}]
    other_user = [start[0], {"role": "user", "content": "Bye"}]
    other_system = [{"role": "system", "content": "You are verbose."}, start[1]]

    key = routing.opening_key({"messages": start})
    assert key is not None and key.startswith("open:")
    assert routing.opening_key({"messages": later}) == key
    assert routing.opening_key({"messages": other_user}) != key
    assert routing.opening_key({"messages": other_system}) != key
    # Messages' top-level system and content parts; Responses' instructions and input.
    parts = {"system": "You are terse.", "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}
    assert routing.opening_key(parts) == routing.opening_key({**parts, "messages": [*parts["messages"], start[1]]})
    responses = routing.opening_key({"instructions": "Be terse.", "input": "Hi"})
    assert responses == routing.opening_key({"instructions": "Be terse.", "input": "Hi", "tools": []})
    assert responses != routing.opening_key({"instructions": "Be brief.", "input": "Hi"})
    assert routing.opening_key({"input": [{"role": "user", "content": "Hi"}]}) is not None


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"messages": "not a list"},
        {"messages": [1, None, "x", []]},
        {"messages": [{"role": "assistant", "content": "x"}] * 100_000},  # no user message in the first few
        {"messages": [{"role": "user", "content": [[[[["deep"]]]]] * 50_000}]},
        {"messages": [{"role": "user", "content": {"weird": ["x"] * 1000}}]},
        {"input": 7, "instructions": {"a": 1}},
        {"messages": [{"role": "user", "content": "\ud800" + "x" * 5_000_000}]},
    ],
    ids=["empty", "string", "odd-items", "no-user", "nested", "object", "numbers", "huge-text"],
)
def test_hostile_bodies_give_a_key_or_none_quickly(body):
    began = time.monotonic()
    key = routing.opening_key(body)
    assert key is None or key.startswith("open:")
    assert time.monotonic() - began < 0.5


@pytest.mark.asyncio
async def test_a_response_chain_keeps_the_first_turns_key():
    first = await routing.conversation_key({"input": "Hi", "instructions": "Be terse."})
    await routing.remember_response("resp_1", first)
    second = await routing.conversation_key({"input": "More", "previous_response_id": "resp_1"})
    await routing.remember_response("resp_2", second)
    third = await routing.conversation_key({"input": "Again", "previous_response_id": "resp_2"})

    assert first.startswith("open:") and first == second == third
    # A previous turn nobody remembers still names a conversation of its own.
    assert await routing.conversation_key({"input": "x", "previous_response_id": "resp_gone"}) == "resp:resp_gone"
    # A client's own key wins over the chain.
    assert await routing.conversation_key({"previous_response_id": "resp_1", "prompt_cache_key": "p"}) == "pck:p"


@pytest.mark.asyncio
async def test_remembered_responses_are_bounded_and_expire(monkeypatch):
    # The in-memory map, also where REDIS_URL is set (Redis expires its own keys).
    monkeypatch.setattr(routing, "redis_enabled", lambda: False)
    monkeypatch.setattr(routing, "MAX_REMEMBERED", 3)
    for n in range(5):
        await routing.remember_response(f"resp_{n}", f"key{n}")
    assert [await routing.key_of_response(f"resp_{n}") for n in range(5)] == [None, None, "key2", "key3", "key4"]

    monkeypatch.setattr(routing, "RESPONSE_TTL", -1)
    await routing.remember_response("resp_old", "key")
    assert await routing.key_of_response("resp_old") is None


def test_rendezvous_is_stable_and_a_leaving_connector_moves_only_its_own_keys():
    connectors = [f"conn_{n}" for n in range(5)]
    keys = [f"pck:{n}" for n in range(300)]
    first = {key: routing.ranked(key, connectors)[0] for key in keys}
    assert first == {key: routing.ranked(key, list(reversed(connectors)))[0] for key in keys}
    assert len(set(first.values())) == 5  # spread over every connector

    remaining = connectors[1:]
    for key in keys:
        if first[key] != "conn_0":
            assert routing.ranked(key, remaining)[0] == first[key]


# --- the router's choice -------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def connect(settings):
    """Connectors held by this process, as in test_router.py."""
    settings.TUNNEL_WINDOW = 4
    made: list[Connector] = []

    async def connect(name: str) -> Connector:
        connector = Connector(name, 4)
        LOCAL[connector.session.info.channel] = connector.session
        await presence.publish(connector.session.info)
        made.append(connector)
        return connector

    yield connect
    for connector in made:
        await presence.withdraw(connector.session.info)


def affine_call(rid: str, key: str, avoid: frozenset[str] = frozenset()) -> TunnelCall:
    return TunnelCall(
        deployment_id=DEPLOYMENT,
        request_id=rid,
        method="POST",
        path="/v1/chat/completions",
        body=b"{}",
        affinity=key,
        avoid=avoid,
    )


async def sent_to(connectors: list[Connector], call: TunnelCall) -> Connector:
    task = asyncio.create_task(call.start(5))
    await until(lambda: any(call.request_id in c.session.pending for c in connectors) or task.done())
    if task.done():
        task.result()  # raises what the call raised
    (chosen,) = [c for c in connectors if call.request_id in c.session.pending]
    task.cancel()
    return chosen


def preferred(connectors: list[Connector], key: str) -> Connector:
    best = routing.ranked(key, [c.session.info.connector_id for c in connectors])[0]
    return next(c for c in connectors if c.session.info.connector_id == best)


@pytest.mark.asyncio
async def test_a_conversation_goes_to_its_connector_even_when_another_is_less_loaded(connect):
    connectors = [await connect(name) for name in ("a", "b", "c")]
    key = "pck:conversation-1"
    home = preferred(connectors, key)
    for rid in ("x1", "x2"):  # its connector is the busier one, with free slots left
        await home.session.submit(rid, "POST", "/v1/chat/completions", b"{}", inbox=Inbox())

    chosen = [await sent_to(connectors, affine_call(f"req_{n}", key)) for n in range(4)]

    assert all(c is home for c in chosen)
    other = "pck:conversation-2"
    assert await sent_to(connectors, affine_call("req_other", other)) is preferred(connectors, other)


@pytest.mark.asyncio
async def test_a_busy_or_draining_connector_hands_its_conversation_to_the_least_loaded(connect):
    connectors = [await connect(name) for name in ("a", "b", "c")]
    key = "pck:conversation-1"
    home = preferred(connectors, key)
    home.session.set_slots(1)
    await home.session.submit("x1", "POST", "/v1/chat/completions", b"{}", inbox=Inbox())  # its one slot
    others = [c for c in connectors if c is not home]
    await others[0].session.submit("x2", "POST", "/v1/chat/completions", b"{}", inbox=Inbox())

    assert await sent_to(connectors, affine_call("req_busy", key)) is others[1]

    await home.session.on_frame(protocol.Draining())
    home.session.pending.clear()
    assert await sent_to(connectors, affine_call("req_draining", key)) is not home


@pytest.mark.asyncio
async def test_a_retry_never_goes_to_the_connector_it_avoids(connect):
    connectors = [await connect(name) for name in ("a", "b")]
    key = "pck:conversation-1"
    home = preferred(connectors, key)
    avoid = frozenset({home.session.info.connector_id})

    chosen = await sent_to(connectors, affine_call("req_retry", key, avoid))

    assert chosen is not home


@pytest.mark.asyncio
async def test_a_retry_does_not_wait_in_line_when_the_other_connectors_are_busy(connect):
    first, second = await connect("a"), await connect("b")
    second.session.set_slots(1)
    await second.session.submit("x1", "POST", "/v1/chat/completions", b"{}", inbox=Inbox())

    with pytest.raises(CallError) as caught:
        await affine_call("req_retry", "", frozenset({"conn_a"})).start(1)

    assert caught.value.code == "overloaded"
    assert "req_retry" not in first.session.pending and router.queue.WAITERS == {}


@pytest.mark.asyncio
async def test_a_retry_with_no_other_connector_is_offline(connect):
    await connect("a")

    with pytest.raises(CallError) as caught:
        await affine_call("req_retry", "", frozenset({"conn_a"})).start(1)

    assert caught.value.code == "connector_offline"


# --- on the /v1 path -----------------------------------------------------------------------------------


@pytest.mark.asyncio
@V1_DB
@pytest.mark.timeout(30)
async def test_the_calls_of_a_responses_chain_carry_one_key(key, deployment, upstream, ledger):
    ids = []
    for text in ("one", "two", "three"):
        upstream.answer(*streamed("ok"))
        body = {"model": deployment.name, "input": text, **({"previous_response_id": ids[-1]} if ids else {})}
        response = await call_v1("POST", "/v1/responses", body, secret=key.secret)
        assert response.status == 200
        ids.append(response.json()["id"])
    upstream.answer(*streamed("ok"))
    await call_v1(
        "POST",
        "/v1/chat/completions",
        {"model": deployment.name, "messages": [{"role": "user", "content": "one"}]},
        secret=key.secret,
    )

    keys = [call.affinity for call in upstream.calls]
    assert keys[0].startswith("open:") and keys[0] == keys[1] == keys[2]
    assert keys[3] == keys[0]  # the same opening on another surface: the same conversation


@pytest.mark.asyncio
@V1_DB
@pytest.mark.timeout(30)
async def test_a_prompt_cache_key_is_the_calls_key(key, deployment, upstream, ledger):
    upstream.answer(*streamed("ok"))
    body = {"model": deployment.name, "prompt_cache_key": "session-42", "messages": [{"role": "user", "content": "x"}]}

    await call_v1("POST", "/v1/chat/completions", body, secret=key.secret)

    assert upstream.call.affinity == "pck:session-42"
