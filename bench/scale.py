"""Scale benchmark: many concurrent streams through N server processes and M connectors.

    .venv/bin/python bench/scale.py [--processes 2] [--connectors 4] [--streams 1000]
                                    [--stream-seconds 8] [--slow-readers 0] [--timeout SECONDS]
                                    [--code DIR]

Starts the production topology on this machine (bench/stack.py): a fresh PostgreSQL database
(BENCH_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/tokios_scale; dropped at the end),
a Redis database (BENCH_REDIS_URL, default redis://127.0.0.1:6379/10; flushed at the start), the
fake upstream, N uvicorn processes and M connectors attached round-robin. Then it opens S
streaming /v1/chat/completions requests at once, round-robin over the processes, so that many
land on a process that does not hold the connector the router picks and go through the channel
layer. Each stream lasts --stream-seconds: `words` chunks `--chunk-ms` apart (the fake upstream's
directives). Every stream is checked: status 200, every word once, `[DONE]` at the end.

Reported: ok / failed (by status and error code) / hung (no end within --timeout), p50/p99 total
time and time to first byte of the good streams; memory idle, before the streams, at peak (sampled
every 0.2 s) and after: RSS per server process, the connectors' RSS, Redis's used_memory and the
kernel's TCP queues on the servers' sockets and their peers' (a loopback socket's send buffer
grows to megabytes, outside any RSS); server CPU seconds; memory per open stream = (peak of the
servers' summed RSS − their RSS before) / S; and how many calls reached the fake upstream (more
than requests: some ran twice). With --slow-readers K, K more streams of --slow-words chunks with
no delay are opened first, read 16 bytes a second through a small receive buffer, and left open
until the end; once the servers and connectors are idle (at most 30 s), what is held for clients
that cannot keep up shows as growth per slow reader in server RSS, Redis and the kernel's queues.
--code DIR runs the processes from another tree, to measure the code before a change.

Exits 1 when any of the S streams failed or hung. Every process it starts is stopped with its
process group on every exit, Ctrl-C and SIGTERM included. `Stack`, `Load` and `run_load` are
reused by tests/e2e/test_scale.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/scale.py`: make `bench.stack` importable
    sys.path.insert(0, str(ROOT))
from bench.stack import MODEL, Stack, cpu_seconds, tcp_queues  # noqa: E402

SLOW_READ_BYTES = 16  # what a slow reader takes each second
SLOW_RECEIVE_BUFFER = 4096  # Linux doubles it and keeps a floor of a few KiB
MIB = 1024 * 1024


@dataclass(slots=True)
class Load:
    streams: int = 1000
    stream_seconds: float = 8.0
    chunk_ms: int = 250
    slow_readers: int = 0
    slow_words: int = 5000
    timeout: float = 0.0  # per stream; 0: 3 x stream_seconds + 30

    @property
    def words(self) -> int:
        return max(1, min(100_000, round(self.stream_seconds * 1000 / max(1, self.chunk_ms))))

    @property
    def deadline(self) -> float:
        return self.timeout or 3 * self.stream_seconds + 30


@dataclass(slots=True)
class Outcome:
    kind: str  # "ok", "hung", or what failed: "503 connector_offline", "200 truncated", "conn ..."
    seconds: float
    first_byte: float | None = None
    hung_mid_stream: bool = False  # hung after the response head arrived


@dataclass(slots=True)
class Memory:
    servers: list[int]  # RSS per server process
    connectors: int  # RSS summed over the connectors
    redis: int  # Redis used_memory
    tcp_servers: int  # kernel TCP queues of the servers' sockets
    tcp_peers: int  # ... and of their peers' (connectors, clients)

    @classmethod
    def of(cls, stack: Stack) -> Memory:
        tcp = tcp_queues(set(stack.ports))
        return cls(stack.server_rss(), stack.connector_rss(), stack.redis_memory(), *tcp)


class Peak:
    """Largest values seen, sampled every 0.2 s: per server, the servers' sum at one instant,
    the connectors, Redis."""

    def __init__(self, start: Memory):
        self.memory = Memory(list(start.servers), start.connectors, start.redis, start.tcp_servers, start.tcp_peers)
        self.servers_sum = sum(start.servers)

    def add(self, now: Memory) -> None:
        self.memory.servers = [max(a, b) for a, b in zip(self.memory.servers, now.servers, strict=True)]
        self.servers_sum = max(self.servers_sum, sum(now.servers))
        self.memory.connectors = max(self.memory.connectors, now.connectors)
        self.memory.redis = max(self.memory.redis, now.redis)
        self.memory.tcp_servers = max(self.memory.tcp_servers, now.tcp_servers)
        self.memory.tcp_peers = max(self.memory.tcp_peers, now.tcp_peers)

    async def sample(self, stack: Stack, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.add(Memory.of(stack))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
        self.add(Memory.of(stack))


@dataclass
class Report:
    load: Load
    processes: int
    connectors: int
    outcomes: list[Outcome]
    idle: Memory
    before: Memory  # just before the S streams: idle plus the slow readers
    peak: Peak
    after: Memory
    cpu: list[float]  # server CPU seconds while the S streams ran
    log_errors: list[int]
    wall: float
    settled: tuple[float, bool] = (0.0, True)  # seconds the slow readers had; whether things came to rest
    slow: Counter = field(default_factory=Counter)
    upstream: dict = field(default_factory=dict)  # the fake upstream's counters at the end
    upstream_calls: int = 0  # chat completions the fake upstream started during the load

    @property
    def ok(self) -> int:
        return sum(o.kind == "ok" for o in self.outcomes)

    @property
    def hung(self) -> int:
        return sum(o.kind == "hung" for o in self.outcomes)

    @property
    def failed(self) -> Counter:
        return Counter(o.kind for o in self.outcomes if o.kind not in ("ok", "hung"))

    @property
    def per_stream(self) -> float:
        """Bytes of server RSS per open stream."""
        return (self.peak.servers_sum - sum(self.before.servers)) / max(1, self.load.streams)

    @property
    def per_slow_reader(self) -> float:
        return (sum(self.before.servers) - sum(self.idle.servers)) / max(1, self.load.slow_readers)

    def table(self) -> str:
        load = self.load
        times = sorted(o.seconds for o in self.outcomes if o.kind == "ok")
        ttfb = sorted(o.first_byte for o in self.outcomes if o.kind == "ok" and o.first_byte is not None)
        hung_mid = sum(o.hung_mid_stream for o in self.outcomes if o.kind == "hung")
        lines = [
            f"scale: {self.processes} processes, {self.connectors} connectors, {load.streams} streams of {load.words} "
            f"chunks {load.chunk_ms} ms apart (~{load.stream_seconds:g} s), {load.slow_readers} slow readers, "
            f"timeout {load.deadline:g} s; the streams took {self.wall:.1f} s",
            "",
            f"  {'streams':>8} {'ok':>6} {'failed':>7} {'hung':>6} {'p50 s':>7} {'p99 s':>7} {'TTFB p50':>9} {'TTFB p99':>9}",
            f"  {load.streams:>8} {self.ok:>6} {sum(self.failed.values()):>7} {self.hung:>6} {quantile(times, 0.5):>7.2f}"
            f" {quantile(times, 0.99):>7.2f} {quantile(ttfb, 0.5):>9.2f} {quantile(ttfb, 0.99):>9.2f}",
        ]
        lines += [f"    failed {count:>5}  {kind}" for kind, count in self.failed.most_common()]
        if self.hung:
            lines.append(
                f"    hung   {self.hung:>5}  ({self.hung - hung_mid} before the response head, {hung_mid} mid-stream)"
            )
        lines += [
            "",
            f"  {'MiB':24} {'idle':>7} {'before':>7} {'peak':>7} {'after':>7} {'CPU s':>6} {'log errors':>10}",
        ]
        rows: list[tuple[str, Callable[[Memory], int], str]] = [
            (f"server {i} RSS", lambda m, i=i: m.servers[i], f" {self.cpu[i]:>6.1f} {self.log_errors[i]:>10}")
            for i in range(self.processes)
        ]
        rows += [
            ("servers RSS (sum)", lambda m: sum(m.servers), f" {sum(self.cpu):>6.1f}"),
            ("connectors RSS (sum)", lambda m: m.connectors, ""),
            ("Redis used_memory", lambda m: m.redis, "  (whole Redis server)"),
            ("TCP queues, servers'", lambda m: m.tcp_servers, "  (kernel: send + receive)"),
            ("TCP queues, peers'", lambda m: m.tcp_peers, "  (connectors', clients')"),
        ]
        for name, value, extra in rows:
            # The servers' peak is the largest sum seen at one instant, not the sum of their peaks.
            peak = self.peak.servers_sum if name.startswith("servers RSS") else value(self.peak.memory)
            figures = (value(self.idle), value(self.before), peak, value(self.after))
            lines.append(f"  {name:24}" + "".join(f" {x / MIB:>7.1f}" for x in figures) + extra)
        lines += [
            "",
            f"  memory per open stream: {self.per_stream / 1024:.1f} KiB = (servers' peak RSS sum − RSS before the "
            f"streams) / {load.streams}",
        ]
        if load.slow_readers:
            k = load.slow_readers
            lines.append(
                f"  slow readers: {k} streams of {load.slow_words} chunks read {SLOW_READ_BYTES} B/s; growth per slow "
                f"reader: server RSS {self.per_slow_reader / 1024:.1f} KiB, Redis "
                f"{(self.before.redis - self.idle.redis) / k / 1024:.1f} KiB, kernel TCP queues "
                f"{(self.before.tcp_servers + self.before.tcp_peers - self.idle.tcp_servers - self.idle.tcp_peers) / k / 1024:.1f} KiB"
            )
            ends = ", ".join(f"{name} {count}" for name, count in sorted(self.slow.items()))
            seconds, at_rest = self.settled
            state = "at rest" if at_rest else "still busy (not idle)"
            lines.append(
                f"    measured {seconds:.0f} s after they opened, servers and connectors {state}; ends: {ends}"
            )
        extra = self.upstream_calls - load.streams - load.slow_readers
        lines.append(
            f"  fake upstream: {self.upstream_calls} calls for {load.streams + load.slow_readers} requests"
            + (f" ({extra:+} — requests that reached the upstream more than once, or never)" if extra else "")
            + "; since start: "
            + ", ".join(f"{k} {self.upstream.get(k)}" for k in ("started", "completed", "aborted", "failed"))
        )
        return "\n".join(lines)


def quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def request_bytes(port: int, key: str, content: str) -> bytes:
    body = json.dumps({"model": MODEL, "stream": True, "messages": [{"role": "user", "content": content}]}).encode()
    # Connection: close: the server closes the socket after the response, so the end is EOF.
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """An HTTP/1.1 chunked body → (payload, whether the terminating chunk arrived)."""
    out, pos = [], 0
    while True:
        end = body.find(b"\r\n", pos)
        if end < 0:
            return b"".join(out), False
        try:
            size = int(body[pos:end].split(b";")[0], 16)
        except ValueError:
            return b"".join(out), False
        if size == 0:
            return b"".join(out), True
        out.append(body[end + 2 : end + 2 + size])
        if end + 2 + size > len(body):
            return b"".join(out), False
        pos = end + 4 + size


def judge(raw: bytes, words: int) -> str:
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return "conn closed before the response head"
    if not sep:
        return "conn closed before the response head"
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
    complete = True
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        body, complete = dechunk(body)
    if status != 200:
        try:
            error = json.loads(body)["error"]
            return f"{status} {error.get('code') or error.get('type') or str(error.get('message', ''))[:60]}"
        except (ValueError, KeyError, TypeError, AttributeError):
            return f"{status} {body[:60]!r}"
    # Every word once, and [DONE] at the end: nothing lost, nothing cut short.
    if complete and body.rstrip().endswith(b"data: [DONE]") and body.count(b'"content":" w') == words - 1:
        return "ok"
    if b'"error"' in body:
        match = re.search(rb'"(?:code|message)":\s*"([^"]{0,60})', body)
        return f"200 in-band error {match.group(1).decode(errors='replace') if match else ''}".rstrip()
    return "200 truncated" if not complete or b"[DONE]" not in body else "200 chunks missing"


async def one_stream(port: int, request: bytes, words: int, timeout: float) -> Outcome:
    started = time.perf_counter()
    first_byte: float | None = None
    parts: list[bytes] = []
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            await writer.drain()
            while data := await reader.read(65536):
                if first_byte is None:
                    first_byte = time.perf_counter() - started
                parts.append(data)
    except TimeoutError:
        head_seen = b"\r\n\r\n" in b"".join(parts)
        return Outcome("hung", time.perf_counter() - started, first_byte, hung_mid_stream=head_seen)
    except OSError as exc:
        return Outcome(f"conn {type(exc).__name__}", time.perf_counter() - started, first_byte)
    finally:
        if writer is not None:
            writer.close()
    return Outcome(judge(b"".join(parts), words), time.perf_counter() - started, first_byte)


async def slow_reader(port: int, request: bytes, stop: asyncio.Event, tally: Counter) -> None:
    """Send the request, then take SLOW_READ_BYTES a second through a small receive buffer until `stop`."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RECEIVE_BUFFER)
    sock.setblocking(False)
    writer = None
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)), 30)
        # limit=1024: the stream reader stops taking bytes off the socket at 2 KiB buffered.
        reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
        writer.write(request)
        await writer.drain()
        head = b""
        while not stop.is_set():
            try:  # a stalled server sends nothing: look at `stop` again every second
                data = await asyncio.wait_for(reader.read(SLOW_READ_BYTES), 1.0)
            except TimeoutError:
                continue
            if not data:
                tally["ended by the server"] += 1
                return
            if len(head) < 12 <= len(head) + len(data):
                tally[f"status {(head + data)[9:12].decode(errors='replace')}"] += 1
            head = (head + data)[:12]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        tally["still open at the end" if head else "still open, nothing received"] += 1
    except (OSError, TimeoutError) as exc:
        tally[f"conn {type(exc).__name__}"] += 1
    finally:
        if writer is not None:
            writer.close()
        else:
            sock.close()


