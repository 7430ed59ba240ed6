"""POST /v1/messages and /v1/messages/count_tokens (Anthropic) on a Chat Completions model."""

from __future__ import annotations

import orjson
from django.http import HttpResponse, HttpResponseBase

from ..errors import GatewayError, json_response
from ..gateway import RequestScope
from ..stream import EventTranslator
from ..translate import anthropic
from ..translate.errors import TranslationError
from ..upstream import open_call, read_body, upstream_model
from . import native, translated

HELPER_RESPONSE_LIMIT = 4 * 1024 * 1024  # a rendered prompt or its token list


def _invalid(exc: TranslationError) -> GatewayError:
    return GatewayError(400, exc.message, param=exc.param, error_type="invalid_request_error")


def _error_type(code: str) -> str:
    if code in ("queue_full", "queue_timeout"):  # the model stayed busy (proxy/tunnel/queue.py)
        return "overloaded_error"
    return "timeout_error" if code in ("upstream_timeout", "request_deadline") else "api_error"


async def create_message(scope: RequestScope) -> HttpResponseBase:
    body = scope.body
    await scope.resolve_model(body.get("model"))
    if await native.speaks(scope, "messages"):
        return await native.create_message(scope)
    try:
        chat_body, info = anthropic.validate_and_translate_request(body, upstream_model=upstream_model(scope))
    except TranslationError as exc:
        raise _invalid(exc) from None
    prompt_estimate = anthropic.estimate_tokens(orjson.dumps(chat_body["messages"]).decode())
    await scope.check_limits(prompt_estimate + info.max_tokens)
    inner = anthropic.MessagesStreamTranslator(
        info, message_id="msg_" + scope.request_id[4:], input_tokens_hint=prompt_estimate, emit_events=info.stream
    )
    translator = EventTranslator(inner, keepalive=inner.ping, error_kind=_error_type)
    return await translated.run(scope, chat_body, translator, stream=info.stream, final=inner.final_message)


async def count_tokens(scope: RequestScope) -> HttpResponse:
    """An exact count from the model server's own /v1/messages/count_tokens where it serves one
    (proxy/surfaces/native.py), else from its tokenizer where it offers one (llama.cpp's
    /apply-template + /tokenize); otherwise a documented estimate, marked `"estimated": true`."""
    body = scope.body
    await scope.resolve_model(body.get("model"))
    try:
        messages, flat_text = anthropic.count_tokens_prompt(body)
    except TranslationError as exc:
        raise _invalid(exc) from None
    # A count asks the owner's model server too: it takes a request from the key's and org's
    # requests per minute like any call, and no tokens (it generates none).
    await scope.check_limits(0)
    if await native.speaks(scope, "count_tokens"):
        counted = await native.count_tokens(scope)
        if counted is not None:
            return json_response({"input_tokens": counted}, headers={"x-tokios-token-count": "exact"})
    exact = await _tokenize(scope, messages, anthropic.count_tokens_tools(body))
    if exact is not None:
        return json_response({"input_tokens": exact}, headers={"x-tokios-token-count": "exact"})
    return json_response(
        {"input_tokens": anthropic.estimate_tokens(flat_text), "estimated": True},
        headers={"x-tokios-token-count": "estimated"},
    )


async def _ask(scope: RequestScope, path: str, payload: dict) -> dict | None:
    try:
        call, status = await open_call(scope, path, payload)
        raw = await read_body(scope, call, HELPER_RESPONSE_LIMIT)
    except GatewayError:
        return None
    if status != 200:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


async def _tokenize(scope: RequestScope, messages: list[dict], tools: list[dict]) -> int | None:
    # Tool definitions are part of the prompt the model sees (llama.cpp's template renders them).
    template_request: dict = {"messages": messages}
    if tools:
        template_request["tools"] = tools
    rendered = await _ask(scope, "/apply-template", template_request)
    if not rendered or not isinstance(rendered.get("prompt"), str):
        return None
    tokens = await _ask(scope, "/tokenize", {"content": rendered["prompt"], "add_special": True})
    if not tokens or not isinstance(tokens.get("tokens"), list):
        return None
    return len(tokens["tokens"])
