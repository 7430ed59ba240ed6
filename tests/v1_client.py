"""A /v1 request through the real ASGI handler, in this process (no server, no socket).

For tests of the gateway's own behaviour: it drives `proxy.handler.GatewayHandler` as uvicorn would
and returns once the request is over, so the request scope has closed and its usage is queued.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from asgiref.testing import ApplicationCommunicator
from django.utils.datastructures import CaseInsensitiveMapping

from proxy.handler import GatewayHandler


@dataclass
class Response:
    status_code: int
    headers: CaseInsensitiveMapping
    content: bytes

    def json(self) -> dict:
        return orjson.loads(self.content)

    def __getitem__(self, name: str) -> str:
        return self.headers[name]

    def __contains__(self, name: str) -> bool:
        return name in self.headers


async def call_v1(method: str, path: str, body: dict | bytes = b"", **headers: str) -> Response:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"host": "testserver", "content-type": "application/json", "content-length": str(len(raw)), **headers}
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": [(name.encode(), value.encode()) for name, value in headers.items()],
    }
    communicator = ApplicationCommunicator(GatewayHandler(), scope)
    await communicator.send_input({"type": "http.request", "body": raw})
    start = await communicator.receive_output(timeout=10)
    content = b""
    while True:
        message = await communicator.receive_output(timeout=10)
        content += message.get("body", b"")
        if not message.get("more_body"):
            break
    await communicator.wait(timeout=10)  # the request's scope closes after the last byte
    found = CaseInsensitiveMapping({name.decode(): value.decode() for name, value in start["headers"]})
    return Response(start["status"], found, content)