async def settle(stack: Stack, longest: float) -> tuple[float, bool]:
    """Wait until the slow readers' streams are as far through the tunnel as they will get: the
    servers and connectors idle for a second (an unbounded tunnel pushes everything through, one
    with flow control stops at its window), at most `longest` seconds. Returns the time taken and
    whether they came to rest (the kernel's send buffers of a slow client's socket keep growing,
    up to net.ipv4.tcp_wmem's maximum, and data keeps flowing into them meanwhile)."""
    pids = [c.pid for c in stack.servers + stack.connector_procs]
    started = time.monotonic()
    await asyncio.sleep(2)
    while time.monotonic() < started + longest:
        used = sum(cpu_seconds(pid) for pid in pids)
        await asyncio.sleep(1)
        if sum(cpu_seconds(pid) for pid in pids) - used < 0.02 * len(pids):
            return time.monotonic() - started, True
    return time.monotonic() - started, False


async def run_load(stack: Stack, load: Load) -> Report:
    n = stack.processes
    await asyncio.sleep(1)
    idle = Memory.of(stack)
    calls_before = stack.upstream_stats().get("started", 0)
    stop_slow = asyncio.Event()
    slow_tally: Counter = Counter()
    settled = (0.0, True)
    slow_content = f"slow [[words={load.slow_words}]]"
    slow_tasks = [
        asyncio.create_task(
            slow_reader(
                stack.ports[i % n], request_bytes(stack.ports[i % n], stack.key, slow_content), stop_slow, slow_tally
            )
        )
        for i in range(load.slow_readers)
    ]
    try:
        if slow_tasks:
            settled = await settle(stack, max(30.0, 2 * load.stream_seconds))
        before = Memory.of(stack)
        peak = Peak(before)
        cpu_before = [cpu_seconds(s.pid) for s in stack.servers]
        stop_sampling = asyncio.Event()
        sampler = asyncio.create_task(peak.sample(stack, stop_sampling))
        content = f"scale [[words={load.words} delay_ms={load.chunk_ms}]]"
        started = time.monotonic()
        try:
            outcomes = await asyncio.gather(
                *(
                    one_stream(
                        stack.ports[i % n],
                        request_bytes(stack.ports[i % n], stack.key, content),
                        load.words,
                        load.deadline,
                    )
                    for i in range(load.streams)
                )
            )
        finally:
            stop_sampling.set()
            await sampler
        wall = time.monotonic() - started
        cpu = [cpu_seconds(s.pid) - c for s, c in zip(stack.servers, cpu_before, strict=True)]
    finally:
        stop_slow.set()
        if slow_tasks:
            _, pending = await asyncio.wait(slow_tasks, timeout=10)
            for task in pending:
                task.cancel()
    await asyncio.sleep(2)  # time for the servers to see the closed sockets and let go
    return Report(
        load=load,
        processes=n,
        connectors=stack.connectors,
        outcomes=outcomes,
        idle=idle,
        before=before,
        peak=peak,
        after=Memory.of(stack),
        cpu=cpu,
        log_errors=[s.errors() for s in stack.servers],
        wall=wall,
        settled=settled,
        slow=slow_tally,
        upstream=(upstream := stack.upstream_stats()),
        upstream_calls=upstream.get("started", 0) - calls_before,
    )


