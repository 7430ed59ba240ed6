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


class CallTrace(Protocol):
    """What a call tells the request's trace (proxy/tracing.py) of its steps, when tracing is on:
    a call made with `trace=None` reports nothing and pays nothing."""

    def queued(self) -> None:
        """Every connector was busy: the request waits in its deployment's line."""
        ...

    def dispatching(self) -> str:
        """The request is about to be sent to a connector: the `traceparent` for its frame."""
        ...

    def dispatched(self, outcome: str, connector_id: str) -> None:
        """The connector took it ("sent"), or had no slot ("busy"), or was gone ("gone")."""
        ...

    def response_started(self, status: int) -> None:
        """The model's status arrived."""
        ...


class UpstreamCall(Protocol):
    """One request to the model server and its response, read item by item."""

    @property
    def finished(self) -> bool:
        """True once `Ended` or `Failed` was read, or the call was cancelled."""
        ...

    @property
    def connector_id(self) -> str:
        """The connector that took the request ("" until one did): for the request log."""
        ...

    @property
    def queue_wait_ms(self) -> int:
        """How long the request waited for a free slot of the model (0 if it did not)."""
        ...

    async def admit(self, timeout: float, notice: float | None = None) -> int:
        """Send the request, waiting (at most `timeout` seconds) while the model has no free slot;
        0 once it is sent. With `notice`, returns the request's place in line after each `notice`
        seconds it still waits (call again to wait on). CallError on failure (503 `queue_full`,
        `queue_timeout`, `connector_offline`)."""
        ...

    async def start(self, timeout: float) -> Started:
        """Send the request (admitting it first, if `admit` did not) and wait for the response's
        status; CallError on failure."""
        ...

    async def next_item(self, timeout: float) -> Data | Ended | Failed | None:
        """The next item after `Started`, or None when `timeout` seconds passed first."""
        ...

    async def cancel(self) -> None:
        """Stop the call (the model stops working on it); harmless once finished."""
        ...
