"""POST /v1/messages and /v1/messages/count_tokens (Anthropic) on a Chat Completions model."""

from __future__ import annotations

import orjson
from django.http import HttpResponse

from ..errors import GatewayError, json_response
from ..gateway import Context, check_limits, resolve_model
from ..translate import anthropic
from ..translate.errors import TranslationError
from ..tunnel.router import TunnelError
from . import translated
from .upstream import open_call, upstream_model


def _invalid(exc: TranslationError) -> GatewayError:
    return GatewayError(400, exc.message, param=exc.param, error_type="invalid_request_error")


async def create_message(ctx: Context) -> HttpResponse:
    body = ctx.body
    await resolve_model(ctx, body.get("model"))
    try:
        chat_body, info = anthropic.validate_and_translate_request(body, upstream_model=upstream_model(ctx))
    except TranslationError as exc:
        raise _invalid(exc) from None
    prompt_estimate = anthropic.estimate_tokens(orjson.dumps(chat_body["messages"]).decode())
    await check_limits(ctx, prompt_estimate + info.max_tokens)
    translator = anthropic.MessagesStreamTranslator(
        info, message_id="msg_" + ctx.request_id[4:], input_tokens_hint=prompt_estimate, emit_events=info.stream
    )
    surface = translated.Translated(translator, keepalive=translator.ping, final=translator.final_message)
    return await translated.run(ctx, chat_body, surface, stream=info.stream)


async def count_tokens(ctx: Context) -> HttpResponse:
    """An exact count from the model's own tokenizer where the upstream offers one (llama.cpp's
    /apply-template + /tokenize); otherwise a documented estimate, marked `"estimated": true`."""
    body = ctx.body
    await resolve_model(ctx, body.get("model"))
    try:
        messages, flat_text = anthropic.count_tokens_prompt(body)
    except TranslationError as exc:
        raise _invalid(exc) from None
    exact = await _tokenize(ctx, messages, anthropic.count_tokens_tools(body))
    if exact is not None:
        return json_response({"input_tokens": exact}, headers={"x-tokios-token-count": "exact"})
    return json_response(
        {"input_tokens": anthropic.estimate_tokens(flat_text), "estimated": True},
        headers={"x-tokios-token-count": "estimated"},
    )


async def _ask(ctx: Context, path: str, payload: dict) -> dict | None:
    try:
        call, status = await open_call(ctx, path, payload)
        raw = await call.read_all()
    except (GatewayError, TunnelError):
        return None
    if status != 200:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


async def _tokenize(ctx: Context, messages: list[dict], tools: list[dict]) -> int | None:
    # Tool definitions are part of the prompt the model sees (llama.cpp's template renders them).
    template_request: dict = {"messages": messages}
    if tools:
        template_request["tools"] = tools
    rendered = await _ask(ctx, "/apply-template", template_request)
    if not rendered or not isinstance(rendered.get("prompt"), str):
        return None
    tokens = await _ask(ctx, "/tokenize", {"content": rendered["prompt"], "add_special": True})
    if not tokens or not isinstance(tokens.get("tokens"), list):
        return None
    return len(tokens["tokens"])
