"""What a request may cost a real Tokios server before it is refused (issue 17, items 3 and 5): uvicorn
started with dev.py's flags (`UVICORN_ARGS`: the bounded httptools protocol of lib/contract.py) and
raw sockets for clients, so that a test can send a body that does not end, a header that does not
end, or stop sending.

- A 64 MiB chunked POST without a key is answered 401 at once, without the server reading it: the
  client gets its answer after the kernel's socket buffers filled (a few MiB), not after 64 MiB.
- With a key, a chunked body is refused 413 once it passes TOKIOS_MAX_BODY_BYTES (1 MiB here), and
  the server's resident memory does not grow by the body.
- An 8 MB header line is cut off by the server protocol (431), a 100 KiB head sent at once too.
- Slow bodies are answered 408 and closed after TOKIOS_BODY_TIMEOUT (2 s here).
- A foreign Host is a 400; with TOKIOS_HTTPS, plain http is a 403 before the key is looked at; the
  connector's WebSocket is refused (403) for a foreign Host.
- And the same server still answers a chat completion through a real connector.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time
from dataclasses import dataclass

import httpx
import pytest

from dev import UVICORN_ARGS

from .conftest import Proc, Server, base_env, free_port, wait_http

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MiB = 1024 * 1024
MAX_BODY = 1 * MiB  # TOKIOS_MAX_BODY_BYTES of the server here
BODY_TIMEOUT = 2.0  # TOKIOS_BODY_TIMEOUT of the server here
SOCKET_BUFFERS = 16 * MiB  # more than the kernel buffers between a client and the server on loopback
CHUNK = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"  # one 64 KiB chunk of a chunked body


def spawn(env: dict[str, str]) -> Server:
    port = free_port()
    proc = Proc(
        f"uvicorn-refusals-{port}",
        [
            sys.executable,
            "-m",
            "uvicorn",
            "tokios_site.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *UVICORN_ARGS,
            "--log-level",
            "warning",
            "--timeout-graceful-shutdown",
            "2",
        ],
        env,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
    except AssertionError:
        proc.kill()
        raise
    return Server(url=f"http://127.0.0.1:{port}", proc=proc, env=env, port=port)


@pytest.fixture(scope="module")
def bounded(_db_env):
    env = base_env(
        **_db_env,
        TOKIOS_MAX_BODY_BYTES=str(MAX_BODY),
        TOKIOS_BODY_TIMEOUT=f"{BODY_TIMEOUT:g}",
        TOKIOS_HEADER_TIMEOUT="3",
    )
    server = spawn(env)
    yield server
    server.proc.stop()


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@dataclass
class Attempt:
    sent: int  # bytes after the head that the server's side took
    seconds: float  # until the server answered or stopped taking them
    answer: bytes  # all the server sent before it closed (or 5 s of silence)

    @property
    def status(self) -> int | None:
        return int(self.answer[9:12]) if self.answer.startswith(b"HTTP/1.1 ") else None

    def json(self) -> dict:
        body = self.answer.split(b"\r\n\r\n", 1)[1]
        if self.header(b"transfer-encoding") == b"chunked":
            data = b""
            while True:
                size, _, rest = body.partition(b"\r\n")
                if int(size, 16) == 0:
                    break
                data, body = data + rest[: int(size, 16)], rest[int(size, 16) + 2 :]
            body = data
        return json.loads(body)

    def header(self, name: bytes) -> bytes | None:
        for line in self.answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name:
                return value.strip()
        return None


def send_until_answered(port: int, head: bytes, piece: bytes, total: int) -> Attempt:
    """`head`, then `piece` again and again, up to `total` bytes, until the server answers or stops
    taking them; then everything it sends until it closes."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    try:
        sock.sendall(head)
        started = time.monotonic()
        sock.setblocking(False)
        sent, pending = 0, memoryview(piece)
        while sent < total:
            readable, writable, _ = select.select([sock], [sock], [], 5)
            if readable or not writable:
                break  # an answer (or a close), or the server stopped reading
            try:
                n = sock.send(pending[: total - sent])
            except OSError:
                break
            sent += n
            pending = pending[n:] or memoryview(piece)
        seconds = time.monotonic() - started
        sock.setblocking(True)
        sock.settimeout(5)
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
        except OSError:
            pass
        return Attempt(sent, seconds, answer)
    finally:
        sock.close()


