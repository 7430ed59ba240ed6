"""ConnectorConsumer units that need no socket."""

from __future__ import annotations

import asyncio

import pytest
from uvicorn.protocols.utils import ClientDisconnected

from proxy.tunnel.consumer import ConnectorConsumer


@pytest.mark.asyncio
async def test_cancelling_a_call_after_the_connector_socket_closed_does_not_raise():
    """A client leaving while its connector drains away used to turn into a logged 500: the cancel
    frame could not be sent and the error replaced the client's own disconnect."""
    consumer = ConnectorConsumer()
    consumer.pending = {"req_1": asyncio.Queue()}  # as websocket_connect sets it up
    sent = []

    async def closed_socket(**frame):
        sent.append(frame)
        raise ClientDisconnected()

    consumer.send = closed_socket

    await consumer.cancel("req_1")

    assert len(sent) == 1
    assert "req_1" not in consumer.pending
