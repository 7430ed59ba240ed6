"""Tunnel benchmark: direct-to-upstream vs through Tokios, on this machine, in one run.

    .venv/bin/python bench/tunnel.py [--duration 10] [--modes embedded,redis] [--metering both]

Starts the fake upstream (the labelled test double, zero think time), a Tokios uvicorn process and
one connector per mode, then measures with wrk (Debian's `wrk`, installed by `apt-get install wrk`):
- non-streaming latency p50/p99 at c=1 and requests/s at c=32, direct vs through Tokios;
- streamed chunks/s through one connector (wrk on a 1,000-chunk stream, c=8);
- added time to first chunk (sequential streaming requests, median);
- CPU time per request of the server and the connector (from /proc, during the c=32 run).
`--metering both` runs each mode with metering and limits on and off: both stacks start side by side,
each is measured once, then `--rounds` rotating c=32/c=1 runs give the cost as the median of
per-round losses with a 95 % interval (this machine's speed drifts by ±20 % over minutes; pairing
cancels it). `--control` adds a second "off" stack to every round: its "loss" is the method's own
noise. Redis mode uses BENCH_REDIS_URL (default redis://127.0.0.1:6379/9; the stacks side by side
take the next database numbers) and BENCH_DATABASE_URL (default
postgres://postgres@127.0.0.1:5432/tokios_bench; the others get _1, _2 suffixes).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wrk(url: str, *, connections: int, duration: int, body: str, key: str | None) -> dict:
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    auth = f'wrk.headers["Authorization"] = "Bearer {key}"\n' if key else ""
    script.write(
        f'wrk.method = "POST"\nwrk.body = [==[{body}]==]\nwrk.headers["Content-Type"] = "application/json"\n{auth}'
    )
    script.close()
    out = subprocess.run(
        [
            "wrk",
            "-t",
            "2" if connections > 1 else "1",
            "-c",
            str(connections),
            "-d",
            f"{duration}s",
            "--latency",
            "-s",
            script.name,
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(script.name)

    def ms(label: str) -> float:
        m = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return {
        "p50": ms("50"),
        "p99": ms("99"),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "requests": requests,
        "errors": int(errors.group(1)) if errors else 0,
    }


async def first_chunk_ms(url: str, key: str | None, body: bytes, n: int) -> float:
    host, port = url.split("//")[1].split("/")[0].split(":")
    path = "/" + url.split("//")[1].split("/", 1)[1]
    samples = []
    for _ in range(n):
        reader, writer = await asyncio.open_connection(host, int(port))
        headers = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        )
        if key:
            headers += f"Authorization: Bearer {key}\r\n"
        started = time.perf_counter()
        writer.write(headers.encode() + b"\r\n" + body)
        await writer.drain()
        buf = b""
        while b'"content":"w' not in buf:  # the first chunk that carries a token
            data = await reader.read(65536)
            if not data:
                break
            buf += data
        samples.append((time.perf_counter() - started) * 1000)
        writer.close()
    return statistics.median(samples)


class Stack:
    def __init__(self, mode: str, metering: bool, upstream: str, slot: int = 0, root: Path = ROOT, **extra_env: str):
        """`slot` keeps stacks that run side by side apart (own database and Redis database);
        `root` is the source tree the stack runs (another checkout, for --baseline)."""
        self.mode, self.metering = mode, metering
        self.data = Path(tempfile.mkdtemp(prefix=f"tokios-bench-{mode}-"))
        self.env = {
            **os.environ,
            "TOKIOS_DATA_DIR": str(self.data),
            "TOKIOS_HTTPS": "0",
            "TOKIOS_METERING": "1" if metering else "0",
            "TOKIOS_LIMITS": "1" if metering else "0",
        }
        self.env.pop("DATABASE_URL", None)
        self.env.pop("REDIS_URL", None)
        self.env.update(extra_env)
        if mode == "redis":
            redis_base = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
            redis_db = int(redis_base.rsplit("/", 1)[1]) + slot
            db_base = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/tokios_bench")
            db_name = f"{db_base.rsplit('/', 1)[1]}_{slot}" if slot else db_base.rsplit("/", 1)[1]
            self.env["REDIS_URL"] = f"{redis_base.rsplit('/', 1)[0]}/{redis_db}"
            self.env["DATABASE_URL"] = f"{db_base.rsplit('/', 1)[0]}/{db_name}"
            psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc"]
            subprocess.run([*psql, f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"], capture_output=True)
            subprocess.run([*psql, f"CREATE DATABASE {db_name}"], check=True, capture_output=True)
            subprocess.run(["redis-cli", "-n", str(redis_db), "flushdb"], capture_output=True)

        def manage(*a: str) -> str:
            out = subprocess.run(
                [PY, "manage.py", *a], cwd=root, env=self.env, check=True, capture_output=True, text=True
            )
            return out.stdout.strip().splitlines()[-1]

        manage("migrate")
        manage("create_org", "bench")
        self.token = manage(
            "create_deployment", "bench-model", "--org", "bench", "--price-input", "1", "--price-output", "2"
        )
        # Limits and a budget far above what the benchmark sends: enforced (and paid for) but never hit.
        self.key = manage(
            "create_key",
            "--org",
            "bench",
            "--name",
            "bench",
            "--rpm",
            "100000000",
            "--tpm",
            "1000000000",
            "--budget",
            "1000000",
        )
        self.port = free_port()
        self.server = subprocess.Popen(
            [
                PY,
                "-m",
                "uvicorn",
                "tokios_site.asgi:application",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                "--no-access-log",
                "--http",
                "httptools",
                "--loop",
                "uvloop",
            ],
            cwd=root,
            env=self.env,
        )
        wait_http(f"http://127.0.0.1:{self.port}/healthz")
        self.connector = subprocess.Popen(
            [
                PY,
                "-m",
                "tokios_connector",
                "--server",
                f"http://127.0.0.1:{self.port}",
                "--token",
                self.token,
                "--upstream",
                upstream,
                "--max-concurrency",
                "512",
                "--log-level",
                "warning",
            ],
            cwd=root,
            env=self.env,
        )
        self.url = f"http://127.0.0.1:{self.port}/v1/chat/completions"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            r = httpx.post(
                self.url,
                json={"model": "bench-model", "messages": [{"role": "user", "content": "hi"}]},
                headers={"authorization": f"Bearer {self.key}"},
            )
            if r.status_code == 200:
                return
            time.sleep(0.2)
        raise SystemExit(f"{mode}: the tunnel did not come up: {r.status_code} {r.text}")

    def stop(self) -> None:
        for proc in (self.connector, self.server):
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(self.data, ignore_errors=True)


PLAIN = '{"model":"bench-model","messages":[{"role":"user","content":"hi"}]}'
STREAM = '{"model":"bench-model","stream":true,"messages":[{"role":"user","content":"go [[words=1000]]"}]}'
FIRST = b'{"model":"bench-model","stream":true,"messages":[{"role":"user","content":"go [[words=2]]"}]}'


def measure(url: str, key: str | None, duration: int, pids: list[int]) -> dict:
    c1 = wrk(url, connections=1, duration=duration, body=PLAIN, key=key)
    before = [cpu_seconds(p) for p in pids]
    c32 = wrk(url, connections=32, duration=duration, body=PLAIN, key=key)
    cpu = [cpu_seconds(p) - b for p, b in zip(pids, before, strict=True)]
    stream = wrk(url, connections=8, duration=duration, body=STREAM, key=key)
    ttfc = asyncio.run(first_chunk_ms(url, key, FIRST, 200))
    return {
        "c1_p50": c1["p50"],
        "c1_p99": c1["p99"],
        "c1_rps": c1["rps"],
        "c32_p50": c32["p50"],
        "c32_p99": c32["p99"],
        "c32_rps": c32["rps"],
        "errors": c1["errors"] + c32["errors"] + stream["errors"],
        "chunks_per_s": stream["rps"] * 1002,  # 1000 words + role chunk + finish chunk per stream
        "ttfc_ms": ttfc,
        "cpu_ms_per_req": [1000 * c / max(1, c32["requests"]) for c in cpu],
    }


SERVICES = ("redis-server", "postgres")


def service_cpu() -> dict[str, float]:
    """CPU seconds used so far by every Redis and PostgreSQL process on this machine, and by the machine."""
    used = {name: 0.0 for name in SERVICES}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                comm = (entry / "comm").read_text().strip()
                name = next((n for n in SERVICES if comm.startswith(n)), None)
                if name:
                    used[name] += cpu_seconds(int(entry.name))
            except (OSError, IndexError):
                continue  # a process that ended meanwhile
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    used["machine"] = (sum(fields) - fields[3] - fields[4]) / TICK  # all but idle and iowait
    return used


def c32_with_cpu(stack: Stack, duration: int) -> tuple[float, dict[str, float]]:
    """Requests/s at c=32 and CPU µs per request of each part (the other stack idles meanwhile)."""
    before = {"server": cpu_seconds(stack.server.pid), "connector": cpu_seconds(stack.connector.pid), **service_cpu()}
    result = wrk(stack.url, connections=32, duration=duration, body=PLAIN, key=stack.key)
    after = {"server": cpu_seconds(stack.server.pid), "connector": cpu_seconds(stack.connector.pid), **service_cpu()}
    return result["rps"], {k: 1e6 * (after[k] - before[k]) / max(1, result["requests"]) for k in before}


def median_ci(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval for the median: the order statistics whose ranks a
    binomial(n, 1/2) puts `level` between (no assumption about how the rounds scatter). With fewer
    than 6 values no such pair exists, and the whole range is returned."""
    xs = sorted(values)
    n = len(xs)
    if n < 6:
        return xs[0], xs[-1]
    cdf = [sum(math.comb(n, i) for i in range(k + 1)) / 2**n for k in range(n + 1)]
    lower = max(k for k in range(n // 2 + 1) if cdf[k] <= (1 - level) / 2)  # P(X <= k) within the tail
    return xs[lower], xs[n - 1 - lower]


def paired(stacks: dict[str, Stack], rounds: int, seconds: int) -> dict:
    """Metering+limits off vs on (or, with --baseline, the baseline tree vs this one), side by side:
    the stacks run at once and c=32 / c=1 runs rotate between them, so that drifts in this shared
    machine's speed hit all alike. Medians per side, and per-round throughput losses against "off"
    with the median and its 95 % interval. A second "off" stack ("control"), if given, measures the
    method's own noise: its loss should be ~0."""
    names = list(stacks)
    runs: dict[str, dict[str, list]] = {side: {"rps": [], "p50": [], "cpu": []} for side in names}
    losses: dict[str, list[float]] = {side: [] for side in names if side != "off"}
    if "control" in stacks:
        losses["on vs both off"] = []  # the on stack against the mean of the two off stacks
    for i in range(rounds):
        order = names[i % len(names) :] + names[: i % len(names)]
        if (i // len(names)) % 2:
            order.reverse()
        this_round = {}
        for name in order:
            stack = stacks[name]
            this_round[name], cpu = c32_with_cpu(stack, seconds)
            runs[name]["rps"].append(this_round[name])
            runs[name]["cpu"].append(cpu)
            runs[name]["p50"].append(
                wrk(stack.url, connections=1, duration=max(1, seconds // 2), body=PLAIN, key=stack.key)["p50"]
            )
        for side in names:
            if side != "off":
                losses[side].append(1 - this_round[side] / this_round["off"])
        if "control" in stacks:
            losses["on vs both off"].append(1 - 2 * this_round["on"] / (this_round["off"] + this_round["control"]))
    return {
        "rps": {side: statistics.median(runs[side]["rps"]) for side in names},
        "p50": {side: statistics.median(runs[side]["p50"]) for side in names},
        "loss": {side: statistics.median(values) for side, values in losses.items()},
        "ci": {side: median_ci(values) for side, values in losses.items()},
        "losses": {side: sorted(values) for side, values in losses.items()},
        "cpu": {
            side: {part: statistics.median(c[part] for c in runs[side]["cpu"]) for part in runs[side]["cpu"][0]}
            for side in names
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--modes", default="embedded,redis")
    parser.add_argument("--metering", choices=["on", "off", "both"], default="on")
    parser.add_argument("--rounds", type=int, default=8, help="rotating rounds for --metering both")
    parser.add_argument(
        "--round-seconds", type=int, default=0, help="c=32 seconds per stack and round (default: duration/2)"
    )
    parser.add_argument(
        "--control", action="store_true", help="with --metering both: a second 'off' stack, an A/A check of the method"
    )
    parser.add_argument("--skip-table", action="store_true", help="with --metering both: only the paired rounds")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (e.g. `git worktree add /tmp/before <commit>`): with --metering both, its stacks "
        "take the places of 'off' (and 'control') and this tree's the place of 'on', all with metering on, "
        "so the rounds compare the two trees side by side",
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    up_port = free_port()
    upstream = subprocess.Popen([PY, "-m", "tests.fakes.fake_upstream", "--port", str(up_port)], cwd=ROOT)
    wait_http(f"http://127.0.0.1:{up_port}/_fake/stats")
    direct_url = f"http://127.0.0.1:{up_port}/v1/chat/completions"
    costs = {}
    sides = {"on": {"on": True}, "off": {"off": False}, "both": {"off": False, "on": True}}[args.metering]
    if args.control and args.metering == "both":
        sides["control"] = False
    table = not (args.skip_table and args.metering == "both")
    try:
        results = {"direct": measure(direct_url, None, args.duration, [upstream.pid])} if table else {}
        for mode in args.modes.split(","):
            stacks: dict[str, Stack] = {}
            try:
                for slot, (side, metering) in enumerate(sides.items()):
                    root = args.baseline if args.baseline and side != "on" else ROOT
                    stacks[side] = Stack(
                        mode, metering or bool(args.baseline), f"http://127.0.0.1:{up_port}/v1", slot=slot, root=root
                    )
                for side, stack in stacks.items():
                    if table and side != "control":
                        name = mode if args.metering != "both" else f"{mode} {'+' if stack.metering else '-'}meter"
                        if args.baseline:
                            name = f"{mode} {'this tree' if side == 'on' else 'baseline'}"
                        results[name] = measure(
                            stack.url, stack.key, args.duration, [stack.server.pid, stack.connector.pid]
                        )
                if args.metering == "both" and args.rounds:
                    costs[mode] = paired(stacks, args.rounds, args.round_seconds or max(3, args.duration // 2))
            finally:
                for stack in stacks.values():
                    stack.stop()
    finally:
        upstream.terminate()
    if table:
        report(results)
    for mode, cost in costs.items():
        for side in cost["loss"]:
            what = {
                "on": "metering+limits cost",
                "control": "control (off vs off: the method's noise)",
                "on vs both off": "metering+limits cost against the mean of both off stacks",
            }[side]
            if args.baseline:
                what = {
                    "on": "this tree against the baseline",
                    "control": "control (baseline vs baseline)",
                    "on vs both off": "this tree against the mean of both baseline stacks",
                }[side]
            low, high = cost["ci"][side]
            print(
                f"  {what} ({mode}), {args.rounds} rotating rounds side by side: throughput "
                f"{100 * cost['loss'][side]:+.1f}% lost (median of per-round losses; 95% interval "
                f"{100 * low:+.1f} … {100 * high:+.1f}%; rounds {', '.join(f'{100 * x:.0f}' for x in cost['losses'][side])} %)"
                + (
                    ""
                    if side not in cost["rps"]
                    else f", median req/s {cost['rps']['off']:.0f} → {cost['rps'][side]:.0f}, c=1 p50 {cost['p50']['off']:.2f} → "
                    f"{cost['p50'][side]:.2f} ms ({cost['p50'][side] - cost['p50']['off']:+.2f} ms)"
                )
                + (" (targets: < 10%, < 1 ms)" if side == "on" else "")
            )
        cpu = cost["cpu"]
        parts = ", ".join(f"{part} " + " → ".join(f"{cpu[side][part]:.0f}" for side in cpu) for part in cpu["off"])
        print(f"    CPU µs per request at c=32, {' → '.join(cpu)} (medians of the rounds): {parts}")


def report(results: dict) -> None:
    direct = results["direct"]
    print(
        f"\n{'':16}{'c1 p50':>9}{'c1 p99':>9}{'c32 rps':>9}{'c32 p50':>9}{'c32 p99':>9}{'chunks/s':>10}{'TTFC':>8}{'CPU/req':>16}{'errors':>7}"
    )
    for name, r in results.items():
        cpu = "+".join(f"{c:.2f}" for c in r["cpu_ms_per_req"]) + " ms"
        print(
            f"{name:16}{r['c1_p50']:8.2f}m{r['c1_p99']:8.2f}m{r['c32_rps']:9.0f}{r['c32_p50']:8.1f}m{r['c32_p99']:8.1f}m"
            f"{r['chunks_per_s']:10.0f}{r['ttfc_ms']:7.2f}m{cpu:>16}{r['errors']:7}"
        )
    print(
        "\nThrough Tokios vs direct (targets: added p50 ≤ 3 ms, ≥ 1,000 req/s at c=32, ≥ 20,000 chunks/s, "
        "added TTFC ≤ 3 ms, ≤ 1.5 ms CPU/request):"
    )
    for name, r in results.items():
        if name == "direct":
            continue
        print(
            f"  {name:14} added p50 {r['c1_p50'] - direct['c1_p50']:6.2f} ms | req/s at c=32 {r['c32_rps']:6.0f} "
            f"({r['c32_rps'] / direct['c32_rps']:.2f}× direct) | chunks/s {r['chunks_per_s']:7.0f} "
            f"({r['chunks_per_s'] / direct['chunks_per_s']:.2f}×) | added TTFC {r['ttfc_ms'] - direct['ttfc_ms']:5.2f} ms | "
            f"CPU/request {sum(r['cpu_ms_per_req']):.2f} ms (server + connector)"
        )
    on = {k[:-7]: v for k, v in results.items() if k.endswith(" +meter")}
    off = {k[:-7]: v for k, v in results.items() if k.endswith(" -meter")}
    for mode in sorted(set(on) & set(off)):
        a, b = off[mode], on[mode]
        print(
            f"  metering+limits cost ({mode}), one run each: throughput {100 * (1 - b['c32_rps'] / a['c32_rps']):+.1f}% lost, "
            f"p50 {b['c1_p50'] - a['c1_p50']:+.2f} ms (targets: < 10%, < 1 ms)"
        )


if __name__ == "__main__":
    main()
