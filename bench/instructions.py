"""What metering and limits cost the Tokios server process, in instructions: a repeatable figure.

    .venv/bin/python bench/instructions.py [--mode redis] [--seconds 30] [--connections 8]
                                           [--sides off,on,limits,metering]

Throughput on a shared two-core machine drifts by ±20 % over minutes (see docs/benchmarks.md), so
small changes to the request path cannot be told apart with `bench/tunnel.py` alone. This runs the
server of each stack under valgrind's callgrind (Debian's `valgrind`), which counts the
instructions the server executes rather than the time they take, whatever else the machine is
doing: six runs of the same "off" code gave 1,411k–1,429k instructions per request; "on" varies a
little more (±2 %), because how many admissions share a Redis script run depends on timing. Compare
code versions with a few runs each. Use Redis mode: embedded mode's figures do not repeat (two runs
of the same code: "off" 1,913k and 1,807k, "limits" +88k and +444k), and callgrind runs one thread
at a time, so it cannot show what a thread beside the loop costs in GIL hand-overs. It reports instructions per
request for each side: "off" (no metering, no limits), "on" (both), "limits" and "metering" (one
each). Redis and PostgreSQL are not counted (they are other processes; `bench/tunnel.py` reports
their CPU). The server runs ~50× slower under callgrind, so the connector and the fake upstream are
never the bottleneck and admission batches are larger than at full speed.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tunnel import PLAIN, PY, ROOT, Stack, free_port, wait_http, wrk  # noqa: E402

SIDES = {
    "off": {"TOKIOS_METERING": "0", "TOKIOS_LIMITS": "0"},
    "on": {"TOKIOS_METERING": "1", "TOKIOS_LIMITS": "1"},
    "limits": {"TOKIOS_METERING": "0", "TOKIOS_LIMITS": "1"},
    "metering": {"TOKIOS_METERING": "1", "TOKIOS_LIMITS": "0"},
}


def under_callgrind(stack: Stack, out: Path) -> subprocess.Popen:
    """Replace the stack's server by one on the same port under callgrind (instrumentation off until
    asked, so that start-up is not counted); the connector reconnects by itself."""
    stack.server.terminate()
    stack.server.wait(10)
    server = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            PY,
            "-m",
            "uvicorn",
            "tokios_site.asgi:application",
            "--port",
            str(stack.port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--http",
            "httptools",
            "--loop",
            "uvloop",
        ],
        cwd=ROOT,
        env=stack.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            response = httpx.post(
                stack.url,
                json={"model": "bench-model", "messages": [{"role": "user", "content": "hi"}]},
                headers={"authorization": f"Bearer {stack.key}"},
                timeout=30,
            )
            if response.status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit("the server under callgrind did not come up")


def total_instructions(out: Path) -> int:
    text = subprocess.run(["callgrind_annotate", str(out)], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", text).group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["embedded", "redis"], default="redis")
    parser.add_argument("--seconds", type=int, default=30, help="measured load per side")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--sides", default="off,on")
    args = parser.parse_args()
    for tool in ("wrk", "valgrind", "callgrind_control"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is needed: apt-get install wrk valgrind")
    sides = args.sides.split(",")
    if "off" not in sides or any(side not in SIDES for side in sides):
        raise SystemExit(f"--sides: 'off' and any of {', '.join(SIDES)}")
    up_port = free_port()
    upstream = subprocess.Popen([PY, "-m", "tests.fakes.fake_upstream", "--port", str(up_port)], cwd=ROOT)
    wait_http(f"http://127.0.0.1:{up_port}/_fake/stats")
    per_request = {}
    work = Path(tempfile.mkdtemp(prefix="tokios-instructions-"))
    try:
        for slot, side in enumerate(sides):
            stack = Stack(args.mode, True, f"http://127.0.0.1:{up_port}/v1", slot=slot, **SIDES[side])
            try:
                out = work / f"{side}.callgrind"
                stack.server = under_callgrind(stack, out)
                wrk(stack.url, connections=args.connections, duration=10, body=PLAIN, key=stack.key)  # warm up
                subprocess.run(
                    ["callgrind_control", "-i", "on", str(stack.server.pid)], capture_output=True, check=True
                )
                load = wrk(stack.url, connections=args.connections, duration=args.seconds, body=PLAIN, key=stack.key)
                subprocess.run(
                    ["callgrind_control", "-i", "off", str(stack.server.pid)], capture_output=True, check=True
                )
                stack.server.terminate()
                stack.server.wait(60)
                if load["errors"]:
                    raise SystemExit(f"{side}: {load['errors']} failed requests")
                per_request[side] = total_instructions(out) / load["requests"]
                print(
                    f"  {side:9} {per_request[side] / 1000:8.0f}k instructions per request ({load['requests']} requests)",
                    flush=True,
                )
            finally:
                stack.stop()
    finally:
        upstream.terminate()
        shutil.rmtree(work, ignore_errors=True)
    base = per_request["off"]
    for side, value in per_request.items():
        if side != "off":
            print(
                f"  {side} vs off: {(value - base) / 1000:+.0f}k instructions per request ({100 * (value / base - 1):+.1f}%)"
            )


if __name__ == "__main__":
    main()
