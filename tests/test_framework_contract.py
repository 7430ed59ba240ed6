"""The framework internals the server relies on (lib/contract.py) still hold in the installed releases.

Each test names the library and what changed when it fails: after an upgrade, read the new code of
the part named, fix or drop the trick in lib/contract.py, measure again (docs/benchmarks.md,
"Framework contract"), then widen `VERIFIED`. The connector's are in tests/connector/test_contract.py.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import socket
import tempfile
import threading
import time
from importlib.metadata import version

import channels
import django
import httpx
import pytest
import uvicorn
import websockets
from asgiref.sync import iscoroutinefunction
from channels.consumer import AsyncConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler
from django.core.management import call_command
from django.http import HttpResponse, StreamingHttpResponse
from django.urls import path

from lib import contract
from lib.contract import VERIFIED, BareASGIHandler, BoundedHttpToolsProtocol, WhiteNoiseStaticFiles
from tests.v1_client import call_v1


def minor(release: str) -> tuple[int, int]:
    major, minor_, *_ = release.split(".")
    return int(major), int(minor_)


@pytest.mark.parametrize("library", sorted(VERIFIED))
def test_the_installed_release_is_one_the_contract_was_verified_on(library):
    installed = minor(version(library))
    assert installed in VERIFIED[library], (
        f"{library} {version(library)} is not a release lib/contract.py was verified on "
        f"({', '.join(f'{a}.{b}' for a, b in sorted(VERIFIED[library]))}): check what it relies on in "
        f"{library} against the new code, measure again, then add {installed[0]}.{installed[1]} to VERIFIED"
    )


# --- Django: BareASGIHandler (proxy/handler.py's GatewayHandler) ------------------------------------

STEPS = {
    "create_request": (["self", "scope", "body_file"], False),
    "listen_for_disconnect": (["self", "receive"], True),
    "send_response": (["self", "response", "send"], True),
}


@pytest.mark.parametrize("name", sorted(STEPS))
def test_the_steps_of_djangos_asgi_handler_keep_their_signatures(name):
    parameters, is_async = STEPS[name]
    method = getattr(ASGIHandler, name, None)
    assert method is not None, (
        f"Django {django.__version__}: ASGIHandler.{name} is gone (lib/contract.py BareASGIHandler)"
    )
    found = list(inspect.signature(method).parameters)
    assert found == parameters, (
        f"Django {django.__version__}: ASGIHandler.{name}{tuple(found)}, was {tuple(parameters)}"
    )
    assert iscoroutinefunction(method) is is_async, (
        f"Django {django.__version__}: ASGIHandler.{name} is {'no longer' if is_async else 'now'} a coroutine"
    )


def http_scope(method="POST", path="/v1/chat/completions", headers=()):
    return {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "path": path,
        "query_string": b"a=1",
        "headers": [(b"host", b"tokios.test"), *headers],
    }


def messages(*items):
    queue = list(items)

    async def receive():
        return queue.pop(0)

    return receive


def test_create_request_makes_djangos_request_from_the_scope():
    request, error = BareASGIHandler().create_request(
        http_scope(headers=[(b"x-thing", b"yes")]), io.BytesIO(b'{"x":1}')
    )

    assert error is None, f"Django {django.__version__}: ASGIHandler.create_request refused a good scope: {error}"
    assert (request.method, request.path, request.GET["a"]) == ("POST", "/v1/chat/completions", "1")
    assert (request.headers["X-Thing"], request.body) == ("yes", b'{"x":1}')


def test_the_request_reads_its_body_file_only_when_the_body_is_asked_for():
    """proxy/handler.py makes the request on an empty file and writes the body into it later."""
    body_file = tempfile.SpooledTemporaryFile(mode="w+b")
    request, _ = BareASGIHandler().create_request(http_scope(), body_file)

    body_file.write(b'{"late":true}')
    body_file.seek(0)

    assert request.body == b'{"late":true}', (
        f"Django {django.__version__}: ASGIHandler.create_request reads the body file when it makes the "
        "request; proxy/handler.py must then read the body before making it"
    )


@pytest.mark.asyncio
async def test_listen_for_disconnect_raises_when_the_client_leaves():
    with pytest.raises(RequestAborted):
        await BareASGIHandler().listen_for_disconnect(messages({"type": "http.disconnect"}))


@pytest.mark.asyncio
async def test_send_response_sends_the_start_then_the_body_of_plain_and_streamed_responses():
    sent = []

    async def send(message):
        sent.append(message)

    handler = BareASGIHandler()
    await handler.send_response(HttpResponse(b"hello", status=201, headers={"X-Id": "r1"}), send)

    async def parts():
        yield b"a"
        yield b"b"

    await handler.send_response(StreamingHttpResponse(parts(), content_type="text/event-stream"), send)

    what = f"Django {django.__version__}: ASGIHandler.send_response"
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 201, what
    assert (b"X-Id", b"r1") in sent[0]["headers"], what
    assert sent[1] == {"type": "http.response.body", "body": b"hello", "more_body": False}, what
    assert sent[2]["type"] == "http.response.start" and sent[2]["status"] == 200, what
    streamed = b"".join(m.get("body", b"") for m in sent[3:])
    assert streamed == b"ab" and sent[-1].get("more_body", False) is False, what


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_v1_request_runs_without_djangos_request_signals(settings):
    """What the bare handler is for: no thread per request for the signals' sync receivers."""
    settings.METERING_ENABLED = False  # the refused request's usage record would outlive the test's database
    fired = []

    def receiver(**kwargs):
        fired.append(kwargs.get("signal"))

    signals.request_started.connect(receiver)
    signals.request_finished.connect(receiver)
    try:
        response = await call_v1("GET", "/v1/models")
    finally:
        signals.request_started.disconnect(receiver)
        signals.request_finished.disconnect(receiver)

    assert response.status_code == 401  # no key: the view ran and answered
    assert fired == []


