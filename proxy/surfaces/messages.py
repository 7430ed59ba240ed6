"""POST /v1/messages and /v1/messages/count_tokens (Anthropic) on a Chat Completions model.

A streamed message's `message_start` carries the prompt's size in input tokens. When a connector of
the model announced a tokenizer (llama.cpp's /apply-template and /tokenize, what count_tokens asks),
the exact count is asked for beside the generation (`_count_beside`), and `message_start` waits for
it until the first event goes out — the model's first at the latest (`_ExactStart`) — so the first
token is never later for it; a count that has not arrived by then leaves the estimate in place. The
count is a second call to the model server: it is sent only once the generation holds its slot, and
only to a slot free at that moment (`admit(0)`): it never waits in line, and never takes a slot the
generation or anyone waiting needs.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from django.conf import settings
from django.http import HttpResponse, HttpResponseBase

from ..calls import CallError
from ..errors import GatewayError, json_response
from ..gateway import RequestScope
from ..stream import EventTranslator
from ..translate import anthropic
from ..translate.errors import TranslationError
from ..tunnel import presence
from ..tunnel.router import TunnelCall
from ..upstream import ask_json, read_body, upstream_model
from . import native, translated

log = logging.getLogger("tokios.gateway")

HELPER_RESPONSE_LIMIT = 4 * 1024 * 1024  # a rendered prompt or its token list
# The exact count beside a streamed message (module docstring): how long it waits for the
# generation to be sent to a connector (a generation still in line after that: the model is busy,
# no count), how often it looks, and how long both tokenizer calls may take (milliseconds, usually).
COUNT_WAITS_FOR_GENERATION = 1.0
COUNT_POLL = 0.005
COUNT_BUDGET = 10.0
COUNT_SUFFIX = "-count"  # its calls' request id: the request's, marked (ids must differ on a connector)
MAX_COUNT = 2**31 - 1


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
    # Server tools (web_search_*, code_execution_*, …) and schema-less client tools (bash_*, …): the
    # model is asked without them, and the client told which were left out rather than refused.
    translated.omit_tools(scope, info.omitted_tools)
    prompt_estimate = anthropic.estimate_tokens(orjson.dumps(chat_body["messages"]).decode())
    await scope.check_limits(prompt_estimate + info.max_tokens)
    inner = anthropic.MessagesStreamTranslator(
        info, message_id="msg_" + scope.request_id[4:], input_tokens_hint=prompt_estimate, emit_events=info.stream
    )
    if info.stream and await _may_tokenize(scope):
        count = asyncio.create_task(_count_beside(scope, chat_body))
        try:
            return await translated.run(
                scope, chat_body, _ExactStart(inner, count), stream=True, final=inner.final_message
            )
        except BaseException:
            count.cancel()  # no stream: no message_start to wait for
            raise
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
    return await ask_json(scope, path, payload, HELPER_RESPONSE_LIMIT)


async def _tokenize(
    scope: RequestScope, messages: list[dict], tools: list[dict], *, beside: bool = False
) -> int | None:
    # Tool definitions are part of the prompt the model sees (llama.cpp's template renders them).
    ask = _ask_beside if beside else _ask
    template_request: dict = {"messages": messages}
    if tools:
        template_request["tools"] = tools
    rendered = await ask(scope, "/apply-template", template_request)
    if not rendered or not isinstance(rendered.get("prompt"), str):
        return None
    tokens = await ask(scope, "/tokenize", {"content": rendered["prompt"], "add_special": True})
    if not tokens or not isinstance(tokens.get("tokens"), list):
        return None
    return min(len(tokens["tokens"]), MAX_COUNT)


# --- the exact count beside a streamed message (module docstring) ------------------------------------


async def _count_beside(scope: RequestScope, chat_body: dict) -> int | None:
    """The exact size of the prompt the generation is working on, or None: not asked (the
    generation is still in line, or no slot is free) or not answered."""
    try:
        async with asyncio.timeout(COUNT_WAITS_FOR_GENERATION):
            while scope.call is None or not scope.call.connector_id:
                await asyncio.sleep(COUNT_POLL)
    except TimeoutError:
        return None
    try:
        async with asyncio.timeout(COUNT_BUDGET):
            return await _tokenize(scope, chat_body["messages"], chat_body.get("tools") or [], beside=True)
    except TimeoutError:
        return None
    except Exception:
        # Only the estimate is lost: the message goes on, and nobody else would see this.
        log.warning("the exact input count of request %s failed", scope.request_id, exc_info=True)
        return None


async def _may_tokenize(scope: RequestScope) -> bool:
    """Whether a live connector of the model announced a tokenizer (Hello.surfaces). Without one,
    no count is asked: most servers without a tokenizer do not say so, and a call that can only
    fail is not worth a slot and a round trip on every streamed message."""
    connectors = await presence.live_connectors(scope.resolved_deployment().pool)
    return any(info.surfaces is not None and "tokenize" in info.surfaces for info in connectors)


async def _ask_beside(scope: RequestScope, path: str, payload: dict) -> dict | None:
    """`_ask`, on a call of its own beside the request's (`scope.call` stays the generation's), sent
    only to a slot free right now, and ended here whatever happens."""
    key = scope.authenticated_key()
    call = (settings.UPSTREAM_CALL or TunnelCall)(
        deployment_id=scope.resolved_deployment().pool,
        request_id=scope.request_id + COUNT_SUFFIX,
        method="POST",
        path=path,
        body=orjson.dumps(payload),
        org_id=key.org_id,
        key_id=key.id,
    )
    try:
        await call.admit(0.0)  # never a place in line
        started = await call.start(COUNT_BUDGET)
        raw = await read_body(scope, call, HELPER_RESPONSE_LIMIT)
    except (CallError, GatewayError):
        return None
    finally:
        await call.cancel()  # harmless once it ended; frees the slot if it did not
    if started.status != 200:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


class _ExactStart(EventTranslator):
    """A streamed message whose `message_start` waits for `count` (`_count_beside`) until the first
    event goes out — the model's first, a ping, the end or an error — and never longer. Once it went
    out, the count is of no more use: it is cancelled, and its call with it."""

    def __init__(self, inner: anthropic.MessagesStreamTranslator, count: asyncio.Task[int | None]):
        super().__init__(inner, keepalive=self._ping, error_kind=_error_type)
        self.count = count
        self.counted = False

    def start(self) -> bytes:
        self._take_count()
        return self.inner.start(hold=not self.count.done())

    def feed(self, data: bytes) -> bytes:
        held = self.inner.start_held
        if held:
            self._take_count()
        out = super().feed(data)
        if held and not self.inner.start_held:
            self.count.cancel()
        return out

    def _ping(self) -> bytes:
        self._take_count()
        self.count.cancel()
        return self.inner.ping()

    async def end(self) -> bytes:
        self._take_count()
        self.count.cancel()
        return await super().end()

    def fail(self, message: str, code: str) -> bytes:
        self._take_count()
        self.count.cancel()
        return super().fail(message, code)

    def _take_count(self) -> None:
        count = self.count
        if self.counted or not count.done() or count.cancelled():
            return
        self.counted = True
        exact = count.result()  # `_count_beside` answers None rather than raise
        if exact is not None:
            self.inner.exact_input_tokens(exact)
