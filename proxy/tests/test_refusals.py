"""What a /v1 request may cost the server before it is refused, in process through the real
`GatewayHandler`: the key is checked before the body is read, the body is bounded in size and in
time while it is read, the headers in size, the Host must be ours, and with TOKIOS_HTTPS plain http
is refused before the key is looked at. Every refusal is in the caller's shape, names its request
and says `nosniff`; one that leaves the body unread closes the connection.

The client here is hand-written (`Client`): it can send a body that never ends, or stop sending.
The same refusals through a real uvicorn: tests/e2e/test_refusals.py.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from proxy import gateway
from proxy.handler import AdmittedWebSocket, GatewayHandler, websocket_refusal

from .fake_call import chat_body as answer_body
from .fake_call import whole
from .v1 import ANTHROPIC, V1_DB

pytestmark = [V1_DB, pytest.mark.asyncio, pytest.mark.timeout(30)]

CHUNK = b"x" * 65536
ENOUGH = 16 * 1024 * 1024
CHAT = "/v1/chat/completions"


class Client:
    """One request as uvicorn hands it to the app. `body` is what the client sends, in order (then it
    waits: a client that sends nothing more, but stays); `endless` sends `CHUNK` forever."""

    def __init__(self, body: list[bytes] | None = None, *, endless: bool = False, complete: bool = True):
        self.parts = list(body or [])
        self.endless = endless
        self.complete = complete  # the last part ends the body
        self.received = 0  # body bytes the app took
        self.calls = 0  # receive() calls
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.content = b""

    async def receive(self) -> dict:
        self.calls += 1
        if self.endless:
            # A client that would go on forever; past ENOUGH bytes the app has plainly not stopped it.
            assert self.received < ENOUGH, f"the app read {self.received} bytes of an endless body"
            self.received += len(CHUNK)
            return {"type": "http.request", "body": CHUNK, "more_body": True}
        if self.parts:
            part = self.parts.pop(0)
            self.received += len(part)
            return {"type": "http.request", "body": part, "more_body": bool(self.parts) or not self.complete}
        await asyncio.Event().wait()  # still connected, sending nothing
        raise AssertionError("unreachable")

    async def send(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        else:
            self.content += message.get("body", b"")

    def json(self) -> dict:
        return orjson.loads(self.content)

    async def call(
        self,
        path: str = CHAT,
        *,
        method: str = "POST",
        secret: str | None = None,
        headers: dict[str, str] | None = None,
        scheme: str = "http",
        host: str = "testserver",
    ) -> Client:
        sent = {"host": host, "content-type": "application/json", **(headers or {})}
        if secret is not None:
            sent["authorization"] = f"Bearer {secret}"
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": scheme,
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(name.encode(), value.encode()) for name, value in sent.items()],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        async with asyncio.timeout(10):
            await GatewayHandler()(scope, self.receive, self.send)
        return self


def request_body(model: str) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "Hi"}]})


def assert_openai_error(client: Client, status: int, code: str) -> dict:
    assert client.status == status, client.content
    error = client.json()["error"]
    assert (error["code"], set(error)) == (code, {"message", "type", "param", "code"})
    assert client.headers["x-request-id"].startswith("req_")
    assert client.headers["x-content-type-options"] == "nosniff"
    return error


def assert_anthropic_error(client: Client, status: int, error_type: str) -> dict:
    assert client.status == status, client.content
    data = client.json()
    assert (data["type"], data["error"]["type"]) == ("error", error_type)
    assert data["request_id"] == client.headers["x-request-id"]
    assert client.headers["x-content-type-options"] == "nosniff"
    return data["error"]


# --- the key before the body --------------------------------------------------------------------------


@pytest.mark.parametrize("secret", [None, "sk-tokios-" + "0" * 40], ids=["no key", "unknown key"])
async def test_without_a_valid_key_the_body_is_not_read(secret, deployment, ledger):
    client = await Client(endless=True).call(secret=secret, headers={"transfer-encoding": "chunked"})

    assert_openai_error(client, 401, "missing_api_key" if secret is None else "invalid_api_key")
    assert client.calls == 0
    assert client.headers["connection"] == "close"  # the rest of the body is not worth reading
    ledger.only(surface="chat", status_code=401, key_id=None)


async def test_without_a_key_a_messages_request_gets_anthropic_s_401_unread(deployment, ledger):
    client = await Client(endless=True).call("/v1/messages", headers=ANTHROPIC)

    assert_anthropic_error(client, 401, "authentication_error")
    assert client.calls == 0
    ledger.only(surface="messages", status_code=401)


async def test_the_key_is_looked_up_once_per_request(key, deployment, upstream, ledger, monkeypatch):
    lookups = []
    authenticate_key = gateway.authenticate_key

    async def counted(secret):
        lookups.append(secret)
        return await authenticate_key(secret)

    monkeypatch.setattr(gateway, "authenticate_key", counted)
    upstream.answer(*whole(answer_body()))

    client = await Client([request_body(deployment.name)]).call(secret=key.secret)

    assert client.status == 200, client.content
    assert lookups == [key.secret]
    assert "connection" not in client.headers  # a request read whole keeps its connection
    ledger.only(status_code=200, key_id=key.pk)


async def test_a_key_that_cannot_be_looked_up_is_a_500_in_the_caller_s_shape_unread(deployment, ledger, monkeypatch):
    async def database_down(secret):
        raise ConnectionError("the database is down")

    monkeypatch.setattr(gateway, "authenticate_key", database_down)

    client = await Client(endless=True).call("/v1/messages", secret="sk-tokios-" + "0" * 40, headers=ANTHROPIC)

    error = assert_anthropic_error(client, 500, "api_error")
    assert client.headers["x-request-id"] in error["message"] and "database" not in error["message"]
    assert client.calls == 0
    ledger.only(surface="messages", status_code=500, error_code="internal_error")


# --- the body's size ----------------------------------------------------------------------------------


async def test_a_content_length_over_the_limit_is_a_413_before_the_body_is_read(key, deployment, settings, ledger):
    settings.MAX_BODY_BYTES = 1024

    client = await Client(endless=True).call(secret=key.secret, headers={"content-length": "64000000"})

    error = assert_openai_error(client, 413, "request_too_large")
    assert "1024" in error["message"]
    assert client.calls == 0 and client.headers["connection"] == "close"
    ledger.only(status_code=413, key_id=key.pk)


async def test_a_chunked_body_is_refused_once_it_passes_the_limit(key, deployment, settings, ledger):
    settings.MAX_BODY_BYTES = 1024 * 1024

    client = await Client(endless=True).call(
        "/v1/messages", secret=key.secret, headers={**ANTHROPIC, "transfer-encoding": "chunked"}
    )

    assert_anthropic_error(client, 413, "request_too_large")
    assert client.received <= settings.MAX_BODY_BYTES + len(CHUNK)  # not one chunk past the limit
    assert client.headers["connection"] == "close"
    ledger.only(surface="messages", status_code=413, key_id=key.pk)


async def test_a_body_of_exactly_the_limit_is_read(key, deployment, upstream, settings, ledger):
    body = request_body(deployment.name)
    settings.MAX_BODY_BYTES = len(body)
    upstream.answer(*whole(answer_body()))

    client = await Client([body[:10], body[10:]]).call(secret=key.secret)

    assert client.status == 200, client.content


# --- the body's time ----------------------------------------------------------------------------------


async def test_a_body_that_stops_coming_is_a_408_that_closes_the_connection(key, deployment, settings, ledger):
    settings.BODY_TIMEOUT = 0.3
    started = asyncio.get_running_loop().time()

    client = await Client([b'{"model": '], complete=False).call(secret=key.secret)

    assert 0.3 <= asyncio.get_running_loop().time() - started < 5
    error = assert_openai_error(client, 408, "request_timeout")
    assert "0.3" in error["message"]
    assert client.headers["connection"] == "close"
    ledger.only(surface="chat", status_code=408, key_id=key.pk)


async def test_a_slow_messages_body_is_a_408_in_anthropic_s_shape(key, deployment, settings, ledger):
    settings.BODY_TIMEOUT = 0.2

    client = await Client([b"{"], complete=False).call("/v1/messages", secret=key.secret, headers=ANTHROPIC)

    assert_anthropic_error(client, 408, "timeout_error")


# --- headers, host, scheme ----------------------------------------------------------------------------


async def test_headers_over_the_limit_are_a_431_before_the_key_is_looked_at(key, settings, monkeypatch):
    settings.MAX_HEADER_BYTES = 4096
    monkeypatch.setattr(gateway, "authenticate_key", None)  # a lookup would fail loudly

    client = await Client(endless=True).call(secret=key.secret, headers={"x-padding": "p" * 5000})
    anthropic = await Client(endless=True).call("/v1/messages", headers={**ANTHROPIC, "x-padding": "p" * 5000})

    error = assert_openai_error(client, 431, "request_headers_too_large")
    assert "4096" in error["message"]
    assert_anthropic_error(anthropic, 431, "invalid_request_error")
    assert client.calls == anthropic.calls == 0
    assert client.headers["connection"] == "close"


async def test_a_host_that_is_not_allowed_is_a_400_in_the_caller_s_shape(key, monkeypatch):
    monkeypatch.setattr(gateway, "authenticate_key", None)

    client = await Client(endless=True).call(secret=key.secret, host="evil.example")
    anthropic = await Client(endless=True).call("/v1/messages", headers=ANTHROPIC, host="evil.example")

    error = assert_openai_error(client, 400, "invalid_host")
    assert "evil.example" in error["message"]
    assert_anthropic_error(anthropic, 400, "invalid_request_error")
    assert client.calls == 0


async def test_allowed_hosts_patterns_and_ports_are_django_s(key, deployment, upstream, settings, ledger):
    settings.ALLOWED_HOSTS = [".tokios.example"]
    upstream.answer(*whole(answer_body()))
    upstream.answer(*whole(answer_body()))

    subdomain = await Client([request_body(deployment.name)]).call(secret=key.secret, host="api.tokios.example:8443")
    apex = await Client([request_body(deployment.name)]).call(secret=key.secret, host="tokios.example")
    other = await Client([request_body(deployment.name)]).call(secret=key.secret, host="tokios.example.evil")

    assert (subdomain.status, apex.status, other.status) == (200, 200, 400)


async def test_with_https_required_plain_http_is_refused_before_the_key_is_looked_at(key, settings, monkeypatch):
    settings.HTTPS = True
    monkeypatch.setattr(gateway, "authenticate_key", None)

    client = await Client(endless=True).call(secret=key.secret)
    anthropic = await Client(endless=True).call("/v1/messages", headers=ANTHROPIC)

    error = assert_openai_error(client, 403, "https_required")
    assert "https://" in error["message"]
    assert_anthropic_error(anthropic, 403, "permission_error")
    assert client.calls == 0 and client.headers["connection"] == "close"


async def test_with_https_required_https_is_served(key, deployment, upstream, settings, ledger):
    settings.HTTPS = True
    upstream.answer(*whole(answer_body()))

    client = await Client([request_body(deployment.name)]).call(secret=key.secret, scheme="https")

    assert client.status == 200, client.content


@pytest.mark.parametrize(
    ("trusted", "forwarded", "status"),
    [
        (True, "https", 200),
        (True, "http", 403),  # the proxy says the client spoke http, whatever reached us
        (False, "https", 403),  # a header we were not told to trust
    ],
)
async def test_behind_a_proxy_its_forwarded_scheme_decides(
    trusted, forwarded, status, key, deployment, upstream, settings, ledger
):
    settings.HTTPS = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if trusted else None
    upstream.answer(*whole(answer_body()))

    client = await Client([request_body(deployment.name)]).call(
        secret=key.secret, headers={"x-forwarded-proto": forwarded}
    )

    assert client.status == status, client.content


# --- what every response says -------------------------------------------------------------------------


async def test_every_response_says_nosniff(key, deployment, upstream, ledger):
    upstream.answer(*whole(answer_body()))

    answered = await Client([request_body(deployment.name)]).call(secret=key.secret)
    unknown_route = await Client([b"{}"]).call("/v1/nope", secret=key.secret)
    wrong_method = await Client([b""]).call(method="DELETE", secret=key.secret)
    bad_query = Client([b""])
    scope_query = {"query_string": b"\xff"}  # Django's own 400 before any request exists
    await _call_with(bad_query, scope_query, secret=key.secret)

    for client, status in ((answered, 200), (unknown_route, 404), (wrong_method, 405), (bad_query, 400)):
        assert client.status == status, client.content
        assert client.headers["x-content-type-options"] == "nosniff"


async def _call_with(client: Client, extra_scope: dict, *, secret: str) -> None:
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/v1/models",
        "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {secret}".encode())],
        **extra_scope,
    }
    await GatewayHandler()(scope, client.receive, client.send)


# --- the connector's WebSocket -------------------------------------------------------------------------


def websocket_scope(host: str, scheme: str = "ws", headers: dict[str, str] | None = None) -> dict:
    sent = {"host": host, **(headers or {})}
    return {
        "type": "websocket",
        "scheme": scheme,
        "path": "/v1/connector",
        "query_string": b"",
        "headers": [(name.encode(), value.encode()) for name, value in sent.items()],
        "server": ("127.0.0.1", 8000),
    }


async def test_the_connector_websocket_checks_the_host_and_the_scheme(settings):
    assert websocket_refusal(websocket_scope("127.0.0.1:8000")) is None
    assert "evil.example" in websocket_refusal(websocket_scope("evil.example"))

    settings.HTTPS = True
    assert "wss://" in websocket_refusal(websocket_scope("127.0.0.1:8000"))
    assert websocket_refusal(websocket_scope("127.0.0.1:8000", scheme="wss")) is None
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    forwarded = websocket_scope("127.0.0.1:8000", headers={"x-forwarded-proto": "https"})
    assert websocket_refusal(forwarded) is None


async def test_a_refused_websocket_is_closed_before_the_accept_and_never_reaches_the_consumer():
    reached = []

    async def consumer(scope, receive, send):
        reached.append(scope["headers"])

    sent = []

    async def receive():
        return {"type": "websocket.connect"}

    async def send(message):
        sent.append(message)

    await AdmittedWebSocket(consumer)(websocket_scope("evil.example"), receive, send)
    await AdmittedWebSocket(consumer)(websocket_scope("localhost:8000"), receive, send)

    assert [message["type"] for message in sent] == ["websocket.close"]  # the server answers the handshake 403
    assert len(reached) == 1
