"""Presence through a Redis restart: Redis keeps nothing on disk, so a restart forgets every
connector. The process holding a connector must keep routing to it throughout, and every other
process must find it again as soon as Redis is back (each process republishes its connectors
every TOKIOS_PRESENCE_REFRESH seconds), instead of answering "Connector offline" until the
connector's next heartbeat."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import httpx
import pytest

from tests.e2e.conftest import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.timeout(120)]


class RedisServer:
    """A Redis of this test's own, so that stopping it disturbs nothing else."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is needed (Debian's redis-server package)"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def own_redis():
    redis = RedisServer()
    redis.start()
    yield redis
    redis.stop()


def chat(server, key: str, model: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": model, "messages": [{"role": "user", "content": "[[words=2]]"}]},
        timeout=15,
    )


def first_ok_after(server, key: str, model: str, limit: float) -> float | None:
    """Seconds until a request on `server` succeeds (None if none did within `limit`)."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if chat(server, key, model).status_code == 200:
            return time.monotonic() - started
        time.sleep(0.1)
    return None


def test_a_redis_restart_does_not_take_connectors_offline(own_redis, start_server, tenant, start_connector):
    # Heartbeats far apart, so that only the republishing can bring the connector back quickly.
    env = {
        "REDIS_URL": own_redis.url,
        "TOKIOS_PRESENCE_REFRESH": "0.5",
        "TOKIOS_HEARTBEAT_INTERVAL": "10",
        "TOKIOS_HEARTBEAT_TIMEOUT": "30",
    }
    holder = start_server(**env)
    front = start_server(**env)
    start_connector(tenant.token, srv=holder)
    assert chat(front, tenant.key, tenant.model).status_code == 200  # across processes, through Redis

    own_redis.stop()
    # Limits fail open and presence is local: the process holding the connector keeps serving.
    for _ in range(3):
        assert chat(holder, tenant.key, tenant.model).status_code == 200

    own_redis.start()  # empty: it kept nothing
    assert chat(holder, tenant.key, tenant.model).status_code == 200
    waited = first_ok_after(front, tenant.key, tenant.model, limit=10)
    assert waited is not None, "the other process never found the connector again"
    # Republished within a refresh or two (plus the channel layer reconnecting), well before the
    # next heartbeat, which used to be what brought it back.
    assert waited < 5, waited
