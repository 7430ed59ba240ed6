"""A misbehaving connector or a slow client cannot hang requests or eat the server's memory.

Real processes: uvicorn serving Tokios (the e2e fixtures), the hostile connector TEST DOUBLE
(tests/fakes/hostile_connector.py) as a subprocess, and for slow readers the real connector in
front of the fake upstream (tests/fakes/fake_upstream.py, also a TEST DOUBLE).

Memory is the uvicorn process's resident set (VmRSS in /proc/<pid>/status), sampled every 20 ms
from a thread while the attack runs; growth is the highest sample minus the level after a warm-up
request took every code path once. Bounds, and why:

- a non-streamed response is held in memory up to TOKIOS_MAX_RESPONSE_BYTES (8 MiB here), plus the
  tunnel window (256 credit blocks x 4 KiB = 1 MiB) and the copies Python makes joining them:
  growth must stay under 64 MiB while the connector tries to send 300 MiB (the tunnel before
  protocol 2 held all of it);
- a slow streamed reader costs the server at most the tunnel window of body (256 blocks x 4 KiB =
  1 MiB, however the body is cut into frames) plus an allowance. The clients advertise a small receive window and internet-sized
  segments, so that the server's kernel send buffer (not in the RSS) stays small and the server
  process has to hold what the connector sends. With a model's answer (many small events) 20
  slow readers must stay under 20 x 1.5 MiB. With full 16 KiB frames (4 blocks each, so 64 of them
  fill the window), the window's worst case in bytes, the allowance is 0.75 MiB a stream: the request's own objects (about 0.13 MiB, as the first case
  measures), the HTTP transport's write buffer (up to about 0.2 MiB) and allocator slack.
  Kernel socket buffers are not in the RSS.

The figures are printed (run with -s to see them).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.fakes.hostile_connector import EVENT_HEAD, EVENT_TAIL
from tokios_connector.protocol import CREDIT_BLOCK, DEFAULT_WINDOW, MAX_CHUNK_PAYLOAD

from .conftest import Proc, Server, base_env

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MiB = 1024 * 1024
OFFLINE = "Connector offline — the tunnel is not active"
FAST = 2.0  # seconds: "fails fast", well under the 5 s a client would notice
WITHDRAWN = 1.0  # seconds from a protocol failure until the deployment answers 503 offline
MALFORMED = ("start-without-status", "status-abc", "bad-binary-id")
DEADLINE = 4.0  # TOKIOS_REQUEST_DEADLINE for the drip tests
MAX_RESPONSE = 8 * MiB  # TOKIOS_MAX_RESPONSE_BYTES for the huge tests
WINDOW_BYTES = DEFAULT_WINDOW * CREDIT_BLOCK  # the default tunnel window (256 blocks), in bytes: 1 MiB
HUGE_GROWTH_BOUND = 64 * MiB
SLOW_STREAMS = 20
SLOW_STREAM_BOUND = int(1.5 * MiB)  # per slow stream of a model's answer: the window (1 MiB) + 0.5 MiB
FULL_FRAMES_BOUND = int(1.75 * MiB)  # per slow stream of 16 KiB frames: the window + 0.75 MiB (see above)
SLOW_WORDS = 12_000  # ~3.3 MB of SSE per stream: far more than the window and the socket buffers
SLOW_HUGE_TOTAL = 4 * MiB  # bytes of 16 KiB SSE events per stream in the full-frames case
SLOW_SECONDS = 5.0  # the readers stall, burst and trickle this long before they read everything
STALL = 1.5  # seconds a slow reader first reads nothing
BURST = 128 * 1024  # bytes it then reads in one go


# --- processes and measurements ----------------------------------------------------------------


@pytest.fixture
def start_hostile():
    """The hostile connector TEST DOUBLE as a subprocess, stopped after the test."""
    started: list[Proc] = []

    def start(srv: Server, token: str, mode: str, *args: str, wait: bool = True) -> Proc:
        proc = Proc(
            f"hostile-{mode}",
            [
                sys.executable,
                "-m",
                "tests.fakes.hostile_connector",
                "--server",
                srv.url,
                "--token",
                token,
                "--mode",
                mode,
                *args,
            ],
            base_env(),
        )
        started.append(proc)
        if wait:
            wait_for_line(proc, "welcome window=")
        return proc

    yield start
    for proc in started:
        proc.stop(timeout=5)


def wait_for_line(proc: Proc, pattern: str, timeout: float = 5.0) -> re.Match:
    """The first match of `pattern` in the process's output; unlike Proc.wait_for_output, a process
    that prints its last line and exits at once is not a failure."""
    deadline = time.monotonic() + timeout
    while True:
        found = re.search(pattern, proc.output())
        if found:
            return found
        exited = proc.popen.poll() is not None
        if exited or time.monotonic() > deadline:
            found = re.search(pattern, proc.output())
            if found:
                return found
            state = f"exited ({proc.popen.returncode})" if exited else f"still running after {timeout}s"
            raise AssertionError(f"{proc.name} {state} without printing {pattern!r}:\n{proc.output()[-3000:]}")
        time.sleep(0.02)


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class RssSampler:
    """The resident set of a process, sampled from a thread while the `with` block runs."""

    def __init__(self, pid: int, interval: float = 0.02):
        self.pid = pid
        self.interval = interval
        self.baseline = statistics.median(rss(pid) for _ in range(5))
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), rss(self.pid)))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.monotonic(), rss(self.pid)))

    def growth(self, until: float = float("inf")) -> int:
        """The highest sample taken before `until`, minus the baseline."""
        return max((value for at, value in self.samples if at < until), default=self.baseline) - self.baseline


# --- requests ----------------------------------------------------------------------------------


def chat(model: str, *, stream: bool, text: str = "hello") -> dict:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": text}]}


def post(srv: Server, key: str, body: dict, timeout: float = 20.0) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.post(
        f"{srv.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=timeout
    )
    return response, time.monotonic() - started


def post_streamed(srv: Server, key: str, body: dict, timeout: float = 20.0) -> tuple[httpx.Response, list, float]:
    """The response and its `data:` events (JSON decoded; "[DONE]" kept as a string). Reading the
    whole body raises if the server did not end the chunked stream cleanly."""
    started = time.monotonic()
    with httpx.stream(
        "POST", f"{srv.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=timeout
    ) as response:
        raw = response.read()
    return response, sse_events(raw), time.monotonic() - started


def sse_events(raw: bytes) -> list:
    events = []
    for block in raw.split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data: "):
                data = line[6:]
                events.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return events


def error_code(response: httpx.Response) -> str | None:
    return response.json()["error"]["code"]


def seconds_until_offline(srv: Server, key: str, model: str, since: float, limit: float = 5.0) -> float:
    """Seconds from `since` until the deployment answers 503 offline (asking again and again)."""
    while True:
        response, _ = post(srv, key, chat(model, stream=False), timeout=limit)
        if response.status_code == 503 and response.json()["error"]["message"] == OFFLINE:
            return time.monotonic() - since
        if time.monotonic() - since > limit:
            raise AssertionError(f"still not offline after {limit}s: {response.status_code} {response.text[:300]}")
        time.sleep(0.02)


# --- connectors that break the protocol ---------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("mode", MALFORMED)
def test_a_connector_that_breaks_the_protocol_fails_the_request_fast_and_is_withdrawn_at_once(
    server, tenant, start_hostile, mode, streamed
):
    hostile = start_hostile(server, tenant.token, mode)
    body = chat(tenant.model, stream=streamed)
    if streamed and mode == "bad-binary-id":
        # The bad frame comes after a valid start: the client already has its 200 and the stream.
        response, events, elapsed = post_streamed(server, tenant.key, body)
        assert response.status_code == 200
        assert events, "the stream ended without telling the client why"
        assert events[-1] != "[DONE]"
        assert events[-1]["error"]["code"] == "connector_protocol_error", events
    elif streamed:
        response, _, elapsed = post_streamed(server, tenant.key, body)
        assert response.status_code == 502, response.text
        assert error_code(response) == "connector_protocol_error"
    else:
        response, elapsed = post(server, tenant.key, body)
        assert response.status_code == 502, response.text
        assert error_code(response) == "connector_protocol_error"
    failed_at = time.monotonic()
    assert elapsed < FAST, f"the request took {elapsed:.2f}s to fail"
    wait_for_line(hostile, r"closed code=4002 ", timeout=3)

    withdrawn = seconds_until_offline(server, tenant.key, tenant.model, failed_at)
    print(
        f"\n{mode} ({'streamed' if streamed else 'whole'}): failed in {elapsed * 1000:.0f} ms, "
        f"503 offline {withdrawn * 1000:.0f} ms after the failure"
    )
    assert withdrawn < WITHDRAWN


@pytest.mark.parametrize(("mode", "code"), [("bad-hello", 4002), ("old-protocol", 4004)])
def test_a_connector_with_a_bad_hello_is_closed_and_never_served(server, tenant, start_hostile, mode, code):
    started = time.monotonic()
    hostile = start_hostile(server, tenant.token, mode, wait=False)
    wait_for_line(hostile, rf"closed code={code} ", timeout=5)
    assert "welcome" not in hostile.output()
    print(f"\n{mode}: closed with {code} {time.monotonic() - started:.2f}s after the process started")
    response, _ = post(server, tenant.key, chat(tenant.model, stream=False))
    assert response.status_code == 503
    assert response.json()["error"]["message"] == OFFLINE


@pytest.mark.redis
def test_another_process_stops_routing_to_a_connector_that_broke_the_protocol(
    server, start_server, tenant, start_hostile
):
    """The connector is held by `server`; the requests reach a second process, which routes them
    there through the channel layer and must learn from presence that it is gone."""
    other = start_server()
    hostile = start_hostile(server, tenant.token, "status-abc")
    response, elapsed = post(other, tenant.key, chat(tenant.model, stream=False))
    failed_at = time.monotonic()
    assert response.status_code == 502, response.text
    assert error_code(response) == "connector_protocol_error"
    assert elapsed < FAST
    wait_for_line(hostile, r"closed code=4002 ", timeout=3)
    withdrawn = seconds_until_offline(other, tenant.key, tenant.model, failed_at)
    print(
        f"\nstatus-abc via another process: failed in {elapsed * 1000:.0f} ms, "
        f"503 offline there {withdrawn * 1000:.0f} ms after the failure"
    )
    assert withdrawn < WITHDRAWN, f"the other process answered 503 offline only {withdrawn:.2f}s after the failure"


# --- connectors that never finish ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["drip", "silent-after-start"])
def test_a_response_that_never_ends_is_cut_at_the_request_deadline(start_server, tenant, start_hostile, mode):
    srv = start_server(TOKIOS_REQUEST_DEADLINE=f"{DEADLINE:g}")
    hostile = start_hostile(srv, tenant.token, mode)
    with ThreadPoolExecutor(2) as pool:
        streamed = pool.submit(post_streamed, srv, tenant.key, chat(tenant.model, stream=True), 15)
        whole = pool.submit(post, srv, tenant.key, chat(tenant.model, stream=False), 15)
        stream_response, events, stream_elapsed = streamed.result()
        whole_response, whole_elapsed = whole.result()
    print(
        f"\n{mode}: streamed request ended after {stream_elapsed:.2f}s, non-streamed after {whole_elapsed:.2f}s "
        f"(deadline {DEADLINE:g}s)"
    )

    assert stream_response.status_code == 200
    assert events and events[-1] != "[DONE]"
    assert events[-1]["error"]["code"] == "request_deadline", events[-3:]
    if mode == "drip":
        assert any(isinstance(e, dict) and e.get("choices") for e in events), "the drip never reached the client"
    assert DEADLINE - 0.5 <= stream_elapsed < DEADLINE + 2

    assert whole_response.status_code == 504, whole_response.text
    assert error_code(whole_response) == "request_deadline"
    assert DEADLINE - 0.5 <= whole_elapsed < DEADLINE + 2
    # The server told the connector to stop both requests (sent before the client's answer; the
    # connector's log line may land a moment after the client has it).
    deadline = time.monotonic() + 5
    while len(re.findall(r"^cancel ", hostile.output(), re.M)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(re.findall(r"^cancel ", hostile.output(), re.M)) == 2, hostile.output()


# --- raw HTTP clients --------------------------------------------------------------------------


def _raw_request(srv: Server, key: str, body: dict) -> bytes:
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + payload


async def _connect_small(srv: Server) -> socket.socket:
    """A client socket with a tiny receive buffer (set before connect: it sets the TCP window)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    # An internet-sized segment: over loopback (64 KiB segments) the server's kernel would size
    # its send buffer at megabytes and take in what the test means the server process to hold.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1400)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", srv.port))
    return sock


