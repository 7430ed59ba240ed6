"""The probe (tokios_connector/probe.py): what it reads from the model servers it meets, and that
nothing a hostile upstream answers makes it hang, grow or announce what the protocol refuses.

The model servers here are httpx MockTransport handlers shaped as each real server answers a
body that is not JSON (the llama.cpp shape is checked against the real binary in
test_probe_llama.py)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from tokios_connector.config import Config
from tokios_connector.probe import CONTROL_PATH, MODELS_BODY_LIMIT, USER_AGENT, Findings, hello, probe
from tokios_connector.protocol import MAX_MODEL_NAME, MAX_MODELS, decode_from_connector, encode

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(20)]

BASE = "http://model.test:8080/v1"
Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


def error(status: int, message: str = "error") -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": status, "message": message}})


def server(routes: dict[tuple[str, str], Callable[[httpx.Request], httpx.Response]]) -> Handler:
    """A model server with these (method, path) routes; anything else is a 404."""

    async def handle(request: httpx.Request) -> httpx.Response:
        route = routes.get((request.method, request.url.path))
        return route(request) if route else error(404, "File Not Found")

    return handle


def not_json(status: int) -> Callable[[httpx.Request], httpx.Response]:
    """A route that fails to parse what the probe sends with `status`."""

    def route(request: httpx.Request) -> httpx.Response:
        try:
            json.loads(request.content)
        except ValueError:
            return error(status, "parse error")
        raise AssertionError(f"the probe sent JSON to {request.url.path}")

    return route


def answer(payload: object, status: int = 200) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status, json=payload)


def tokenize(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    assert body == {"content": ""}, "the probe asks to tokenize nothing but the empty string"
    return httpx.Response(200, json={"tokens": []})


LLAMA_CPP = server(
    {
        ("POST", "/v1/chat/completions"): not_json(500),
        ("POST", "/v1/messages"): not_json(500),
        ("POST", "/v1/messages/count_tokens"): not_json(500),
        ("POST", "/v1/responses"): not_json(500),
        ("POST", "/v1/embeddings"): lambda r: error(501, "This server does not support embeddings"),
        ("POST", "/tokenize"): tokenize,
        ("GET", "/v1/models"): answer({"models": [{"name": "gemma.gguf"}], "data": [{"id": "gemma.gguf"}]}),
        ("GET", "/props"): answer({"build_info": "b6000-1a2b3c", "total_slots": 4}),
    }
)
VLLM = server(
    {
        ("POST", "/v1/chat/completions"): not_json(400),
        ("POST", "/v1/responses"): not_json(400),
        ("POST", "/v1/embeddings"): not_json(400),
        ("POST", "/tokenize"): lambda r: error(400, "prompt: Field required"),  # another /tokenize
        ("GET", "/v1/messages"): answer({}),  # POST on a GET-only route: 405
        ("GET", "/v1/models"): answer({"object": "list", "data": [{"id": "Qwen/Qwen3-8B"}, {"id": "lora-a"}]}),
    }
)
OLLAMA = server(
    {
        ("POST", "/v1/chat/completions"): not_json(400),
        ("POST", "/v1/messages"): not_json(400),
        ("POST", "/v1/responses"): not_json(400),
        ("POST", "/v1/embeddings"): not_json(400),
        ("GET", "/api/tags"): answer({"models": [{"name": "llama3.2:3b", "model": "llama3.2:3b"}, {"model": "qwen3"}]}),
        ("GET", "/api/version"): answer({"version": "0.12.3"}),
    }
)


def method_aware(handler: Handler) -> Handler:
    """405 for a path that exists with another method, as FastAPI answers."""

    async def handle(request: httpx.Request) -> httpx.Response:
        response = await handler(request)
        if response.status_code == 404 and request.method == "POST" and request.url.path == "/v1/messages":
            return httpx.Response(405, json={"detail": "Method Not Allowed"})
        return response

    return handle


class Body(httpx.AsyncByteStream):
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data


async def probing(handler: Handler, *, budget: float = 3.0, key: str | None = None) -> Findings:
    async def streamed(request: httpx.Request) -> httpx.Response:
        # As off the network: the probe reads raw bytes, which a response built from content has not.
        response = await handler(request)
        if not response.is_stream_consumed:
            return response
        return httpx.Response(response.status_code, headers=response.headers, stream=Body(response.content))

    async with httpx.AsyncClient(transport=httpx.MockTransport(streamed)) as http:
        return await probe(http, BASE, key, budget=budget)


async def test_llama_cpp_speaks_every_surface_but_switched_off_embeddings() -> None:
    found = await probing(LLAMA_CPP)

    assert found.surfaces == ("chat", "messages", "responses", "count_tokens", "tokenize")
    assert found.models == ("gemma.gguf",)
    assert found.server == "llama.cpp b6000-1a2b3c"
    assert found.answered and found.control_status == 404


async def test_vllm_speaks_chat_responses_and_embeddings_but_not_messages_nor_llama_s_tokenize() -> None:
    found = await probing(method_aware(VLLM))

    assert found.surfaces == ("chat", "responses", "embeddings")
    assert found.models == ("Qwen/Qwen3-8B", "lora-a")
    assert found.server is None


async def test_ollama_lists_its_models_from_its_own_api_when_v1_models_fails() -> None:
    found = await probing(OLLAMA)

    assert found.surfaces == ("chat", "messages", "responses", "embeddings")
    assert found.models == ("llama3.2:3b", "qwen3")
    assert found.server == "Ollama 0.12.3"


async def test_every_question_says_who_asks_and_carries_the_upstream_key() -> None:
    seen: list[httpx.Request] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return await LLAMA_CPP(request)

    await probing(handle, key="up-key")

    assert {r.headers["user-agent"] for r in seen} == {USER_AGENT}
    assert {r.headers["authorization"] for r in seen} == {"Bearer up-key"}
    assert any(r.url.path == "/v1" + CONTROL_PATH for r in seen)


@pytest.mark.parametrize("status", [200, 401, 503])
async def test_a_server_that_answers_every_path_alike_announces_no_surfaces(status: int) -> None:
    async def handle(request: httpx.Request) -> httpx.Response:
        return error(status, "Unexpected endpoint or method")

    found = await probing(handle)

    assert found.surfaces is None
    assert found.control_status == status


async def test_a_catch_all_server_still_shows_the_routes_it_answers_differently() -> None:
    async def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/chat/completions":
            return error(400, "bad json")
        return httpx.Response(200, json={"error": "Unexpected endpoint or method"})

    assert (await probing(handle)).surfaces == ("chat",)


async def test_a_server_that_is_down_is_reported_as_not_answering() -> None:
    async def handle(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    found = await probing(handle)

    assert found == Findings()
    assert not found.answered


async def test_a_model_list_over_the_read_limit_is_not_read() -> None:
    huge = {"data": [{"id": f"m{i}"} for i in range(MODELS_BODY_LIMIT // 10)]}
    assert len(json.dumps(huge)) > MODELS_BODY_LIMIT

    found = await probing(server({("GET", "/v1/models"): answer(huge)}))

    assert found.models is None


async def test_more_models_than_a_hello_may_list_are_cut_and_counted() -> None:
    many = {"data": [{"id": f"model-{i}"} for i in range(MAX_MODELS + 44)]}

    found = await probing(server({("GET", "/v1/models"): answer(many)}))

    assert found.models is not None and len(found.models) == MAX_MODELS
    assert found.models[0] == "model-0" and found.models[-1] == f"model-{MAX_MODELS - 1}"
    assert found.models_dropped == 44


async def test_model_names_the_protocol_refuses_are_left_out() -> None:
    names = ["a" * (MAX_MODEL_NAME + 1), "", 5, None, "bad\nname", " padded", "ok", "ok", "b" * MAX_MODEL_NAME]
    listed = {"data": [{"id": name} for name in names] + ["not an object"]}

    found = await probing(server({("GET", "/v1/models"): answer(listed)}))

    assert found.models == ("ok", "b" * MAX_MODEL_NAME)
    assert found.models_dropped == 8


@pytest.mark.parametrize(
    "body",
    [b"<html>not json</html>", b"[" * 200_000, b'{"data": "nope"}', b"[1, 2]", b'{"models": {"a": 1}}'],
    ids=["html", "deeply-nested", "data-not-a-list", "a-list", "models-not-a-list"],
)
async def test_a_model_list_that_is_not_one_is_no_model_list(body: bytes) -> None:
    found = await probing(server({("GET", "/v1/models"): lambda r: httpx.Response(200, content=body)}))

    assert found.models is None


async def test_hostile_text_in_props_is_cut_and_cleaned() -> None:
    props = {"build_info": "b1\x1b[31m" + "x" * 10_000}

    found = await probing(server({("GET", "/props"): answer(props)}))

    assert found.server is not None
    assert found.server.startswith("llama.cpp b1[31mxxx") and len(found.server) <= len("llama.cpp ") + 80
    assert found.server.isprintable()


async def test_a_slow_server_costs_at_most_the_budget_and_the_quick_answers_still_count() -> None:
    async def slow_body() -> AsyncIterator[bytes]:
        yield b'{"data": ['
        await asyncio.sleep(30)
        yield b"]}"

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, content=slow_body())  # drips: no read timeout would fire
        if request.url.path == "/v1/responses":
            await asyncio.sleep(30)
        return await LLAMA_CPP(request)

    started = time.monotonic()
    found = await probing(handle, budget=0.5)

    assert time.monotonic() - started < 2
    assert found.models is None
    assert found.surfaces == ("chat", "messages", "count_tokens", "tokenize")  # no "responses": it never said


async def test_the_hello_carries_what_the_probe_found_and_the_server_reads_it_back() -> None:
    config = Config(server_url="ws://tokios.test/v1/connector", token="t", upstream=BASE, max_concurrency=8)
    found = await probing(LLAMA_CPP)

    frame = decode_from_connector(encode(hello(config, 4, found)))

    assert frame == hello(config, 4, found)
    assert (frame.surfaces, frame.models, frame.slots) == (found.surfaces, ("gemma.gguf",), 4)  # type: ignore[union-attr]
    silent = decode_from_connector(encode(hello(config, 4, None)))
    assert (silent.surfaces, silent.models) == (None, None)  # type: ignore[union-attr]
