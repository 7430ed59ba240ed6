"""The library internals the connector relies on (tokios_connector/contract.py) still hold in the
installed releases.

Each test names the library and what changed when it fails: after an upgrade, read the new code of
the part named, fix or drop the trick in tokios_connector/contract.py, measure again
(docs/benchmarks.md, "Framework contract"), then widen `VERIFIED`.
"""

from __future__ import annotations

from importlib.metadata import version

import httpcore
import pytest

from tokios_connector.contract import IS_READABLE, VERIFIED

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
