"""Fuzzing /v1: whatever a client sends, the answer is not a 5xx (but the connector-offline 503) and
every error has the shape of the surface that was called.

In process, through the real `GatewayHandler` (`proxy.tests.v1.call_v1`), with acme's `key` and two
models it may call, whose connectors are offline: a request that passes every check ends in the 503
"connector offline", the one 5xx allowed here. Sized by tests/fuzz/budget.py.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from django.db import connections
from hypothesis import currently_in_test_context, event, given, note
from hypothesis import strategies as st

from billing import metering
from proxy.tests.v1 import ANTHROPIC, Exchange, call_v1

from .budget import fuzz
from .known import ServerErrors
from .strategies import Nested, encode, header_values, hostile_values, mutated, query_strings, raw_bodies

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


@pytest_asyncio.fixture(autouse=True)
async def usage_written():
    """Every request leaves a usage record: written before the test's rows are flushed. The
    lookups' thread (sync_to_async) closes its connection, or the test database could not be dropped."""
    yield
    await metering.flush()
    await sync_to_async(connections.close_all)()


MODELS = ("gemma-tunnel", "globex-shared")  # acme's own `deployment`, and globex's `granted_deployment`

CHAT = {
    "model": "gemma-tunnel",
    "messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is 6 x 7?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "calc", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ],
    "max_tokens": 16,
    "temperature": 0.5,
    "stream": False,
    "stop": ["\n\n"],
    "tools": [{"type": "function", "function": {"name": "calc", "parameters": {"type": "object"}}}],
    "tool_choice": "auto",
    "response_format": {"type": "text"},
}
RESPONSES = {
    "model": "gemma-tunnel",
    "instructions": "Be brief.",
    "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "What is 6 x 7?"}]},
        {"type": "function_call", "call_id": "c1", "name": "calc", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "42"},
    ],
    "max_output_tokens": 16,
    "temperature": 0.5,
    "stream": False,
    "store": False,
    "tools": [{"type": "function", "name": "calc", "parameters": {"type": "object"}}],
    "tool_choice": "auto",
    "text": {"format": {"type": "text"}},
}
MESSAGES = {
    "model": "gemma-tunnel",
    "max_tokens": 16,
    "system": [{"type": "text", "text": "Be brief."}],
    "messages": [
        {"role": "user", "content": "What is 6 x 7?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "calc", "input": {"q": "6*7"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "42"}]},
    ],
    "tools": [{"name": "calc", "description": "Arithmetic.", "input_schema": {"type": "object"}}],
    "tool_choice": {"type": "auto"},
    "stop_sequences": ["\n\n"],
    "temperature": 0.5,
    "stream": False,
    "metadata": {"user_id": "u-1"},
}
COUNT_TOKENS = {key: value for key, value in MESSAGES.items() if key not in ("max_tokens", "stream", "metadata")}
EMBEDDINGS = {"model": "gemma-tunnel", "input": ["What is 6 x 7?", "42"], "encoding_format": "base64", "user": "u-1"}

# path -> (the valid body, whether the surface answers in Anthropic's shape)
SURFACES: dict[str, tuple[dict, bool]] = {
    "/v1/chat/completions": (CHAT, False),
    "/v1/responses": (RESPONSES, False),
    "/v1/messages": (MESSAGES, True),
    "/v1/messages/count_tokens": (COUNT_TOKENS, True),
    "/v1/embeddings": (EMBEDDINGS, False),
}


# --- the property ---------------------------------------------------------------------------------


def check_answer(exchange: Exchange, errors: ServerErrors, *, anthropic: bool) -> None:
    """No 5xx but the offline 503, and an error body in the surface's shape."""
    status = exchange.status
    assert status is not None, "no answer"
    event(f"status {status}")
    if status >= 500:
        body = exchange.json()
        code = (body.get("error") or {}).get("code") if isinstance(body.get("error"), dict) else None
        offline = status == 503 and (anthropic or code == "connector_offline")
        if not offline:
            known = errors.all_known()
            assert known is not None, f"HTTP {status}: {exchange.body[:300]!r} — {errors.describe()}"
            event(f"known failure: {known.name}")
            return
    if status >= 400:
        assert_error_shape(exchange, anthropic=anthropic)


def assert_error_shape(exchange: Exchange, *, anthropic: bool) -> None:
    assert exchange.headers.get("content-type", "").startswith("application/json"), exchange.headers
    body = exchange.json()
    if anthropic:
        assert body.get("type") == "error", body
        error = body.get("error")
        assert isinstance(error, dict) and isinstance(error.get("type"), str), body
        assert isinstance(error.get("message"), str) and error["message"], body
    else:
        error = body.get("error")
        assert isinstance(error, dict), body
        assert isinstance(error.get("message"), str) and error["message"], body
        assert isinstance(error.get("type"), str), body
        assert "param" in error and "code" in error, body


async def send(
    method: str, path: str, body: Any, *, secret: str | None, headers: dict[str, str] | None = None
) -> tuple[Exchange, ServerErrors]:
    raw = body if isinstance(body, bytes) else encode(body)
    if currently_in_test_context():  # a failing example prints what was sent
        note(f"{method} {path} {headers or ''} {raw[:2000]!r}")
    with ServerErrors() as errors:
        exchange = await call_v1(method, path, raw, secret=secret, headers=headers)
    return exchange, errors


# --- bodies ---------------------------------------------------------------------------------------


@st.composite
def surface_requests(draw) -> tuple[str, Any, bool]:
    path = draw(st.sampled_from(list(SURFACES)))
    template, anthropic = SURFACES[path]
    template = {**template, "model": draw(st.sampled_from(MODELS))}
    return path, draw(mutated(template)), anthropic


@fuzz(weight=8)
@given(case=surface_requests())
async def test_no_body_field_can_make_a_surface_fail(key, deployment, granted_deployment, case):
    path, body, anthropic = case
    exchange, errors = await send("POST", path, body, secret=key.secret)
    check_answer(exchange, errors, anthropic=anthropic)


@fuzz(weight=2)
@given(path=st.sampled_from(list(SURFACES)), body=st.one_of(raw_bodies, hostile_values.map(encode)))
async def test_no_body_that_is_not_a_request_can_make_a_surface_fail(key, deployment, path, body):
    exchange, errors = await send("POST", path, body, secret=key.secret)
    check_answer(exchange, errors, anthropic=SURFACES[path][1])


@fuzz(weight=2)
@given(
    path=st.sampled_from(list(SURFACES)),
    stream=st.booleans(),
    anthropic_header=st.booleans(),
    headers=st.dictionaries(
        st.sampled_from(
            [
                "content-type",
                "accept",
                "anthropic-version",
                "anthropic-beta",
                "x-api-key",
                "openai-organization",
                "x-request-id",
                "user-agent",
            ]
        ),
        header_values,
        max_size=3,
    ),
    query=query_strings,
)
async def test_no_header_or_query_string_can_make_a_surface_fail(
    key, deployment, path, stream, anthropic_header, headers, query
):
    template, anthropic = SURFACES[path]
    body = {**template, "stream": stream} if "stream" in template else template
    sent = {**(ANTHROPIC if anthropic_header else {}), **headers}
    if "x-api-key" in sent:
        secret = None  # the key goes (or does not) in x-api-key alone
    else:
        secret = key.secret
    exchange, errors = await send("POST", f"{path}?{query}" if query else path, body, secret=secret, headers=sent)
    check_answer(exchange, errors, anthropic=anthropic)


@fuzz(weight=2)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]),
    path=st.one_of(
        st.sampled_from(
            [
                "/v1/models",
                "/v1/models/gemma-tunnel",
                "/v1/models/globex-shared",
                "/v1/responses/resp_1",
                "/v1/nothing",
                "/v1/",
                "/v1/messages/x",
            ]
        ),
        st.text(
            alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#"), max_size=30
        ).map(lambda tail: "/v1/models/" + tail),
        st.text(
            alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#"), max_size=30
        ).map(lambda tail: "/v1/responses/" + tail),
        st.text(max_size=30).map(lambda tail: "/v1/" + tail),
    ),
    anthropic_header=st.booleans(),
    query=query_strings,
)
async def test_no_route_or_method_can_make_the_gateway_fail(key, deployment, method, path, anthropic_header, query):
    headers = ANTHROPIC if anthropic_header else {}
    exchange, errors = await send(method, f"{path}?{query}" if query else path, b"", secret=key.secret, headers=headers)
    check_answer(exchange, errors, anthropic=answers_as_anthropic(path, exchange.status, header=anthropic_header))