def sync_view(request):
    return HttpResponse(f"sync in {threading.current_thread().name}")


urlpatterns = [path("v1/sync", sync_view)]  # ROOT_URLCONF of the test below


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_sync_view_under_v1_runs_in_a_thread_as_django_would_run_it(settings):
    """What Django's private _get_response_async did for the handler before (django-ninja's root
    view, a 404, is such a view)."""
    settings.ROOT_URLCONF = __name__

    response = await call_v1("GET", "/v1/sync")

    assert response.status_code == 200
    assert response.content.startswith(b"sync in ") and response.content != b"sync in MainThread"


# --- Django + WhiteNoise: WhiteNoiseStaticFiles (tokios_site/asgi.py) ------------------------------


@pytest.mark.asyncio
async def test_djangos_static_handler_serves_through_the_serve_hook_whitenoise_fills():
    assert callable(getattr(ASGIStaticFilesHandler, "serve", None)), (
        f"Django {django.__version__}: ASGIStaticFilesHandler has no serve() hook any more"
    )
    app = WhiteNoiseStaticFiles(application=None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tokios.test") as client:
        response = await client.get("/static/dashboard/dashboard.css")
        missing = await client.get("/static/dashboard/missing.css")

    assert response.status_code == 200
    # WhiteNoise's headers, not django.views.static.serve's: Django still calls serve().
    assert response.headers.get("cache-control") == "max-age=60, public", (
        f"Django {django.__version__}: ASGIStaticFilesHandler no longer calls serve(); WhiteNoise is bypassed"
    )
    assert missing.status_code == 404


def test_after_collectstatic_a_client_that_accepts_gzip_gets_the_compressed_copy(settings, tmp_path):
    settings.STATIC_ROOT = tmp_path
    settings.WHITENOISE_USE_FINDERS = False  # what a server finds once collectstatic has run
    call_command("collectstatic", interactive=False, verbosity=0, ignore_patterns=["admin", "rest_framework", "drf_*"])

    async def fetch():
        app = WhiteNoiseStaticFiles(application=None)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tokios.test") as client:
            return await client.get("/static/dashboard/dashboard.css", headers={"accept-encoding": "gzip"})

    response = asyncio.run(fetch())

    assert (tmp_path / "dashboard" / "dashboard.css.gz").exists()  # settings.STORAGES made it
    assert response.headers["content-encoding"] == "gzip"
    assert response.headers["vary"] == "Accept-Encoding"
    assert response.content == (tmp_path / "dashboard" / "dashboard.css").read_bytes()  # httpx unzipped it


# --- Channels: ConnectorConsumer.__call__ (proxy/tunnel/consumer.py) -------------------------------


@pytest.mark.asyncio
async def test_a_channels_consumer_sends_through_base_send_as_the_connector_consumer_assumes():
    """ConnectorConsumer runs its own receive loops instead of Channels' __call__ and sets
    `base_send` itself; Channels' accept/send/close must still go through it."""
    sent = []

    async def base_send(message):
        sent.append(message)

    consumer = AsyncWebsocketConsumer()
    consumer.base_send = base_send
    await consumer.accept()
    await consumer.send(text_data="hi")
    await consumer.close(code=4001)

    what = f"Channels {channels.__version__}: AsyncWebsocketConsumer no longer sends through base_send"
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"], what
    assert "channel_layer_alias" in vars(AsyncConsumer), f"Channels {channels.__version__}: no channel_layer_alias"


# --- uvicorn: BoundedHttpToolsProtocol (dev.py's --http) -------------------------------------------------


async def plain_app(scope, receive, send):
    """Reads the whole body, as Django's handler does, and answers its length; accepts a WebSocket and
    echoes."""
    if scope["type"] == "http":
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"read %d" % size
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": message["text"]})


class BoundedServer:
    def __init__(self):
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task | None = None
        self.port = 0

    async def __aenter__(self) -> BoundedServer:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(plain_app, http=BoundedHttpToolsProtocol, lifespan="off", log_level="warning")
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server.serve(sockets=[sock]))
        while not self.server.started:
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc_info) -> None:
        assert self.server is not None and self.task is not None
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 10)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


