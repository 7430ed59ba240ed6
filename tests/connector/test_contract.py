"""The library internals the connector relies on (tokios_connector/contract.py) still hold in the
installed releases.

Each test names the library and what changed when it fails: after an upgrade, read the new code of
the part named, fix or drop the trick in tokios_connector/contract.py, measure again
(docs/benchmarks.md, "Framework contract"), then widen `VERIFIED`.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import version

import httpcore
import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from tokios_connector.contract import IS_READABLE, VERIFIED, CoalescingTransport, coalesce_writes

pytestmark = pytest.mark.timeout(30)


def minor(release: str) -> tuple[int, int]:
    major, minor_, *_ = release.split(".")
    return int(major), int(minor_)


@pytest.mark.parametrize("library", sorted(VERIFIED))
def test_the_installed_release_is_one_the_contract_was_verified_on(library):
    installed = minor(version(library))
    assert installed in VERIFIED[library], (
        f"{library} {version(library)} is not a release tokios_connector/contract.py was verified on "
        f"({', '.join(f'{a}.{b}' for a, b in sorted(VERIFIED[library]))}): check what it relies on in "
        f"{library} against the new code, measure again, then add {installed[0]}.{installed[1]} to VERIFIED"
    )


# --- httpcore: the lean transport's stream answers IS_READABLE -------------------------------------


class OneResponse(httpcore.AsyncNetworkStream):
    """A network stream that gives one response, then says whatever `readable` says."""

    def __init__(self) -> None:
        self.data = [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
        self.readable = False

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.data.pop(0) if self.data else b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        pass

    async def aclose(self) -> None:
        pass

    def get_extra_info(self, info: str):
        return self.readable if info == IS_READABLE else None


@pytest.mark.asyncio
async def test_an_idle_http11_connection_asks_its_stream_whether_the_server_closed_it():
    stream = OneResponse()
    connection = httpcore.AsyncHTTP11Connection(
        origin=httpcore.Origin(b"http", b"model.test", 80), stream=stream, keepalive_expiry=60.0
    )
    request = httpcore.Request("GET", "http://model.test/v1/models", headers=[(b"host", b"model.test")])
    response = await connection.handle_async_request(request)
    assert await response.aread() == b"ok"
    await response.aclose()
    assert connection.is_idle() and not connection.has_expired()

    stream.readable = True  # the server closed the idle connection

    assert connection.has_expired(), (
        f"httpcore {httpcore.__version__}: an idle HTTP/1.1 connection no longer asks its stream "
        f"get_extra_info({IS_READABLE!r}); the lean transport would reuse connections the upstream closed"
    )


# --- websockets: frames are written through the connection's `transport` --------------------------


@pytest.mark.asyncio
async def test_a_websockets_connection_writes_its_frames_through_a_replaced_transport():
    received: list[str] = []

    async def collect(server_side) -> None:
        async for message in server_side:
            received.append(message)

    async with serve(collect, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}") as ws:
            coalesce_writes(ws)
            wrapper = ws.transport
            assert isinstance(wrapper, CoalescingTransport)
            segments: list[bytes] = []
            inner = wrapper._transport
            inner_write = inner.write
            inner.write = lambda data: (segments.append(data), inner_write(data))[1]  # type: ignore[method-assign]
            await asyncio.gather(*(ws.send(f"m{i}") for i in range(3)))
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)

    assert received == ["m0", "m1", "m2"], "websockets: frames written after coalesce_writes() did not arrive"
    assert segments, (
        "websockets no longer writes frames through `connection.transport`: coalesce_writes() has no effect; "
        "read websockets/asyncio/connection.py (send_data), fix or drop CoalescingTransport, measure again"
    )
    assert len(segments) < 3, "websockets: the three frames sent in one loop iteration left in separate writes"