ROUTES = re.compile(r"/v1/(chat/completions|embeddings|responses(/[^/]+)?|models(/[^/]+)?|messages(/count_tokens)?)")


def answers_as_anthropic(path: str, status: int | None, *, header: bool) -> bool:
    """Messages answer as Anthropic; the models list, an unknown route and a wrong method do when
    the client sent `anthropic-version`; the OpenAI surfaces never do."""
    if path.startswith("/v1/messages"):
        return True
    return header and (path.startswith("/v1/models") or status == 405 or not ROUTES.fullmatch(path))


@fuzz(weight=1)
@given(
    path=st.sampled_from(list(SURFACES)),
    authorization=st.one_of(
        st.none(),
        header_values,
        header_values.map(lambda s: "Bearer " + s),
        header_values.map(lambda s: "Bearer sk-tokios-" + s),
        st.just("Bearer " + "sk-tokios-" + "a" * 300),
    ),
)
async def test_no_credential_can_make_a_surface_fail(key, deployment, path, authorization):
    template, anthropic = SURFACES[path]
    headers = {} if authorization is None else {"authorization": authorization}
    exchange, errors = await send("POST", path, template, secret=None, headers=headers)
    check_answer(exchange, errors, anthropic=anthropic)
    assert exchange.status == 401, exchange.status