async def answer(reader: asyncio.StreamReader, timeout: float = 5) -> bytes:
    """Everything the server sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), timeout)


HEAD = b"POST /x HTTP/1.1\r\nhost: 127.0.0.1\r\n"


@pytest.fixture
def bounds(settings, monkeypatch):
    settings.MAX_HEADER_BYTES = 4096
    settings.HEADER_TIMEOUT = 0.5
    settings.BODY_TIMEOUT = 0.5
    monkeypatch.setattr(contract, "BODY_GRACE", 0.1)
    return settings


@pytest.mark.asyncio
async def test_uvicorn_serves_requests_on_a_kept_alive_connection_through_the_bounded_protocol(bounds):
    async with BoundedServer() as server:
        reader, writer = await server.connect()
        for _ in range(2):
            writer.write(HEAD + b"content-length: 5\r\n\r\nhello")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200"), f"uvicorn {uvicorn.__version__}: {head!r}"
            assert await asyncio.wait_for(reader.readuntil(b"read 5"), 5)
            await asyncio.sleep(0.7)  # past both timeouts, between requests: uvicorn's keep-alive (5 s) rules
        writer.close()


def send_headers_until_refused(port: int, limit: int = 1024 * 1024) -> tuple[int, bytes]:
    """Header lines, one read each as over a network, until the server stops taking them or `limit`
    bytes went out; then all it answered. (A blocking socket: asyncio's reader drops what arrived
    once a write failed.)"""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(HEAD)
        sent = len(HEAD)
        line = b"x-padding: " + b"p" * 1000 + b"\r\n"
        try:
            while sent < limit:
                sock.sendall(line)
                sent += len(line)
                time.sleep(0.001)
        except OSError:
            pass
        sock.settimeout(5)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except OSError:
            pass
    return sent, received


@pytest.mark.asyncio
async def test_a_head_over_the_limit_is_a_431_from_the_server_and_the_connection_closes(bounds):
    async with BoundedServer() as server:
        sent, received = await asyncio.to_thread(send_headers_until_refused, server.port)

    assert sent < 1024 * 1024, f"uvicorn {uvicorn.__version__}: the protocol took {sent} bytes of headers"
    assert received.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), received[:200]
    assert b'"code":"request_headers_too_large"' in received


@pytest.mark.asyncio
async def test_a_head_that_stops_coming_is_a_408_from_the_server(bounds):
    async with BoundedServer() as server:
        reader, writer = await server.connect()
        writer.write(HEAD)
        started = time.monotonic()
        received = await answer(reader)

    assert 0.5 <= time.monotonic() - started < 3
    assert received.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), received[:200]


@pytest.mark.asyncio
async def test_a_connection_that_sends_nothing_is_closed(bounds):
    async with BoundedServer() as server:
        reader, _ = await server.connect()
        assert await answer(reader) == b""


@pytest.mark.asyncio
async def test_a_body_that_stops_coming_is_closed_by_the_server_whatever_the_app(bounds):
    async with BoundedServer() as server:
        reader, writer = await server.connect()
        writer.write(HEAD + b"content-length: 100\r\n\r\nsome")
        started = time.monotonic()
        received = await answer(reader)

    assert received == b""  # the app was still reading: closed, no answer
    assert 0.6 <= time.monotonic() - started < 3


@pytest.mark.asyncio
async def test_a_request_that_comes_in_pieces_within_the_timeouts_is_served(bounds):
    async with BoundedServer() as server:
        reader, writer = await server.connect()
        for piece in (b"POST /x HTTP/1.1\r\n", b"host: 127.0.0.1\r\n", b"content-length: 6\r\n\r\n", b"abc", b"def"):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.2)  # five reads, 1 s in all: each phase within its 0.5 s
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.close()

    assert head.startswith(b"HTTP/1.1 200"), head


@pytest.mark.asyncio
async def test_a_websocket_upgrade_through_the_bounded_protocol_outlives_its_timers(bounds):
    async with BoundedServer() as server:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            await asyncio.sleep(1.0)  # past the head and body deadlines of the upgrade request
            await ws.send("still here")
            assert await asyncio.wait_for(ws.recv(), 5) == "still here", (
                f"uvicorn {uvicorn.__version__}: the bounded protocol's timers reached an upgraded connection"
            )
