"""The production topology on one machine, for bench/scale.py and tests/e2e/test_scale.py.

A fresh PostgreSQL database, a Redis database, the fake upstream (the labelled test double),
N uvicorn processes on their own ports (one process each, as production runs N of them behind a
load balancer) and M connectors attached to them round-robin. Every process runs in its own
session, is stopped with its process group, and gets SIGTERM should this process die (Linux's
PR_SET_PDEATHSIG), so that nothing outlives a run, whatever ends it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import redis

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/scale.py`: make `bench.tunnel` importable
    sys.path.insert(0, str(ROOT))
from bench.tunnel import PY, TICK, free_port  # noqa: E402

MODEL = "scale-model"
DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# One process each, as production runs them (no --workers); a backlog for 1,000+ connects at once.
UVICORN_OPTIONS = ["--log-level", "warning", "--no-access-log", "--backlog", "4096", "--timeout-graceful-shutdown", "2"]

# Seeds the fresh database in one process (a manage.py command per object would cost a Django
# start-up each): the actions behind `create_org`, `create_deployment`, `create_connector_token`
# and `create_key`. One token per connector; the key has no limits, but metering and limits stay
# on, as in production.
SEED = """
import json
from accounts.actions import create_api_key, create_org
from deployments.actions import create_connector_token, create_deployment
org = create_org(slug="scale", name="Scale benchmark", actor_label="bench")
deployment = create_deployment(org=org, name={model!r}, price_input_micros=1_000_000,
                               price_output_micros=2_000_000, actor_label="bench")
tokens = [create_connector_token(deployment=deployment, name=f"scale-{{i}}", actor_label="bench")[1]
          for i in range({connectors})]
