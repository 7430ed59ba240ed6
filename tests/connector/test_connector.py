"""The connector against the server double (tunnel.FakeTokios) and the fake upstream process: what
the real server never does, or does only in a race, and so cannot be tested against it — credit
withheld or handed back block by block, frames and welcomes the protocol does not allow, a server
that goes silent or vanishes without a closing handshake, paths outside the allow-list, requests
arriving after `draining`, headers the server would not send — and the connector's own logging.
Everything else runs against the real server in process: test_with_server.py."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from tests.connector.conftest import TOKEN, StartConnector, Upstream
from tests.connector.tunnel import FakeTokios, Peer, ReceivedChunk
from tokios_connector import __version__
from tokios_connector.protocol import (
    CREDIT_BLOCK,
    MAX_CHUNK_PAYLOAD,
    Draining,
    Hello,
    Ping,
    Pong,
    Welcome,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


def chat(text: str = "hello there", **extra: object) -> dict[str, object]:
    return {"model": "client-model", "messages": [{"role": "user", "content": text}], **extra}


async def test_it_says_hello_and_waits_for_welcome(
    tunnel: FakeTokios, start_connector: StartConnector, upstream: Upstream
) -> None:
    base_with_credentials = upstream.base.replace("http://", "http://user:pw@")
    await start_connector(upstream=base_with_credentials, model="local-llama", max_concurrency=7)
    peer = await tunnel.accept()

    assert peer.authorization == f"Bearer {TOKEN}"
    hello = await peer.next_control()
    assert hello == Hello(
        protocol=2,
        version=__version__,
        upstream=upstream.base,  # credentials stripped
        model="local-llama",
        max_concurrency=7,
        slots=7,  # the fake upstream does not say how many it has: as many as it may be sent
        surfaces=("chat", "tokenize"),  # what the probe found the fake upstream speaks
        models=("fake-model",),
    )
    with pytest.raises(asyncio.TimeoutError):
        await peer.next_control(timeout=0.2)  # nothing else before welcome

    await peer.send(Welcome("d", "c", heartbeat_interval=15, heartbeat_timeout=45))
    await peer.send(Ping(1234.5))
    assert await peer.next_control() == Pong(1234.5)


async def test_it_relays_a_non_streaming_request(
    tunnel: FakeTokios, start_connector: StartConnector, upstream: Upstream
) -> None:
    await start_connector()
    peer = await tunnel.accept()
    await peer.handshake()

    headers = {
        "Content-Type": "application/json",
        "X-Request-Id": "req-abc",
        "Cookie": "session=1",
        "Authorization": "Bearer sk-tokios-client-key",
    }
    await peer.request("r1", chat(), headers=headers)
    response = await peer.collect("r1")

    assert response.error is None
    assert response.status == 200
    assert response.start.headers["content-type"] == "application/json"
    assert "transfer-encoding" not in response.start.headers
    assert "connection" not in response.start.headers
    answer = response.json()
    assert answer["choices"][0]["message"]["content"] == "w0 w1 w2 w3 w4 w5 w6 w7"
    assert answer["model"] == "client-model"  # no --model: the body goes through untouched
    assert 0 <= response.end.ttfb_ms <= response.end.upstream_ms

    stats = upstream.stats()
    assert stats["last_path"] == "POST /v1/chat/completions"
    sent = stats["last_headers"]
    assert sent["x-request-id"] == "req-abc"
    assert "cookie" not in sent
    assert "authorization" not in sent  # the client's Tokios key never reaches the model


def big_words(count: int, size: int) -> list[str]:
    """Words long enough that each streamed event spans most of a chunk frame."""
    return [f"{i:03d}" + "x" * size for i in range(count)]


async def chunks_then_silence(peer: Peer, rid: str, count: int, quiet: float = 0.3) -> list[ReceivedChunk]:
    """Take `count` chunk frames of `rid`, then check that nothing more comes for `quiet` seconds."""
    events = [await peer.next_event(rid) for _ in range(count)]
    assert [kind for kind, _, _ in events] == ["chunk"] * count
    await asyncio.sleep(quiet)
    assert peer.pending_events(rid) == [], "more than the credit allowed"
    return [chunk for _, chunk, _ in events]


async def blocks_then_silence(peer: Peer, rid: str, blocks: int, quiet: float = 0.3) -> list[ReceivedChunk]:
    """Take chunk frames of `rid` until they have cost exactly `blocks` of credit, then check that
    nothing more comes for `quiet` seconds."""
    chunks: list[ReceivedChunk] = []
    while sum(chunk.blocks for chunk in chunks) < blocks:
        kind, chunk, _ = await peer.next_event(rid)
        assert kind == "chunk", kind
        chunks.append(chunk)
    assert sum(chunk.blocks for chunk in chunks) == blocks, [len(chunk.payload) for chunk in chunks]
    await asyncio.sleep(quiet)
    assert peer.pending_events(rid) == [], "more than the credit allowed"
    return chunks


async def test_it_spends_no_more_than_its_credit(
    tunnel: FakeTokios, start_connector: StartConnector, upstream: Upstream
) -> None:
    await start_connector()
    peer = await tunnel.accept()
    await peer.handshake(window=4, auto_credit=False)

    words = big_words(30, 9000)  # 30 streamed events of 9 KB: about 66 blocks, 17 frames of 16 KiB
    await peer.request("s1", chat(f"[[text={'_'.join(words)}]]", stream=True))
    kind, start, _ = await peer.next_event("s1")
    assert kind == "response.start"
    assert (await upstream.wait_for("completed", 1))["completed"] == 1  # only credit holds the answer back
    first = await blocks_then_silence(peer, "s1", 4)
    assert sum(len(chunk.payload) for chunk in first) <= 4 * CREDIT_BLOCK

    # A stalled request holds up nobody else: credit is per request.
    await peer.request("quick", chat())
    assert (await peer.collect("quick")).status == 200
    assert peer.pending_events("s1") == []

    await peer.send_credit("s1", 2)  # less than one 9 KB event costs: it goes out cut to 8 KiB
    second = await blocks_then_silence(peer, "s1", 2)
    assert sum(len(chunk.payload) for chunk in second) <= 2 * CREDIT_BLOCK

    await peer.send_credit("s1", 1000)
    rest = await peer.collect("s1", start=start)
    assert rest.end is not None
    body = b"".join(chunk.payload for chunk in first + second) + rest.body
    events = [line[6:] for line in body.decode().split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    streamed = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert streamed == " ".join(words)


async def test_a_large_upstream_read_is_split_to_fit_the_credit_held(
    tunnel: FakeTokios, start_connector: StartConnector
) -> None:
    """One 40 KiB read from the upstream, 6 blocks (24 KiB) of credit: a full 16 KiB frame, then
    the 8 KiB the 2 blocks left pay for, then nothing until credit arrives."""
    body = bytes(range(256)) * (40 * 1024 // 256)
    served: list[bytes] = []

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
        )
        served.append(head + await reader.readexactly(length))
        # The whole answer in one write, so that the connector reads the body in one piece.
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        await writer.drain()
        await reader.read()  # until the connector closes its side
        writer.close()

    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    try:
        # No probe: this upstream answers one request per connection, with the same 40 KiB.
        await start_connector(upstream=f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", probe=False)
        peer = await tunnel.accept()
        await peer.handshake(window=6, auto_credit=False)

        await peer.request("big", chat())
        kind, start, _ = await peer.next_event("big")
        assert kind == "response.start"
        first = await blocks_then_silence(peer, "big", 6)
        assert [len(chunk.payload) for chunk in first] == [MAX_CHUNK_PAYLOAD, 2 * CREDIT_BLOCK]
        assert [chunk.blocks for chunk in first] == [4, 2]

        await peer.send_credit("big", 4)
        rest = await peer.collect("big", start=start)
        assert [len(chunk.payload) for chunk in rest.chunks] == [MAX_CHUNK_PAYLOAD]  # the 16 KiB left
        assert rest.end is not None
        assert b"".join(chunk.payload for chunk in first) + rest.body == body
        assert len(served) == 1
    finally:
        server.close()


async def test_credit_of_less_than_a_full_frame_still_moves_the_body(
    tunnel: FakeTokios, start_connector: StartConnector, upstream: Upstream
) -> None:
    """A window of 1 block: every frame carries at most 4 KiB, and the answer still gets through."""
    await start_connector()
    peer = await tunnel.accept()
    await peer.handshake(window=1)  # credit handed back after every block

    text = "abcdefghij_" * 6_000  # a 66 KB answer
    await peer.request("r1", chat(f"[[text={text}]]"))
    response = await peer.collect("r1")

    assert response.status == 200
    assert all(len(chunk.payload) <= CREDIT_BLOCK for chunk in response.chunks)
    assert len(response.chunks) >= len(response.body) / CREDIT_BLOCK
    assert response.json()["choices"][0]["message"]["content"] == text.replace("_", " ").strip()


async def test_cancel_while_waiting_for_credit_closes_the_upstream_request(
    tunnel: FakeTokios, start_connector: StartConnector, upstream: Upstream
) -> None:
    await start_connector()
    peer = await tunnel.accept()
    await peer.handshake(window=2, auto_credit=False)

    await peer.request("c1", chat("[[words=200 delay_ms=20]]", stream=True))  # 4 s of generation
    assert (await peer.next_event("c1"))[0] == "response.start"
    await chunks_then_silence(peer, "c1", 2)  # waiting for credit

    await peer.cancel("c1")

    stats = await upstream.wait_for("aborted", 1, timeout=2.0)  # well before the answer would end
    assert stats["aborted"] == 1
    assert stats["completed"] == 0
    assert peer.pending_events("c1") == []
    await peer.request("c2", chat())  # the slot is free again
    assert (await peer.collect("c2")).status == 200


async def test_losing_the_tunnel_while_waiting_for_credit_closes_the_upstream_request(
    tunnel: FakeTokios, start_connector: StartConnector, upstream: Upstream
) -> None:
    await start_connector()
    peer = await tunnel.accept()
    await peer.handshake(window=1, auto_credit=False)
    await peer.request("r1", chat("[[words=200 delay_ms=20]]", stream=True))
    assert (await peer.next_event("r1"))[0] == "response.start"
    await chunks_then_silence(peer, "r1", 1)  # waiting for credit

    peer.ws.transport.abort()

    stats = await upstream.wait_for("aborted", 1, timeout=2.0)
    assert stats["aborted"] == 1
    assert stats["completed"] == 0


@pytest.mark.parametrize(
    ("welcome", "server_protocol"),
    [
        # What a version-1 server sends: no protocol field at all.
        ({"deployment": "d", "connector_id": "c", "heartbeat_interval": 15, "heartbeat_timeout": 45}, "1"),
        # A newer server whose welcome our parser would refuse: its version still decides.
        (
            {
                "deployment": "d",
                "connector_id": "c",
                "heartbeat_interval": 15,
                "heartbeat_timeout": 45,
                "window": 99_999,
                "protocol": 3,
            },
            "3",
        ),
    ],
)
async def test_a_welcome_of_another_protocol_version_is_fatal(
    tunnel: FakeTokios,
    start_connector: StartConnector,
    upstream: Upstream,
    capsys: pytest.CaptureFixture[str],
    welcome: dict[str, object],
    server_protocol: str,
) -> None:
    connector = await start_connector()
    peer = await tunnel.accept()
    assert (await peer.next_control()).type == "hello"

    await peer.send({"type": "welcome", **welcome})

    assert await start_connector.exit_code(connector) == 2
    assert (
        f"the server speaks connector protocol {server_protocol}; this connector speaks 2: "
        "upgrade the server or use a matching connector"
    ) in capsys.readouterr().err
    assert peer.ws.close_code == 1002
    with pytest.raises(asyncio.TimeoutError):
        await tunnel.accept(timeout=0.5)  # and it did not come back


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/admin"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/chat/completions"),
        ("POST", "/models"),
        ("POST", "/chat/completions?x=1"),
        ("POST", "/chat/completions/../../_fake/reset"),
        ("GET", "http://169.254.169.254/latest/meta-data"),
    ],
)
async def test_it_refuses_paths_outside_the_allow_list(
    tunnel: FakeTokios, start_connector: StartConnector, upstream: Upstream, method: str, path: str
) -> None:
    await start_connector()
    peer = await tunnel.accept()
    await peer.handshake()

    await peer.request("p1", chat() if method == "POST" else None, method=method, path=path)
    response = await peer.collect("p1")

    assert response.start is None
    assert response.error.code == "path_not_allowed"
    assert upstream.stats()["started"] == 0


async def test_it_forwards_llama_cpp_extensions_to_the_upstream_root(
    tunnel: FakeTokios, start_connector: StartConnector, upstream: Upstream
) -> None:
    await start_connector()
    peer = await tunnel.accept()
    await peer.handshake()

    await peer.request("t1", {"content": "one two three"}, path="/tokenize")
    response = await peer.collect("t1")
    assert len(response.json()["tokens"]) == 3
    assert upstream.stats()["last_path"] == "POST /tokenize"

    await peer.request("m1", None, method="GET", path="/models")
    response = await peer.collect("m1")
    assert [m["id"] for m in response.json()["data"]] == ["fake-model"]
    assert upstream.stats()["last_path"] == "GET /v1/models"


async def test_it_reconnects_after_the_server_goes_away(
    tunnel: FakeTokios, start_connector: StartConnector, upstream: Upstream
) -> None:
    await start_connector()
    first = await tunnel.accept()
    await first.handshake()
    await first.ws.close(1012, "restarting")

    second = await tunnel.accept(timeout=5)
    await second.handshake()
    second.ws.transport.abort()  # and once more without a closing handshake

    third = await tunnel.accept(timeout=5)
    await third.handshake()
    await third.request("r1", chat())
    assert (await third.collect("r1")).status == 200


async def test_it_reconnects_when_the_server_goes_silent(
    tunnel: FakeTokios, start_connector: StartConnector, upstream: Upstream
) -> None:
    await start_connector()
    first = await tunnel.accept()
    await first.handshake(heartbeat_interval=0.2, heartbeat_timeout=0.5)

    second = await tunnel.accept(timeout=5)
    await asyncio.wait_for(first.ws.wait_closed(), 5)
    assert first.ws.close_code == 1001
    assert (await second.next_control()).type == "hello"


async def test_a_heartbeat_timeout_below_two_intervals_is_stretched(
    tunnel: FakeTokios, start_connector: StartConnector, upstream: Upstream
) -> None:
    await start_connector()
    peer = await tunnel.accept()
    await peer.handshake(heartbeat_interval=1, heartbeat_timeout=0.2)

    await asyncio.sleep(1.0)  # silent for 5 "timeouts", but less than two ping intervals
    assert peer.ws.close_code is None
    await asyncio.wait_for(peer.ws.wait_closed(), 5)  # after 2 s it does give up
    assert peer.ws.close_code == 1001


async def test_it_rejects_malformed_requests_and_survives_garbage(
    tunnel: FakeTokios, start_connector: StartConnector, upstream: Upstream
) -> None:
    await start_connector()
    peer = await tunnel.accept()
    await peer.handshake()

    await peer.ws.send("not json")
    await peer.ws.send(b"\x01xbinary")
    await peer.send({"type": "something.new"})
    await peer.send({"type": "credit", "id": "nobody", "blocks": 5})  # not in flight: ignored
    await peer.send({"type": "credit", "id": "crd", "blocks": 0})  # malformed, but not a request
    await peer.send({"type": "credit", "id": "crd", "frames": 5})  # the field's old name: malformed
    await peer.send({"type": "cancel", "id": 7})
    await peer.send(
        {
            "type": "request",
            "id": "bad",
            "method": "POST",
            "path": "/chat/completions",
            "headers": {},
            "body": None,
            "body_parts": -1,
        }
    )
    assert (await peer.collect("bad")).error.code == "bad_request"

    await peer.request("ok", chat())
    assert (await peer.collect("ok")).status == 200
    assert peer.pending_events("nobody") == []
    assert peer.pending_events("crd") == []


async def test_it_logs_one_line_per_request_without_secrets_or_prompts(
    tunnel: FakeTokios, start_connector: StartConnector, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await start_connector(upstream_key="upstream-secret-9")
    peer = await tunnel.accept()
    await peer.handshake()

    await peer.request("req-42", chat("my private prompt"))
    await peer.collect("req-42")
    await asyncio.sleep(0.05)

    lines = [r.getMessage() for r in caplog.records if r.name == "tokios_connector"]
    assert any(line.startswith("connected to ") and "fake-deployment" in line for line in lines)
    request_lines = [line for line in lines if line.startswith("req req-42 ")]
    assert len(request_lines) == 1
    assert "POST /chat/completions -> 200" in request_lines[0]
    # The in-test server's own handshake log shows the token it received; that is not ours.
    everything = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("websockets.server"))
    assert "my private prompt" not in everything
    assert TOKEN not in everything
    assert "upstream-secret-9" not in everything


async def test_log_prompts_logs_the_request_body(
    tunnel: FakeTokios, start_connector: StartConnector, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tokios_connector")
    await start_connector(log_prompts=True)
    peer = await tunnel.accept()
    await peer.handshake()

    await peer.request("r1", chat("my private prompt"))
    await peer.collect("r1")

    assert "my private prompt" in caplog.text


async def test_draining_refuses_new_requests_and_finishes_in_flight(
    tunnel: FakeTokios, start_connector: StartConnector, upstream: Upstream
) -> None:
    connector = await start_connector(grace=5)
    peer = await tunnel.accept()
    await peer.handshake()
    await peer.request("a", chat("[[words=5 delay_ms=100]]", stream=True))
    kind, start, _ = await peer.next_event("a")
    assert kind == "response.start"

    connector.request_stop("test")

    assert await peer.next_control() == Draining()
    await peer.request("late", chat())
    assert (await peer.collect("late")).error.code == "overloaded"
    finished = await peer.collect("a", start=start)
    assert finished.end is not None
    assert finished.sse_data()[-1] == "[DONE]"
    await asyncio.wait_for(peer.ws.wait_closed(), 5)
    assert peer.ws.close_code == 1001


async def test_it_relays_redirects_without_following_them(tunnel: FakeTokios, start_connector: StartConnector) -> None:
    followed: list[bytes] = []

    async def elsewhere(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        followed.append(await reader.readuntil(b"\r\n\r\n"))
        writer.close()

    async def redirecting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        location = f"http://127.0.0.1:{other_port}/v1/chat/completions".encode()
        writer.write(b"HTTP/1.1 307 Temporary Redirect\r\nlocation: %s\r\ncontent-length: 0\r\n\r\n" % location)
        await writer.drain()
        writer.close()

    other = await asyncio.start_server(elsewhere, "127.0.0.1", 0)
    other_port = other.sockets[0].getsockname()[1]
    upstream = await asyncio.start_server(redirecting, "127.0.0.1", 0)
    try:
        await start_connector(upstream=f"http://127.0.0.1:{upstream.sockets[0].getsockname()[1]}/v1")
        peer = await tunnel.accept()
        await peer.handshake()

        await peer.request("r1", None, method="GET", path="/models")
        response = await peer.collect("r1")

        assert response.status == 307
        assert response.start.headers["location"].endswith(f":{other_port}/v1/chat/completions")
        assert followed == []
    finally:
        other.close()
        upstream.close()
