from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

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


class StartConnector:
    """Runs connectors in this event loop against `tunnel` and the fake upstream."""

    def __init__(self, tunnel: FakeTokios, upstream: Upstream) -> None:
        self.tunnel = tunnel
        self.upstream = upstream
        self.running: dict[Connector, asyncio.Task[int]] = {}

    async def __call__(self, **overrides: Any) -> Connector:
        settings: dict[str, Any] = {
            "server_url": self.tunnel.ws_url,
            "token": TOKEN,
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