key = create_api_key(org=org, name="scale", actor_label="bench")[1]
print(json.dumps({{"key": key, "tokens": tokens}}))
"""


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when we die, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0  # gone


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


class Child:
    """A process in its own session (a Ctrl-C in the terminal reaches only us; stopping its group
    stops anything it started), its output in a log file."""

    def __init__(self, name: str, args: list[str], *, env: dict[str, str], log_dir: Path, cwd: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen(
                args,
                cwd=cwd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.pid = self.popen.pid

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{self.output()[-3000:]}")

    def wait_for_output(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not print {text!r} in {timeout:.0f}s:\n{self.output()[-3000:]}")
            time.sleep(0.1)

    def wait_http(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2).status_code < 500:
                    return
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: {url} did not answer in {timeout:.0f}s:\n{self.output()[-3000:]}")
            time.sleep(0.2)

    def errors(self) -> int:
        """Tracebacks and ERROR lines in its log: where to look, not a verdict."""
        text = self.output()
        return text.count("Traceback") + len(re.findall(r"\bERROR\b", text))

    def terminate(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGTERM)

    def reap(self, deadline: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # it, if it would not stop, and anything it left behind
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)


def tcp_queues(ports: set[int]) -> tuple[int, int]:
    """Bytes in the kernel's queues (unsent or unacknowledged, plus received and not yet read) of
    established IPv4 sockets: those whose local port is in `ports`, and their peers'. What a
    process leaves to the kernel does not show in its RSS, and a loopback socket's send buffer
    grows to megabytes."""
    own = peers = 0
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return 0, 0
    for line in lines:
        fields = line.split()
        if fields[3] != "01":  # TCP_ESTABLISHED
            continue
        local, remote = int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)
        queued = sum(int(x, 16) for x in fields[4].split(":"))
        if local in ports:
            own += queued
        elif remote in ports:
            peers += queued
    return own, peers


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def recreate_database(url: str, *, drop_only: bool = False) -> None:
    """Drop the database `url` names (with FORCE: a killed run may leave sessions) and create it anew."""
    name = urlsplit(url).path.lstrip("/")
    if not DATABASE_NAME.fullmatch(name):
        raise ValueError(f"refusing database name {name!r}: lower-case letters, digits and _ only")
    with psycopg.connect(with_database(url, "postgres"), autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not drop_only:
            conn.execute(f'CREATE DATABASE "{name}"')


class Stack:
    """Fake upstream, `processes` uvicorn processes and `connectors` connectors over one fresh
    PostgreSQL database (dropped again on stop) and one Redis database. Use it as a context
    manager; `stop()` is safe at any point of `start()` and more than once. `code_dir` is the
    tree the processes run from: another checkout (`git archive HEAD | tar -x -C /tmp/head`)
    measures the code before a change with the same benchmark."""

    def __init__(
        self,
        *,
        database_url: str,
        redis_url: str,
        processes: int = 2,
        connectors: int = 4,
        max_concurrency: int = 1000,
        flush_redis: bool = True,
        env: dict[str, str] | None = None,
        code_dir: Path = ROOT,
    ):
        if not 1 <= processes <= 64 or not 1 <= connectors <= 256:
            raise ValueError("processes must be 1..64 and connectors 1..256")
        self.database_url, self.redis_url = database_url, redis_url
        self.processes, self.connectors = processes, connectors
        self.max_concurrency = max(1, min(max_concurrency, 100_000))  # protocol 2's bound
        self.flush_redis = flush_redis
        self.code_dir = Path(code_dir).resolve()
        self.data = Path(tempfile.mkdtemp(prefix="tokios-scale-"))
        self.log_dir = self.data / "logs"
        self.log_dir.mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "DJANGO_SETTINGS"))}
        self.env.update(
            {
                "DATABASE_URL": database_url,
                "REDIS_URL": redis_url,
                "TOKIOS_DATA_DIR": str(self.data),
                "SECRET_KEY": secrets.token_urlsafe(50),  # every process must hash secrets alike
                "TOKIOS_HTTPS": "0",
                "LOG_LEVEL": "WARNING",
                "PYTHONUNBUFFERED": "1",
                **(env or {}),
            }
        )
        self.upstream: Child | None = None
        self.upstream_url = ""
        self.servers: list[Child] = []
        self.ports: list[int] = []
        self.connector_procs: list[Child] = []
        self.connector_server: list[int] = []  # which server each connector is attached to
        self.key = ""
        self._database_created = False
        self._redis: redis.Redis | None = None

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _child(self, name: str, args: list[str]) -> Child:
        return Child(name, args, env=self.env, log_dir=self.log_dir, cwd=self.code_dir)

    def manage(self, *args: str, timeout: float = 180) -> str:
        done = subprocess.run(
            [PY, "manage.py", *args], cwd=self.code_dir, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode:
            raise RuntimeError(f"manage.py {args[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def start(self) -> None:
        recreate_database(self.database_url)
        self._database_created = True
        self._redis = redis.Redis.from_url(self.redis_url, socket_timeout=10)
        if self.flush_redis:
            self._redis.flushdb()
        self.manage("migrate", "--noinput", "-v0")
        seed = SEED.format(model=MODEL, connectors=self.connectors)
        seeded = json.loads(self.manage("shell", "-c", seed, timeout=60).strip().splitlines()[-1])
        self.key = seeded["key"]
        up_port = free_port()
        self.upstream = self._child("fake-upstream", [PY, "-m", "tests.fakes.fake_upstream", "--port", str(up_port)])
        self.upstream_url = f"http://127.0.0.1:{up_port}"
        # The servers start side by side (a Django start-up each), then are waited for.
        for i in range(self.processes):
            self.ports.append(free_port())
            args = ["tokios_site.asgi:application", "--host", "127.0.0.1", "--port", str(self.ports[-1])]
            args += UVICORN_OPTIONS
            self.servers.append(self._child(f"server-{i}", [PY, "-m", "uvicorn", *args]))
        self.upstream.wait_http(f"{self.upstream_url}/_fake/stats", 60)
        for server, port in zip(self.servers, self.ports, strict=True):
            server.wait_http(f"http://127.0.0.1:{port}/healthz", 90)
        for i, token in enumerate(seeded["tokens"]):
            target = i % self.processes
            self.connector_server.append(target)
            args = ["--server", f"http://127.0.0.1:{self.ports[target]}", "--token", token]
            args += ["--upstream", f"{self.upstream_url}/v1", "--max-concurrency", str(self.max_concurrency)]
            self.connector_procs.append(
                self._child(f"connector-{i}", [PY, "-m", "tokios_connector", *args, "--grace", "1"])
            )
        for connector in self.connector_procs:
            connector.wait_for_output("connected to", 60)
        self._wait_routable(60)

    def _wait_routable(self, timeout: float) -> None:
        """Every process answers a request through the tunnel (so it sees a connector); then a
        pause longer than presence's read cache (0.5 s), so that each sees all of them."""
        body = {"model": MODEL, "messages": [{"role": "user", "content": "ready?"}]}
        deadline = time.monotonic() + timeout
        for server, port in zip(self.servers, self.ports, strict=True):
            last = "no answer"
            while True:
                server.check_alive()
                try:
                    r = httpx.post(
                        f"http://127.0.0.1:{port}/v1/chat/completions",
                        json=body,
                        timeout=10,
                        headers={"authorization": f"Bearer {self.key}"},
                    )
                except httpx.HTTPError as exc:
                    last = repr(exc)
                else:
                    if r.status_code == 200:
                        break
                    last = f"{r.status_code} {r.text[:300]}"
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{server.name} did not route to a connector in {timeout:.0f}s: {last}")
                time.sleep(0.3)
        time.sleep(1.5)

    def server_rss(self) -> list[int]:
        return [rss_bytes(s.pid) for s in self.servers]

    def connector_rss(self) -> int:
        return sum(rss_bytes(c.pid) for c in self.connector_procs)

    def redis_memory(self) -> int:
        """used_memory of the whole Redis server (other databases' users included): where the
        channel layer holds frames no process has taken yet."""
        try:
            return int(self._redis.info("memory")["used_memory"]) if self._redis else 0
        except redis.RedisError:
            return 0

    def upstream_stats(self) -> dict:
        try:
            return httpx.get(f"{self.upstream_url}/_fake/stats", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return {}

    def stop(self) -> None:
        """Connectors first (so that they do not reconnect to a server going away), then the rest."""
        deadline = time.monotonic() + 10
        for child in self.connector_procs:
            child.terminate()
        for child in self.connector_procs:
            child.reap(deadline)
        others = self.servers + ([self.upstream] if self.upstream else [])
        deadline = time.monotonic() + 10
        for child in others:
            child.terminate()
        for child in others:
            child.reap(deadline)
        if self._redis is not None:
            self._redis.close()
            self._redis = None
        if self._database_created:
            with contextlib.suppress(psycopg.Error):
                recreate_database(self.database_url, drop_only=True)
            self._database_created = False

    def cleanup(self) -> None:
        """Delete the logs and the data directory (keep them when something failed)."""
        shutil.rmtree(self.data, ignore_errors=True)