def raise_fd_limit(needed: int) -> None:
    """Every stream is a socket here and one in a server; the children inherit the raised limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            print(f"warning: file descriptors limited to {target} (the hard limit); {needed} wanted", file=sys.stderr)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM takes Ctrl-C's clean-up path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--connectors", type=int, default=4)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--stream-seconds", type=float, default=8.0)
    parser.add_argument("--chunk-ms", type=int, default=250, help="time between chunks (so the chunk count)")
    parser.add_argument("--slow-readers", type=int, default=0)
    parser.add_argument("--slow-words", type=int, default=5000, help="chunks in a slow reader's stream, ~190 B each")
    parser.add_argument("--timeout", type=float, default=0.0, help="per stream (default 3 x stream-seconds + 30)")
    parser.add_argument("--code", type=Path, default=ROOT, metavar="DIR", help="run the processes from this tree")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs when all went well")
    args = parser.parse_args()
    if not (
        1 <= args.processes <= 64
        and 1 <= args.connectors <= 256
        and 1 <= args.streams <= 20_000
        and 0 <= args.slow_readers <= 2_000
        and 0 < args.stream_seconds <= 600
        and 1 <= args.chunk_ms <= 60_000
        and 1 <= args.slow_words <= 1_000_000
        and 0 <= args.timeout <= 3600
    ):
        parser.error(
            "out of range: processes 1..64, connectors 1..256, streams 1..20000, slow readers 0..2000, "
            "stream seconds 0..600, chunk ms 1..60000, slow words 1..1000000, timeout 0..3600"
        )
    load = Load(
        streams=args.streams,
        stream_seconds=args.stream_seconds,
        chunk_ms=args.chunk_ms,
        slow_readers=args.slow_readers,
        slow_words=args.slow_words,
        timeout=args.timeout,
    )
    raise_fd_limit(2 * (args.streams + args.slow_readers) + 1024)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (`&`)
    stack = Stack(
        database_url=os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/tokios_scale"),
        redis_url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10"),
        processes=args.processes,
        connectors=args.connectors,
        max_concurrency=args.streams + args.slow_readers + 16,
        code_dir=args.code,
    )
    failed = True
    try:
        with stack:
            print(
                f"stack up from {stack.code_dir}: servers on ports {stack.ports}, connectors on servers "
                f"{stack.connector_server}",
                flush=True,
            )
            report = asyncio.run(run_load(stack, load))
        print(report.table())
        failed = bool(report.failed) or report.hung > 0
    except KeyboardInterrupt:
        print("interrupted; every process it started is stopped", file=sys.stderr)
        return 130
    finally:
        if failed or args.keep_logs:
            print(f"logs: {stack.log_dir}", file=sys.stderr)
        else:
            stack.cleanup()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