# --- the findings, one regression example each (a new one: xfail, strict, until it is fixed) ---------

USER = [{"role": "user", "content": "hi"}]

REGRESSIONS = [
    pytest.param(
        "/v1/chat/completions",
        {"model": "gemma-tunnel", "messages": [{"role": [], "content": "hi"}]},
        id="chat-role-list",
    ),
    pytest.param(
        "/v1/responses",
        {"model": "gemma-tunnel", "input": [{"role": [], "content": "hi"}]},
        id="responses-role-list",
    ),
    pytest.param(
        "/v1/responses",
        {"model": "gemma-tunnel", "input": [{"role": "user", "content": [{"type": {}, "text": "hi"}]}]},
        id="responses-part-type-object",
    ),
    pytest.param(
        "/v1/messages",
        {"model": "gemma-tunnel", "max_tokens": 16, "messages": USER, "tool_choice": {"type": []}},
        id="messages-tool-choice-type-list",
    ),
    pytest.param(
        "/v1/messages/count_tokens",
        {"model": "gemma-tunnel", "messages": USER, "tool_choice": {"type": []}},
        id="count-tokens-tool-choice-type-list",
    ),
    pytest.param(
        "/v1/messages",
        {
            "model": "gemma-tunnel",
            "max_tokens": 16,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image", "source": {"type": "base64", "media_type": [], "data": "AAAA"}}],
                }
            ],
        },
        id="messages-image-media-type-list",
    ),
    pytest.param(
        "/v1/chat/completions",
        {"model": "gemma-tunnel", "messages": USER, "metadata": Nested(254, False, 0)},
        id="chat-nested-255",
    ),
    pytest.param(
        "/v1/responses",
        {
            "model": "gemma-tunnel",
            "input": "hi",
            "tools": [{"type": "function", "name": "f", "parameters": Nested(300, True, 0)}],
        },
        id="responses-tool-parameters-nested-300",
    ),
    pytest.param(
        "/v1/messages/count_tokens",
        {"model": "gemma-tunnel", "messages": USER, "tools": [{"name": "f", "input_schema": Nested(300, True, 0)}]},
        id="count-tokens-input-schema-nested-300",
    ),
    pytest.param(
        "/v1/messages",
        {
            "model": "gemma-tunnel",
            "max_tokens": 16,
            "messages": [
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"x": Nested(990, False, 0)}}],
                },
                *USER,
            ],
        },
        id="messages-tool-use-input-nested-990",
    ),
    # A NUL in a looked-up name: PostgreSQL refuses it in a text parameter.
    pytest.param(
        "/v1/chat/completions",
        {"model": "\x00", "messages": USER},
        id="chat-model-nul",
    ),
    pytest.param(
        "/v1/responses",
        {"model": "gemma-tunnel", "input": "hi", "previous_response_id": "\x00"},
        id="responses-previous-id-nul",
    ),
]


@pytest.mark.parametrize("path,body", REGRESSIONS)
async def test_a_known_bad_body_gets_a_4xx(key, deployment, path, body):
    exchange, errors = await send("POST", path, body, secret=key.secret)
    assert exchange.status is not None and exchange.status < 500, errors.describe()
    assert_error_shape(exchange, anthropic=SURFACES[path][1])


async def test_the_valid_bodies_reach_the_offline_connector(key, deployment):
    """The templates are valid: without a mutation each ends at the offline 503 (count_tokens falls
    back to its estimate), so the mutations above start from a request that gets through."""
    for path, (template, anthropic) in SURFACES.items():
        exchange, errors = await send("POST", path, template, secret=key.secret)
        expected = 200 if path.endswith("count_tokens") else 503
        assert exchange.status == expected, (path, exchange.body, errors.describe())
        if expected == 503:
            assert_error_shape(exchange, anthropic=anthropic)


@pytest.mark.parametrize("path", ["/v1/", "/v1/\n"])
async def test_an_unknown_v1_path_answers_404_in_the_openai_shape(key, path):
    exchange, _ = await send("GET", path, b"", secret=key.secret)
    assert exchange.status == 404
    assert_error_shape(exchange, anthropic=False)
