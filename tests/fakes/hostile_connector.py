"""TEST DOUBLE: a broken or hostile connector, for end-to-end tests of the server's defences.

This is NOT a connector to run against a real server. It stands in for another tenant's program
that breaks the connector protocol (docs/connector-protocol.md, version 2) or abuses it within
the rules: it authenticates with a connector token, says hello, waits for the welcome, and then
answers every `request` frame the way `--mode` says:

- ``start-without-status``: a ``response.start`` with no ``status``;
- ``status-abc``: a ``response.start`` whose status is the string ``"abc"``;
- ``bad-binary-id``: a valid ``response.start``, then a binary frame whose id bytes are not
  ASCII (nor UTF-8);
- ``bad-hello``: never gets that far: its hello carries ``max_concurrency: "x"``;
- ``old-protocol``: a hello that speaks protocol 1;
- ``drip``: a valid start, then one small SSE chunk per second, forever, within its credit;
- ``silent-after-start``: a valid start, then nothing (it still answers pings);
- ``huge``: a valid start, then ``--total`` bytes (300 MiB by default) of body in 16 KiB chunk
  frames, as fast as its credit allows: for a non-streamed request one JSON object with one huge
  string, for a streamed one SSE events of 16 KiB each, then ``[DONE]``. It ignores ``cancel``:
  credit alone must stop it;
- ``huge-ignore-credit``: the same, sending without waiting for credit, so it goes past its
  credit within the first window (64 full frames are all 256 blocks of the default window);
- ``endless-event``: like ``huge``, but the body is one SSE ``data:`` line that never ends.

Credit is counted as the protocol says, in 4 KiB blocks: a frame costs ``credit_cost`` of its
payload (one block per started 4 KiB, so 4 for a full 16 KiB frame), and a mode that honours
credit sends a frame only once it holds that many blocks. Unlike the real connector it never
splits a frame to fit the credit it holds, so it needs a window of at least 8 blocks (the server's
default is 256): with less, a full frame may never be paid for.

The other modes stop a request's sender when the server cancels it, and answer pings.

Run it from the repository root::

    python -m tests.fakes.hostile_connector --server http://127.0.0.1:8000 --token tok_... --mode drip

It prints one line per event, flushed, for tests to wait on:
``welcome window=N``, ``request <id> stream=<bool>``, ``cancel <id> sent=<bytes> [ignored]``,
``starved <id> sent=<bytes>`` (not credit enough for its next frame for half a second),
``finished <id> sent=<bytes> frames=<n> blocks=<n>`` (a request's sender stopped, whatever the
reason; ``blocks`` is the credit its frames cost), and ``closed code=<code>
reason=<reason>`` as soon as the server's close frame arrives (1006 if the connection just
ended); then it drops the connection and exits 0. It exits 1 if it cannot connect at all.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.protocol import State

from tokios_connector.config import websocket_url
from tokios_connector.protocol import (
    MAX_CHUNK_PAYLOAD,
    MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
    Cancel,
    Credit,
    Hello,
    Ping,
    Pong,
    ProtocolError,
    Request,
    ResponseEnd,
    ResponseStart,
    Welcome,
    chunk_prefix,
    credit_cost,
    decode_from_server,
    dumps,
    encode,
    loads,
)

MODES = (
    "start-without-status",
    "status-abc",
    "bad-binary-id",
    "bad-hello",
    "old-protocol",
    "drip",
    "silent-after-start",
    "huge",
    "huge-ignore-credit",
    "endless-event",
)
SSE_HEADERS = {"content-type": "text/event-stream"}
JSON_HEADERS = {"content-type": "application/json"}
STARVED_AFTER = 0.5  # seconds without credit before a sender reports itself starved
DRIP_EVENT = (
    b'data: {"id":"chatcmpl-drip","object":"chat.completion.chunk","created":0,"model":"drip",'
    b'"choices":[{"index":0,"delta":{"content":"drip "},"finish_reason":null}]}\n\n'
)
HUGE_HEAD = b'{"id":"chatcmpl-huge","object":"chat.completion","created":0,"model":"huge","choices":[{"index":0,"message":{"role":"assistant","content":"'
HUGE_TAIL = b'"},"finish_reason":"stop"}]}'
EVENT_HEAD = b'data: {"id":"chatcmpl-huge","object":"chat.completion.chunk","created":0,"model":"huge","choices":[{"index":0,"delta":{"content":"'
EVENT_TAIL = b'"},"finish_reason":null}]}\n\n'
# One whole SSE event per chunk frame, exactly MAX_CHUNK_PAYLOAD bytes long.
HUGE_EVENT = EVENT_HEAD + b"a" * (MAX_CHUNK_PAYLOAD - len(EVENT_HEAD) - len(EVENT_TAIL)) + EVENT_TAIL


def say(line: str) -> None:
    print(line, flush=True)


class Stream:
    """One request being answered: its credit (in blocks), and what was sent of it."""

    def __init__(self, rid: str, window: int) -> None:
        self.rid = rid
        self.credit = window
        self.more = asyncio.Event()
        self.sent = 0
        self.frames = 0
        self.blocks = 0  # the credit the frames sent cost, whether it was held or not
        self.task: asyncio.Task[None] | None = None

    def add(self, blocks: int) -> None:
        self.credit += blocks
        self.more.set()

    async def spend(self, cost: int) -> None:
        """`cost` blocks of credit, waiting for them if need be; a wait over half a second is
        reported once as `starved`, so that a test can see how far the server let this request go."""
        if self.credit < cost:
            try:
                await asyncio.wait_for(self._enough(cost), STARVED_AFTER)
            except TimeoutError:
                say(f"starved {self.rid} sent={self.sent}")
            await self._enough(cost)
        self.credit -= cost

    async def _enough(self, cost: int) -> None:
        while self.credit < cost:
            self.more.clear()
            await self.more.wait()


class Hostile:
    def __init__(self, ws: ClientConnection, mode: str, window: int, total: int) -> None:
        self.ws = ws
        self.mode = mode
        self.window = window
        self.total = total
        self.streams: dict[str, Stream] = {}
        self.helpers: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        """Read the server's frames until the connection ends; never blocks on a send, so credit
        and cancels are seen while the senders wait."""
        async for raw in self.ws:
            if not isinstance(raw, str):
                continue
            try:
                frame = decode_from_server(raw)
            except ProtocolError as exc:
                say(f"unreadable frame from server: {exc.message}")
                continue
            match frame:
                case Request(id=rid, body=body):
                    stream = Stream(rid, self.window)
                    self.streams[rid] = stream
                    say(f"request {rid} stream={_wants_stream(body)}")
                    stream.task = asyncio.create_task(self.answer(stream, _wants_stream(body)))
                case Credit(id=rid, blocks=blocks):
                    if rid in self.streams:
                        self.streams[rid].add(blocks)
                case Cancel(id=rid):
                    stream = self.streams.get(rid)
                    if self.mode in ("huge", "huge-ignore-credit", "endless-event"):  # push on regardless
                        say(f"cancel {rid} sent={stream.sent if stream else '?'} ignored")
                        continue
                    self.streams.pop(rid, None)
                    say(f"cancel {rid} sent={stream.sent if stream else '?'}")
                    if stream is not None and stream.task is not None:
                        stream.task.cancel()
                case Ping(t=t):
                    task = asyncio.create_task(self.send(encode(Pong(t))))
                    self.helpers.add(task)
                    task.add_done_callback(self.helpers.discard)

    async def stop(self) -> None:
        tasks = [s.task for s in self.streams.values() if s.task is not None] + list(self.helpers)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def send(self, frame: str | bytes) -> None:
        try:
            await self.ws.send(frame)
        except ConnectionClosed:
            pass

    async def answer(self, stream: Stream, streamed: bool) -> None:
        rid = stream.rid
        try:
            await self._answer(stream, streamed)
        except ConnectionClosed:
            pass
        finally:
            say(f"finished {rid} sent={stream.sent} frames={stream.frames} blocks={stream.blocks}")

    async def _answer(self, stream: Stream, streamed: bool) -> None:
        rid, ws = stream.rid, self.ws
        mode = self.mode
        if mode == "start-without-status":
            await ws.send(dumps({"type": "response.start", "id": rid, "headers": {}}).decode())
            return
        if mode == "status-abc":
            await ws.send(dumps({"type": "response.start", "id": rid, "status": "abc", "headers": {}}).decode())
            return
        headers = SSE_HEADERS if streamed or mode == "drip" else JSON_HEADERS
        await ws.send(encode(ResponseStart(rid, 200, headers)))
        prefix = chunk_prefix(rid)
        if mode == "bad-binary-id":
            # The length byte is right; the id bytes are neither ASCII nor valid UTF-8.
            await ws.send(bytes((4,)) + b"\xff\xfe\xc3\x28" + DRIP_EVENT)
            return
        if mode == "silent-after-start":
            await asyncio.Event().wait()
        if mode == "drip":
            while True:
                await self._chunk(stream, prefix + DRIP_EVENT, honour_credit=True)
                await asyncio.sleep(1.0)
        honour = mode != "huge-ignore-credit"
        filler = b"a" * MAX_CHUNK_PAYLOAD
        if mode == "endless-event":
            head, chunk, tail = b"data: ", filler, b""
        elif streamed:
            head, chunk, tail = b"", HUGE_EVENT, b"data: [DONE]\n\n"
        else:
            head, chunk, tail = HUGE_HEAD, filler, HUGE_TAIL
        if head:
            await self._chunk(stream, prefix + head, honour_credit=honour)
        for _ in range(self.total // MAX_CHUNK_PAYLOAD):
            await self._chunk(stream, prefix + chunk, honour_credit=honour)
        if tail:
            await self._chunk(stream, prefix + tail, honour_credit=honour)
        await ws.send(encode(ResponseEnd(rid)))

    async def _chunk(self, stream: Stream, frame: bytes, *, honour_credit: bool) -> None:
        size = len(frame) - 1 - frame[0]  # the payload, after the id
        cost = credit_cost(size)
        if honour_credit:
            await stream.spend(cost)
        await self.ws.send(frame)
        stream.sent += size
        stream.frames += 1
        stream.blocks += cost


def _wants_stream(body: str | None) -> bool:
    try:
        data = loads(body) if body else None
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("stream") is True


def hello_frame(mode: str) -> str:
    if mode == "bad-hello":
        return dumps(
            {"type": "hello", "protocol": PROTOCOL_VERSION, "version": "hostile", "max_concurrency": "x"}
        ).decode()
    protocol = 1 if mode == "old-protocol" else PROTOCOL_VERSION
    return encode(Hello(protocol=protocol, version="hostile", upstream="", model=None, max_concurrency=64))


async def close_received(ws: ClientConnection) -> None:
    """Returns once the server's close frame has arrived. websockets reports a close only when the
    TCP connection ends, which a connector with a full write buffer (the flooding modes) may never
    see: so look at the protocol state instead."""
    while ws.protocol.close_rcvd is None and ws.state is not State.CLOSED:
        await asyncio.sleep(0.02)


async def serve(ws: ClientConnection, mode: str, total: int) -> None:
    await ws.send(hello_frame(mode))
    raw = await ws.recv()
    welcome = decode_from_server(raw) if isinstance(raw, str) else None
    if not isinstance(welcome, Welcome):
        say(f"expected welcome, got {raw!r:.200}")
        await ws.close()
        return
    say(f"welcome window={welcome.window}")
    hostile = Hostile(ws, mode, welcome.window, total)
    try:
        await hostile.serve()
    finally:
        await hostile.stop()


async def run(server: str, token: str, mode: str, total: int) -> int:
    try:
        async with connect(
            websocket_url(server),
            additional_headers={"Authorization": f"Bearer {token}"},
            max_size=MAX_FRAME_SIZE,
            ping_interval=None,
            compression=None,
            open_timeout=10,
            close_timeout=2,
        ) as ws:
            tasks = [asyncio.create_task(serve(ws, mode, total)), asyncio.create_task(close_received(ws))]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            close = ws.protocol.close_rcvd
            code, reason = (close.code, close.reason) if close is not None else (ws.close_code, ws.close_reason)
            say(f"closed code={code} reason={reason or ''}")
            # Without waiting for the closing handshake: the write buffer may be full.
            ws.transport.abort()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    except (OSError, InvalidStatus, TimeoutError) as exc:
        say(f"cannot connect: {exc!r}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="hostile_connector", description="TEST DOUBLE: a misbehaving connector")
    parser.add_argument("--server", required=True, help="the Tokios server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--token", required=True, help="a connector token")
    parser.add_argument("--mode", required=True, choices=MODES)
    parser.add_argument("--total", type=int, default=300 * 1024 * 1024, help="bytes of body the huge modes send")
    args = parser.parse_args(argv)
    sys.exit(asyncio.run(run(args.server, args.token, args.mode, args.total)))


if __name__ == "__main__":
    main()
