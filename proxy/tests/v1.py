"""A client for in-process tests of /v1: one request through the real `GatewayHandler` ASGI app.

No server and no socket: `call_v1` plays uvicorn's part with hand-written receive/send callables,
so a test can make the client leave at any moment (`leave_when`), and it returns once the request
is over — its scope closed, its usage record submitted.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import orjson
import pytest

from proxy.handler import GatewayHandler

ANTHROPIC = {"anthropic-version": "2023-06-01"}

# The database for these tests: committed rows (the /v1 path reads them from sync_to_async's
# thread), and only the apps the request path uses. Emptying the database after each test then
# skips recreating every app's permissions and content types, which took ~0.2 s a test on SQLite
# (3.7 s against 11.2 s of teardown for the 54 tests of test_errors_contract.py).
V1_DB = pytest.mark.django_db(transaction=True, available_apps=["accounts", "deployments", "billing", "proxy"])


@dataclass
class Exchange:
    """What the client received (`status` None: nothing was sent)."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    parts: list[bytes] = field(default_factory=list)

    @property
    def body(self) -> bytes:
        return b"".join(self.parts)

    def json(self) -> dict:
        return orjson.loads(self.body)

    def events(self) -> list[dict]:
        """The JSON payloads of a server-sent event stream."""
        return [
            orjson.loads(line[6:])
            for line in self.body.decode().splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"
        ]

    def event_names(self) -> list[str]:
        """The `event:` lines of a server-sent event stream, in order."""
        return [line[7:] for line in self.body.decode().splitlines() if line.startswith("event: ")]


async def call_v1(
    method: str,
    path: str,
    body: dict | bytes | None = None,
    *,
    secret: str | None = None,
    headers: dict[str, str] | None = None,
    leave_when: asyncio.Event | None = None,
    timeout: float = 10,
) -> Exchange:
    """One request through GatewayHandler; the client disconnects once `leave_when` is set."""
    raw = body if isinstance(body, bytes) else orjson.dumps(body) if body is not None else b""
    sent = {"content-type": "application/json", "content-length": str(len(raw)), **(headers or {})}
    if secret is not None:
        sent["authorization"] = f"Bearer {secret}"
    path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(name.encode(), value.encode()) for name, value in sent.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    leave = leave_when or asyncio.Event()
    body_sent = False
    exchange = Exchange()

    async def receive() -> dict:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await leave.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        await asyncio.sleep(0)  # as a socket write may: other tasks (the client's leaving, timeouts) run
        if message["type"] == "http.response.start":
            exchange.status = message["status"]
            exchange.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        elif message.get("body"):
            exchange.parts.append(message["body"])

    async with asyncio.timeout(timeout):
        await GatewayHandler()(scope, receive, send)
    return exchange
