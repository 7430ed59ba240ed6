"""Alert fixtures: a local HTTP receiver (a thread) that checks every webhook's signature, an
endpoint of acme pointing at it, usage events at chosen instants, and running pending deliveries.

The receiver listens on 127.0.0.1 over plain http, so these tests allow private addresses and http
(`webhook_rules`); the tests of those rules turn them back off."""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from alerts import delivery
from alerts.actions import create_endpoint
from alerts.models import Delivery, DeliveryStatus
from alerts.webhooks import SIGNATURE_HEADER, verify
from billing.models import UsageEvent

_request_ids = itertools.count(1)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    signed: bool  # the signature matched the receiver's secret, with a fresh timestamp

    @property
    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Receiver:
    url: str
    secret: str = ""
    replies: list[int] = field(default_factory=list)  # statuses to answer, in order; then 200
    delay: float = 0.0
    extra_headers: dict[str, str] = field(default_factory=dict)
    reply_body: bytes = b"ok"
    stream_seconds: float = 0.0  # answer 200 with a body that keeps coming for this long
    drip_seconds: float = 0.0  # send the answer's headers a byte at a time for this long
    received: list[Received] = field(default_factory=list)

    def signed(self) -> list[dict]:
        """The payloads whose signature checked out."""
        return [r.json for r in self.received if r.signed]


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            header = self.headers.get(SIGNATURE_HEADER, "")
            ok = bool(receiver.secret) and verify(header, body, receiver.secret)
            receiver.received.append(Received(self.path, dict(self.headers.items()), body, ok))
            if receiver.delay:
                time.sleep(receiver.delay)
            status = receiver.replies.pop(0) if receiver.replies else 200
            if receiver.drip_seconds:
                self._drip()
                return
            if receiver.stream_seconds:
                self._stream(status)
                return
            try:
                self.send_response(status)
                for name, value in receiver.extra_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(receiver.reply_body)))
                self.end_headers()
                self.wfile.write(receiver.reply_body)
            except OSError:
                pass  # the client gave up (the timeout tests)

        def _stream(self, status: int) -> None:
            deadline = time.monotonic() + receiver.stream_seconds
            try:
                self.send_response(status)
                self.end_headers()  # no Content-Length: the body lasts until the connection closes
                while time.monotonic() < deadline:
                    self.wfile.write(b"x" * 1024)
                    time.sleep(0.01)
            except OSError:
                pass  # the client stopped reading, as it should

        def _drip(self) -> None:
            deadline = time.monotonic() + receiver.drip_seconds
            try:
                self.wfile.write(b"HTTP/1.0 200 OK\r\nX-Slow: ")
                while time.monotonic() < deadline:
                    self.wfile.write(b"z")
                    self.wfile.flush()
                    time.sleep(0.05)
                self.wfile.write(b"\r\nContent-Length: 0\r\n\r\n")
            except OSError:
                pass

        def log_message(self, format, *args) -> None:  # quiet
            pass

    return Handler


@pytest.fixture
def receiver():
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    found = Receiver(url=f"http://127.0.0.1:{server.server_address[1]}/hooks/tokios")
    server.RequestHandlerClass = _handler(found)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield found
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def webhook_rules(settings):
    """The local receiver is http on a loopback address."""
    settings.WEBHOOK_ALLOW_PRIVATE = True
    settings.WEBHOOK_ALLOW_HTTP = True
    settings.WEBHOOK_MAX_ATTEMPTS = 3
    settings.WEBHOOK_BACKOFF_SECONDS = 30


@pytest.fixture
def endpoint(org, owner, receiver):
    created, secret = create_endpoint(org=org, url=receiver.url, description="ops", created_by=owner)
    receiver.secret = secret
    created.secret = secret
    return created


def spend(*, org, key=None, deployment=None, at: datetime, cost_micros: int = 0, status: int = 200, count: int = 1):
    """Usage events, as the gateway writes them."""
    UsageEvent.objects.bulk_create(
        UsageEvent(
            request_id=f"req-{next(_request_ids)}",
            created_at=at,
            org=org,
            api_key=key,
            deployment=deployment,
            surface="chat",
            status_code=status,
            cost_micros=cost_micros,
        )
        for _ in range(count)
    )


def deliver_pending() -> list[delivery.Outcome]:
    """One attempt of every pending delivery (the task would wait out the backoff in between)."""
    pending = Delivery.objects.filter(status=DeliveryStatus.PENDING).order_by("pk").values_list("pk", flat=True)
    return [delivery.attempt(pk) for pk in pending]
