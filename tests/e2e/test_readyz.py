"""/readyz through real processes: a PRIVATE PostgreSQL (initdb into a temporary directory, pg_ctl on a
free port) and a PRIVATE redis-server on a free port, a real uvicorn migrated and serving against
them. /readyz is green; stopping PostgreSQL turns it red naming the database, starting it again
green; the same for Redis; /healthz stays 200 throughout (liveness does no I/O). Along the way, the
server's stderr carries the access log's bare JSON line for a /v1 request.

The machine's shared PostgreSQL (5432) and Redis (6379) are never touched. Without the binaries
the test is skipped locally and fails in CI (CI=true).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import psycopg
import pytest

from .conftest import ROOT, Proc, base_env, free_port, wait_http

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

DATABASE = "tokios_readyz"
IN_CI = os.environ.get("CI", "").lower() == "true"


def missing(what: str) -> None:
    message = f"{what} is not installed here"
    if IN_CI:
        pytest.fail(f"{message}; CI must run this test", pytrace=False)
    pytest.skip(message)


def postgres_bin() -> Path:
    found = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists() and (p / "pg_ctl").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1]
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    missing("PostgreSQL (initdb, pg_ctl)")
    raise AssertionError  # unreachable: missing() skips or fails


class PrivatePostgres:
    """A PostgreSQL cluster of this test's own, in a temporary directory, on a free port. As root,
    its commands run as the `postgres` OS user (PostgreSQL refuses to run as root)."""

    def __init__(self, bin_dir: Path, base: Path):
        self.bin = bin_dir
        self.data = base / "data"
        self.log = base / "postgres.log"
        self.base = base
        self.port = free_port()
        self.owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None

    def run(self, *args: str, timeout: float = 120) -> None:
        command = [*(["runuser", "-u", "postgres", "--"] if self.owner else []), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{args[0]} failed:\n{done.stdout}\n{done.stderr}\n{self.logged()}"

    def logged(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def init(self) -> None:
        if self.owner:
            os.chown(self.base, self.owner.pw_uid, self.owner.pw_gid)
        self.run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"
        )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base} -c fsync=off"
        self.run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self) -> None:
        self.run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def url(self, name: str = DATABASE) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"


class PrivateRedis:
    """A redis-server of this test's own on a free port, keeping nothing on disk."""

    def __init__(self, base: Path):
        self.port = free_port()
        self.base = base
        self.proc: Proc | None = None

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = Proc(f"redis-private-{self.port}", [*args, "--dir", str(self.base)], base_env())
        self.proc.wait_for_output("Ready to accept connections", timeout=20)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


@pytest.fixture
def services() -> Iterator[tuple[PrivatePostgres, PrivateRedis]]:
    bin_dir = postgres_bin()
    if shutil.which("redis-server") is None:
        missing("redis-server")
    base = Path(tempfile.mkdtemp(prefix="tokios-readyz-"))
    postgres, redis = PrivatePostgres(bin_dir, base), PrivateRedis(base)
    try:
        postgres.init()
        postgres.start()
        with psycopg.connect(postgres.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
        redis.start()
        yield postgres, redis
    finally:
        redis.stop()
        try:
            postgres.stop()
        except AssertionError:
            pass  # already stopped
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def server(services) -> Iterator[tuple[str, Proc]]:
    postgres, redis = services
    env = base_env(DATABASE_URL=postgres.url(), REDIS_URL=f"redis://127.0.0.1:{redis.port}/0", TOKIOS_READY_TIMEOUT="1")
    migrate = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env, capture_output=True, timeout=240
    )
    assert migrate.returncode == 0, migrate.stderr.decode(errors="replace")[-3000:]
    port = free_port()
    args = ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"]
    proc = Proc(f"uvicorn-readyz-{port}", [sys.executable, "-m", "uvicorn", "tokios_site.asgi:application", *args], env)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc, timeout=60)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.stop()


def readyz(url: str) -> tuple[int, dict]:
    response = httpx.get(f"{url}/readyz", timeout=10)
    return response.status_code, response.json()


def until(url: str, status: int, timeout: float = 20) -> dict:
    """/readyz until it answers `status` (a report lives ≤1 s; a check takes ≤ TOKIOS_READY_TIMEOUT)."""
    deadline = time.monotonic() + timeout
    while True:
        got, body = readyz(url)
        if got == status:
            return body
        assert time.monotonic() < deadline, f"/readyz stayed {got}: {body}"
        time.sleep(0.2)


def test_readyz_follows_a_private_postgres_and_redis_going_down_and_back(services, server):
    postgres, redis = services
    url, proc = server

    body = until(url, 200)
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database", "redis", "usage_writer"}  # the channel layer is the same Redis
    assert (body["checks"]["database"]["database"], body["checks"]["redis"]["db"]) == (DATABASE, 0)

    response = httpx.post(f"{url}/v1/chat/completions", json={"model": "m", "messages": []}, timeout=10)
    assert response.status_code == 401  # no key: and the access line is on stderr, bare JSON
    proc.wait_for_output(response.headers["x-request-id"])
    [line] = [line for line in proc.output().splitlines() if response.headers["x-request-id"] in line]
    fields = orjson.loads(line)
    assert (fields["status"], fields["error"], fields["path"]) == (401, "missing_api_key", "/v1/chat/completions")

    postgres.stop()
    body = until(url, 503)
    assert body["failed"] == ["database"]
    database = body["checks"]["database"]
    assert database["database"] == DATABASE and database["host"] == f"127.0.0.1:{postgres.port}"
    assert database["error"]
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200  # alive, only not ready

    postgres.start()
    until(url, 200)

    redis.stop()
    body = until(url, 503)
    assert body["failed"] == ["redis"]
    assert body["checks"]["redis"]["host"] == f"127.0.0.1:{redis.port}" and body["checks"]["redis"]["error"]
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200

    redis.start()
    body = until(url, 200)
    assert body["checks"]["database"]["ok"] and body["checks"]["redis"]["ok"]