async def _read_all(sock: socket.socket, idle: float = 30.0) -> bytes:
    """Everything until the server closes (the requests say `Connection: close`)."""
    loop = asyncio.get_running_loop()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024 * 1024)  # no longer slow
    received = bytearray()
    while data := await asyncio.wait_for(loop.sock_recv(sock, 256 * 1024), idle):
        received += data
    return bytes(received)


async def _slow_reader(srv: Server, request: bytes, slow_until: float) -> bytes:
    """The worst client for the server's memory: it reads nothing for a while (the server's
    writes back up and its share of the tunnel fills), then a short burst (the server takes in
    what queued up and hands its credit back), then a few bytes four times a second until
    `slow_until`, then everything until the server closes."""
    loop = asyncio.get_running_loop()
    sock = await _connect_small(srv)
    try:
        await loop.sock_sendall(sock, request)
        await asyncio.sleep(STALL)
        received = bytearray()
        while len(received) < BURST:
            received += await asyncio.wait_for(loop.sock_recv(sock, BURST - len(received)), 10)
        while time.monotonic() < slow_until:
            received += await asyncio.wait_for(loop.sock_recv(sock, 16), 10)
            await asyncio.sleep(0.25)
        return bytes(received) + await _read_all(sock)
    finally:
        sock.close()


