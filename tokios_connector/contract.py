"""The library internals the connector relies on beyond documented API, all in this module.

Each one is here because it was measured to pay for itself; the figure and the command are written
beside it and in the server's docs/benchmarks.md ("Framework contract"). The rest of the connector
uses documented API only. tests/connector/test_contract.py checks every one against the installed
libraries and fails, naming the library and what changed, when an upgrade breaks one or goes past
the versions below. (The connector is installed on its own, so it does not share the server's
lib/contract.py.)
"""

from __future__ import annotations

import asyncio
from typing import Any

# The releases this module was read against and measured on, as (major, minor).
VERIFIED = {"httpcore": {(1, 0)}, "websockets": {(15, 0)}}

# httpcore: an idle keep-alive connection asks its network stream `get_extra_info("is_readable")`
# whether the server closed it meanwhile (AsyncHTTP11Connection.has_expired), an info key its docs
# do not list. The lean transport's stream answers it from what its protocol already knows, with no
# system call (tokios_connector/transport.py). That transport, built on httpcore's public HTTP/1.1
# connection and network stream classes, pays for itself: with httpx's stock transport instead,
# the connector's CPU per streamed token was +28 % [+11 … +42] at 8 concurrent streams and +224 %
# [+144 … +422] at 64 (bench/connector.py run from a tree with the stock transport, --baseline this
# one; docs/benchmarks.md, "Framework contract").
IS_READABLE = "is_readable"


# websockets: an asyncio connection writes every frame with its own `transport.write()` (its
# `transport` attribute, set when the connection is made, is not documented as replaceable). With
# dozens of streams relaying chunks, that is a TCP segment per chunk, and the *server* pays for each
# one it reads. Measured from both ends (`bench/connector.py --baseline <tree without it> --control
# --rounds 12 --seconds 4 --connections 32 --tokens 20`, medians per streamed token, quiet machine):
# writes 1.186 → 0.108; the server's CPU 57.8 µs (control 54.7) → 48.3; the connector's own CPU
# −11.0 % [−12.8 … −6.7] (control −6.2 % [−14.5 … +2.9]). docs/benchmarks.md, "Framework contract".
# The wrapper gathers the frames written in one event-loop iteration into one write: a frame waits
# at most one loop iteration.
class CoalescingTransport:
    """Wraps a transport so frames written in one event-loop iteration leave in one syscall."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def coalesce_writes(connection: Any) -> None:
    """Route a websockets asyncio connection's frame writes through a CoalescingTransport."""
    connection.transport = CoalescingTransport(connection.transport)
