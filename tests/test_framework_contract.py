"""The framework internals the server relies on (lib/contract.py) still hold in the installed releases.

Each test names the library and what changed when it fails: after an upgrade, read the new code of
the part named, fix or drop the trick in lib/contract.py, measure again (docs/benchmarks.md,
"Framework contract"), then widen `VERIFIED`. The connector's are in tests/connector/test_contract.py.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from importlib.metadata import version

import channels
import django
import httpx
import pytest
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

from lib.contract import VERIFIED, BareASGIHandler, WhiteNoiseStaticFiles
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
    "read_body": (["self", "receive"], True),
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


@pytest.mark.asyncio
async def test_read_body_gathers_the_body_and_a_client_that_left_aborts_it():
    handler = BareASGIHandler()
    body = await handler.read_body(
        messages({"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.request", "body": b"c"})
    )
    assert body.read() == b"abc", (
        f"Django {django.__version__}: ASGIHandler.read_body no longer returns the body as a file"
    )

    with pytest.raises(RequestAborted):
        await handler.read_body(messages({"type": "http.disconnect"}))


@pytest.mark.asyncio
async def test_create_request_makes_djangos_request_from_the_scope():
    handler = BareASGIHandler()
    body = await handler.read_body(messages({"type": "http.request", "body": b'{"x":1}'}))

    request, error = handler.create_request(http_scope(headers=[(b"x-thing", b"yes")]), body)

    assert error is None, f"Django {django.__version__}: ASGIHandler.create_request refused a good scope: {error}"
    assert (request.method, request.path, request.GET["a"]) == ("POST", "/v1/chat/completions", "1")
    assert (request.headers["X-Thing"], request.body) == ("yes", b'{"x":1}')


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
