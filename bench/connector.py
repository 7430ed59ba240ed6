"""The connector's CPU per streamed token, this tree against another, side by side.

    .venv/bin/python bench/connector.py --baseline DIR [--rounds 16] [--seconds 3] [--connections 8]
                                        [--tokens 100] [--control]

Starts the fake upstream (the labelled test double, zero think time) and one embedded stack per
tree (bench/tunnel.py's `Stack`: a Tokios server and a connector, metering and limits off), so the
two connectors differ only in their code (DIR is another checkout, e.g. `git worktree add`). Then
`--rounds` rotating rounds: in each, every stack streams for `--seconds` with wrk (c=`--connections`,
streams of `--tokens` tokens, one SSE event each; short enough that wrk, which counts finished
requests only, sees many end) while /proc counts its connector's CPU time (user + system: a write()
saved is kernel time) and write system calls. Reported per stack: the medians of µs of connector
CPU (and of its kernel part) and write calls per streamed token, and this tree's CPU against the
baseline's as the median of the per-round ratios with a distribution-free 95 % interval (bench/tunnel.py's
method; `--control` adds a second baseline stack, whose ratio is the method's own noise).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tunnel import PY, ROOT, STREAM, TICK, Stack, cpu_seconds, free_port, median_ci, wait_http, wrk  # noqa: E402


def write_calls(pid: int) -> int:
    """Write-type system calls the process has made so far (write, writev, send…)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    raise RuntimeError("no syscw in /proc/<pid>/io")


def system_seconds(pid: int) -> float:
    """CPU time the kernel spent on the process's behalf (its system calls), from /proc."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[12]) / TICK


def one_run(stack: Stack, seconds: int, connections: int, words: int) -> dict[str, float]:
    pid = stack.connector.pid
    cpu, kernel, writes = cpu_seconds(pid), system_seconds(pid), write_calls(pid)
    server = cpu_seconds(stack.server.pid)
    body = STREAM.replace("[[words=1000]]", f"[[words={words}]]")
    result = wrk(stack.url, connections=connections, duration=seconds, body=body, key=stack.key)
    finished = result["requests"] - result["errors"]
    if finished < 2 * connections or result["errors"] > finished // 100:
        raise SystemExit(f"{finished} streams finished, {result['errors']} failed: make --tokens smaller")
    tokens = finished * (words + 2)  # the words, the role chunk and the finish chunk
    return {
        "connector_us": 1e6 * (cpu_seconds(pid) - cpu) / tokens,
        "kernel_us": 1e6 * (system_seconds(pid) - kernel) / tokens,
        "writes": (write_calls(pid) - writes) / tokens,
        "server_us": 1e6 * (cpu_seconds(stack.server.pid) - server) / tokens,
        "tokens_per_s": tokens / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="the other checkout")
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=3, help="streaming seconds per stack and round")
    parser.add_argument("--connections", type=int, default=8, help="concurrent streams")
    parser.add_argument("--tokens", type=int, default=100, help="tokens per stream")
    parser.add_argument("--control", action="store_true", help="a second baseline stack: the method's noise")
    args = parser.parse_args()
    up_port = free_port()
    upstream = subprocess.Popen([PY, "-m", "tests.fakes.fake_upstream", "--port", str(up_port)], cwd=ROOT)
    stacks: dict[str, Stack] = {}
    try:
        wait_http(f"http://127.0.0.1:{up_port}/_fake/stats")
        trees = {"baseline": args.baseline, "this": ROOT}
        if args.control:
            trees["control"] = args.baseline
        for slot, (name, root) in enumerate(trees.items()):
            stacks[name] = Stack("embedded", False, f"http://127.0.0.1:{up_port}/v1", slot=slot, root=root)
        for stack in stacks.values():
            one_run(stack, 2, args.connections, args.tokens)  # warm up
        names = list(stacks)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for i in range(args.rounds):
            order = names[i % len(names) :] + names[: i % len(names)]
            if (i // len(names)) % 2:
                order.reverse()
            for name in order:
                runs[name].append(one_run(stacks[name], args.seconds, args.connections, args.tokens))
    finally:
        for stack in stacks.values():
            stack.stop()
        upstream.terminate()
    print(
        f"\n{args.rounds} rounds of {args.seconds} s, c={args.connections}, {args.tokens}-token streams, "
        "medians per streamed token:"
    )
    for name in names:
        med = {k: statistics.median(r[k] for r in runs[name]) for k in runs[name][0]}
        print(
            f"  {name:9} connector {med['connector_us']:6.2f} µs (kernel {med['kernel_us']:5.2f}), "
            f"{med['writes']:5.3f} writes; server {med['server_us']:6.2f} µs; {med['tokens_per_s']:8.0f} tokens/s"
        )
    for name in names[1:]:
        for key, what in (("connector_us", "connector CPU"), ("kernel_us", "its kernel part")):
            ratios = [r[key] / b[key] - 1 for r, b in zip(runs[name], runs["baseline"], strict=True)]
            low, high = median_ci(ratios)
            print(
                f"  {what} per token, {name} against baseline: {100 * statistics.median(ratios):+.1f}% "
                f"(95% interval {100 * low:+.1f} … {100 * high:+.1f}%; rounds "
                f"{', '.join(f'{100 * x:.0f}' for x in sorted(ratios))} %)"
            )


if __name__ == "__main__":
    main()