def head(path: str = "/v1/chat/completions", *extra: str, host: str = "127.0.0.1") -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"host: {host}", "content-type: application/json", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


CHUNKED = "transfer-encoding: chunked"


# --- the body --------------------------------------------------------------------------------------------


def test_a_64_mib_chunked_post_without_a_key_is_refused_before_it_is_read(bounded):
    before = rss(bounded.proc.popen.pid)

    attempt = send_until_answered(bounded.port, head("/v1/chat/completions", CHUNKED), CHUNK, 64 * MiB)

    assert attempt.status == 401, attempt.answer[:300]
    assert attempt.json()["error"]["code"] == "missing_api_key"
    assert attempt.sent < SOCKET_BUFFERS, f"the server took {attempt.sent} bytes of a body it did not need"
    assert attempt.seconds < 5
    assert attempt.header(b"connection") == b"close"
    assert rss(bounded.proc.popen.pid) - before < 16 * MiB
    print(f"\nno key: answered after {attempt.sent / MiB:.1f} MiB sent, {attempt.seconds:.2f} s")


def test_with_a_key_a_chunked_body_past_the_limit_is_a_413_without_holding_it(bounded, tenant):
    before = rss(bounded.proc.popen.pid)

    attempt = send_until_answered(
        bounded.port,
        head("/v1/messages", CHUNKED, f"x-api-key: {tenant.key}", "anthropic-version: 2023-06-01"),
        CHUNK,
        64 * MiB,
    )

    assert attempt.status == 413, attempt.answer[:300]
    assert attempt.json()["error"]["type"] == "request_too_large"  # Anthropic's shape for /v1/messages
    assert attempt.sent < MAX_BODY + SOCKET_BUFFERS
    assert rss(bounded.proc.popen.pid) - before < 16 * MiB
    print(f"\nkey, chunked: 413 after {attempt.sent / MiB:.1f} MiB sent, {attempt.seconds:.2f} s")


def test_a_content_length_over_the_limit_is_a_413_before_the_body_is_sent(bounded, tenant):
    attempt = send_until_answered(
        bounded.port,
        head("/v1/chat/completions", f"content-length: {64 * MiB}", f"authorization: Bearer {tenant.key}"),
        b"x" * 65536,
        64 * MiB,
    )

    assert attempt.status == 413, attempt.answer[:300]
    assert attempt.json()["error"]["code"] == "request_too_large"
    assert attempt.sent < SOCKET_BUFFERS


def test_slow_bodies_are_answered_408_and_closed_after_the_body_timeout(bounded, tenant):
    socks = []
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", bounded.port))
        sock.sendall(head("/v1/chat/completions", "content-length: 1000", f"authorization: Bearer {tenant.key}"))
        sock.sendall(b'{"model": ')
        socks.append(sock)
    started = time.monotonic()

    answers, closed_after = [], []
    for sock in socks:
        sock.settimeout(BODY_TIMEOUT + 5)
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
        except OSError:
            pass
        closed_after.append(time.monotonic() - started)
        answers.append(answer)
        sock.close()

    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers), answers[0][:300]
    assert b'"code":"request_timeout"' in answers[0]
    assert BODY_TIMEOUT - 0.5 <= min(closed_after) and max(closed_after) < BODY_TIMEOUT + 3
    print(f"\n20 slow bodies: closed after {min(closed_after):.2f}–{max(closed_after):.2f} s")