def _dechunk(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of an HTTP/1.1 response; AssertionError unless its chunked body
    ends with the last chunk."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    assert headers.get("transfer-encoding") == "chunked", headers
    parts, pos = [], 0
    while True:
        end = rest.find(b"\r\n", pos)
        assert end >= 0, "the chunked body was cut short"
        size = int(rest[pos:end].split(b";")[0], 16)
        if size == 0:
            return status, headers, b"".join(parts)
        parts.append(rest[end + 2 : end + 2 + size])
        pos = end + 2 + size + 2


# --- connectors that send too much --------------------------------------------------------------


def _warmed_server(start_server, tenant, start_hostile, **env: str) -> Server:
    """A server that has answered one whole (64 KiB) response of the huge connector, streamed and
    not, so that the baseline includes every code path the attack takes, but no megabytes of
    freed heap that the attack could reuse unseen."""
    srv = start_server(**env)
    warm = start_hostile(srv, tenant.token, "huge", "--total", str(64 * 1024))
    response, _ = post(srv, tenant.key, chat(tenant.model, stream=False))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "a" * 64 * 1024
    response, events, _ = post_streamed(srv, tenant.key, chat(tenant.model, stream=True))
    assert response.status_code == 200 and events[-1] == "[DONE]"
    warm.stop()
    seconds_until_offline(srv, tenant.key, tenant.model, time.monotonic())
    return srv


def _huge_server(start_server, tenant, start_hostile) -> Server:
    return _warmed_server(start_server, tenant, start_hostile, TOKIOS_MAX_RESPONSE_BYTES=str(MAX_RESPONSE))


def test_a_huge_non_streamed_response_is_refused_without_holding_it(start_server, tenant, start_hostile):
    srv = _huge_server(start_server, tenant, start_hostile)
    hostile = start_hostile(srv, tenant.token, "huge")
    with RssSampler(srv.proc.popen.pid) as memory:
        response, elapsed = post(srv, tenant.key, chat(tenant.model, stream=False))
        # The connector ignores the cancel and goes on as far as its credit lets it: it must starve.
        starved = wait_for_line(hostile, r"starved \S+ sent=(\d+)", timeout=5)
        time.sleep(0.5)  # the memory the server still holds, a moment after
    sent = int(starved.group(1))
    print(
        f"\nhuge, non-streamed: 502 after {elapsed:.2f}s; the connector sent {sent / MiB:.1f} MiB of its 300 MiB "
        f"before starving; server RSS {memory.baseline / MiB:.1f} MiB "
        f"(growth {memory.growth() / MiB:.1f} MiB, bound {HUGE_GROWTH_BOUND / MiB:.0f} MiB)"
    )
    assert response.status_code == 502, response.text
    assert error_code(response) == "response_too_large"
    assert elapsed < 5
    # Credit stopped at what the server read (the cap, plus one merged read) and one window more.
    assert sent <= MAX_RESPONSE + 2 * WINDOW_BYTES + 64 * 1024
    assert memory.growth() < HUGE_GROWTH_BOUND


def test_a_huge_streamed_event_is_refused_in_band_without_holding_it(start_server, tenant, start_hostile):
    srv = _huge_server(start_server, tenant, start_hostile)
    hostile = start_hostile(srv, tenant.token, "endless-event")
    with RssSampler(srv.proc.popen.pid) as memory:
        response, events, elapsed = post_streamed(srv, tenant.key, chat(tenant.model, stream=True))
        starved = wait_for_line(hostile, r"starved \S+ sent=(\d+)", timeout=5)
        time.sleep(0.5)
    sent = int(starved.group(1))
    print(
        f"\nendless SSE event, streamed: in-band error after {elapsed:.2f}s; the connector sent {sent / MiB:.1f} MiB; "
        f"server RSS growth {memory.growth() / MiB:.1f} MiB"
    )
    assert response.status_code == 200
    assert events and events[-1] != "[DONE]"
    assert events[-1]["error"]["code"] == "response_too_large"
    assert elapsed < 5
    assert sent <= MAX_RESPONSE + 2 * WINDOW_BYTES + 64 * 1024
    assert memory.growth() < HUGE_GROWTH_BOUND


def test_a_connector_that_outruns_its_credit_while_the_client_is_not_reading_is_disconnected(
    start_server, tenant, start_hostile
):
    srv = _huge_server(start_server, tenant, start_hostile)
    hostile = start_hostile(srv, tenant.token, "huge-ignore-credit")
    request = _raw_request(srv, tenant.key, chat(tenant.model, stream=True))

    async def stalled_client() -> tuple[bytes, float]:
        """Sends the request, reads nothing until the connector is closed, then everything."""
        sock = await _connect_small(srv)
        try:
            await asyncio.get_running_loop().sock_sendall(sock, request)
            started = time.monotonic()
            await asyncio.to_thread(wait_for_line, hostile, r"closed code=4002 ", 5)
            closed_after = time.monotonic() - started
            return await _read_all(sock), closed_after
        finally:
            sock.close()

    with RssSampler(srv.proc.popen.pid) as memory:
        raw, closed_after = asyncio.run(stalled_client())
    finished = wait_for_line(hostile, r"finished \S+ sent=(\d+) frames=(\d+) blocks=(\d+)")
    print(
        f"\nhuge-ignore-credit, client not reading: closed 4002 after {closed_after:.2f}s; the connector got "
        f"{int(finished.group(2))} frames ({int(finished.group(3))} blocks, {int(finished.group(1)) / MiB:.1f} MiB) "
        f"out; server RSS growth {memory.growth() / MiB:.1f} MiB"
    )
    # Nobody read, so no credit came back: the window was all it held, and it went past it.
    assert int(finished.group(3)) > DEFAULT_WINDOW
    assert closed_after < FAST
    status, _, payload = _dechunk(raw)
    assert status == 200
    events = sse_events(payload)
    assert events and events[-1] != "[DONE]"
    assert events[-1]["error"]["code"] == "connector_protocol_error"
    assert memory.growth() < HUGE_GROWTH_BOUND
    response, _ = post(srv, tenant.key, chat(tenant.model, stream=False))
    assert response.status_code == 503


def test_a_connector_that_sends_past_its_credit_after_a_cancel_is_disconnected(start_server, tenant, start_hostile):
    """The server cancels at the response cap and grants nothing more for that request, so a
    connector that goes on sending is past its credit: per the protocol that is a 4002, not
    hundreds of MiB of frames read and dropped."""
    srv = _huge_server(start_server, tenant, start_hostile)
    hostile = start_hostile(srv, tenant.token, "huge-ignore-credit")
    with RssSampler(srv.proc.popen.pid) as memory:
        response, elapsed = post(srv, tenant.key, chat(tenant.model, stream=False))
        cancelled = wait_for_line(hostile, r"cancel \S+ sent=(\d+)")
        # Whichever comes first: the server's close, or the end of all 300 MiB.
        end = wait_for_line(hostile, r"closed code=(\d+)|finished \S+ sent=(\d+)", timeout=20)
    sent_at_cancel = int(cancelled.group(1))
    print(
        f"\nhuge-ignore-credit, non-streamed: {response.status_code} {response.json()['error']['code']} after "
        f"{elapsed:.2f}s; cancelled at {sent_at_cancel / MiB:.1f} MiB sent; then: {end.group(0)}; "
        f"server RSS growth {memory.growth() / MiB:.1f} MiB"
    )
    assert response.status_code == 502, response.text
    assert error_code(response) in ("response_too_large", "connector_protocol_error")
    assert elapsed < FAST
    assert memory.growth() < HUGE_GROWTH_BOUND
    assert end.group(1) == "4002", (
        f"the server read and dropped {(int(end.group(2)) - sent_at_cancel) / MiB:.0f} MiB of chunk frames the "
        "connector sent for the request after it was cancelled, without disconnecting it"
    )


# --- slow clients -------------------------------------------------------------------------------


def _content(events: list) -> str:
    return "".join(
        e["choices"][0]["delta"].get("content") or "" for e in events if isinstance(e, dict) and e.get("choices")
    )


def _slow_streams(srv: Server, key: str, body: dict) -> tuple[list[tuple[dict[str, str], bytes]], int, float]:
    """SLOW_STREAMS slow readers of the same streamed request: each one's headers and body, the
    server's RSS growth while they trickled, and the seconds until all had read everything."""

    async def run_all(slow_until: float) -> list[bytes]:
        request = _raw_request(srv, key, body)
        return await asyncio.gather(*(_slow_reader(srv, request, slow_until) for _ in range(SLOW_STREAMS)))

    with RssSampler(srv.proc.popen.pid) as memory:
        started = time.monotonic()
        slow_until = started + SLOW_SECONDS
        raws = asyncio.run(run_all(slow_until))
        took = time.monotonic() - started
    results = []
    for raw in raws:
        status, headers, payload = _dechunk(raw)
        assert status == 200, payload[:500]
        results.append((headers, payload))
    return results, memory.growth(until=slow_until), took


def _report(what: str, size: int, growth: int, bound: int, took: float) -> None:
    print(
        f"\nslow readers, {what}: {SLOW_STREAMS} streams of {size / MiB:.1f} MiB; server RSS +{growth / MiB:.1f} MiB "
        f"while they trickled = {growth / SLOW_STREAMS / MiB:.2f} MiB per stream (bound {bound / MiB:.2f}); "
        f"all read to the end {took:.1f}s after they started"
    )


def test_slow_readers_of_a_long_answer_cost_the_server_little_and_still_get_everything(
    start_server, tenant, start_connector
):
    """The real connector and the fake upstream: a model's answer is many small events, a block of
    credit each, so the window's 256 blocks hold far less than 1 MiB of it; and the connector
    stops reading the upstream meanwhile."""
    srv = start_server()
    connector = start_connector(tenant.token, srv=srv)
    # Warm-up: every code path once, with a short answer: a long one would leave megabytes of
    # freed heap behind for the slow streams to reuse, hiding what they cost.
    response, events, _ = post_streamed(srv, tenant.key, chat(tenant.model, stream=True, text="hi [[words=50]]"))
    assert response.status_code == 200 and events[-1] == "[DONE]"

    body = chat(tenant.model, stream=True, text=f"a long answer [[words={SLOW_WORDS}]]")
    results, growth, took = _slow_streams(srv, tenant.key, body)
    expected = " ".join(f"w{i}" for i in range(SLOW_WORDS))
    _report("a long answer (real connector)", len(results[0][1]), growth, SLOW_STREAM_BOUND, took)
    assert growth < SLOW_STREAMS * SLOW_STREAM_BOUND, f"{growth / SLOW_STREAMS / MiB:.2f} MiB per slow stream"
    log = connector.output()
    for headers, payload in results:
        events = sse_events(payload)
        assert events[-1] == "[DONE]"
        assert _content(events) == expected
        # The readers were slow enough for the backpressure to reach the connector.
        line = re.search(rf"req {re.escape(headers['x-request-id'])} .*", log)
        assert line and "waited for credit" in line.group(0), line.group(0) if line else log[-2000:]


def test_slow_readers_of_full_frames_cost_the_server_at_most_a_window_each(start_server, tenant, start_hostile):
    """The worst case for the window: a connector (honouring its credit) whose every frame is a
    full 16 KiB SSE event, 4 blocks each, so the 256 blocks in flight are 64 frames, 1 MiB, per
    stream."""
    srv = _warmed_server(start_server, tenant, start_hostile)
    start_hostile(srv, tenant.token, "huge", "--total", str(SLOW_HUGE_TOTAL))
    events_per_stream = SLOW_HUGE_TOTAL // MAX_CHUNK_PAYLOAD
    expected = "a" * (events_per_stream * (MAX_CHUNK_PAYLOAD - len(EVENT_HEAD) - len(EVENT_TAIL)))

    results, growth, took = _slow_streams(srv, tenant.key, chat(tenant.model, stream=True))
    _report("16 KiB frames (hostile connector honouring credit)", len(results[0][1]), growth, FULL_FRAMES_BOUND, took)
    assert growth < SLOW_STREAMS * FULL_FRAMES_BOUND, f"{growth / SLOW_STREAMS / MiB:.2f} MiB per slow stream"
    for _, payload in results:
        events = sse_events(payload)
        assert events[-1] == "[DONE]"
        assert _content(events) == expected
