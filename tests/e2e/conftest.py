"""Real processes for end-to-end tests: uvicorn serving Tokios, connectors, the fake upstream.

Fixtures
- `fake_upstream` (session): the labelled test double (tests/fakes/fake_upstream.py) on a free port;
  `.base` is its /v1 URL, `.stats()` / `.reset()` read and zero its counters.
- `server` (session): one uvicorn process serving `tokios_site.asgi:application` against the test
  database (and Redis when REDIS_URL is set); `.url` is its origin.
- `start_server(**env)`: another uvicorn process (for two-process and restart tests).
- `tenant` (function): an org with a deployment (unique name), an API key and a connector token,
  committed so that the server processes see them. `tenant.make_key(...)`, `tenant.new_org(...)`.
- `start_connector(token, server=None, upstream=None, *args)`: a connector process, waited for until
  it is online; stopped after the test.
Heartbeats are shortened (1 s, dead after 3 s) so that failure tests run quickly.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.process_group import stop_group

ROOT = Path(__file__).resolve().parents[2]
LOG_DIR = Path(os.environ.get("TOKIOS_DATA_DIR", ROOT / ".tokios")) / "e2e-logs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child process whose combined output goes to a log file we can wait on."""

    def __init__(self, name: str, args: list[str], env: dict[str, str]):
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = LOG_DIR / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self.log = open(self.log_path, "wb")
        self.args = args
        self.env = env
        # Its own session, so that stopping it also stops what it started (llama-cpp-server is a
        # wrapper around the real binary).
        self.popen = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = 15.0, after: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output()[after:]:
                return
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.popen.returncode}) before {text!r}:\n{self.output()}")
            time.sleep(0.05)
        raise AssertionError(f"{self.name} did not print {text!r} within {timeout}s:\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Stop it and everything it started (its process group), and wait until all of it is gone."""
        try:
            return stop_group(self.popen, sig, timeout)
        finally:
            self.log.close()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def wait_http(url: str, timeout: float = 20.0, proc: Proc | None = None) -> None:
    """Wait for `url` to answer below 500; fail at once, with its output, if `proc` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if proc is not None and proc.popen.poll() is not None:
            raise AssertionError(
                f"{proc.name} exited ({proc.popen.returncode}) before {url} came up:\n{proc.output()[-4000:]}"
            )
        time.sleep(0.1)
    raise AssertionError(f"{url} did not come up within {timeout}s")


def _database_env() -> dict[str, str]:
    """Point server processes at the database pytest-django created for this session."""
    from django.db import connection

    settings_dict = connection.settings_dict
    if settings_dict["ENGINE"].endswith("sqlite3"):
        return {"SQLITE_PATH": str(settings_dict["NAME"])}
    user = settings_dict.get("USER") or ""
    password = settings_dict.get("PASSWORD") or ""
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = settings_dict.get("PORT") or "5432"
    return {"DATABASE_URL": f"postgres://{auth}{host}:{port}/{settings_dict['NAME']}"}


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(
        {
            "TOKIOS_HTTPS": "0",
            "TOKIOS_HEARTBEAT_INTERVAL": "1",
            "TOKIOS_HEARTBEAT_TIMEOUT": "3",
            "TOKIOS_KEEPALIVE_INTERVAL": "0.5",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


@dataclass
class Server:
    url: str
    proc: Proc
    env: dict[str, str]
    port: int

    def restart(self) -> None:
        self.proc.stop()
        self.proc = _spawn_server(self.port, self.env)


def _spawn_server(port: int, env: dict[str, str]) -> Proc:
    proc = Proc(
        f"uvicorn-{port}",
        [
            sys.executable,
            "-m",
            "uvicorn",
            "tokios_site.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--timeout-graceful-shutdown",
            "2",
        ],
        env,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
    except AssertionError:
        proc.kill()
        raise AssertionError(f"server did not start:\n{proc.output()}") from None
    return proc


@pytest.fixture(scope="session")
def _db_env(django_db_setup, django_db_blocker) -> dict[str, str]:
    with django_db_blocker.unblock():
        return _database_env()


@pytest.fixture(scope="session")
def fake_upstream():
    port = free_port()
    proc = Proc("fake-upstream", [sys.executable, "-m", "tests.fakes.fake_upstream", "--port", str(port)], base_env())
    wait_http(f"http://127.0.0.1:{port}/_fake/stats")

    class Upstream:
        url = f"http://127.0.0.1:{port}"
        base = f"http://127.0.0.1:{port}/v1"

        def stats(self) -> dict:
            return httpx.get(f"{self.url}/_fake/stats").json()

        def reset(self) -> None:
            httpx.post(f"{self.url}/_fake/reset")

    yield Upstream()
    proc.stop()


@pytest.fixture
def start_server(_db_env):
    started: list[Server] = []

    def start(**extra: str) -> Server:
        port = free_port()
        env = base_env(**_db_env, **extra)
        server = Server(url=f"http://127.0.0.1:{port}", proc=_spawn_server(port, env), env=env, port=port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.proc.stop()


@pytest.fixture(scope="session")
def server(_db_env):
    port = free_port()
    env = base_env(**_db_env)
    srv = Server(url=f"http://127.0.0.1:{port}", proc=_spawn_server(port, env), env=env, port=port)
    yield srv
    srv.proc.stop()


@dataclass
class Tenant:
    org: object
    deployment: object
    key: str
    token: str
    owner: object
    extra: dict = field(default_factory=dict)

    @property
    def model(self) -> str:
        return self.deployment.name

    def make_key(self, org=None, **kwargs) -> str:
        from deployments.actions import create_api_key

        _, secret = create_api_key(org=org or self.org, name=kwargs.pop("name", "e2e key"), **kwargs)
        return secret

    def new_token(self) -> str:
        from deployments.actions import create_connector_token

        return create_connector_token(deployment=self.deployment, name="e2e")[1]

    def new_org(self, slug: str | None = None):
        from accounts.actions import create_org

        return create_org(slug=slug or f"org-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def tenant(transactional_db) -> Tenant:
    from accounts.actions import create_org
    from accounts.models import User
    from deployments.actions import create_connector_token, create_deployment

    suffix = uuid.uuid4().hex[:8]
    owner = User.objects.create_user(f"owner-{suffix}@example.com", "pw-for-tests-only")
    org = create_org(slug=f"e2e-{suffix}", owner=owner)
    deployment = create_deployment(
        org=org, name=f"model-{suffix}", price_input_micros=1_000_000, price_output_micros=2_000_000
    )
    _, token = create_connector_token(deployment=deployment, name="e2e")
    tenant = Tenant(org=org, deployment=deployment, key="", token=token, owner=owner)
    tenant.key = tenant.make_key()
    return tenant


@pytest.fixture
def start_connector(server, fake_upstream):
    started: list[Proc] = []

    def start(
        token: str, *args: str, srv: Server | None = None, upstream: str | None = None, wait: bool = True
    ) -> Proc:
        target = srv or server
        proc = Proc(
            "connector",
            [
                sys.executable,
                "-m",
                "tokios_connector",
                "--server",
                target.url,
                "--token",
                token,
                "--upstream",
                upstream or fake_upstream.base,
                *args,
            ],
            base_env(),
        )
        started.append(proc)
        if wait:
            proc.wait_for_output("connected to")
        return proc

    yield start
    for proc in started:
        proc.stop(timeout=5)
