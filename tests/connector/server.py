"""The real Tokios server, in this process, for the connector's tests: uvicorn serving the /v1 app
and the real connector WebSocket (`proxy.tunnel.consumer.ConnectorConsumer`) on a free port, as a
task on the test's event loop.

The app is routed as `tokios_site.asgi.application` routes /v1 and /v1/connector, but built here:
importing that module freezes the garbage collector and changes its thresholds for the whole test
process. Connector tokens and API keys are real rows (the consumer and the gateway read them from
sync_to_async's thread: the tests need committed rows).
"""

from __future__ import annotations

import asyncio
import socket
import time

import uvicorn
from channels.routing import ProtocolTypeRouter, URLRouter
from django.urls import path

from proxy.handler import GatewayHandler
from proxy.tunnel import presence
from proxy.tunnel.consumer import ConnectorConsumer
from proxy.tunnel.presence import ConnectorInfo
from proxy.tunnel.session import LOCAL, ConnectorSession


def application():
    return ProtocolTypeRouter(
        {
            "http": GatewayHandler(),
            "websocket": URLRouter([path("v1/connector", ConnectorConsumer.as_asgi())]),
        }
    )


class Tokios:
    """uvicorn serving the /v1 app on 127.0.0.1; `stop()` and `start()` again keep the port."""

    def __init__(self) -> None:
        self.port = 0
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            application(), lifespan="off", log_level="warning", access_log=False, timeout_graceful_shutdown=1
        )
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server.serve(sockets=[sock]))
        while not self.server.started:
            if self.task.done():
                self.task.result()  # the reason it did not start
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop as uvicorn stops on SIGTERM: connections are closed, running requests get a second."""
        if self.server is None or self.task is None:
            return
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 10)
        self.server = self.task = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/connector"

    # --- what the server knows of its connectors ------------------------------------------------------

    @staticmethod
    def connectors(deployment_id: int) -> list[ConnectorInfo]:
        return presence.local_connectors(deployment_id)

    async def wait_online(self, deployment_id: int, *, timeout: float = 10.0, count: int = 1) -> ConnectorInfo:
        """The connector once the server has welcomed it (it is in presence)."""
        deadline = time.monotonic() + timeout
        while len(found := self.connectors(deployment_id)) < count:
            assert time.monotonic() < deadline, "the connector did not come online"
            await asyncio.sleep(0.02)
        return found[-1]

    async def wait_offline(self, deployment_id: int, *, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.connectors(deployment_id):
            assert time.monotonic() < deadline, "the connector is still online"
            await asyncio.sleep(0.02)

    @staticmethod
    def session(info: ConnectorInfo) -> ConnectorSession:
        return LOCAL[info.channel]
