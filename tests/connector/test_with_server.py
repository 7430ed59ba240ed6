"""The connector against the real Tokios server, in this process (tests/connector/server.py): the
real connector WebSocket and session, the real router and gateway, requests sent by an HTTP client
to /v1, and the fake upstream process behind the connector.

The server parses every frame strictly (a chunk beyond its credit, or larger than the protocol
allows, is a protocol error that closes the connector with 4002 and fails its requests), so each
answer that arrives whole is also a check that the connector kept to the protocol. What the real
server never does — withhold credit, send malformed frames, speak another protocol version, go
silent — is tested against the double in test_connector.py.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from asgiref.sync import sync_to_async

from billing import metering
from billing.models import UsageEvent
from deployments.actions import revoke_connector_token
from tests.connector.conftest import StartConnector, Upstream
from tests.connector.server import Tokios
from tests.fakes.process import free_port
from tokios_connector import __version__

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60), pytest.mark.django_db(transaction=True)]


def chat(model: str, text: str = "hello there", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def client(tokios: Tokios, key) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=tokios.url, headers={"authorization": f"Bearer {key.secret}"}, timeout=30)


def sse_text(body: str) -> tuple[str, list[str]]:
    """(the streamed text, every `data:` payload) of a Chat Completions stream."""
    data = [line[6:] for line in body.split("\n") if line.startswith("data: ")]
    text = ""
    for payload in data:
        if payload != "[DONE]":
            event = json.loads(payload)
            text += "".join(c["delta"].get("content") or "" for c in event.get("choices", []))
    return text, data


async def test_the_server_welcomes_the_connector_with_what_it_said_in_hello(
    tokios: Tokios, connect: StartConnector, deployment, connector_token, key
) -> None:
    await connect(model="local-llama", max_concurrency=7)

    info = await tokios.wait_online(deployment.id)

    assert (info.version, info.max_concurrency, info.token_id) == (__version__, 7, connector_token.id)
    assert info.upstream_model == "local-llama"
    assert not info.draining
    async with client(tokios, key) as http:
        models = (await http.get("/v1/models")).json()["data"]
    assert [(m["id"], m["online"]) for m in models] == [(deployment.name, True)]


async def test_a_whole_answer_goes_through_the_tunnel_and_is_metered(
    tokios: Tokios, connect: StartConnector, upstream: Upstream, deployment, key
) -> None:
    await connect(model="local-llama", upstream_key="upstream-key-1")
    await tokios.wait_online(deployment.id)

    async with client(tokios, key) as http:
        response = await http.post("/v1/chat/completions", json=chat(deployment.name))

    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["choices"][0]["message"]["content"] == "w0 w1 w2 w3 w4 w5 w6 w7"
    assert answer["model"] == deployment.name
    stats = upstream.stats()
    assert stats["last_path"] == "POST /v1/chat/completions"
    assert stats["last_body"]["model"] == "local-llama"  # the connector's --model wins
    sent = stats["last_headers"]
    assert sent["x-request-id"] == response.headers["x-request-id"]
    assert sent["authorization"] == "Bearer upstream-key-1"  # the model's key, never the client's
    await metering.flush()
    event = await sync_to_async(UsageEvent.objects.get)()
    assert (event.request_id, event.status_code) == (response.headers["x-request-id"], 200)
    assert (event.input_tokens, event.output_tokens) == (answer["usage"]["prompt_tokens"], 8)


async def test_a_streamed_answer_arrives_as_the_model_writes_it(
    tokios: Tokios, connect: StartConnector, deployment, key
) -> None:
    await connect()
    await tokios.wait_online(deployment.id)
    arrivals: list[float] = []
    body = ""

    async with client(tokios, key) as http:
        sent_at = time.monotonic()
        request = chat(deployment.name, "go [[words=5 delay_ms=150]]", stream=True)
        async with http.stream("POST", "/v1/chat/completions", json=request) as response:
            assert response.status_code == 200
            async for part in response.aiter_text():
                arrivals.append(time.monotonic())
                body += part

    text, data = sse_text(body)
    assert text == "w0 w1 w2 w3 w4"
    assert data[-1] == "[DONE]"
    # The model needs >= 750 ms; the first words must not wait for it to finish.
    assert arrivals[0] - sent_at < 0.5
    assert arrivals[-1] - arrivals[0] > 0.5


async def test_a_large_request_body_crosses_in_parts(
    tokios: Tokios, connect: StartConnector, upstream: Upstream, deployment, key
) -> None:
    await connect()
    await tokios.wait_online(deployment.id)
    prompt = "lorem " * 220_000  # 1.3 MB: the server sends it as several request.body frames

    async with client(tokios, key) as http:
        response = await http.post("/v1/chat/completions", json=chat(deployment.name, prompt))

    assert response.status_code == 200, response.text[:300]
    assert response.json()["usage"]["prompt_tokens"] == 220_000
    assert upstream.stats()["last_body"]["messages"][0]["content"] == prompt


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_large_answer_crosses_within_the_credit_the_server_grants(
    tokios: Tokios, connect: StartConnector, deployment, key, settings, stream: bool
) -> None:
    settings.TUNNEL_WINDOW = 4  # 16 KiB in flight: the answer needs credit back ~40 times
    await connect()
    info = await tokios.wait_online(deployment.id)
    assert tokios.session(info).window == 4
    text = "abcdefghij_" * 30_000  # 330 KB

    async with client(tokios, key) as http:
        response = await http.post(
            "/v1/chat/completions", json=chat(deployment.name, f"[[text={text}]]", stream=stream)
        )

    assert response.status_code == 200
    expected = text.replace("_", " ").strip()
    if stream:
        streamed, data = sse_text(response.text)
        assert (streamed, data[-1]) == (expected, "[DONE]")
    else:
        assert response.json()["choices"][0]["message"]["content"] == expected
    # A chunk beyond its credit would have closed the connector (4002): it is the same one.
    assert [c.channel for c in tokios.connectors(deployment.id)] == [info.channel]


async def test_a_client_that_leaves_mid_stream_stops_the_model(
    tokios: Tokios, connect: StartConnector, upstream: Upstream, deployment, key
) -> None:
    await connect()
    info = await tokios.wait_online(deployment.id)

    async with client(tokios, key) as http:
        request = chat(deployment.name, "[[words=50 delay_ms=100]]", stream=True)
        async with http.stream("POST", "/v1/chat/completions", json=request) as response:
            async for part in response.aiter_text():
                if "w0" in part:
                    break  # and the client hangs up

        stats = await upstream.wait_for("aborted", 1)
        assert (stats["aborted"], stats["completed"]) == (1, 0)
        assert tokios.session(info).pending == {}
        again = await http.post("/v1/chat/completions", json=chat(deployment.name))
    assert again.status_code == 200


async def test_a_client_that_leaves_before_the_model_answers_stops_it_too(
    tokios: Tokios, connect: StartConnector, upstream: Upstream, deployment, key
) -> None:
    await connect()
    await tokios.wait_online(deployment.id)

    async with client(tokios, key) as http:
        waiting = asyncio.create_task(
            http.post("/v1/chat/completions", json=chat(deployment.name, "[[first_delay_ms=5000]]"))
        )
        await upstream.wait_for("started", 1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    stats = await upstream.wait_for("aborted", 1)
    assert (stats["aborted"], stats["completed"]) == (1, 0)


async def test_a_request_beyond_the_connector_s_concurrency_waits_for_the_slot(
    tokios: Tokios, connect: StartConnector, upstream: Upstream, deployment, key
) -> None:
    await connect(max_concurrency=1)
    await tokios.wait_online(deployment.id)

    async with client(tokios, key) as http:
        slow = asyncio.create_task(
            http.post("/v1/chat/completions", json=chat(deployment.name, "[[words=4 delay_ms=150]]", stream=True))
        )
        await upstream.wait_for("started", 1)
        waited = await http.post("/v1/chat/completions", json=chat(deployment.name))
        finished = await slow

    assert waited.status_code == 200, waited.text  # it waited in the deployment's queue
    assert finished.status_code == 200 and sse_text(finished.text)[0] == "w0 w1 w2 w3"
    assert upstream.stats()["completed"] == 2


async def test_with_no_queue_a_connector_at_its_concurrency_limit_is_503_at_once(
    tokios: Tokios, connect: StartConnector, upstream: Upstream, deployment, key, settings
) -> None:
    settings.QUEUE_MAX_DEPTH = 0
    await connect(max_concurrency=1)
    await tokios.wait_online(deployment.id)

    async with client(tokios, key) as http:
        slow = asyncio.create_task(
            http.post("/v1/chat/completions", json=chat(deployment.name, "[[words=4 delay_ms=150]]", stream=True))
        )
        await upstream.wait_for("started", 1)
        refused = await http.post("/v1/chat/completions", json=chat(deployment.name))
        finished = await slow

    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "queue_full"
    assert refused.headers["retry-after"] == "1"
    assert finished.status_code == 200 and sse_text(finished.text)[0] == "w0 w1 w2 w3"


async def test_model_server_failures_reach_the_client_as_gateway_errors(
    tokios: Tokios, connect: StartConnector, deployment, key
) -> None:
    await connect(read_timeout=0.5)
    await tokios.wait_online(deployment.id)

    async with client(tokios, key) as http:
        timed_out = await http.post("/v1/chat/completions", json=chat(deployment.name, "[[first_delay_ms=3000]]"))
        broken = await http.post(
            "/v1/chat/completions", json=chat(deployment.name, "[[words=6 fail_after=2]]", stream=True)
        )
        failed = await http.post("/v1/chat/completions", json=chat(deployment.name, "[[status=500]]"))

    assert (timed_out.status_code, timed_out.json()["error"]["code"]) == (504, "upstream_timeout")
    assert broken.status_code == 200  # it had begun
    text, data = sse_text(broken.text)
    assert text == "w0 w1" and "[DONE]" not in data
    assert json.loads(data[-1])["error"]["code"] == "upstream_error"
    assert (failed.status_code, failed.json()["error"]["code"]) == (502, "upstream_error")
    assert "HTTP 500" in failed.json()["error"]["message"]


async def test_an_unreachable_model_server_is_a_502(tokios: Tokios, connect: StartConnector, deployment, key) -> None:
    await connect(upstream=f"http://127.0.0.1:{free_port()}/v1")
    await tokios.wait_online(deployment.id)

    async with client(tokios, key) as http:
        response = await http.post("/v1/chat/completions", json=chat(deployment.name))

    assert (response.status_code, response.json()["error"]["code"]) == (502, "upstream_unreachable")


async def test_token_counts_come_from_the_model_s_own_tokenizer(
    tokios: Tokios, connect: StartConnector, upstream: Upstream, deployment, key
) -> None:
    await connect()
    await tokios.wait_online(deployment.id)
    body = {"model": deployment.name, "messages": [{"role": "user", "content": "one two three"}]}

    async with client(tokios, key) as http:
        response = await http.post("/v1/messages/count_tokens", json=body, headers={"anthropic-version": "2023-06-01"})

    assert response.status_code == 200
    assert response.headers["x-tokios-token-count"] == "exact"
    assert response.json()["input_tokens"] >= 3
    assert upstream.stats()["last_path"] == "POST /tokenize"  # llama.cpp's, at the upstream's root


async def test_the_connector_reconnects_when_the_server_restarts(
    tokios: Tokios, connect: StartConnector, deployment, key
) -> None:
    await connect()
    first = await tokios.wait_online(deployment.id)

    await tokios.stop()
    await tokios.wait_offline(deployment.id)
    await asyncio.sleep(0.5)  # a connection attempt or two fails meanwhile
    await tokios.start()

    second = await tokios.wait_online(deployment.id, timeout=15)
    assert second.channel != first.channel
    async with client(tokios, key) as http:
        assert (await http.post("/v1/chat/completions", json=chat(deployment.name))).status_code == 200


async def test_a_server_that_goes_away_mid_answer_stops_the_model(
    tokios: Tokios, connect: StartConnector, upstream: Upstream, deployment, key
) -> None:
    await connect()
    await tokios.wait_online(deployment.id)

    async with client(tokios, key) as http:
        request = chat(deployment.name, "[[words=50 delay_ms=100]]", stream=True)
        async with http.stream("POST", "/v1/chat/completions", json=request) as response:
            async for _ in response.aiter_text():
                break
            await tokios.stop()  # nobody can receive the answer any more

    stats = await upstream.wait_for("aborted", 1)
    assert (stats["aborted"], stats["completed"]) == (1, 0)


async def test_a_draining_connector_finishes_what_it_holds_and_gets_nothing_new(
    tokios: Tokios, connect: StartConnector, upstream: Upstream, deployment, key
) -> None:
    connector = await connect(grace=5)
    await tokios.wait_online(deployment.id)

    async with client(tokios, key) as http:
        running = asyncio.create_task(
            http.post("/v1/chat/completions", json=chat(deployment.name, "[[words=5 delay_ms=100]]", stream=True))
        )
        await upstream.wait_for("started", 1)
        connector.request_stop("test")
        deadline = time.monotonic() + 5
        while not all(c.draining for c in tokios.connectors(deployment.id)):
            assert time.monotonic() < deadline, "the server did not hear that the connector drains"
            await asyncio.sleep(0.02)

        late = await http.post("/v1/chat/completions", json=chat(deployment.name))
        finished = await running

    assert (late.status_code, late.json()["error"]["code"]) == (503, "connector_offline")
    assert finished.status_code == 200
    text, data = sse_text(finished.text)
    assert (text, data[-1]) == ("w0 w1 w2 w3 w4", "[DONE]")
    assert await connect.exit_code(connector) == 0
    await tokios.wait_offline(deployment.id)


async def test_heartbeats_keep_a_quiet_connector_connected(
    tokios: Tokios, connect: StartConnector, deployment, settings
) -> None:
    settings.HEARTBEAT_INTERVAL = 0.2
    settings.HEARTBEAT_TIMEOUT = 0.6
    await connect()
    info = await tokios.wait_online(deployment.id)
    session = tokios.session(info)

    await asyncio.sleep(1.5)  # well over two heartbeat timeouts without a request

    assert [c.channel for c in tokios.connectors(deployment.id)] == [info.channel]
    assert not session.closed
    assert time.time() - tokios.connectors(deployment.id)[0].last_heartbeat < 0.6


async def test_a_revoked_token_disconnects_its_connector_for_good(
    tokios: Tokios, connect: StartConnector, deployment, connector_token, capsys: pytest.CaptureFixture[str]
) -> None:
    connector = await connect()
    await tokios.wait_online(deployment.id)

    await sync_to_async(revoke_connector_token)(token=connector_token)

    assert await connect.exit_code(connector, timeout=10) == 2
    await tokios.wait_offline(deployment.id)
    assert "revoked" in capsys.readouterr().err


async def test_an_unknown_token_is_refused_for_good(
    tokios: Tokios, upstream: Upstream, deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    starter = StartConnector(tokios, upstream, token="ct-" + "0" * 40)
    try:
        connector = await starter()
        assert await starter.exit_code(connector, timeout=10) == 2
    finally:
        await starter.stop_all()

    assert "connector token rejected by server (close 4001)" in capsys.readouterr().err
    assert tokios.connectors(deployment.id) == []
