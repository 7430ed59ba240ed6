"""The real `python -m tokios_connector` process: exit codes, signals, messages."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest

from tests.connector.conftest import TOKEN, Upstream
from tests.connector.tunnel import FakeTokios
from tests.fakes.process import REPO_ROOT, free_port
from tokios_connector.protocol import Draining

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


async def spawn(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    # Run from the repository root without installing: that is how the README's command runs it.
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("TOKIOS_")}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tokios_connector",
        *args,
        cwd=REPO_ROOT,
        env={**clean_env, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(proc: asyncio.subprocess.Process, timeout: float = 10.0) -> tuple[int, str]:
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        _, stderr = await proc.communicate()
        raise AssertionError(f"connector did not exit:\n{stderr.decode()}") from None
    return proc.returncode, stderr.decode()


async def test_a_rejected_token_exits_2_with_a_clear_message(tunnel: FakeTokios, upstream: Upstream) -> None:
    proc = await spawn("--server", tunnel.http_url, "--token", TOKEN, "--upstream", upstream.base)
    peer = await tunnel.accept(timeout=10)
    assert (await peer.next_control()).type == "hello"
    await peer.ws.close(4001, "unknown connector token")

    code, stderr = await finish(proc)

    assert code == 2
    assert "connector token rejected by server (close 4001): check --token" in stderr
    assert TOKEN not in stderr
    with pytest.raises(asyncio.TimeoutError):
        await tunnel.accept(timeout=0.5)  # and it did not come back


async def test_a_token_revoked_while_connected_exits_2(tunnel: FakeTokios, upstream: Upstream) -> None:
    proc = await spawn(
        env={"TOKIOS_SERVER": tunnel.http_url, "TOKIOS_CONNECTOR_TOKEN": TOKEN, "TOKIOS_UPSTREAM": upstream.base}
    )
    peer = await tunnel.accept(timeout=10)
    await peer.handshake()
    await peer.ws.close(4003, "token revoked")

    code, stderr = await finish(proc)

    assert code == 2
    assert "(close 4003): check --token" in stderr


async def test_a_server_that_refuses_our_protocol_version_makes_it_exit_2(
    tunnel: FakeTokios, upstream: Upstream
) -> None:
    proc = await spawn("--server", tunnel.http_url, "--token", TOKEN, "--upstream", upstream.base)
    peer = await tunnel.accept(timeout=10)
    assert (await peer.next_control()).protocol == 2
    await peer.ws.close(4004, "connector protocol 2 is not supported; this server speaks 3")

    code, stderr = await finish(proc)

    assert code == 2
    assert "server refused connector protocol 2 (close 4004): upgrade the server or use a connector" in stderr
    assert "this server speaks 3" in stderr  # the server's own reason is shown too
    with pytest.raises(asyncio.TimeoutError):
        await tunnel.accept(timeout=0.5)


async def test_a_welcome_of_protocol_1_makes_it_exit_2(tunnel: FakeTokios, upstream: Upstream) -> None:
    proc = await spawn("--server", tunnel.http_url, "--token", TOKEN, "--upstream", upstream.base)
    peer = await tunnel.accept(timeout=10)
    await peer.handshake(protocol=1)

    code, stderr = await finish(proc)

    assert code == 2
    assert (
        "the server speaks connector protocol 1; this connector speaks 2: "
        "upgrade the server or use a matching connector"
    ) in stderr
    with pytest.raises(asyncio.TimeoutError):
        await tunnel.accept(timeout=0.5)


async def test_sigterm_drains_in_flight_requests_then_exits_0(tunnel: FakeTokios, upstream: Upstream) -> None:
    proc = await spawn("--server", tunnel.http_url, "--token", TOKEN, "--upstream", upstream.base, "--grace", "10")
    peer = await tunnel.accept(timeout=10)
    await peer.handshake()
    await peer.request("long", {"messages": [{"role": "user", "content": "[[words=8 delay_ms=100]]"}], "stream": True})
    kind, start, _ = await peer.next_event("long")
    assert kind == "response.start"

    proc.send_signal(signal.SIGTERM)

    assert await peer.next_control() == Draining()
    await peer.request("late", {"messages": [{"role": "user", "content": "hi"}]})
    assert (await peer.collect("late")).error.code == "overloaded"
    finished = await peer.collect("long", start=start)
    assert finished.end is not None
    assert finished.sse_data()[-1] == "[DONE]"
    code, stderr = await finish(proc)
    assert code == 0, stderr
    await asyncio.wait_for(peer.ws.wait_closed(), 5)
    assert peer.ws.close_code == 1001
    assert upstream.stats()["completed"] == 1


async def test_sigterm_while_disconnected_exits_0_at_once(upstream: Upstream) -> None:
    proc = await spawn("--server", f"http://127.0.0.1:{free_port()}", "--token", TOKEN, "--upstream", upstream.base)
    assert proc.stderr is not None
    seen: list[str] = []
    async with asyncio.timeout(20):  # on a loaded machine the import alone can take seconds
        while not any("connect to ws://127.0.0.1:" in line for line in seen):
            line = await proc.stderr.readline()
            assert line, "the connector exited before it reported a failed connection"
            seen.append(line.decode())
    proc.send_signal(signal.SIGINT)  # now failing to connect and backing off

    code, stderr = await finish(proc, timeout=5)

    assert code == 0, "".join(seen) + stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--token", "t", "--upstream", "http://127.0.0.1:1/v1"], "--server is required (or set TOKIOS_SERVER)"),
        (["--server", "https://x", "--upstream", "http://127.0.0.1:1/v1"], "a connector token is required"),
        (["--server", "https://x", "--token", "t"], "--upstream is required"),
        (
            ["--server", "tokios.example", "--token", "t", "--upstream", "http://127.0.0.1:1/v1"],
            "--server must start with",
        ),
        (
            ["--server", "https://x", "--token", "t", "--upstream", "http://127.0.0.1:1/v1", "--max-concurrency", "0"],
            "--max-concurrency must be a positive integer",
        ),
        (
            [
                "--server",
                "https://x",
                "--token",
                "t",
                "--upstream",
                "http://127.0.0.1:1/v1",
                "--max-concurrency",
                "100001",
            ],
            "--max-concurrency must be a positive integer up to 100000",
        ),
        (
            ["--server", "https://x", "--token", "t", "--upstream", "http://127.0.0.1:1/v1", "--grace", "soon"],
            "--grace must be a number",
        ),
    ],
)
async def test_bad_arguments_exit_2_with_a_message(args: list[str], message: str) -> None:
    proc = await spawn(*args)
    code, stderr = await finish(proc)
    assert code == 2
    assert message in stderr
