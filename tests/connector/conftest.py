"""The connector's tests: the fake upstream process (a TEST DOUBLE for the model server), and the
server end either the real Tokios server in this process (`tokios`, tests/connector/server.py) or,
for what the real server never does, the double in tests/connector/tunnel.py (`tunnel`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

import httpx
import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from django.db import connections

from proxy.tests import tunnel_state
from tests.connector.server import Tokios
from tests.connector.tunnel import FakeTokios
from tests.fakes.process import running_fake_upstream
from tokios_connector.config import Config
from tokios_connector.connector import Connector

TOKEN = "tok-connector-secret-123"


class Upstream:
    """Handle on the fake upstream process (a TEST DOUBLE for the model server)."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.base = f"{origin}/v1"

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.origin}/_fake/stats").json()

    def reset(self) -> None:
        httpx.post(f"{self.origin}/_fake/reset").raise_for_status()

    async def wait_for(self, key: str, value: int, timeout: float = 5.0) -> dict[str, Any]:
        """Poll the fake's counters until stats[key] == value (or fail with the last stats)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with httpx.AsyncClient() as client:
            while True:
                stats = (await client.get(f"{self.origin}/_fake/stats")).json()
                if stats[key] == value or loop.time() > deadline:
                    return stats
                await asyncio.sleep(0.05)


@pytest.fixture(scope="session")
def upstream_process() -> Iterator[Upstream]:
    with running_fake_upstream() as origin:
        yield Upstream(origin)


@pytest.fixture
def upstream(upstream_process: Upstream) -> Upstream:
    upstream_process.reset()
    return upstream_process


@pytest_asyncio.fixture
async def tunnel() -> AsyncIterator[FakeTokios]:
    async with FakeTokios() as server:
        yield server
        # Every test doubles as a check that the connector kept to the protocol (credit included).
        assert server.violations == [], "the connector broke the protocol"


class Server(Protocol):
    ws_url: str


class StartConnector:
    """Runs connectors in this event loop against a server end and the fake upstream."""

    def __init__(self, server: Server, upstream: Upstream, token: str = TOKEN) -> None:
        self.server = server
        self.upstream = upstream
        self.token = token
        self.running: dict[Connector, asyncio.Task[int]] = {}

    async def __call__(self, **overrides: Any) -> Connector:
        settings: dict[str, Any] = {
            "server_url": self.server.ws_url,
            "token": self.token,
            "upstream": self.upstream.base,
            **overrides,
        }
        connector = Connector(Config(**settings))
        self.running[connector] = asyncio.create_task(connector.run(handle_signals=False))
        return connector

    async def exit_code(self, connector: Connector, timeout: float = 5.0) -> int:
        """Wait for `connector.run()` to return on its own."""
        return await asyncio.wait_for(asyncio.shield(self.running[connector]), timeout)

    async def stop_all(self) -> None:
        for connector, task in self.running.items():
            if not task.done():
                connector.request_stop("test teardown")
                connector.request_stop("test teardown")
            await asyncio.wait_for(task, 10)


@pytest_asyncio.fixture
async def start_connector(tunnel: FakeTokios, upstream: Upstream) -> AsyncIterator[StartConnector]:
    starter = StartConnector(tunnel, upstream)
    yield starter
    await starter.stop_all()


@pytest_asyncio.fixture
async def tokios(transactional_db) -> AsyncIterator[Tokios]:
    """The real server on a free port, with a clean slate of the tunnel's process-wide state."""
    tunnel_state.clear()
    server = Tokios()
    await server.start()
    yield server
    await server.stop()
    tunnel_state.stop_keeper()
    tunnel_state.clear()
    # The consumer and the gateway read the database from sync_to_async's thread: its connection
    # must be closed before the test database is emptied or dropped.
    await sync_to_async(connections.close_all)()


@pytest_asyncio.fixture
async def connect(tokios: Tokios, upstream: Upstream, connector_token) -> AsyncIterator[StartConnector]:
    """Starts connectors with the persona `connector_token` against the real server."""
    starter = StartConnector(tokios, upstream, connector_token.secret)
    yield starter
    await starter.stop_all()