# --- the head --------------------------------------------------------------------------------------------


def test_an_8_mb_header_is_cut_off_by_the_server(bounded):
    before = rss(bounded.proc.popen.pid)
    start = b"GET /v1/models HTTP/1.1\r\nhost: 127.0.0.1\r\nx-big: "

    attempt = send_until_answered(bounded.port, start, b"a" * 65536, 8 * 1000 * 1000)

    assert attempt.sent < 8 * 1000 * 1000, "the server took the whole 8 MB header"
    assert attempt.status in (431, None), attempt.answer[:300]  # None: the close came before the answer
    assert rss(bounded.proc.popen.pid) - before < 16 * MiB
    print(f"\n8 MB header: stopped after {attempt.sent / MiB:.2f} MiB, answer {attempt.status}")


def test_a_head_over_the_limit_sent_at_once_is_a_431(bounded):
    padding = "x-padding: " + "p" * 100 * 1024

    attempt = send_until_answered(bounded.port, head("/v1/models", padding), b"", 0)

    assert attempt.status == 431, attempt.answer[:300]
    assert attempt.json()["error"]["code"] == "request_headers_too_large"


# --- host and scheme --------------------------------------------------------------------------------------


def test_a_foreign_host_is_a_400_in_the_caller_s_shape(bounded, tenant):
    response = httpx.post(
        f"{bounded.url}/v1/chat/completions",
        json={"model": tenant.model, "messages": []},
        headers={"host": "evil.example", "authorization": f"Bearer {tenant.key}"},
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_host"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_the_connector_websocket_is_refused_for_a_foreign_host(bounded):
    handshake = (
        "GET /v1/connector HTTP/1.1\r\nhost: {host}\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
        "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
    )

    def status_for(host: str) -> bytes:
        with socket.create_connection(("127.0.0.1", bounded.port)) as sock:
            sock.settimeout(5)
            sock.sendall(handshake.format(host=host).encode())
            return sock.recv(65536).split(b"\r\n", 1)[0]

    assert status_for("evil.example") == b"HTTP/1.1 403 Forbidden"
    assert status_for(f"127.0.0.1:{bounded.port}") == b"HTTP/1.1 101 Switching Protocols"


def test_with_https_required_plain_http_is_refused_and_the_proxy_s_https_is_served(_db_env, tenant):
    # The production settings: the tests' own (tokios_site.settings_test) turn https off.
    server = spawn(
        base_env(
            **_db_env, DJANGO_SETTINGS_MODULE="tokios_site.settings", TOKIOS_HTTPS="1", TRUST_X_FORWARDED_PROTO="true"
        )
    )
    try:
        body = {"model": tenant.model, "messages": [{"role": "user", "content": "hi"}]}
        key = {"authorization": f"Bearer {tenant.key}"}
        plain = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=key)
        forwarded_http = httpx.post(
            f"{server.url}/v1/chat/completions", json=body, headers={**key, "x-forwarded-proto": "http"}
        )
        forwarded_https = httpx.post(
            f"{server.url}/v1/chat/completions", json=body, headers={**key, "x-forwarded-proto": "https"}
        )
    finally:
        server.proc.stop()

    assert plain.status_code == forwarded_http.status_code == 403
    assert plain.json()["error"]["code"] == "https_required"
    assert "https://" in plain.json()["error"]["message"]
    assert forwarded_https.status_code == 503  # past the scheme and the key: no connector for the model


# --- and it still serves -----------------------------------------------------------------------------------


def test_the_bounded_server_answers_a_chat_completion_through_a_real_connector(bounded, tenant, start_connector):
    start_connector(tenant.token, srv=bounded)

    response = httpx.post(
        f"{bounded.url}/v1/chat/completions",
        json={"model": tenant.model, "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {tenant.key}"},
        timeout=30,
    )

    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]
    assert response.headers["x-content-type-options"] == "nosniff"
