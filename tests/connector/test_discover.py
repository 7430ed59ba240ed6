"""``--upstream auto`` (tokios_connector/discover.py): which local model server it picks, against
tiny HTTP servers on free ports standing in for the default ports of llama.cpp, Ollama, vLLM and
LM Studio."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from tests.fakes.process import free_port
from tokios_connector.cli import parse_config, resolve_upstream
from tokios_connector.config import Config
from tokios_connector.discover import AUTO, Candidate, find_upstream

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(20)]

MODEL_LIST = json.dumps({"object": "list", "data": [{"id": "m"}]}).encode()


@asynccontextmanager
async def http_server(status: int = 200, body: bytes = MODEL_LIST, delay: float = 0.0) -> AsyncIterator[str]:
    """A server answering every request with `status` and `body` after `delay` seconds; yields its /v1 base."""
    paths: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        paths.append(head.split(b" ")[1].decode())
        await asyncio.sleep(delay)
        writer.write(
            f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()
        assert all(path == "/v1/models" for path in paths), "discovery asks for the model list only"


def nobody() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"


async def test_the_first_server_in_order_that_lists_models_is_picked() -> None:
    async with http_server() as ollama, http_server() as vllm:
        candidates = (Candidate("llama.cpp", nobody()), Candidate("Ollama", ollama), Candidate("vLLM", vllm))

        assert await find_upstream(candidates) == Candidate("Ollama", ollama)


async def test_a_preferred_server_wins_even_when_a_later_one_answers_first() -> None:
    async with http_server(delay=0.3) as llama, http_server() as ollama:
        candidates = (Candidate("llama.cpp", llama), Candidate("Ollama", ollama))

        assert await find_upstream(candidates) == Candidate("llama.cpp", llama)


@pytest.mark.parametrize(
    ("status", "body"),
    [(404, b'{"detail": "Not Found"}'), (200, b"<html>a web app</html>"), (200, b'{"ok": true}'), (503, MODEL_LIST)],
    ids=["404", "html", "no-model-list", "503"],
)
async def test_a_port_that_answers_something_else_is_not_taken_for_a_model_server(status: int, body: bytes) -> None:
    async with http_server(status, body) as web_app, http_server() as lm_studio:
        candidates = (Candidate("vLLM", web_app), Candidate("LM Studio", lm_studio))

        assert await find_upstream(candidates) == Candidate("LM Studio", lm_studio)


async def test_nothing_answering_in_time_is_none_within_the_budget() -> None:
    async with http_server(delay=10) as stuck:
        started = time.monotonic()

        found = await find_upstream((Candidate("llama.cpp", stuck), Candidate("Ollama", nobody())), budget=0.5)

    assert found is None
    assert time.monotonic() - started < 2


def auto_config(**extra: object) -> Config:
    return Config(server_url="ws://tokios.test/v1/connector", token="t", upstream=AUTO, **extra)  # type: ignore[arg-type]


async def test_auto_says_which_server_it_picked_and_uses_it() -> None:
    out = io.StringIO()
    async with http_server() as ollama:
        config = await resolve_upstream(auto_config(model="x"), (Candidate("Ollama", ollama),), out)

    assert config is not None and config.upstream == ollama and config.model == "x"
    assert out.getvalue() == f"upstream: Ollama at {ollama}\n"


async def test_auto_explains_what_it_tried_when_nothing_answers() -> None:
    out = io.StringIO()
    where = nobody()

    assert await resolve_upstream(auto_config(), (Candidate("vLLM", where),), out) is None

    assert f"--upstream auto found no model server: none of vLLM ({where})" in out.getvalue()
    assert "--upstream" in out.getvalue()


async def test_a_given_upstream_is_used_as_it_is() -> None:
    config = Config(server_url="ws://tokios.test/v1/connector", token="t", upstream="http://10.0.0.5:8080/v1")
    assert await resolve_upstream(config, (), io.StringIO()) is config


@pytest.mark.parametrize("given", ["auto", "AUTO", " auto "])
async def test_auto_is_taken_from_the_command_line_or_the_environment(given: str) -> None:
    argv = ["--server", "https://tokios.example"]
    env = {"TOKIOS_CONNECTOR_TOKEN": "t"}

    assert parse_config([*argv, "--upstream", given], env)[0].upstream == AUTO
    assert parse_config(argv, {**env, "TOKIOS_UPSTREAM": given})[0].upstream == AUTO
