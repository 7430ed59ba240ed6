"""What a surface sees of a call to the model: the `UpstreamCall` protocol and the items it yields.

The tunnel (`proxy/tunnel/router.py`) is today's only implementation; the surfaces and the stream
loop depend on this module alone, so another transport could be slotted in without touching them.
An upstream call yields, in order: one `Started`, any number of `Data`, then `Ended` or `Failed`
(`Failed` may also come first, instead of `Started`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Started:
    status: int
    headers: dict[str, str]


@dataclass(slots=True)
class Data:  # not frozen: one is made per body chunk, and frozen dataclasses cost ~3x to build
    data: bytes
    blocks: int = 1  # the tunnel credit this item used (see tokios_connector/protocol.py)


@dataclass(frozen=True, slots=True)
class Ended:
    upstream_ms: int = 0
    ttfb_ms: int = 0


@dataclass(frozen=True, slots=True)
class Failed:
    code: str
    message: str = ""


Item = Started | Data | Ended | Failed


class CallError(Exception):
    """A call that failed before the response began: rendered as an HTTP error by the gateway."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class UpstreamCall(Protocol):
    """One request to the model server and its response, read item by item."""

    @property
    def finished(self) -> bool:
        """True once `Ended` or `Failed` was read, or the call was cancelled."""
        ...

    async def start(self, timeout: float) -> Started:
        """Send the request and wait for the response's status; CallError on failure."""
        ...

    async def next_item(self, timeout: float) -> Data | Ended | Failed | None:
        """The next item after `Started`, or None when `timeout` seconds passed first."""
        ...

    async def cancel(self) -> None:
        """Stop the call (the model stops working on it); harmless once finished."""
        ...
